"""parity.chainspec: what parity.chain is handed — stage names, values per stage, overrides."""

from __future__ import annotations

import pytest

from parity.chain import Stage
from parity.chainspec import name_stages, per_stage, precision_hints, tolerance_overrides
from parity.errors import InputError, ToleranceError
from parity.records import ModelInfo
from parity.tolerance import Tolerances


class _Backend:
    def __init__(self, framework, name):
        self._info = ModelInfo(framework=framework, framework_version="0", name=name, kind="test")

    def info(self):
        return self._info


def test_default_names_are_the_stage_name_the_file_name_or_framework_and_model():
    specs = [Stage(object()), Stage("out/model.onnx"), Stage(object(), name="twin"), Stage(object())]
    backends = [_Backend("torch", "Net"), None, None, _Backend("torch", "Net")]
    assert name_stages(specs, None, backends) == ["torch:Net", "model.onnx", "twin", "torch:Net#2"]
    assert name_stages(specs[:2], ["a", "b"], backends[:2]) == ["a", "b"]
    with pytest.raises(InputError, match="names has 1 name\\(s\\) for 2 stages; give one per stage"):
        name_stages(specs[:2], ["a"], backends[:2])
    with pytest.raises(InputError, match="stage names must be unique; got a, a"):
        name_stages(specs[:2], ["a", "a"], backends[:2])


def test_values_per_stage_by_list_name_or_index():
    names = ["t", "onnx", "tfl"]
    assert per_stage(None, names, "mappings") == [None, None, None]
    assert per_stage({"tfl": 1, 1: 2}, names, "mappings") == [None, 2, 1]
    assert per_stage([None, "x", None], names, "mappings") == [None, "x", None]
    with pytest.raises(InputError, match=r"mappings names stage 'keras', which is not in the chain \(t, onnx, tfl\)"):
        per_stage({"keras": {}}, names, "mappings")
    with pytest.raises(InputError, match="mappings has 2 entries for 3 stages; give one per stage"):
        per_stage([None, None], names, "mappings")
    with pytest.raises(InputError, match="precision= is per stage.*got the single value 'fp16'"):
        precision_hints("fp16", names)
    assert precision_hints({2: "fp16"}, names) == [None, None, "fp16"]


def test_tolerance_overrides_from_a_table_or_a_tolerances_record():
    assert tolerance_overrides(None, 0.5) == ({}, 0.5)
    assert tolerance_overrides({"fc": (1e-2, 1e-3)}, None) == ({"fc": (1e-2, 1e-3)}, None)
    tol = Tolerances.build(overrides={"fc": (1e-2, 1e-3)}, min_argmax_agreement=0.9)
    assert tolerance_overrides(tol, None) == ({"fc": (1e-2, 1e-3)}, 0.9)
    with pytest.raises(ToleranceError, match="tolerances must map layer names or globs to \\(rtol, atol\\), got list"):
        tolerance_overrides([1e-3], None)
