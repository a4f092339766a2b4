"""Keras 3 capture: Sequential, functional with a nested model, subclassed; names, order,
layouts, repeated calls, restoration of the patched layers, errors."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import parity  # noqa: E402
from parity.capture.keras import KerasBackend  # noqa: E402

X = np.random.default_rng(0).standard_normal((2, 6, 6, 1)).astype("float32")


@pytest.fixture(scope="module")
def sequential():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((6, 6, 1), name="img"),
            keras.layers.Conv2D(4, 3, padding="same", name="conv"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.ReLU(name="relu"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(3, name="dense"),
        ],
        name="seq",
    )


def test_sequential_taps_in_order_with_layouts_and_attrs(sequential):
    trace = parity.capture(sequential, X)
    assert trace.names == ["conv", "bn", "relu", "flat", "dense", "output"]
    assert [t.op for t in trace.taps] == ["Conv2D", "BatchNormalization", "ReLU", "Flatten", "Dense", "output"]
    assert [t.layout for t in trace.taps] == ["NHWC", "NHWC", "NHWC", "N(HWC)", "NC", "NC"]
    assert trace["flat"].attrs["flat_from"] == (6, 6, 4)
    assert trace["bn"].attrs["epsilon"] == pytest.approx(1e-3)
    np.testing.assert_allclose(trace["bn"].attrs["moving_variance"], np.ones(4))
    assert trace["conv"].attrs["padding"] == "same" and trace["conv"].attrs["data_format"] == "channels_last"
    dense = sequential.get_layer("dense")
    np.testing.assert_allclose(trace["dense"].value, np.asarray(dense(trace["flat"].value)), rtol=1e-6)
    np.testing.assert_array_equal(trace["output"].value, np.asarray(sequential(X, training=False)))
    assert trace.model.kind == "keras Sequential" and trace.model.param_count == sequential.count_params()


def test_values_are_independent_copies(sequential):
    trace = parity.capture(sequential, X)
    before = trace["relu"].value.copy()
    trace["bn"].value[...] = 123.0
    np.testing.assert_array_equal(trace["relu"].value, before)


def test_functional_with_nested_sequential(sequential):
    inner = keras.Sequential(
        [keras.layers.Conv2D(2, 1, name="inner_conv"), keras.layers.Activation("relu", name="inner_act")],
        name="inner",
    )
    inp = keras.Input((6, 6, 1), name="x")
    y = inner(inp)
    y = keras.layers.Permute((3, 1, 2), name="to_nchw")(y)
    model = keras.Model(inp, y, name="outer")
    trace = parity.capture(model, X)
    assert trace.names == ["inner_conv", "inner_act", "to_nchw", "output"]
    assert trace["to_nchw"].layout == "NCHW"
    assert trace["inner_act"].attrs["activation"] == "relu"
    with_containers = parity.capture(model, X, containers=True)
    assert with_containers.names == ["inner_conv", "inner_act", "inner", "to_nchw", "output"]
    assert with_containers["inner"].role == "container"
    (spec,) = KerasBackend(model).input_spec()
    assert (spec.name, spec.shape, spec.dtype, spec.layout) == ("x", (None, 6, 6, 1), "float32", "NHWC")


class Twice(keras.Model):
    def __init__(self):
        super().__init__(name="twice")
        self.conv = keras.layers.Conv2D(1, 3, padding="same", name="shared")
        self.act = keras.layers.ReLU(name="act")

    def call(self, x):
        return self.act(self.conv(self.conv(x))), {"skip": x}


def test_subclassed_model_with_a_layer_called_twice_and_dict_output():
    model = Twice()
    trace = parity.capture(model, X)
    assert trace.names == ["shared", "shared#1", "act", "output[0]", "output[1][skip]"]
    assert trace.model.kind == "keras subclassed"
    np.testing.assert_allclose(trace["shared#1"].value, np.asarray(model.conv(trace["shared"].value)), rtol=1e-6)
    np.testing.assert_array_equal(trace["output[1][skip]"].value, X)


def test_patched_calls_are_restored_also_after_a_failure(sequential):
    originals = {layer.name: layer.call for layer in sequential.layers}
    with pytest.raises(parity.CaptureError) as err:
        parity.capture(sequential, np.zeros((2, 5, 5, 1), "float32"))
    msg = str(err.value)
    assert "(2, 5, 5, 1)" in msg and "(None, 6, 6, 1)" in msg and "'seq'" in msg
    for layer in sequential.layers:
        assert "call" not in layer.__dict__
        assert layer.call == originals[layer.name]
    assert parity.capture(sequential, X).names[0] == "conv"  # and it still works


_CHANNELS_FIRST_MODEL = """
import numpy as np, keras, parity
inp = keras.Input((1, 6, 6))
y = keras.layers.Conv2D(2, 3, data_format="channels_first", name="cf")(inp)
y = keras.layers.BatchNormalization(axis=1, name="bn_cf")(y)
model = keras.Model(inp, y)
from parity.capture import backend_for
print("input layout", backend_for(model).input_spec()[0].layout)
try:
    trace = parity.capture(model, np.zeros((2, 1, 6, 6), "float32"))
    print("layouts", trace["cf"].layout, trace["bn_cf"].layout)
