"""keras-hub 0.32: its converters loading a Hugging Face-format directory saved locally
(``save_pretrained``) from a tiny PyTorch model — pairs that share no layer names at all.

Model A is the transformers PyTorch model (its base model: what keras-hub's backbone computes);
model B ``keras_hub.models.Backbone.from_preset(local_dir)``.  Its functional models take dict
inputs sorted by name (``padding_mask``, ``token_ids``, ``segment_ids``): A's ``input_ids`` /
``attention_mask`` / ``token_type_ids`` are bound to them by evidence, never by position.

Faithful pairs follow what keras-hub's converters read: its Llama-3 and Gemma converters do not
read ``rms_norm_eps`` (the backbones keep 1e-6), so A is built with 1e-6; its BERT computes the
tanh GELU, so A's ``hidden_act`` is ``gelu_new``.  Bugs are injected into the directory keras-hub
converts (a weight ×1.05) or are those very differences: A at transformers' default
``rms_norm_eps=1e-5``, A's BERT with another GELU (quick_gelu: the exact one is within float32's tolerance of B's tanh GELU here).
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .cases import Bug, Case, Pair

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

SOURCE = "keras-hub"
ROUTE = "HF dir → keras_hub Backbone.from_preset"
VOCAB = 97
SEQ = 8
SCALE = 1.05

_DECODER = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=False)

#: id → (config class, config kwargs, the class saved, the attribute of its base model or "",
#:       the HF weight scaled for the kernel bug, the A layer it must be flagged at)
ARCHS: dict[str, tuple[str, dict, str, str, str, str]] = {
    "llama": ("LlamaConfig", _DECODER, "LlamaForCausalLM", "model",
              "model.layers.1.mlp.up_proj.weight", "layers.1.mlp.up_proj"),
    "mistral": ("MistralConfig", _DECODER, "MistralForCausalLM", "model",
                "model.layers.1.self_attn.v_proj.weight", "layers.1.self_attn.v_proj"),
    "gemma": ("GemmaConfig", {**_DECODER, "head_dim": 8, "hidden_activation": "gelu_pytorch_tanh"},
              "GemmaForCausalLM", "model", "model.layers.1.mlp.down_proj.weight", "layers.1.mlp.down_proj"),
    "qwen2": ("Qwen2Config", _DECODER, "Qwen2ForCausalLM", "model",
              "model.layers.1.mlp.gate_proj.weight", "layers.1.mlp.gate_proj"),
    "bert": ("BertConfig", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=64, hidden_act="gelu_new"),
             "BertModel", "", "encoder.layer.1.intermediate.dense.weight", "encoder.layer.1.intermediate.dense"),
    "gpt2": ("GPT2Config", dict(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64),
             "GPT2Model", "", "h.1.mlp.c_fc.weight", "h.1.mlp.c_fc"),
}

#: bugs on A's side where keras-hub's converter leaves B as it is: (bug id, A config change, layer, also, code)
CONFIG_BUGS = {
    "llama": [("rms-eps-1e-5", {"rms_norm_eps": 1e-5}, "layers.0.input_layernorm", (), "norm_epsilon")],
    # Gemma scales its embeddings by sqrt(hidden): rows' mean squares are ~1, where 1e-5 vs 1e-6 is invisible
    # keras-hub's intermediate Dense applies its GELU itself: the activation is a tap of its own there
    "bert": [("quick-gelu", {"hidden_act": "quick_gelu"}, "encoder.layer.0.intermediate.intermediate_act_fn",
              ("encoder.layer.0.output.dense",), "activation_approximation")],
}

SAMPLE = {"llama", "bert"}

_DIR = Path(tempfile.mkdtemp(prefix="parity-kerashub-"))


@functools.cache
def _transformers():
    from tests.integration import conftest  # noqa: F401  (torchvision's op schemas, see there)
    import transformers

    return transformers


def _config(arch: str, change: dict | None = None) -> Any:
    cfg_name, kwargs, *_ = ARCHS[arch]
    return getattr(_transformers(), cfg_name)(**{**kwargs, **(change or {})})


@functools.cache
def _saved(arch: str, bug: str | None) -> tuple[Any, Path]:
    """A's model (the base model, eval mode) and the HF directory keras-hub converts."""
    import torch

    tr = _transformers()
    _, _, cls, base, weight, _ = ARCHS[arch]
    change = next((c for name, c, *_ in CONFIG_BUGS.get(arch, ()) if name == bug), None)
    torch.manual_seed(0)
    full = getattr(tr, cls)(_config(arch, change)).eval()
    out = _DIR / f"{arch}-{bug or 'faithful'}"
    if bug == "scaled-kernel":
        fed = getattr(tr, cls)(_config(arch)).eval()
        fed.load_state_dict(full.state_dict())
        with torch.no_grad():
            dict(fed.named_parameters())[weight].mul_(SCALE)
        fed.save_pretrained(out)
    else:
        full.save_pretrained(out)
    model = getattr(full, base) if base else full
    return model, out


def _inputs(arch: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    mask = np.ones((2, SEQ), dtype=np.int64)
    mask[1, SEQ - 2:] = 0  # the second sequence is padded
    out = {"input_ids": rng.integers(3, VOCAB, (2, SEQ)), "attention_mask": mask}
    if arch == "bert":
        out["token_type_ids"] = np.zeros((2, SEQ), dtype=np.int64)
    return out


def _builder(arch: str):
    def build(bug: Bug | None) -> Pair:
        import keras_hub

        model, directory = _saved(arch, bug and bug.name)
        backbone = keras_hub.models.Backbone.from_preset(str(directory))
        return Pair(model, backbone, _inputs(arch))

    return build


def _bugs(arch: str) -> tuple[Bug, ...]:
    bugs = [Bug("scaled-kernel", ARCHS[arch][5])]
    bugs += [Bug(name, layer, also, code) for name, _, layer, also, code in CONFIG_BUGS.get(arch, ())]
    return tuple(bugs)


CASES: list[Case] = [
    Case(id=f"keras-hub/{arch}/hf-dir", source=SOURCE, model=arch, route=ROUTE, build=_builder(arch),
         bugs=_bugs(arch), sample=arch in SAMPLE)
    for arch in ARCHS
]


if __name__ == "__main__":  # pragma: no cover - a development aid until the corpus runner collects CASES
    import sys

    from .hf_cases import _run

    _run(CASES, sys.argv[1:])
