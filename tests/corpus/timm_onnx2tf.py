"""timm → ONNX → onnx2tf corpus cases: the SavedModel and the float32 ``.tflite`` onnx2tf writes.

A is the live timm model.  Its ONNX export (the TorchScript exporter at opset 17, the one
onnx2tf's own tests use; for a bug: the export of a copy of A with the bug in it) is converted by
onnx2tf in a subprocess (:func:`parity._zoo.onnx2tf_chain.convert_cached`: a stand-in calibration
file keeps it offline); B is the SavedModel directory or the float32 ``.tflite``.  One conversion
serves both routes.  Exports are cached by the recipe's content hash, conversions by the ONNX
bytes, onnx2tf's version and its flags.
"""

from __future__ import annotations

from pathlib import Path

from tests.corpus import timm_models as tm
from tests.corpus.cases import Bug, Case, Pair
from parity.errors import ConversionError
from tests.artifacts import CACHE, cached_dir

#: route id → (label, which onnx2tf output is B)
ROUTES = {
    "onnx2tf-saved_model": ("ONNX (TorchScript, opset 17) → onnx2tf 1.29.24 SavedModel", "saved_model"),
    "onnx2tf-tflite_fp32": ("ONNX (TorchScript, opset 17) → onnx2tf 1.29.24 float32 TFLite", "tflite_fp32"),
}
FAMILIES = ("resnet", "mobilenetv3", "efficientnet", "regnetx", "convnext", "vit", "ghostnet", "mnasnet",
            "lcnet", "mobilenetv2", "repvgg", "mixer")
SAMPLE = ("mobilenetv3",)
#: onnx2tf writes a SavedModel and two TFLite files; on 2 shared cores a ResNet-18 takes minutes
TIMEOUT = 3000.0


def onnx_path(fam: tm.Family, bug: Bug | None, model=None) -> Path:
    """The cached TorchScript export (opset 17) of ``fam``'s A, with ``bug`` injected into a copy."""
    from parity._zoo.onnx2tf_chain import export_onnx

    a = model if model is not None else tm.build(fam)

    def build(tmp: Path) -> None:
        b = a if bug is None else tm.inject(a, fam, bug)
        export_onnx(b, tm.inputs(fam), tmp / "model.onnx", opset=17)

    key = tm.recipe_key(fam, tm.versions(), "onnx-torchscript-17", repr(bug and (bug.name, bug.layer)),
                        tm.state_digest(a))
    return cached_dir(f"timm-onnx17-{fam.name}", key, build) / "model.onnx"


def convert(fam: tm.Family, bug: Bug | None, model=None) -> dict[str, Path]:
    """onnx2tf's outputs (``onnx``, ``saved_model``, ``tflite_fp32``, ``tflite_fp16``) for the export."""
    from parity._zoo.onnx2tf_chain import convert_cached

    return convert_cached(onnx_path(fam, bug, model).read_bytes(), CACHE, timeout=TIMEOUT)


def _builder(fam: tm.Family, output: str):
    def build(bug: Bug | None) -> Pair:
        a = tm.build(fam)
        b = convert(fam, bug, model=a)[output]
        if output.startswith("tflite") and b"Flex" in Path(b).read_bytes():
            # parity refuses such a file with a CaptureError saying why (tests/test_capture_tflite.py);
            # here it is a pair that cannot be made, not parity's outcome on one
            raise ConversionError(
                f"onnx2tf wrote Select TensorFlow (Flex) ops into {Path(b).name} for {fam.arch}: no interpreter "
                "installed here (ai-edge-litert, TensorFlow's pip tf.lite.Interpreter) links the Flex delegate"
            )
        return Pair(a=a, b=str(b), inputs=tm.inputs(fam))

    return build


def cases(families=None, *, with_bugs: bool = True) -> list[Case]:
    """Two cases (SavedModel, float32 TFLite) per family of :data:`FAMILIES`, with the family's
    first bug (a scaled kernel in a middle block)."""
    out = []
    for fam in families if families is not None else [tm.family(n) for n in FAMILIES]:
        bugs: tuple[Bug, ...] = ()
        if with_bugs:
            try:
                bugs = tm.cached_bugs(fam)[:1]
            except Exception:  # the family does not build: its faithful case is excluded, saying why
                bugs = ()
        for route, (label, output) in ROUTES.items():
            out.append(Case(id=f"timm-onnx2tf/{fam.name}/{route}", source="timm", model=fam.arch, route=label,
                            build=_builder(fam, output), bugs=bugs, sample=fam.name in SAMPLE))
    return out


def case(case_id: str) -> Case:
    """The case ``timm-onnx2tf/<family>/<route>`` alone (builds nothing of the other families)."""
    _, name, route = case_id.split("/")
    for c in cases([tm.family(name)]):
        if c.id == case_id:
            return c
    raise KeyError(f"no onnx2tf case {case_id!r} (routes: {', '.join(ROUTES)})")


def __getattr__(name: str):
    if name == "CASES":  # built on first use: listing the bugs builds every model once
        return cases()
    raise AttributeError(name)
