"""transformers 4.57 PyTorch ↔ TensorFlow: every architecture with both implementations that
cross-loads offline from a tiny config.

Model A is the PyTorch model built from the config with seeded random weights; model B its TF
twin, cross-loaded by transformers itself (``load_pytorch_model_in_tf2_model``, what
``from_pretrained(from_pt=True)`` does).  Bugs are injected into what the cross-loading is fed,
so each is one a converter could make: a kernel ×1.05 in a middle block (the PyTorch weights
B loads), a LayerNorm epsilon or an activation changed in B's config (B's architecture).
"""

from __future__ import annotations

import copy
import functools
import os
import re
from typing import Any

import numpy as np

from .cases import Bug, Case, Pair

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SOURCE = "transformers"
ROUTE = "PT → TF (load_pytorch_model_in_tf2_model)"
VOCAB = 99
SEQ = 8
DEC_SEQ = 6
SCALE = 1.05

#: the tiny sizes every text model takes (each architecture's own keyword names added below)
_TEXT = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=64)
_SEQ2SEQ = dict(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)


def _importable() -> None:
    """transformers imports torchvision whenever it is installed; PyPI's does not load beside
    torch 2.13 CPU without the op schemas the integration tests declare."""
    from tests.integration import conftest  # noqa: F401  (declares them on import)


@functools.cache
def _transformers():
    _importable()
    import tf_keras  # noqa: F401  (transformers' TF models are Keras 2 models)
    import transformers

    return transformers


def _text_inputs(rng: np.random.Generator, *, mask: bool = True, seq2seq: bool = False, token_types: bool = False,
                 low: int = 3) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {"input_ids": rng.integers(low, VOCAB, (2, SEQ))}
    if mask:
        m = np.ones((2, SEQ), dtype=np.int64)
        m[1, SEQ - 2:] = 0  # the second sequence is padded
        out["attention_mask"] = m
    if token_types:
        out["token_type_ids"] = np.zeros((2, SEQ), dtype=np.int64)
    if seq2seq:
        out["decoder_input_ids"] = rng.integers(low, VOCAB, (2, DEC_SEQ))
    return out


def _image_inputs(rng: np.random.Generator, size: int = 32, channels: int = 3) -> dict[str, np.ndarray]:
    return {"pixel_values": rng.standard_normal((2, channels, size, size)).astype("float32")}


# --- the architectures ---------------------------------------------------------------------

