"""litert-torch's tensor names read as PyTorch module paths (no TensorFlow needed)."""

from __future__ import annotations

from parity.capture.tflite import _torch_module_scopes, torch_module_paths

ROOT = "timm.models.vision_transformer.VisionTransformer/torch.nn.modules.container.Sequential_blocks/" \
       "timm.models.vision_transformer.Block_2"
ATTN = f"{ROOT}/timm.layers.attention.Attention_attn"


def test_a_linear_named_after_the_module_that_consumes_it_is_that_linears_output():
    # litert-torch names ViT's qkv FULLY_CONNECTED after the attention module (its reshape's
    # location) with the Linear as fused: the tensor is the qkv module's output all the same
    qkv = f"{ATTN};{ATTN}/torch.nn.modules.linear.Linear_qkv;1"
    proj = f"{ATTN}/torch.nn.modules.linear.Linear_proj;2"
    assert torch_module_paths(qkv) == ["blocks.2.attn", "blocks.2.attn.qkv"]
    scopes = _torch_module_scopes([(qkv, "FULLY_CONNECTED"), (f"{ATTN};5", "RESHAPE"), (proj, "FULLY_CONNECTED")])
    assert scopes[0]["module"] == "blocks.2.attn.qkv" and "blocks.2.attn.qkv" in scopes[0]["module_outputs"]
    assert scopes[0]["fused_modules"] == ("blocks.2.attn",)
    # a RESHAPE is no Linear's computation: it keeps the name it was given
    assert scopes[1]["module"] == "blocks.2.attn"
