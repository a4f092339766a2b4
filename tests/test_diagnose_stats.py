"""Detectors of wrong normalisation statistics, normalisation epsilons and half precision, and the
``unexplained`` fallback: each bug is built by hand and must be named on its own layer, with the
numbers that prove it."""

from __future__ import annotations

import numpy as np
import pytest

import parity

OURS = {"bn_statistics", "norm_epsilon", "dtype_precision", "unexplained"}


def _np(t):
    return t.detach().cpu().numpy()


def _codes(report):
    return [d.code for d in report.diagnoses]


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras")


@pytest.fixture(scope="module")
def zoo(torch, keras):
    """The test models and their Keras twins (parity._zoo imports torch and Keras when used)."""
    import parity._zoo

    return parity._zoo


@pytest.fixture(scope="module")
def convnet(torch, zoo):
    torch.manual_seed(0)
    return zoo.randomize_bn(zoo.ConvNet().eval(), seed=1)


@pytest.fixture(scope="module")
def digits():
    return np.random.default_rng(0).uniform(0, 1, (8, 1, 28, 28)).astype("float32")


def _twin_with_bn(zoo, convnet, order):
    """The ConvNet's Keras twin with its BatchNorm weights set in ``order`` (of γ, β, mean, var, 0, 1)."""
    bn = convnet.layer1[1]
    values = {"g": _np(bn.weight), "b": _np(bn.bias), "mean": _np(bn.running_mean), "var": _np(bn.running_var)}
    values["zeros"], values["ones"] = np.zeros_like(values["mean"]), np.ones_like(values["var"])
    km = zoo.to_keras(convnet)
    km.get_layer("layer1_1").set_weights([values[k] for k in order])
    return km


# --- bn_statistics ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def missing_stats_report(convnet, digits, zoo):
    return parity.diff(convnet, _twin_with_bn(zoo, convnet, ("g", "b", "zeros", "ones")), digits)


@pytest.fixture(scope="module")
def swapped_stats_report(convnet, digits, zoo):
    return parity.diff(convnet, _twin_with_bn(zoo, convnet, ("g", "b", "var", "mean")), digits)


@pytest.fixture(scope="module")
def batch_stats_report(convnet, digits, keras, zoo):
    twin = zoo.to_keras(convnet)

    class BatchStats(keras.Model):
        """The twin's layers, its BatchNorm called with training=True (batch statistics)."""

        def __init__(self):
            super().__init__(name="batch_stats")
            self.parts = [twin.get_layer(n) for n in ("layer1_0", "layer1_1", "layer1_2", "to_nchw", "flatten", "fc")]

        def call(self, x, training=False):
            for layer in self.parts:
                x = layer(x, training=True) if isinstance(layer, keras.layers.BatchNormalization) else layer(x)
            return x

    km = BatchStats()
    km(np.zeros((1, 28, 28, 1), "float32"))
    return parity.diff(convnet, km, digits)


def _only_diag(report, layer, code):
    assert report.first_divergence.a_name == layer
    assert report.layer("layer1.0").ok  # the conv feeding the BatchNorm is right
    diags = [d for d in report.layer(layer).diagnoses if d.code in OURS or d.code == "bn_epsilon"]
    assert [d.code for d in diags] == [code], [d.message for d in diags]
    return diags[0]


def test_running_statistics_not_copied_is_bn_statistics(missing_stats_report):
    diag = _only_diag(missing_stats_report, "layer1.1", "bn_statistics")
    assert diag.layer == "layer1.1"
    assert diag.evidence["channels_explained"] == diag.evidence["channels"] == 16
    assert diag.evidence["effective_var_b_median"] == pytest.approx(1.0, abs=1e-3)
    assert abs(diag.evidence["effective_mean_b_median"]) < 1e-3
    assert "mean 0 / variance 1" in diag.message and "moving_mean" in diag.message


def test_swapped_mean_and_variance_is_bn_statistics(swapped_stats_report, convnet):
    diag = _only_diag(swapped_stats_report, "layer1.1", "bn_statistics")
    assert diag.evidence["channels_explained"] == 16
    negative = int((convnet.layer1[1].running_mean < 0).sum())
    assert negative > 0 and diag.evidence["channels_nan_in_b"] == negative  # a negative mean as a variance
    assert "wrong order" in diag.message