#: id → (config class, config kwargs, PT class, TF class, inputs kind, the PT module whose weight is scaled)
ARCHS: dict[str, tuple[str, dict, str, str, str, str]] = {
    # encoders
    "bert": ("BertConfig", _TEXT, "BertModel", "TFBertModel", "text", "encoder.layer.1.intermediate.dense"),
    "roberta": ("RobertaConfig", {**_TEXT, "pad_token_id": 1}, "RobertaModel", "TFRobertaModel", "text",
                "encoder.layer.1.intermediate.dense"),
    "xlm-roberta": ("XLMRobertaConfig", {**_TEXT, "pad_token_id": 1}, "XLMRobertaModel", "TFXLMRobertaModel", "text",
                    "encoder.layer.1.output.dense"),
    "camembert": ("CamembertConfig", {**_TEXT, "pad_token_id": 1}, "CamembertModel", "TFCamembertModel", "text",
                  "encoder.layer.1.attention.self.value"),
    "roberta-prelayernorm": ("RobertaPreLayerNormConfig", {**_TEXT, "pad_token_id": 1}, "RobertaPreLayerNormModel",
                             "TFRobertaPreLayerNormModel", "text", "encoder.layer.1.intermediate.dense"),
    "distilbert": ("DistilBertConfig", dict(vocab_size=VOCAB, dim=32, n_layers=3, n_heads=4, hidden_dim=64,
                                            max_position_embeddings=64),
                   "DistilBertModel", "TFDistilBertModel", "text", "transformer.layer.1.ffn.lin1"),
    "albert": ("AlbertConfig", {**_TEXT, "embedding_size": 16}, "AlbertModel", "TFAlbertModel", "text",
               "encoder.embedding_hidden_mapping_in"),
    "electra": ("ElectraConfig", {**_TEXT, "embedding_size": 16}, "ElectraModel", "TFElectraModel", "text",
                "encoder.layer.1.intermediate.dense"),
    "deberta": ("DebertaConfig", _TEXT, "DebertaModel", "TFDebertaModel", "text", "encoder.layer.1.intermediate.dense"),
    "deberta-v2": ("DebertaV2Config", _TEXT, "DebertaV2Model", "TFDebertaV2Model", "text",
                   "encoder.layer.1.intermediate.dense"),
    "mpnet": ("MPNetConfig", _TEXT, "MPNetModel", "TFMPNetModel", "text", "encoder.layer.1.intermediate.dense"),
    "convbert": ("ConvBertConfig", {**_TEXT, "embedding_size": 32}, "ConvBertModel", "TFConvBertModel", "text",
                 "encoder.layer.1.intermediate.dense"),
    "roformer": ("RoFormerConfig", {**_TEXT, "embedding_size": 32}, "RoFormerModel", "TFRoFormerModel", "text",
                 "encoder.layer.1.intermediate.dense"),
    "mobilebert": ("MobileBertConfig", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3,
                                            num_attention_heads=4, intermediate_size=32, embedding_size=16,
                                            intra_bottleneck_size=16, true_hidden_size=16, num_feedforward_networks=2,
                                            max_position_embeddings=64),
                   "MobileBertModel", "TFMobileBertModel", "text", "encoder.layer.1.intermediate.dense"),
    "rembert": ("RemBertConfig", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                      intermediate_size=64, input_embedding_size=16, output_embedding_size=16,
                                      max_position_embeddings=64),
                "RemBertModel", "TFRemBertModel", "text", "encoder.layer.1.intermediate.dense"),
    "esm": ("EsmConfig", {**_TEXT, "pad_token_id": 1, "mask_token_id": 2, "position_embedding_type": "absolute"},
            "EsmModel", "TFEsmModel", "text", "encoder.layer.1.intermediate.dense"),
    # decoders
    "gpt2": ("GPT2Config", dict(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64),
             "GPT2Model", "TFGPT2Model", "text", "h.1.mlp.c_fc"),
    "openai-gpt": ("OpenAIGPTConfig", dict(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64),
                   "OpenAIGPTModel", "TFOpenAIGPTModel", "text", "h.1.mlp.c_fc"),
    "gptj": ("GPTJConfig", dict(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64, rotary_dim=4),
             "GPTJModel", "TFGPTJModel", "text", "h.1.mlp.fc_in"),
    "opt": ("OPTConfig", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                              ffn_dim=64, max_position_embeddings=64, word_embed_proj_dim=32, pad_token_id=1),
            "OPTModel", "TFOPTModel", "text", "decoder.layers.1.fc1"),
    "ctrl": ("CTRLConfig", dict(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, dff=64, n_positions=64),
             "CTRLModel", "TFCTRLModel", "text", "h.1.ffn.0"),
    "xglm": ("XGLMConfig", dict(vocab_size=VOCAB, d_model=32, num_layers=3, attention_heads=4, ffn_dim=64,
                                max_position_embeddings=64, pad_token_id=1),
             "XGLMModel", "TFXGLMModel", "text", "layers.1.fc1"),
    "mistral": ("MistralConfig", dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64),
                "MistralModel", "TFMistralModel", "text", "layers.1.mlp.up_proj"),
    # encoder-decoders
    "bart": ("BartConfig", _SEQ2SEQ, "BartModel", "TFBartModel", "seq2seq", "encoder.layers.1.fc1"),
    "mbart": ("MBartConfig", _SEQ2SEQ, "MBartModel", "TFMBartModel", "seq2seq", "encoder.layers.1.fc1"),
    "marian": ("MarianConfig", _SEQ2SEQ, "MarianModel", "TFMarianModel", "seq2seq", "encoder.layers.1.fc1"),
    "pegasus": ("PegasusConfig", _SEQ2SEQ, "PegasusModel", "TFPegasusModel", "seq2seq", "encoder.layers.1.fc1"),
    "blenderbot-small": ("BlenderbotSmallConfig", _SEQ2SEQ, "BlenderbotSmallModel", "TFBlenderbotSmallModel",
                         "seq2seq", "encoder.layers.1.fc1"),
    "t5": ("T5Config", dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                            decoder_start_token_id=0, pad_token_id=0),
           "T5Model", "TFT5Model", "seq2seq", "encoder.block.1.layer.1.DenseReluDense.wi"),
    # vision
    "vit": ("ViTConfig", dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                              intermediate_size=64),
            "ViTModel", "TFViTModel", "image", "encoder.layer.1.intermediate.dense"),
    "deit": ("DeiTConfig", dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3,
                                num_attention_heads=4, intermediate_size=64),
             "DeiTModel", "TFDeiTModel", "image", "encoder.layer.1.intermediate.dense"),
    "convnext": ("ConvNextConfig", dict(num_channels=3, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1],
                                        image_size=32),
                 "ConvNextModel", "TFConvNextModel", "image", "encoder.stages.2.layers.1.pwconv1"),
    "convnextv2": ("ConvNextV2Config", dict(num_channels=3, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1],
                                            image_size=32),
                   "ConvNextV2Model", "TFConvNextV2Model", "image", "encoder.stages.2.layers.1.pwconv1"),
    "resnet": ("ResNetConfig", dict(num_channels=3, embedding_size=8, hidden_sizes=[8, 16, 24, 32],
                                    depths=[1, 1, 2, 1], image_size=32),
               "ResNetModel", "TFResNetModel", "image", "encoder.stages.2.layers.1.layer.1.convolution"),
    "regnet": ("RegNetConfig", dict(num_channels=3, embedding_size=8, hidden_sizes=[8, 16, 24, 32],
                                    depths=[1, 1, 2, 1], groups_width=8, image_size=32),
               "RegNetModel", "TFRegNetModel", "image", "encoder.stages.2.layers.1.layer.1.convolution"),
    "swin": ("SwinConfig", dict(image_size=32, patch_size=2, embed_dim=16, depths=[1, 2], num_heads=[2, 4],
                                window_size=4),
             "SwinModel", "TFSwinModel", "image", "encoder.layers.1.blocks.1.intermediate.dense"),
    "segformer": ("SegformerConfig", dict(num_channels=3, num_encoder_blocks=2, depths=[1, 2], sr_ratios=[2, 1],
                                          hidden_sizes=[8, 16], num_attention_heads=[1, 2], patch_sizes=[7, 3],
                                          strides=[4, 2], mlp_ratios=[2, 2]),
                  "SegformerModel", "TFSegformerModel", "image", "encoder.block.1.1.mlp.dense1"),
    "mobilevit": ("MobileViTConfig", dict(image_size=32, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16,
                                                                                                  24, 24, 32],
                                          num_attention_heads=2),
                  "MobileViTModel", "TFMobileViTModel", "image",
                  "encoder.layer.3.transformer.layer.1.intermediate.dense"),
    "cvt": ("CvtConfig", dict(embed_dim=[8, 16, 24], num_heads=[1, 2, 3], depth=[1, 2, 3], patch_sizes=[7, 3, 3],
                              patch_stride=[4, 2, 2], patch_padding=[2, 1, 1], mlp_ratio=[2.0, 2.0, 2.0],
                              qkv_bias=[True, True, True], cls_token=[False, False, True],
                              drop_path_rate=[0.0, 0.0, 0.0], drop_rate=[0.0, 0.0, 0.0],
                              attention_drop_rate=[0.0, 0.0, 0.0], stride_kv=[2, 2, 2], padding_kv=[1, 1, 1],
                              kernel_qkv=[3, 3, 3], padding_q=[1, 1, 1], stride_q=[1, 1, 1], image_size=32),
            "CvtModel", "TFCvtModel", "image", "encoder.stages.2.layers.1.intermediate.dense"),
    # audio
    "wav2vec2": ("Wav2Vec2Config", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4),
                                        conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                                        num_conv_pos_embedding_groups=4, vocab_size=VOCAB),
                 "Wav2Vec2Model", "TFWav2Vec2Model", "audio", "encoder.layers.1.feed_forward.intermediate_dense"),
    "hubert": ("HubertConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8),
                                    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, vocab_size=VOCAB),
               "HubertModel", "TFHubertModel", "audio", "encoder.layers.1.feed_forward.intermediate_dense"),
    "whisper": ("WhisperConfig", dict(vocab_size=VOCAB, num_mel_bins=8, d_model=32, encoder_layers=2, decoder_layers=2,
                                      encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                                      decoder_ffn_dim=64, max_source_positions=16, max_target_positions=32,
                                      pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=0,
                                      suppress_tokens=None, begin_suppress_tokens=None),
                "WhisperModel", "TFWhisperModel", "whisper", "encoder.layers.1.fc1"),
    "speech2text": ("Speech2TextConfig", dict(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
                                              encoder_attention_heads=4, decoder_attention_heads=4,
                                              encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=64,
                                              max_target_positions=32, input_feat_per_channel=8, input_channels=1,
                                              conv_channels=16, num_conv_layers=2, conv_kernel_sizes=(5, 5),
                                              pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                              decoder_start_token_id=2),
                    "Speech2TextModel", "TFSpeech2TextModel", "s2t", "encoder.layers.1.fc1"),
}

