"""timm → ONNX corpus cases: every family through both of torch's exporters.

``torch.onnx.export(dynamo=True)`` at opset 18 and the TorchScript exporter (``dynamo=False``) at
opset 17.  B is the ``.onnx`` file (for a bug: the export of a copy of A with the bug in it); A is
the live timm model.  Exports are cached by content hash (:mod:`tests.artifacts`) of everything
that determines them: the recipe (architecture, config, seed, bug), the builder's source, and the
torch and timm versions — so a second corpus run pays for no export.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from tests.artifacts import cached_dir
from tests.corpus import timm_models as tm
from tests.corpus.cases import Bug, Case, Pair


#: route id → (label, dynamo, opset)
ROUTES = {
    "onnx-dynamo": ("torch.onnx.export (dynamo, opset 18)", True, 18),
    "onnx-torchscript": ("torch.onnx.export (TorchScript, opset 17)", False, 17),
}


#: the (family, route) pairs the test suite runs (faithful and first bug): the issue's failures
SAMPLE = {("efficientnet", "onnx-dynamo"), ("mobilenetv3", "onnx-torchscript"), ("resnet", "onnx-torchscript"),
          ("vit", "onnx-torchscript")}


def recipe_key(fam: tm.Family, *extra: str) -> str:
    """The content key of an artifact made from ``fam``'s model A (and ``extra``: bug, route),
    with the torch and timm versions that export it."""
    return tm.recipe_key(fam, tm.versions(), *extra)


def export(model, x: np.ndarray, path: Path, *, dynamo: bool, opset: int) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's DeprecationWarning, TracerWarnings
        kwargs = dict(input_names=["input"], output_names=["output"], opset_version=opset, dynamo=dynamo)
        if dynamo:
            kwargs["verbose"] = False
        torch.onnx.export(model, (torch.from_numpy(x),), str(path), **kwargs)


def onnx_path(fam: tm.Family, route: str, bug: Bug | None, model=None) -> Path:
    """The cached export of ``fam`` (with ``bug``) through ``route``."""
    _, dynamo, opset = ROUTES[route]
    a = model if model is not None else tm.build(fam)

    def build(tmp: Path) -> None:
        b = a if bug is None else tm.inject(a, fam, bug)
        export(b, tm.inputs(fam), tmp / "model.onnx", dynamo=dynamo, opset=opset)

    key = recipe_key(fam, route, repr(bug and (bug.name, bug.layer)), tm.state_digest(a))
    return cached_dir(f"timm-onnx-{fam.name}", key, build) / "model.onnx"


def _builder(fam: tm.Family, route: str):
    def build(bug: Bug | None) -> Pair:
        a = tm.build(fam)
        return Pair(a=a, b=str(onnx_path(fam, route, bug, model=a)), inputs=tm.inputs(fam))

    return build


def cases(families=None, *, with_bugs: bool = True) -> list[Case]:
    """One case per family and route, with the family's bugs (finding them builds each model
    once; ``with_bugs=False`` lists the faithful pairs only, building nothing)."""
    out = []
    for fam in families if families is not None else tm.FAMILIES:
        bugs: tuple[Bug, ...] = ()
        if with_bugs:
            try:
                bugs = tm.cached_bugs(fam)
            except Exception:  # the family does not build: its faithful case is excluded, saying why
                bugs = ()
        for route, (label, _, _) in ROUTES.items():
            out.append(Case(id=f"timm/{fam.name}/{route}", source="timm", model=fam.arch, route=label,
                            build=_builder(fam, route), bugs=bugs, sample=(fam.name, route) in SAMPLE))
    return out


def case(case_id: str) -> Case:
    """The case ``timm/<family>/<route>`` alone (builds nothing of the other families)."""
    _, name, route = case_id.split("/")
    for c in cases([tm.family(name)]):
        if c.id == case_id:
            return c
    raise KeyError(f"no timm case {case_id!r} (routes: {', '.join(ROUTES)})")