def test_batch_statistics_in_b_is_bn_statistics(batch_stats_report):
    diag = _only_diag(batch_stats_report, "layer1.1", "bn_statistics")
    assert diag.evidence["channels_explained"] == 16
    assert diag.evidence["effective_var_b_median"] == pytest.approx(diag.evidence["batch_var_median"], rel=1e-3)
    assert diag.evidence["effective_mean_b_median"] == pytest.approx(diag.evidence["batch_mean_median"], abs=1e-4)
    assert diag.evidence["channels_matching_a_stats"] == 0
    assert "training mode" in diag.message


def test_bn_epsilon_is_not_taken_for_wrong_statistics(convnet, digits, zoo):
    report = parity.diff(convnet, zoo.to_keras(convnet, bn_epsilon="keras-default"), digits)
    assert _codes(report) == ["bn_epsilon"]


# --- norm_epsilon -------------------------------------------------------------------------------

D = 32


@pytest.fixture(scope="module")
def layernorm_model(torch):
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Linear(D, D), torch.nn.LayerNorm(D, eps=1e-5)).eval()
    with torch.no_grad():
        tm[0].weight.mul_(0.1)
        tm[0].bias.mul_(0.1)  # small activations (row variance ~1e-4): the epsilon matters
        tm[1].weight.copy_(torch.rand(D) + 0.5)
        tm[1].bias.copy_(torch.randn(D) * 0.1)
    return tm


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).standard_normal((4, 16, D)).astype("float32")


def _keras_layernorm(keras, tm, epsilon):
    inp = keras.Input((16, D))
    dense, ln = keras.layers.Dense(D, name="0"), keras.layers.LayerNormalization(epsilon=epsilon, name="1")
    km = keras.Model(inp, ln(dense(inp)))
    dense.set_weights([_np(tm[0].weight).T, _np(tm[0].bias)])
    ln.set_weights([_np(tm[1].weight), _np(tm[1].bias)])
    return km


@pytest.mark.parametrize("epsilon", [1e-12, 1e-3])
def test_layernorm_epsilon_is_norm_epsilon(layernorm_model, tokens, epsilon, keras):
    report = parity.diff(layernorm_model, _keras_layernorm(keras, layernorm_model, epsilon), tokens)
    assert report.first_divergence.a_name == "1" and report.layer("0").ok
    (diag,) = report.layer("1").diagnoses
    assert diag.code == "norm_epsilon" and _codes(report) == ["norm_epsilon"]
    assert diag.evidence["rows_explained"] == diag.evidence["rows"] == 64
    assert diag.evidence["eps_a_fitted"] == pytest.approx(1e-5, rel=0.05)
    if epsilon == 1e-12:
        assert diag.evidence["eps_b_fitted"] < 1e-8  # 1e-12 is below what float32 resolves: "≈ 0"
        assert diag.evidence["ratio_min"] > 1.0
    else:
        assert diag.evidence["eps_b_fitted"] == pytest.approx(1e-3, rel=0.02)
        assert diag.evidence["ratio_max"] < 1.0
    assert diag.evidence["normalised_axes"] == 1 and diag.evidence["centered"] == 1
    assert "epsilon of A's" in diag.message


def test_layernorm_same_epsilon_passes(layernorm_model, tokens, keras):
    report = parity.diff(layernorm_model, _keras_layernorm(keras, layernorm_model, 1e-5), tokens)
    assert report.ok and report.diagnoses == ()


def test_groupnorm_keras_default_epsilon_is_norm_epsilon(torch, keras):
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GroupNorm(4, 8)).eval()
    with torch.no_grad():
        tm[0].weight.mul_(0.05)
        tm[1].weight.copy_(torch.rand(8) + 0.5)
        tm[1].bias.copy_(torch.randn(8) * 0.1)
    inp = keras.Input((8, 8, 3))
    conv, gn = keras.layers.Conv2D(8, 3, padding="same", name="0"), keras.layers.GroupNormalization(groups=4, name="1")
    km = keras.Model(inp, gn(conv(inp)))  # Keras' default epsilon is 1e-3, torch's 1e-5
    conv.set_weights([_np(tm[0].weight).transpose(2, 3, 1, 0), _np(tm[0].bias)])
    gn.set_weights([_np(tm[1].weight), _np(tm[1].bias)])
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype("float32")
    report = parity.diff(tm, km, x)
    (diag,) = report.layer("1").diagnoses
    assert diag.code == "norm_epsilon"
    assert diag.evidence["groups"] == 4 and diag.evidence["rows_explained"] == 8
    assert diag.evidence["eps_b_fitted"] == pytest.approx(1e-3, rel=0.02)


