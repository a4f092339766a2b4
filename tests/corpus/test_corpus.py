"""The corpus' deterministic sample under pytest: real timm architectures through real exporters.

Each sample case's faithful pair must be ok (no false divergence) and its first injected bug
found at its layer; a failure's message is the corpus row, so it says what parity reported.
The full corpus (every family, both exporters, every bug) is ``make corpus``.
"""

from __future__ import annotations

import pytest

from tests.corpus.cases import judge

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
timm_models = pytest.importorskip("tests.corpus.timm_models")
timm_onnx = pytest.importorskip("tests.corpus.timm_onnx")

pytestmark = pytest.mark.converters


def _sample():
    try:
        timm_models._timm()  # torchvision made importable first
    except ImportError:
        return []
    out = []
    for case in timm_onnx.cases([f for f in timm_models.FAMILIES if f.sample]):
        if case.sample:
            out.append(pytest.param(case, None, id=f"{case.id}/faithful"))
            if case.bugs:
                out.append(pytest.param(case, case.bugs[0], id=f"{case.id}/{case.bugs[0].name}"))
    return out


@pytest.mark.parametrize(("case", "bug"), _sample())
def test_sample_pair(case, bug):
    row = judge(case, bug)
    assert row.passed, row


@pytest.mark.parametrize(("case", "bug"), _sample())
def test_sample_pair_against_float64(case, bug):
    """The sample judged with ``reference="float64"``: no faithful layer flagged, with margin under
    the noise factor; the bug found at its layer, far over it."""
    import parity
    from parity.reference import NOISE_FACTOR

    pair = case.build(bug)
    report = parity.diff(pair.a, pair.b, pair.inputs, **pair.options, reference="float64")
    assert report.reference is not None and report.reference.kind == "float64", report.notes
    ratios = [d.noise_ratio for d in report.layers if d.noise_ratio is not None]
    assert len(ratios) >= 0.9 * len(report.layers)
    if bug is None:
        assert report.ok, report.summary()
        assert max(ratios) < NOISE_FACTOR / 4, max(ratios)  # measured ≤ 5.3× on the whole timm corpus
    else:
        first = report.first_divergence
        assert first is not None and first.a_name in (bug.layer, *bug.also), report.summary()
        assert first.noise_ratio > 10 * NOISE_FACTOR
