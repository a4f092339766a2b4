"""parity.chain's records without any framework: the layer × stage matrix built from hand-made
Reports — which stage introduces a divergence, which inherit it, quantisation and blank cells,
the first break — and the lookups that refuse a stage or layer the chain does not have."""

from __future__ import annotations

import pytest

from parity.chain import PRECISION_TOLERANCES, ChainBreak
from parity.errors import MappingError, ParityError, StageNotFound
from tests.helpers import CHAIN_LAYERS as LAYERS
from tests.helpers import CHAIN_PRECISIONS as PRECISIONS
from tests.helpers import CHAIN_STAGES as STAGES
from tests.helpers import chain_reports as _reports
from tests.helpers import layer_diffs as _diffs
from tests.helpers import make_chain as _chain
from tests.helpers import make_layer_diff, make_report

def _statuses(chain):
    return {row.layer: [c.status for c in row.cells] for row in chain.matrix}


def test_a_row_per_layer_of_stage_0_and_a_cell_per_later_stage():
    chain = _chain()
    assert [(r.index, r.layer, r.op) for r in chain.matrix] == [(i, n, op) for i, (n, op) in enumerate(LAYERS)]
    assert all([c.stage for c in r.cells] == list(STAGES[1:]) for r in chain.matrix)


def test_introduced_inherited_quantisation_and_blank_cells():
    assert _statuses(_chain()) == {
        "stem": ["ok", "ok", "quantisation"],
        "stem_bn": ["ok", "introduced", "fused"],
        "stem_relu": ["ok", "introduced", "inherited"],
        "pool": ["ok", "introduced", "no-match"],
        # keras-bad did not compare fc: the float16 stage is the first over tolerance there
        "fc": ["ok", "absent", "introduced"],
        "output": ["ok", "introduced", "inherited"],
    }


def test_cells_carry_the_numbers_and_say_what_they_mean():
    chain = _chain()
    stem = chain.row("stem").cell("tflite16-bad")
    assert stem.rel_err == pytest.approx(5e-3) and (stem.rtol, stem.atol) == PRECISION_TOLERANCES["float16"]
    assert stem.precision == "float16" and stem.within_float32 is False and stem.ok is True
    assert stem.label == "expected quantisation error"
    assert stem.tolerance_ratio == pytest.approx(10 * 5e-3 / (1e-3 * 10 + 1e-2 * 10))
    bn = chain.row("stem_bn")
    assert bn.cell("keras-bad").label == "over tolerance, introduced here" and bn.cell("keras-bad").b_name == "b/stem_bn"
    assert bn.cell("tflite16-bad").label == "fused by the converter" and bn.cell("tflite16-bad").ok is None
    assert bn.cell("tflite16-bad").rel_err is None and not bn.cell("tflite16-bad").compared
    relu = chain.row("stem_relu").cell("tflite16-bad")
    assert relu.label == "beyond expected quantisation error, inherited from an earlier stage"
    assert chain.row("stem").cell("onnx").within_float32 is None  # not a precision stage
    assert chain.row("pool").cell("tflite16-bad").label == "no counterpart"
    assert chain.row("fc").cell("keras-bad").label == "not compared"


def test_rows_know_who_introduced_their_divergence():
    chain = _chain()
    assert {r.layer: r.introduced_by for r in chain.matrix} == {
        "stem": None, "stem_bn": "keras-bad", "stem_relu": "keras-bad", "pool": "keras-bad",
        "fc": "tflite16-bad", "output": "keras-bad",
    }
    assert chain.row("stem").ok and not chain.row("stem_bn").ok


def test_stage_verdicts_and_the_first_break():
    chain = _chain()
    assert not chain.ok
    assert chain.stage_status == ("ok", "introduces", "introduces")
    assert [chain.is_precision_stage(i) for i in range(4)] == [False, False, False, True]
    assert chain.first_break == ChainBreak("keras-bad", "stem_bn")


def test_the_first_break_is_the_guilty_layer_its_report_names_when_it_introduced_it():
    # stem_bn's own error is not computed; stem_relu's own error is over tolerance: the report's guilty layer
    chain = _chain(_reports(keras_own=4e-2))
    assert chain.reports[1].first_divergence.a_name == "stem_relu"
    assert chain.first_break == ChainBreak("keras-bad", "stem_relu")


def test_a_stage_that_inherits_only():
    reports = _reports()
    rtol, atol = PRECISION_TOLERANCES["float16"]
    reports[2] = make_report(
        [make_layer_diff(0, "stem", 5e-3, rtol=rtol, atol=atol),
         make_layer_diff(2, "stem_relu", 4e-2, op="ReLU", rtol=rtol, atol=atol)], framework_b="tflite",
        rtol=rtol, atol=atol,
    )
    chain = _chain(reports)
    assert chain.stage_status == ("ok", "introduces", "inherits")
    assert _statuses(chain)["fc"] == ["ok", "absent", "absent"]


def test_an_all_ok_chain_with_a_precision_stage():
    rtol, atol = PRECISION_TOLERANCES["float16"]
    ok16 = make_report(_diffs({name: 2e-3 for name, _ in LAYERS}, rtol=rtol, atol=atol), rtol=rtol, atol=atol)
    chain = _chain([_reports()[0], ok16], STAGES[:2] + ("fp16",), ("float32", "float32", "float16"))
    assert chain.ok and chain.first_break is None
    assert chain.stage_status == ("ok", "ok (expected quantisation error)")
    assert {s for r in chain.matrix for s in (c.status for c in r.cells)} == {"ok", "quantisation"}


def test_a_stage_with_nothing_compared_breaks_the_chain_without_a_layer():
    nothing = make_report([], unmatched=[(name, "no counterpart") for name, _ in LAYERS[:-1]])
    chain = _chain([_reports()[0], nothing], STAGES[:3], PRECISIONS[:3])
    assert chain.stage_status == ("ok", "nothing compared")
    assert chain.first_break == ChainBreak("keras-bad", None) and not chain.ok
    assert _statuses(chain)["stem"] == ["ok", "no-match"]


def test_lookups_refuse_what_the_chain_does_not_have():
    chain = _chain()
    assert chain.report("keras-bad") is chain.reports[1] and chain.report(3) is chain.reports[2]
    with pytest.raises(StageNotFound, match="no stage 'tflite32' in this chain; give one of torch, onnx") as err:
        chain.report("tflite32")
    assert isinstance(err.value, KeyError) and isinstance(err.value, ParityError)
    assert str(err.value).startswith("no stage")  # not quoted like a KeyError's key
    with pytest.raises(KeyError, match=r"stage index 0 is not one of the compared stages 1..3 \(stage 0, torch, is"):
        chain.report(0)
    with pytest.raises(StageNotFound, match="give one of the stages compared with stage 0: onnx, keras-bad"):
        chain.row("stem").cell("torch")
    with pytest.raises(MappingError, match="stage 0 \\(torch\\) has no layer 'stem_bm'.*Closest: stem_bn"):
        chain.row("stem_bm")