except parity.CaptureError as exc:
    print("CaptureError", exc)
"""


def _run_channels_first(onednn: str) -> str:
    # TF reads TF_ENABLE_ONEDNN_OPTS once, at import: each setting needs a process of its own
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn, "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, "-c", _CHANNELS_FIRST_MODEL], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def test_channels_first_layers_say_so():
    # channels-first Conv2D runs on a CPU only through oneDNN, which TF enables by default only on
    # CPUs with AVX-512-VNNI/AMX: the test enables it for itself
    out = _run_channels_first("1")
    assert "input layout NCHW" in out
    assert "layouts NCHW NCHW" in out


def test_channels_first_model_that_this_cpu_cannot_run_is_a_capture_error_saying_what_to_do():
    out = _run_channels_first("0")
    assert "input layout NCHW" in out  # the model's own layout, not Keras' channels-last default
    assert "CaptureError" in out and "channels-first" in out and "cannot run them on this CPU" in out
    assert "TF_ENABLE_ONEDNN_OPTS=1" in out and "before TensorFlow is imported" in out
    assert "6) (NHWC)" not in out  # the input is not called channels-last


# --- the door: one layer alone, twins --------------------------------------------------


@pytest.fixture(scope="module")
def fused():
    """A functional model whose Dense fuses its activation, and a BatchNormalization."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 1), name="img")
    y = keras.layers.Conv2D(4, 3, name="conv")(inp)
    y = keras.layers.BatchNormalization(name="bn")(y)
    y = keras.layers.Flatten(name="flat")(y)
    y = keras.layers.Dense(3, activation="tanh", name="dense")(y)
    model = keras.Model(inp, y, name="fused")
    bn = model.get_layer("bn")
    rng = np.random.default_rng(1)
    bn.moving_mean.assign(rng.normal(0, 1, 4).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.5, 2, 4).astype("float32"))
    return model


def test_layer_inputs_and_call_layer_reproduce_the_captured_tap(fused):
    backend = KerasBackend(fused)
    trace = backend.capture([X])
    assert [backend.can_call(n) for n in ("bn", "dense", "dense:activation", "output", "nowhere")] == [
        True, True, False, False, False,
    ]
    seen = backend.layer_inputs([X], ["bn", "dense", "dense:activation"])
    assert sorted(seen) == ["bn", "dense"]
    np.testing.assert_allclose(seen["bn"], trace["conv"].value, rtol=1e-6)
    np.testing.assert_allclose(backend.call_layer("bn", seen["bn"]), trace["bn"].value, rtol=1e-5, atol=1e-6)
    # a fused activation: the tap (and the call) is the result before the tanh
    linear = backend.call_layer("dense", seen["dense"])
    np.testing.assert_allclose(linear, trace["dense"].value, rtol=1e-5, atol=1e-6)
    assert np.abs(linear).max() > 1  # not squashed by the tanh
    assert fused.get_layer("dense").activation.__name__ == "tanh"  # the activation is restored


def test_fresh_and_randomized_twins(fused):
    fresh = KerasBackend(fused).twin("fresh").model
    assert fresh is not fused and [layer.name for layer in fresh.layers] == [layer.name for layer in fused.layers]
    np.testing.assert_array_equal(np.asarray(fresh.get_layer("bn").moving_variance), np.ones(4))
    randomized = KerasBackend(fused).twin("randomized_stats", seed=3).model
    var = np.asarray(randomized.get_layer("bn").moving_variance)
    assert ((var >= 0.005) & (var <= 0.05)).all()
    assert np.asarray(fused.get_layer("bn").moving_variance).min() >= 0.5  # the original is untouched


def test_float64_twin_takes_float32_inputs_and_records_float64(fused):
    twin = KerasBackend(fused).twin("float64")
    trace64, trace32 = twin.capture([X]), KerasBackend(fused).capture([X])
    assert trace64.names == trace32.names
    assert {t.dtype for t in trace64.taps} == {"float64"}
    assert {str(w.dtype) for w in fused.weights} == {"float32"}  # the original stays float32
    for t32 in trace32.taps:
        v32, v64 = t32.value.astype(np.float64), trace64[t32.name].value
        assert np.linalg.norm(v32 - v64) <= 1e-6 * max(np.linalg.norm(v64), 1.0)  # float32 rounding only


