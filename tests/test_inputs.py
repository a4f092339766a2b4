"""Inputs: given in model A's layout, converted for B, generated when absent, refused when bad."""

from __future__ import annotations

import numpy as np
import pytest

import parity
from parity.capture import backend_for
from parity.inputs import normalize_inputs, prepare_inputs

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def torch_conv():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU())


@pytest.fixture(scope="module")
def keras_conv():
    inp = keras.Input((28, 28, 1), name="img")
    return keras.Model(inp, keras.layers.Conv2D(4, 3, padding="same")(inp))


def test_nchw_inputs_are_transposed_for_a_channels_last_model(torch_conv, keras_conv):
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype("float32")
    a_in, b_in, summary = prepare_inputs(x, backend_for(torch_conv), backend_for(keras_conv))
    assert b_in[0].shape == (3, 28, 28, 1)
    np.testing.assert_array_equal(b_in[0], x.transpose(0, 2, 3, 1))
    assert summary.conversions == ("NCHW→NHWC",)
    assert summary.shapes_a == ((3, 1, 28, 28),) and summary.shapes_b == ((3, 28, 28, 1),)


def test_nhwc_inputs_are_transposed_for_torch_when_keras_is_a(torch_conv, keras_conv):
    x = np.ones((2, 28, 28, 1), dtype="float32")
    _, b_in, summary = prepare_inputs(x, backend_for(keras_conv), backend_for(torch_conv))
    assert b_in[0].shape == (2, 1, 28, 28)
    assert summary.conversions == ("NHWC→NCHW",)


def test_inputs_in_the_wrong_layout_for_a_are_refused_with_a_hint(torch_conv, keras_conv):
    x = np.ones((2, 28, 28, 1), dtype="float32")  # NHWC handed to a torch model as A
    with pytest.raises(parity.InputError) as err:
        prepare_inputs(x, backend_for(torch_conv), backend_for(keras_conv))
    msg = str(err.value)
    assert "(2, 28, 28, 1)" in msg and "1 channels at axis 1" in msg and "looks like NHWC" in msg


def test_shape_no_permutation_fits_is_refused(keras_conv):
    torch.manual_seed(0)
    three = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1))
    x = np.ones((2, 3, 28, 28), dtype="float32")
    with pytest.raises(parity.InputError) as err:
        prepare_inputs(x, backend_for(three), backend_for(keras_conv))
    msg = str(err.value)
    assert "(None, 28, 28, 1)" in msg and "(2, 3, 28, 28)" in msg and "no" in msg


def test_declared_shape_mismatch_for_a_is_refused(keras_conv, torch_conv):
    with pytest.raises(parity.InputError, match=r"expects input 'img' of shape \(None, 28, 28, 1\)"):
        prepare_inputs(np.ones((2, 32, 32, 1), "float32"), backend_for(keras_conv), backend_for(torch_conv))


def test_nan_and_non_numeric_inputs_are_refused():
    x = np.ones((2, 3), dtype="float32")
    x[0, 1] = np.nan
    with pytest.raises(parity.InputError, match="1 NaN and 0 Inf"):
        normalize_inputs(x)
    with pytest.raises(parity.InputError, match="expected a NumPy array"):
        normalize_inputs({"x": object()})
    with pytest.raises(parity.InputError, match="dtype <U1"):
        normalize_inputs(np.array(["a"]))


def test_generated_inputs_come_from_the_declared_side_and_are_seeded(torch_conv, keras_conv):
    a1, b1, s1 = prepare_inputs(None, backend_for(torch_conv), backend_for(keras_conv), seed=3)
    a2, _, _ = prepare_inputs(None, backend_for(torch_conv), backend_for(keras_conv), seed=3)
    assert a1[0].shape == (2, 1, 28, 28)  # from Keras' (None, 28, 28, 1), in torch's layout
    assert b1[0].shape == (2, 28, 28, 1)
    np.testing.assert_array_equal(a1[0], a2[0])
    assert "seed 3" in s1.source


def test_generated_inputs_need_a_declared_shape(torch_conv):
    torch.manual_seed(0)
    other = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1))
    with pytest.raises(parity.InputError, match="Pass inputs explicitly"):
        prepare_inputs(None, backend_for(torch_conv), backend_for(other))


def test_float64_inputs_are_run_as_float32():
    (x,) = normalize_inputs(np.ones((2, 2)))
    assert x.dtype == np.float32