#: bugs in B's config: (bug id, config change, the A layer where it must be flagged, fused neighbours, diagnosis)
CONFIG_BUGS: dict[str, list[tuple[str, dict, str, tuple[str, ...], str | None]]] = {
    "bert": [("layernorm-eps", {"layer_norm_eps": 1e-1}, "embeddings.LayerNorm", (), "norm_epsilon"),
             ("quick-gelu", {"hidden_act": "quick_gelu"}, "encoder.layer.0.output.dense",
              ("encoder.layer.0.intermediate.intermediate_act_fn",), "activation_approximation")],
    "gpt2": [("layernorm-eps", {"layer_norm_epsilon": 1e-1}, "h.0.ln_1", (), "norm_epsilon"),
             ("quick-gelu", {"activation_function": "quick_gelu"}, "h.0.mlp.c_proj", ("h.0.mlp.act",),
              "activation_approximation")],
    "vit": [("layernorm-eps", {"layer_norm_eps": 1e-1}, "encoder.layer.0.layernorm_before", (), "norm_epsilon"),
            ("quick-gelu", {"hidden_act": "quick_gelu"}, "encoder.layer.0.output.dense",
             ("encoder.layer.0.intermediate.intermediate_act_fn",), "activation_approximation")],
    "bart": [("quick-gelu", {"activation_function": "quick_gelu"}, "encoder.layers.0.fc2",
              ("encoder.layers.0.activation_fn",), "activation_approximation")],
    "electra": [("layernorm-eps", {"layer_norm_eps": 1e-1}, "embeddings.LayerNorm", (), "norm_epsilon")],
}

