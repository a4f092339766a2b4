"""The sampled part of the transformers PT ↔ TF and keras-hub corpus, in ``make test``: each
sampled architecture's faithful pair must be ``ok`` and each injected bug flagged at its layer
(by the diagnosis named where one applies).  ``python -m tests.corpus.hf_cases`` and
``python -m tests.corpus.kerashub_cases`` run the whole of it."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

pytest.importorskip("transformers")
pytest.importorskip("tf_keras")

from .cases import judge  # noqa: E402
from .hf_cases import CASES as HF_CASES  # noqa: E402
from .kerashub_cases import CASES as KERASHUB_CASES  # noqa: E402

SAMPLED = [
    pytest.param(case, bug, id=f"{case.id}:{bug.name if bug else 'faithful'}")
    for case in HF_CASES + KERASHUB_CASES
    if case.sample
    for bug in (None, *case.bugs)
]


@pytest.mark.converters
@pytest.mark.parametrize(("case", "bug"), SAMPLED)
def test_sampled_corpus_pair(case, bug):
    if case.source == "keras-hub":
        pytest.importorskip("keras_hub")
    row = judge(case, bug)
    print(f"\n{row.case} {row.bug or 'faithful'}: {row.compared}/{row.layers} compared, {row.matched_share:.0%} "
          f"compared or accounted for, max rel err {row.max_rel_err:.1e}, {row.verdict}")
    assert not row.verdict.startswith("crash"), row.verdict
    if bug is None:
        assert row.verdict == "ok" and row.max_rel_err < 1e-5, row.verdict
        assert row.matched_share >= 0.8, row.unmatched_names
    else:
        assert row.passed, f"expected at {bug.layer} ({bug.diagnosis or 'any diagnosis'}), got {row.verdict}"