def test_rmsnorm_epsilon_is_norm_epsilon_without_centering(tokens, torch, keras):
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Linear(D, D), torch.nn.RMSNorm(D, eps=1e-6)).eval()
    with torch.no_grad():
        tm[0].weight.mul_(0.1)
        tm[0].bias.mul_(0.1)
        tm[1].weight.copy_(torch.rand(D) + 0.5)
    inp = keras.Input((16, D))
    dense, rms = keras.layers.Dense(D, name="0"), keras.layers.RMSNormalization(epsilon=1e-3, name="1")
    km = keras.Model(inp, rms(dense(inp)))
    dense.set_weights([_np(tm[0].weight).T, _np(tm[0].bias)])
    rms.set_weights([_np(tm[1].weight)])
    (diag,) = parity.diff(tm, km, tokens).layer("1").diagnoses
    assert diag.code == "norm_epsilon" and diag.evidence["centered"] == 0
    assert diag.evidence["eps_a_fitted"] == pytest.approx(1e-6, rel=0.05)
    assert diag.evidence["eps_b_fitted"] == pytest.approx(1e-3, rel=0.02)


# --- dtype_precision ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlp(torch):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).eval()


@pytest.fixture(scope="module")
def features():
    return np.random.default_rng(0).standard_normal((16, 32)).astype("float32")


def _keras_mlp(keras, mlp, dtype, corrupt=False):
    inp = keras.Input((32,))
    d0 = keras.layers.Dense(64, name="0", dtype=dtype)
    d2 = keras.layers.Dense(10, name="2", dtype=dtype)
    km = keras.Model(inp, d2(keras.layers.ReLU(name="1", dtype=dtype)(d0(inp))))
    d0.set_weights([_np(mlp[0].weight).T, _np(mlp[0].bias)])
    w2 = _np(mlp[2].weight).T
    d2.set_weights([w2[::-1] if corrupt else w2, _np(mlp[2].bias)])
    return km


@pytest.mark.parametrize("dtype, rtol, unit", [("float16", 1e-4, 2.0**-11), ("bfloat16", 1e-3, 2.0**-8)])
def test_half_precision_b_is_dtype_precision(mlp, features, dtype, rtol, unit, keras):
    report = parity.diff(mlp, _keras_mlp(keras, mlp, dtype), features, rtol=rtol, atol=1e-6)
    first = report.first_divergence
    assert first.a_name == "0"
    (diag,) = first.diagnoses
    assert diag.code == "dtype_precision" and diag.layer == "0"
    assert diag.evidence["unit_roundoff"] == unit and diag.evidence["side_b"] == 1.0
    assert diag.evidence["dtype_recorded"] == 1.0
    assert diag.evidence["rel_err"] == pytest.approx(first.rel_err)
    assert 0.1 < diag.evidence["roundoffs"] < 5
    assert f"rtol={diag.evidence['suggested_rtol']:g}" in diag.message and "float32" in diag.message


def test_half_precision_model_with_a_real_bug_is_not_rounding(mlp, features, keras):
    report = parity.diff(mlp, _keras_mlp(keras, mlp, "float16", corrupt=True), features, rtol=1e-4, atol=1e-6)
    assert report.layer("2").rel_err > 0.1
    assert "dtype_precision" not in [d.code for d in report.layer("2").diagnoses]


