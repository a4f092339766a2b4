"""The sampled part of the keras.applications → tf2onnx → ONNX / onnx2torch corpus and of the
nobuco (PyTorch → Keras 2, in its own venv) corpus, in ``make test``: each sampled faithful pair
must be ``ok`` and its first injected bug flagged at its layer.  ``make corpus`` runs all of it."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

pytest.importorskip("tf2onnx")
pytest.importorskip("onnxruntime")

from .cases import judge  # noqa: E402
from .kerasapp_cases import CASES as KERASAPP_CASES  # noqa: E402
from .nobuco_cases import CASES as NOBUCO_CASES  # noqa: E402

SAMPLED = [
    pytest.param(case, bug, id=f"{case.id}:{bug.name if bug else 'faithful'}")
    for case in KERASAPP_CASES + NOBUCO_CASES
    if case.sample
    for bug in (None, *case.bugs[:1])
]


@pytest.mark.converters
@pytest.mark.parametrize(("case", "bug"), SAMPLED)
def test_sampled_corpus_pair(case, bug):
    if case.source == "nobuco" and not os.path.exists(".venv-keras2/bin/python"):
        pytest.skip("nobuco runs in .venv-keras2: build it with `make keras2`")
    if case.route.endswith("onnx2torch") or "torch" in case.id.rsplit("/", 1)[-1]:
        pytest.importorskip("onnx2torch")
    row = judge(case, bug)
    assert not row.verdict.startswith(("crash", "excluded")), row
    assert row.passed, row
