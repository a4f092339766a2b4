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


# --- the tightest tolerance a pair passes at (Report.suggestion) ----------------------------


@pytest.mark.parametrize(("x", "up", "tighter"), [(2.31e-4, 2.4e-4, 2.3e-4), (2.3e-4, 2.3e-4, 2.2e-4),
                                                   (9.95e-5, 1.0e-4, 9.9e-5), (1.01e-4, 1.1e-4, 1.0e-4),
                                                   (123.4, 130.0, 120.0)])
def test_round_up_passes_what_x_passes_and_one_tighter_does_not(x, up, tighter):
    from parity.tolerance import one_tighter, round_up

    assert round_up(x) == up and up >= x
    assert one_tighter(up) == tighter and tighter < x


def _diff(a_layers, b_layers, **options):
    import numpy as np

    import parity

    from .helpers import make_trace

    rng = np.random.default_rng(0)
    base = {name: rng.standard_normal((4, 8)).astype("float32") for name in a_layers}
    a = make_trace([(n, "Linear", base[n], "NC") for n in a_layers])
    b = make_trace([(n, "Linear", base[n] * np.float32(1 + b_layers.get(n, 0.0)), "NC") for n in a_layers])
    return parity.diff_traces(a, b, **options)


def test_the_suggestion_names_the_layer_that_sets_it_and_passes():
    import parity

    report = _diff(["fc1", "fc2", "fc3"], {"fc2": 3e-3, "fc3": 4e-4})
    s = report.suggestion
    assert not report.ok and s.rtol_layer == "fc2" and s.atol == 1e-5 and s.factor is None
    fc2 = next(d for d in report.layers if d.a_name == "fc2")
    assert s.rtol >= fc2.rel_err - 1e-5 * 32**0.5 / fc2.metrics.norm_a
    assert _diff(["fc1", "fc2", "fc3"], {"fc2": 3e-3, "fc3": 4e-4}, rtol=s.rtol, atol=s.atol).ok
    from parity.tolerance import one_tighter

    assert not _diff(["fc1", "fc2", "fc3"], {"fc2": 3e-3, "fc3": 4e-4}, rtol=one_tighter(s.rtol), atol=s.atol).ok
    assert isinstance(report, parity.Report)


def test_a_layer_under_its_own_override_does_not_set_the_global_rtol():
    report = _diff(["fc1", "fc2"], {"fc1": 1e-4, "fc2": 2e-2}, tolerances={"fc2": (5e-2, 0.0)})
    assert report.ok and report.suggestion.rtol_layer == "fc1"


def test_a_layer_whose_argmax_differs_is_named_unfixable():
    import numpy as np

    import parity

    from .helpers import make_trace

    a_val = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], dtype="float32")
    b_val = np.array([[0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], dtype="float32")
    a = make_trace([("fc", "Linear", a_val, "NC"), ("out", "output", a_val, "NC")])
    b = make_trace([("fc", "Linear", b_val, "NC"), ("out", "output", b_val, "NC")])
    report = parity.diff_traces(a, b, tolerances=Tolerances.build(min_argmax_agreement=0.99))
    assert report.suggestion.unfixable == ("fc", "out")
    assert "no tolerance makes fc, out pass: its argmax or NaN/Inf pattern differs" in " ".join(str(report).split())