def test_half_precision_read_from_values_cast_back_to_float32():
    from parity.diagnose.precision import precision_of

    rng = np.random.default_rng(0)
    full = rng.standard_normal(1000).astype("float32")
    half = full.astype(np.float16).astype(np.float32)
    assert precision_of("float32", half, full) == ("float16", "all values exactly representable in float16")
    bf = (full.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    assert precision_of("float32", bf, full)[0] == "bfloat16"
    assert precision_of("float32", full, half) is None
    # integers are exact in every precision: both sides exact says nothing
    ints = np.arange(100, dtype=np.float32)
    assert precision_of("float32", ints, ints) is None


# --- a correct pair: none of these detectors fire, even at a tolerance that flags round-off -----------


def test_correct_pair_gets_none_of_these_diagnoses(convnet, digits, zoo):
    km = zoo.to_keras(convnet, bn_epsilon="match")
    assert parity.diff(convnet, km, digits).diagnoses == ()
    strict = parity.diff(convnet, km, digits, rtol=1e-9, atol=0.0)
    assert not strict.ok  # float32 round-off is flagged: the detectors did run
    # round-off is no known cause: only the fallback speaks, on the first divergence
    assert {d.code for d in strict.diagnoses} & OURS == {"unexplained"}
    assert [d.code for d in strict.first_divergence.diagnoses] == ["unexplained"]


# --- unexplained ----------------------------------------------------------------------------------


def _first_context(a, b, x_a, x_b):
    from parity.align import align
    from parity.api import diff_traces
    from parity.diagnose.fallback import context_for

    trace_a, trace_b = parity.capture(a, x_a), parity.capture(b, x_b)
    report = diff_traces(trace_a, trace_b)
    first = report.first_divergence
    return report, context_for(align(trace_a, trace_b), report.layers, first)


def test_unexplained_names_the_one_bad_channel(convnet, digits, zoo):
    from parity.diagnose.fallback import unexplained

    km = zoo.to_keras(convnet)
    kernel, bias = km.get_layer("layer1_0").get_weights()
    kernel[..., 5] *= 1.5  # one output channel's weights (and bias) 1.5× too large
    bias[5] *= 1.5
    km.get_layer("layer1_0").set_weights([kernel, bias])
    report, ctx = _first_context(convnet, km, digits, digits.transpose(0, 2, 3, 1))
    assert ctx.match.a.name == "layer1.0"
    assert [d.code for d in report.first_divergence.diagnoses] == ["unexplained"]  # nothing else fired
    diag = unexplained(ctx)
    assert report.first_divergence.diagnoses[0] == diag
    assert diag.code == "unexplained" and diag.layer == "layer1.0"
    assert diag.evidence["worst_channel_0"] == 5
    assert diag.evidence["worst_channel_error_share"] > 0.99
    assert diag.evidence["worst_channel_0_rel_err"] == pytest.approx(0.5, rel=0.05)
    assert diag.evidence["worst_channel_1_rel_err"] < 1e-5
    assert diag.evidence["channels_over_tolerance"] == 1
    assert diag.evidence["border_over_interior"] < 3
    assert "channel 5" in diag.message
    assert all(isinstance(v, float) for v in diag.evidence.values())


def test_unexplained_says_the_error_is_on_the_border(torch, keras):
    from parity.diagnose.fallback import unexplained

    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="replicate")).eval()
    inp = keras.Input((10, 10, 3))
    conv = keras.layers.Conv2D(4, 3, padding="same", name="0")  # zero padding
    km = keras.Model(inp, conv(inp))
    conv.set_weights([_np(tm[0].weight).transpose(2, 3, 1, 0), _np(tm[0].bias)])
    x = np.random.default_rng(0).standard_normal((2, 3, 10, 10)).astype("float32")
    _, ctx = _first_context(tm, km, x, x.transpose(0, 2, 3, 1))
    diag = unexplained(ctx)
    assert diag.layer == "0"
    assert diag.evidence["border_over_interior"] > 100
    assert diag.evidence["err_interior"] < 1e-5 < diag.evidence["err_first_row"]
    assert "border" in diag.message


def test_diagnoses_survive_a_json_round_trip(swapped_stats_report, tmp_path):
    swapped_stats_report.to_json(tmp_path / "r.json")  # NaN channels: evidence stays strict JSON
    again = parity.load_report(tmp_path / "r.json")
    assert again == swapped_stats_report
    assert again.to_html() == swapped_stats_report.to_html()
