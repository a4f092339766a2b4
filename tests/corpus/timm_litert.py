"""timm → litert-torch ``.tflite`` corpus cases (Google's direct PyTorch → TFLite converter).

litert-torch 0.10.0 runs in a venv of its own (``make litert``: ``.venv-litert``), so the
conversion is a subprocess, :mod:`tests.corpus.litert_convert`, run with that venv's python; the
``.tflite`` it writes is read here, in the project's venv.  B is that file (for a bug: the
conversion of a copy of A with the bug in it); A is the live timm model.  Conversions are cached
by content hash (:mod:`tests.artifacts`) of everything that determines them: the recipe
(architecture, config, seed, bug), the builder's and the script's source, and the litert-torch,
torch and timm versions.

The venv's python is ``$PARITY_LITERT_PYTHON`` or ``<repository>/.venv-litert/bin/python``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from parity.errors import ConversionError, ConverterNotInstalled
from tests.artifacts import cached_dir
from tests.corpus import timm_models as tm
from tests.corpus.cases import Bug, Case, Pair

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("litert_convert.py")
ROUTE = "litert-torch 0.10.0 (.tflite)"
#: the sample of timm families converted with litert-torch (CNNs, mobile nets with SE and
#: hard-swish, EfficientNet, RegNet, ConvNeXt, a ViT, an MLP-Mixer)
FAMILIES = ("mobilenetv3", "efficientnet", "resnet", "convnext", "vit", "regnetx", "ghostnet", "mnasnet",
            "lcnet", "mobilenetv2", "repvgg", "mixer", "seresnet", "deit")
#: families in the deterministic subset the test suite runs
SAMPLE = ("mobilenetv3", "resnet")
#: how long one conversion may take (2 shared cores: litert-torch takes 10 s – several minutes)
TIMEOUT = 1800.0


def litert_python() -> Path:
    """The litert venv's python; :class:`ConverterNotInstalled` saying how to make it."""
    given = os.environ.get("PARITY_LITERT_PYTHON")
    python = Path(given) if given else ROOT / ".venv-litert" / "bin" / "python"
    if not python.exists():
        raise ConverterNotInstalled(
            f"litert-torch's venv is missing: no python at {python}. Build it with `make litert` "
            "(torch==2.13.0, then litert-torch==0.10.0), or point $PARITY_LITERT_PYTHON at one."
        )
    return python


def _venv_versions(python: Path) -> str:
    """litert-torch's, torch's and timm's versions in that venv, read from its metadata files."""
    site = sorted(python.resolve().parents[1].glob("lib/python*/site-packages"))
    found = []
    for pkg in ("litert_torch", "torch", "timm"):
        dists = sorted(p.name for s in site for p in s.glob(f"{pkg}-*.dist-info"))
        found.append(dists[0] if dists else f"{pkg}-?")
    return " ".join(found)


def convert(fam: tm.Family, bug: Bug | None) -> Path:
    """The cached litert-torch conversion of ``fam``'s A (with ``bug`` injected): its directory,
    holding ``model.tflite`` and ``meta.json``."""
    python = litert_python()

    def build(tmp: Path) -> None:
        command = [str(python), str(SCRIPT), fam.name, str(tmp)]
        if bug is not None:
            command += ["--bug", bug.name, bug.layer]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
        env.pop("PYTHONPATH", None)  # the script puts the repository on its path itself
        try:
            run = subprocess.run(command, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 timeout=TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise ConversionError(f"litert-torch did not convert {fam.arch} within {TIMEOUT:g} s.",
                                  command=command, returncode=None, log_tail="") from None
        log = run.stdout.decode("utf-8", "replace")
        if run.returncode != 0 or not (tmp / "model.tflite").exists():
            tail = "\n".join(f"    {line}" for line in log.splitlines()[-20:])
            raise ConversionError(
                f"litert-torch failed to convert {fam.arch} (status {run.returncode}). Command: "
                f"{' '.join(command)}. Its log ends:\n{tail}",
                command=command, returncode=run.returncode, log_tail=tail,
            )

    key = tm.recipe_key(fam, "litert", repr(bug and (bug.name, bug.layer)), SCRIPT.read_bytes(), _venv_versions(python))
    return cached_dir(f"timm-litert-{fam.name}", key, build)


def _builder(fam: tm.Family):
    def build(bug: Bug | None) -> Pair:
        out = convert(fam, bug)
        meta = json.loads((out / "meta.json").read_text())
        a = tm.build(fam)
        if meta["a_digest"] != tm.state_digest(a):
            raise ConversionError(
                f"the litert venv built another model A for {fam.arch} than this venv (parameter digest "
                f"{meta['a_digest']} there, {tm.state_digest(a)} here): its torch or timm version differs. "
                "Rebuild it with `make litert`.")
        return Pair(a=a, b=str(out / "model.tflite"), inputs=tm.inputs(fam))

    return build


def cases(families=None, *, with_bugs: bool = True) -> list[Case]:
    """One case per family of :data:`FAMILIES`, with the family's first bug (a scaled kernel in a
    middle block; finding it builds the model once, then it is cached)."""
    out = []
    for fam in families if families is not None else [tm.family(n) for n in FAMILIES]:
        bugs: tuple[Bug, ...] = ()
        if with_bugs:
            try:
                bugs = tm.cached_bugs(fam)[:1]
            except Exception:  # the family does not build: its faithful case is excluded, saying why
                bugs = ()
        out.append(Case(id=f"timm-litert/{fam.name}/litert", source="timm", model=fam.arch, route=ROUTE,
                        build=_builder(fam), bugs=bugs, sample=fam.name in SAMPLE))
    return out


def case(case_id: str) -> Case:
    """The case ``timm-litert/<family>/litert`` alone (builds nothing of the other families)."""
    _, name, _ = case_id.split("/")
    return cases([tm.family(name)])[0]


def __getattr__(name: str):
    if name == "CASES":  # built on first use: listing the bugs builds every model once
        return cases()
    raise AttributeError(name)