# --- named inputs: bound by name, by evidence, by input_map — never silently by position ------


class _TokenModel(torch.nn.Module):
    """A transformers-style token model: forward(input_ids, attention_mask), config.vocab_size."""

    def __init__(self, vocab: int = 50):
        super().__init__()
        self.config = type("Config", (), {"vocab_size": vocab})()
        self.embed = torch.nn.Embedding(vocab, 4)

    def forward(self, input_ids, attention_mask=None):
        return self.embed(input_ids) * attention_mask[..., None]


@pytest.fixture(scope="module")
def keras_token_model():
    """keras-hub's layout: dict inputs listed sorted by name, none named like A's."""
    ids = keras.Input((None,), dtype="int32", name="token_ids")
    mask = keras.Input((None,), dtype="int32", name="padding_mask")
    y = keras.layers.Embedding(50, 4)(ids) * keras.ops.expand_dims(keras.ops.cast(mask, "float32"), -1)
    return keras.Model({"padding_mask": mask, "token_ids": ids}, y)


@pytest.fixture(scope="module")
def token_inputs():
    mask = np.ones((2, 5), dtype=np.int64)
    mask[1, 3:] = 0
    return {"input_ids": np.array([[7, 3, 9, 1, 4], [2, 8, 5, 0, 0]]), "attention_mask": mask}


def test_token_ids_and_a_mask_are_bound_by_evidence_not_by_position(keras_token_model, token_inputs):
    assert [i.name for i in keras_token_model.inputs] == ["padding_mask", "token_ids"]  # by position: wrong
    _, b_in, summary = prepare_inputs(token_inputs, backend_for(_TokenModel()), backend_for(keras_token_model))
    np.testing.assert_array_equal(b_in["token_ids"], token_inputs["input_ids"])
    np.testing.assert_array_equal(b_in["padding_mask"], token_inputs["attention_mask"])
    assert summary.bindings == (
        "input_ids → token_ids (by evidence: both names say token ids; values integers)",
        "attention_mask → padding_mask (by evidence: both names say mask; values 0/1)",
    )


def test_the_binding_is_shown_in_the_report(keras_token_model, token_inputs):
    report = parity.diff(_TokenModel(), keras_token_model, token_inputs)
    text = " ".join(str(report).split())
    assert "inputs bound: input_ids → token_ids (by evidence: both names say token ids; values integers)" in text


def test_inputs_of_the_same_name_are_bound_by_name_whatever_the_order(keras_token_model):
    x = {"token_ids": np.array([[1, 2, 3]]), "padding_mask": np.array([[1, 1, 0]])}  # B's names, other order
    _, b_in, summary = prepare_inputs(x, backend_for(keras_token_model), backend_for(keras_token_model))
    np.testing.assert_array_equal(b_in["token_ids"], x["token_ids"])
    assert summary.bindings == ("token_ids → token_ids (same name)", "padding_mask → padding_mask (same name)")


def test_inputs_no_evidence_tells_apart_are_refused_asking_for_input_map(keras_token_model):
    x = {"a": np.array([[1, 0, 1]]), "b": np.array([[0, 1, 1]])}  # two 0/1 integer arrays, names that say nothing
    with pytest.raises(parity.InputError) as err:
        prepare_inputs(x, backend_for(keras_token_model), backend_for(keras_token_model))
    msg = str(err.value)
    assert "cannot tell which of model B's inputs each of model A's inputs a, b is: more than one way" in msg
    assert "model A was given a (int64 (1, 3), values 0…1), b (int64 (1, 3), values 0…1)" in msg
    assert "model B takes padding_mask (int32 (None, None)), token_ids (int32 (None, None))" in msg
    assert "input_map={'a': 'padding_mask', 'b': 'token_ids'}" in msg and "--input-map a=b,c=d" in msg


def test_input_map_binds_what_evidence_cannot(keras_token_model):
    x = {"a": np.array([[1, 0, 1]]), "b": np.array([[0, 1, 1]])}
    _, b_in, summary = prepare_inputs(x, backend_for(keras_token_model), backend_for(keras_token_model),
                                      input_map={"a": "token_ids", "b": "padding_mask"})
    np.testing.assert_array_equal(b_in["token_ids"], x["a"])
    assert summary.bindings == ("a → token_ids (input_map)", "b → padding_mask (input_map)")