#: gelu against gelu_new / gelu_pytorch_tanh moves these tiny models by ~1e-5, within float32's
#: tolerance (a pass is right there); quick_gelu (x·σ(1.702x)) moves them by ~1e-2
SAMPLE = {"bert", "gpt2", "vit"}


@functools.cache
def _pt_model(arch: str) -> tuple[Any, Any]:
    """The PyTorch model (seeded random weights, eval mode) and its config."""
    tr = _transformers()
    import torch

    cfg_name, kwargs, pt_name, _, _, _ = ARCHS[arch]
    config = getattr(tr, cfg_name)(**kwargs)
    torch.manual_seed(0)
    model = getattr(tr, pt_name)(config).eval()
    _randomise_norm_statistics(model)
    return model, config


def _randomise_norm_statistics(model: Any) -> None:
    """Trained-like BatchNorm statistics (fresh ones are 0/1, which hides statistics bugs)."""
    import torch

    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


#: architectures whose two implementations differ at padded positions (the outputs there, not
#: parity): TF DeBERTa zeroes the padded rows of its output and PyTorch's does not, ESM scales its
#: embeddings by the mask on one side only.  Their pairs are compared with full masks.
PADDED_ROWS_DIFFER = {"deberta", "deberta-v2", "esm"}


def _inputs(arch: str, config: Any) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    kind = ARCHS[arch][4]
    if kind == "text":
        inputs = _text_inputs(rng)
        if arch in PADDED_ROWS_DIFFER:
            inputs["attention_mask"][:] = 1
        return inputs
    if kind == "seq2seq":
        return _text_inputs(rng, seq2seq=True)
    if kind == "image":
        return _image_inputs(rng, size=getattr(config, "image_size", 32) or 32)
    if kind == "audio":
        return {"input_values": rng.standard_normal((2, 1600)).astype("float32")}
    if kind == "whisper":
        return {"input_features": rng.standard_normal((2, config.num_mel_bins, 2 * config.max_source_positions))
                .astype("float32"), "decoder_input_ids": rng.integers(3, VOCAB, (2, DEC_SEQ))}
    if kind == "s2t":
        return {"input_features": rng.standard_normal((2, 40, config.input_feat_per_channel)).astype("float32"),
                "attention_mask": np.ones((2, 40), dtype=np.int64),
                "decoder_input_ids": rng.integers(3, VOCAB, (2, DEC_SEQ))}
    raise ValueError(kind)


