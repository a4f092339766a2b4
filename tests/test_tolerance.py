"""Tolerances: the refusals, the lookup order, and which dtype decides."""

from __future__ import annotations

import pytest

from parity import DEFAULT_TOLERANCES, ToleranceError, Tolerances


def test_one_of_rtol_atol_is_refused_with_the_reason():
    with pytest.raises(ToleranceError) as err:
        Tolerances.build(rtol=1e-4)
    msg = str(err.value)
    assert "only rtol=0.0001 was given" in msg and "atol" in msg and "silently" in msg
    with pytest.raises(ToleranceError, match="only atol"):
        Tolerances.build(atol=1e-6)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"rtol": -1.0, "atol": 0.0}, "non-negative"),
        ({"rtol": float("nan"), "atol": 0.0}, "non-negative"),
        ({"overrides": {"fc": (1e-3,)}}, "(rtol, atol) pair"),
        ({"overrides": {"fc": {"rtol": 1e-3}}}, "both rtol and atol"),
        ({"overrides": {"fc": ("x", 1)}}, "must be numbers"),
        ({"min_argmax_agreement": 2}, "[0, 1]"),
    ],
)
def test_malformed_tolerances_are_refused(kwargs, fragment):
    with pytest.raises(ToleranceError) as err:
        Tolerances.build(**kwargs)
    assert fragment in str(err.value)


def test_lookup_order_exact_then_glob_then_global_then_dtype():
    t = Tolerances.build(
        rtol=1e-4,
        atol=1e-6,
        overrides={"layer4.*": (1e-2, 1e-4), "layer4.1.bn": {"rtol": 0.5, "atol": 0.1}},
    )
    assert t.for_layer("layer4.1.bn", "float32", "float32") == (0.5, 0.1)
    assert t.for_layer("layer4.0.conv", "float32", "float32") == (1e-2, 1e-4)
    assert t.for_layer("layer1.0", "float32", "float32") == (1e-4, 1e-6)
    assert Tolerances.build().for_layer("x", "float32", "float32") == DEFAULT_TOLERANCES["float32"]


def test_less_precise_dtype_decides():
    t = Tolerances.build()
    assert t.for_layer("x", "float32", "float16") == DEFAULT_TOLERANCES["float16"]
    assert t.for_layer("x", "float64", "float32") == DEFAULT_TOLERANCES["float32"]
    assert t.for_layer("x", "bfloat16", "float16") == DEFAULT_TOLERANCES["bfloat16"]
    assert t.for_layer("x", "int64", "int64") == (0.0, 0.0)
    assert t.for_layer("x", "float8_e4m3", "float64") == DEFAULT_TOLERANCES["float32"]


def test_describe():
    assert "layer4.* → (0.01, 0.0001)" in Tolerances.build(overrides={"layer4.*": (1e-2, 1e-4)}).describe()