def test_an_input_map_naming_no_input_is_refused_with_the_closest(keras_token_model, token_inputs):
    with pytest.raises(parity.InputError, match=r"binds 'input_ids' to 'token_id', which is not one of model B's "
                                                r"inputs \(padding_mask, token_ids\). Closest: token_ids"):
        prepare_inputs(token_inputs, backend_for(_TokenModel()), backend_for(keras_token_model),
                       input_map={"input_ids": "token_id"})


def test_a_mask_holding_other_values_than_0_and_1_is_not_bound_to_a_mask(keras_token_model):
    x = {"input_ids": np.array([[4, 5, 6]]), "attention_mask": np.array([[3, 3, 0]])}
    with pytest.raises(parity.InputError, match="no one-to-one binding fits"):
        prepare_inputs(x, backend_for(_TokenModel()), backend_for(keras_token_model))


def test_an_input_b_needs_that_nothing_binds_to_is_refused(keras_token_model):
    x = {"input_ids": np.array([[4, 5, 6]])}
    with pytest.raises(parity.InputError, match="model B needs input.s. padding_mask that no input given"):
        prepare_inputs(x, backend_for(_TokenModel()), backend_for(keras_token_model))


def test_generated_token_inputs_are_valid_ids_below_the_declared_vocabulary(keras_token_model):
    a_in, b_in, summary = prepare_inputs(None, backend_for(_TokenModel(vocab=50)), backend_for(keras_token_model),
                                         seed=1)
    assert set(a_in) == {"input_ids", "attention_mask"}
    assert a_in["input_ids"].shape == (2, 8) and 0 <= a_in["input_ids"].min() and a_in["input_ids"].max() < 50
    assert np.all(a_in["attention_mask"] == 1)
    np.testing.assert_array_equal(b_in["token_ids"], a_in["input_ids"])
    assert summary.source == "generated (token ids below the declared vocabulary size, full masks, seed 1)"


class _ChannelsFirstSignature(keras.Model):
    """Like transformers' TF vision models: subclassed, channels-first ``pixel_values``
    declared in ``input_signature``, transposed inside."""

    def __init__(self):
        super().__init__()
        self.config = type("Config", (), {"num_channels": 3, "image_size": 224})()
        self.conv = keras.layers.Conv2D(4, 3)

    @property
    def input_signature(self):
        import tensorflow as tf

        return {"pixel_values": tf.TensorSpec((None, 3, 224, 224), tf.float32, name="pixel_values")}

    def call(self, pixel_values):
        return self.conv(keras.ops.transpose(pixel_values, (0, 2, 3, 1)))


def test_channels_first_pixel_values_a_model_declares_are_not_transposed():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3)
    x = {"pixel_values": np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype("float32")}
    spec = backend_for(_ChannelsFirstSignature()).input_spec()
    assert spec[0].layout == "NCHW" and spec[0].shape == (None, 3, None, None) and not spec[0].required
    _, b_in, summary = prepare_inputs(x, backend_for(conv), backend_for(_ChannelsFirstSignature()))
    assert b_in["pixel_values"].shape == (2, 3, 32, 32)
    assert summary.conversions == ("identity",)


def test_the_cli_input_map_is_parsed_and_a_malformed_one_refused():
    from parity.inputs import parse_input_map

    assert parse_input_map("input_ids=token_ids, attention_mask=padding_mask") == {
        "input_ids": "token_ids", "attention_mask": "padding_mask"}
    assert parse_input_map(None) is None
    with pytest.raises(parity.InputError, match=r"'input_ids' is not A_NAME=B_NAME"):
        parse_input_map("input_ids")


def test_a_pair_table_takes_an_input_map_and_refuses_a_malformed_one(tmp_path):
    from parity.pairs import PairConfigError, load_pairs

    path = tmp_path / "parity.toml"
    path.write_text('[pairs.lm]\na = "m:a"\nb = "m:b"\ninput_map = { input_ids = "token_ids" }\n')
    (pair,) = load_pairs(path)
    assert pair.input_map == {"input_ids": "token_ids"}
    path.write_text('[pairs.lm]\na = "m:a"\nb = "m:b"\ninput_map = "input_ids=token_ids"\n')
    with pytest.raises(PairConfigError, match="key 'input_map' must be an inline table of A input name = B input name"):
        load_pairs(path)