def _tf_twin(arch: str, pt: Any, config: Any) -> Any:
    tr = _transformers()
    from transformers.modeling_tf_pytorch_utils import load_pytorch_model_in_tf2_model

    tf_model = getattr(tr, ARCHS[arch][3])(config)
    return load_pytorch_model_in_tf2_model(tf_model, pt)


def _scaled(pt: Any, module: str) -> Any:
    """A copy of ``pt`` whose ``module`` weight is ×SCALE: what B is cross-loaded from."""
    import torch

    bad = copy.deepcopy(pt)
    with torch.no_grad():
        bad.get_submodule(module).weight.mul_(SCALE)
    return bad


def _builder(arch: str):
    def build(bug: Bug | None) -> Pair:
        pt, config = _pt_model(arch)
        inputs = _inputs(arch, config)
        if bug is None:
            return Pair(pt, _tf_twin(arch, pt, config), inputs)
        if bug.name == "scaled-kernel":
            return Pair(pt, _tf_twin(arch, _scaled(pt, bug.layer), config), inputs)
        change = next(c for name, c, *_ in CONFIG_BUGS[arch] if name == bug.name)
        bad_config = copy.deepcopy(config)
        for key, value in change.items():
            setattr(bad_config, key, value)
        return Pair(pt, _tf_twin(arch, pt, bad_config), inputs)

    return build


def _bugs(arch: str) -> tuple[Bug, ...]:
    module = ARCHS[arch][5]
    kind = ARCHS[arch][4]
    code = None if kind != "text" else None  # a scaled kernel: weight parity names it (weight_mismatch)
    bugs = [Bug("scaled-kernel", module, diagnosis=code)]
    for name, _, layer, also, diagnosis in CONFIG_BUGS.get(arch, ()):
        bugs.append(Bug(name, layer, also, diagnosis))
    return tuple(bugs)


CASES: list[Case] = [
    Case(id=f"transformers/{arch}/pt-tf", source=SOURCE, model=arch, route=ROUTE, build=_builder(arch),
         bugs=_bugs(arch), sample=arch in SAMPLE)
    for arch in ARCHS
]


def _run(cases: list[Case], argv: list[str]) -> None:  # pragma: no cover - a development aid
    """Judge ``cases`` (those whose id matches ``argv[0]``; ``--faithful``: faithful pairs only)
    and print one line per row, until the corpus runner collects ``CASES``."""
    import time

    from .cases import judge

    pattern = re.compile(next((a for a in argv if not a.startswith("--")), "."))
    for case in cases:
        if not pattern.search(case.id):
            continue
        for bug in (None,) + (() if "--faithful" in argv else case.bugs):
            t = time.perf_counter()
            row = judge(case, bug)
            print(f"{'PASS' if row.passed else 'FAIL'} {case.model:22s} {str(bug and bug.name):14s} "
                  f"{row.compared}/{row.layers} {row.matched_share:.0%} err {row.max_rel_err:.1e} "
                  f"{row.verdict[:150]} [{time.perf_counter() - t:.1f}s] unmatched={list(row.unmatched_names)[:6]}",
                  flush=True)


if __name__ == "__main__":  # pragma: no cover
    import sys

    _run(CASES, sys.argv[1:])