def test_a_subclassed_model_has_no_float64_twin_and_a_layer_no_fresh_one():
    model = Twice()
    model(X)
    assert KerasBackend(model).twin("float64") is None
    assert KerasBackend(keras.layers.Dense(2)).twin("fresh") is None


def test_a_float64_twin_keeps_integer_ids_as_integers():
    keras.utils.set_random_seed(0)
    ids = keras.Input((5,), dtype="int32", name="ids")
    model = keras.Model(ids, keras.layers.Dense(2, name="head")(keras.layers.Embedding(10, 4, name="emb")(ids)))
    tokens = np.array([[1, 2, 3, 4, 5]], dtype="int32")
    trace64 = KerasBackend(model).twin("float64").capture([tokens])
    assert trace64["emb"].dtype == "float64"
    np.testing.assert_allclose(trace64["head"].value, KerasBackend(model).capture([tokens])["head"].value, rtol=1e-5, atol=1e-6)


def test_four_threads_sharing_a_keras_model_a_each_get_the_report_of_their_own_pair():
    """Each capture patched the shared layers' ``call`` over the others' patches: a thread
    recorded the other threads' layers, and the first to finish took every patch away."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    barrier, seen = threading.Barrier(4), set()

    @keras.saving.register_keras_serializable(package="parity_tests")
    class Rendezvous(keras.layers.Layer):
        """Each thread's first forward waits here until all four are inside the model."""

        def call(self, x):
            me = threading.get_ident()
            if me not in seen and len(seen) < 4:
                seen.add(me)
                try:
                    barrier.wait(timeout=20)
                except threading.BrokenBarrierError:  # a late thread: the test checks less, never hangs
                    pass
            return x

    def mlp(meet: bool):
        keras.utils.set_random_seed(0)
        x = inp = keras.Input((8,), name="x")
        for i in range(4):
            x = keras.layers.Dense(8, activation="tanh", name=f"d{i}")(x)
            if i == 1 and meet:
                x = Rendezvous(name="meet")(x)
        return keras.Model(inp, x, name="mlp")

    a = mlp(True)
    pairs = []
    for i in range(4):
        b = mlp(False)
        kernel = b.get_layer(f"d{i}").kernel
        kernel.assign(kernel.numpy() * 1.5)
        pairs.append((f"d{i}", b))
    x = np.random.default_rng(0).standard_normal((2, 8)).astype("float32")
    with ThreadPoolExecutor(4) as pool:
        reports = list(pool.map(lambda pair: parity.diff(a, pair[1], x), pairs))
    for (flagged, _), report in zip(pairs, reports):
        names = [d.a_name for d in report.layers]
        assert names == ["d0", "d0:activation", "d1", "d1:activation", "d2", "d2:activation", "d3",
                         "d3:activation", "output"][: len(names)] and len(names) >= 7, names
        # nothing left over from another thread's forward: only the rendezvous B does not have
        assert [u.name for u in report.unmatched] == ["meet"], report.unmatched
        assert report.first_divergence is not None and report.first_divergence.a_name == flagged
    assert all("call" not in layer.__dict__ for layer in a.layers)  # every patch is gone


def test_a_layer_wired_in_with_training_true_is_said_in_the_report():
    """Dropout(0.5)(x, training=True): parity's training=False run overrides it, the user's
    model(x) does not — the report said the models agree, with no note."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8,), name="x")
    x = keras.layers.Dense(8, name="d")(inp)
    x = keras.layers.Dropout(0.5, name="drop")(x, training=True)
    model = keras.Model(inp, keras.layers.Dense(2, name="head")(x), name="forced")
    x = np.ones((2, 8), np.float32)
    assert not np.allclose(np.asarray(model(x)), np.asarray(model(x, training=False)))  # what the user gets
    report = parity.diff(model, model, x)
    note = (
        "1 layer(s) of Keras model 'forced' are wired in with training=True (drop): parity ran the model with "
        "training=False, which overrides that (no dropout, BatchNorm on its moving statistics), but the model "
        "called as model(x) runs those layers in training mode, so what it computes differs from this report. "
        "Drop training=True from those calls if the model is meant for inference."
    )
    assert note in report.notes


def test_a_keras_model_raising_inside_a_layer_is_reported_naming_that_layer():
    @keras.saving.register_keras_serializable(package="parity_tests")
    class Boom(keras.layers.Layer):
        def call(self, x):
            raise ValueError("boom")

        def compute_output_shape(self, shape):  # builds without calling call
            return shape

    inp = keras.Input((4,), name="x")
    model = keras.Model(inp, Boom(name="boom_layer")(keras.layers.Dense(4, name="d")(inp)), name="exploding")
    with pytest.raises(parity.CaptureError, match=r"^running Keras model 'exploding' on inputs of shape \(1, 4\) "
                                                 r"failed in layer 'boom_layer' \(Boom\): ValueError"):
        parity.capture(model, np.ones((1, 4), np.float32))
