"""torchvision architectures carried to Keras 2 by nobuco 0.17.0.

nobuco runs only on TensorFlow 2.15 / Keras 2 (its own venv, ``make keras2``), so these cases are
judged there: each case's ``judge_elsewhere`` starts ``tests/corpus/nobuco_run.py`` under
``.venv-keras2/bin/python`` with this checkout's parity on ``PYTHONPATH``, for the faithful pair
and every bug of the model in one process (TensorFlow's start-up is paid once per model), and reads
the rows back as JSON.  A row's seconds are the build (conversion) and diff of that variant alone.

Model A is torchvision's definition (``weights=None``: nothing downloaded; ten classes; a small
input), seeded, with trained-like BatchNorm statistics; a bug is planted in a copy of A before
nobuco converts it (a middle conv's weight × 1.05; a BatchNorm's running variance × 4 + 0.5).
nobuco keeps every torch layer as a Keras layer, so weight parity applies and names the
parameter (``weight_mismatch``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.corpus.cases import Bug, Case, Row

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("PARITY_KERAS2_VENV", "/work/main/.venv-keras2" if not (ROOT / ".venv-keras2").exists()
                           else ROOT / ".venv-keras2"))
ROUTE = "nobuco 0.17.0 (PyTorch → Keras 2.15)"


@dataclass(frozen=True)
class Model:
    name: str
    arch: str  # torchvision.models constructor
    bugs: tuple[Bug, ...]
    size: int = 64
    kwargs: dict = field(default_factory=dict)
    sample: bool = False


MODELS: tuple[Model, ...] = (
    Model("resnet18", "resnet18", (
        Bug("scaled-kernel", "layer2.1.conv1", diagnosis="weight_mismatch"),
        Bug("bn-var", "layer3.0.bn2", diagnosis="weight_mismatch"),
    ), sample=True),
    Model("mobilenet_v2", "mobilenet_v2", (
        Bug("scaled-kernel", "features.7.conv.0.0", diagnosis="weight_mismatch"),
    )),
    Model("mobilenet_v3_small", "mobilenet_v3_small", (
        Bug("scaled-kernel", "features.6.block.0.0", diagnosis="weight_mismatch"),
    )),
    Model("shufflenet_v2_x0_5", "shufflenet_v2_x0_5", (
        Bug("scaled-kernel", "stage3.1.branch2.0", diagnosis="weight_mismatch"),
    )),
)


def bug_named(model: Model, name: str) -> Bug:
    return next(b for b in model.bugs if b.name == name)


class _Remote:
    """Judges one variant of a model in the Keras 2 venv (a subprocess per variant, as the runner
    gives each pair a fresh process; rows already judged in this process are reused)."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.rows: dict[str | None, Row] = {}

    def __call__(self, bug: Bug | None) -> Row:
        key = bug and bug.name
        if key not in self.rows:
            self.rows.update(self._run(["none" if key is None else key]))
        return self.rows[key]

    def _run(self, variants: list[str]) -> dict[str | None, Row]:
        case_id = f"nobuco/{self.model.name}/nobuco"
        python = VENV / "bin" / "python"
        if not python.exists():
            return {None if v == "none" else v: _crash(self.model, v, f"{python} is missing: run `make keras2`")
                    for v in variants}
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
        proc = subprocess.run([str(python), "-m", "tests.corpus.nobuco_run", self.model.name, *variants],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0 or "ROWS\n" not in proc.stdout:
            tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
            return {None if v == "none" else v: _crash(self.model, v, f"nobuco_run exit {proc.returncode}: {tail}")
                    for v in variants}
        rows = {}
        for line in proc.stdout.split("ROWS\n", 1)[1].splitlines():
            d = json.loads(line)
            d.update(case=case_id, route=ROUTE)
            rows[d["bug"]] = Row.from_dict(d)
        return rows


def _crash(model: Model, variant: str, detail: str) -> Row:
    bug = None if variant == "none" else bug_named(model, variant)
    return Row(f"nobuco/{model.name}/nobuco", "nobuco", model.name, ROUTE, bug and bug.name, 0, 0, 0, 0,
               float("nan"), f"crash: {detail[:300]}", "ok" if bug is None else bug.layer, False, 0.0)


def _not_here(bug):  # pragma: no cover - judge_elsewhere takes its place
    raise RuntimeError("nobuco pairs are built in the Keras 2 venv (tests/corpus/nobuco_run.py)")


def cases(with_bugs: bool = True) -> list[Case]:
    """The cases (``with_bugs=False``: their faithful pairs only)."""
    return CASES if with_bugs else [dataclasses.replace(c, bugs=()) for c in CASES]


def case(case_id: str) -> Case:
    return next(c for c in CASES if c.id == case_id)


CASES: list[Case] = [
    Case(id=f"nobuco/{m.name}/nobuco", source="nobuco", model=m.name, route=ROUTE, build=_not_here,
         bugs=m.bugs, sample=m.sample, judge_elsewhere=_Remote(m))
    for m in MODELS
]
