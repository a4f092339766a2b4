"""A transformers BERT pair: PyTorch ``BertModel`` and its TensorFlow twin ``TFBertModel`` (a
subclassed Keras 2 model, tf_keras), cross-loaded by transformers itself.  Integer
``input_ids`` and an ``attention_mask`` go in by keyword on both sides; every block's hidden
states and attention outputs are paired with the right torch modules by their name scopes
(``encoder.layer.1.attention.output`` ↔ ``bert/encoder/layer_._1/attention/output``), and a
bug in one block is flagged at exactly that layer."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import match_rate, require

INSTALL = "pip install transformers==4.57.6 tf-keras==2.21.0"
BLOCKS = 3


@pytest.fixture(scope="module")
def bert():
    require("tf_keras", INSTALL)
    transformers = require("transformers", INSTALL)
    import torch
    from transformers.modeling_tf_pytorch_utils import load_pytorch_model_in_tf2_model

    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=BLOCKS, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    pt = transformers.BertModel(config).eval()

    def tf_twin():
        return load_pytorch_model_in_tf2_model(transformers.TFBertModel(config), pt)

    return config, pt, tf_twin


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    mask = np.ones((2, 8), dtype=np.int64)
    mask[1, 6:] = 0  # the second sequence is padded
    return {"input_ids": rng.integers(0, 100, (2, 8)), "attention_mask": mask}


def test_faithful_pair_aligns_every_block_by_name(bert, inputs):
    import parity

    _, pt, tf_twin = bert
    tf = tf_twin()
    report = parity.diff(pt, tf, inputs, containers=True)
    worst = max(d.rel_err for d in report.layers)
    print(f"\nBERT PT→TF: {match_rate(report):.0%} of {report.coverage[1]} torch layers matched "
          f"(containers), max rel err {worst:.1e}")
    assert report.ok, str(report)
    assert worst < 1e-5
    assert match_rate(report) >= 0.8
    for i in range(BLOCKS):
        tf_block = f"bert/encoder/layer_._{i}"
        for torch_name, tf_name in (
            (f"encoder.layer.{i}.attention.self.query", f"{tf_block}/attention/self/query"),
            (f"encoder.layer.{i}.attention.output.dense", f"{tf_block}/attention/output/dense"),
            (f"encoder.layer.{i}.attention.output.LayerNorm", f"{tf_block}/attention/output/LayerNorm"),
            (f"encoder.layer.{i}.attention.output", f"{tf_block}/attention/output"),  # the attention output
            (f"encoder.layer.{i}.intermediate.dense", f"{tf_block}/intermediate/dense"),
            (f"encoder.layer.{i}.output.LayerNorm", f"{tf_block}/output/LayerNorm"),
            (f"encoder.layer.{i}.output", f"{tf_block}/output"),  # the block's hidden states
        ):
            d = report.layer(torch_name)
            assert (d.b_name, d.how) == (tf_name, "scope")
    assert report.layer("pooler.dense").b_name == "bert/pooler/dense"  # Dense(activation="tanh") split:
    assert report.layer("pooler.activation").b_name == "bert/pooler/dense:activation"  # its tanh apart

    leaves = parity.diff(pt, tf, inputs)  # leaf layers only: the default
    print(f"BERT PT→TF: {match_rate(leaves):.0%} of {leaves.coverage[1]} torch leaf layers matched")
    assert leaves.ok and match_rate(leaves) >= 0.8
    # word/position/token-type lookups are variables of one TF layer, GELU a function inside the
    # intermediate Dense's layer: computed inside a layer of B that records no tensor for them,
    # accounted for (not missing), and nothing else of A is left without a counterpart
    assert not [u.name for u in leaves.unmatched_a if u.reason == "no-match"]
    assert {u.name for u in leaves.unmatched_a if u.reason == "inside"} == {
        "embeddings.word_embeddings", "embeddings.position_embeddings", "embeddings.token_type_embeddings",
        *(f"encoder.layer.{i}.intermediate.intermediate_act_fn" for i in range(BLOCKS)),
    }


def test_a_layernorm_epsilon_changed_in_block_1_is_flagged_there(bert, inputs):
    import parity

    _, pt, tf_twin = bert
    tf = tf_twin()
    norm = tf.bert.encoder.layer[1].attention.dense_output.LayerNorm
    norm.epsilon = 1e-2  # BERT's is 1e-12
    report = parity.diff(pt, tf, inputs)
    first = report.first_divergence
    assert (first.a_name, first.b_name) == (
        "encoder.layer.1.attention.output.LayerNorm", "bert/encoder/layer_._1/attention/output/LayerNorm",
    )
    assert first.own_method == "replay" and first.own_err == pytest.approx(first.rel_err, rel=1e-2)
    assert all(d.ok for d in report.layers if d.index < first.index)
    # the LayerNorm's input (a residual x + y) is recorded on neither side: the epsilons each
    # layer declares name the cause
    diag = next(d for d in report.diagnoses if d.layer == first.a_name)
    assert diag.code == "norm_epsilon"
    assert diag.evidence["eps_a_declared"] == pytest.approx(1e-12) and diag.evidence["eps_b_declared"] == pytest.approx(1e-2)
    assert "declares eps 1e-12, model B's 1e-02" in diag.message


def test_a_scaled_dense_kernel_in_block_1_is_flagged_there_with_its_weight(bert, inputs):
    import parity

    _, pt, tf_twin = bert
    tf = tf_twin()
    dense = tf.bert.encoder.layer[1].intermediate.dense
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel * 1.02, bias])
    report = parity.diff(pt, tf, inputs)
    first = report.first_divergence
    assert (first.a_name, first.b_name, first.own_method) == (
        "encoder.layer.1.intermediate.dense", "bert/encoder/layer_._1/intermediate/dense", "replay",
    )
    (bad,) = [p for p in report.params if p.status != "ok"]
    assert (bad.a_layer, bad.a_param, bad.b_param, bad.status) == (
        "encoder.layer.1.intermediate.dense", "weight", "kernel", "differs",
    )
    assert "1.02" in bad.message


def test_reverse_direction_tf_to_pytorch(bert, inputs):
    import parity
    import transformers
    from transformers.modeling_tf_pytorch_utils import load_tf2_model_in_pytorch_model

    config, _, tf_twin = bert
    tf = tf_twin()
    pt = load_tf2_model_in_pytorch_model(transformers.BertModel(config).eval(), tf).eval()
    report = parity.diff(tf, pt, inputs, containers=True)
    print(f"\nBERT TF→PT: {match_rate(report):.0%} of {report.coverage[1]} Keras layers matched (containers)")
    assert report.ok, str(report)
    assert match_rate(report) >= 0.8
    for i in range(BLOCKS):
        assert report.layer(f"bert/encoder/layer_._{i}/attention/output/dense").b_name == (
            f"encoder.layer.{i}.attention.output.dense"
        )


def test_keras_default_layernorm_epsilon_within_tolerance_is_still_named(bert, inputs):
    # Keras' LayerNormalization default (1e-3) instead of BERT's 1e-12 moves block 1 by ~5e-4:
    # under float32's rtol, so the pair passes — and the report says what differs anyway
    import parity

    _, pt, tf_twin = bert
    tf = tf_twin()
    tf.bert.encoder.layer[1].attention.dense_output.LayerNorm.epsilon = 1e-3
    report = parity.diff(pt, tf, inputs)
    assert report.ok, str(report)
    (note,) = [n for n in report.notes if "declare different epsilons" in n]
    assert note.startswith("encoder.layer.1.attention.output.LayerNorm (LayerNorm) passes")
    assert "(A 1e-12, B 1e-03)" in note
    assert "declare different epsilons" in " ".join(str(report).split())
