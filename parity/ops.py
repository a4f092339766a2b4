"""Op families across frameworks and formats: what kind of computation a tap is.

``Conv2d`` (PyTorch), ``Conv2D`` (Keras), ONNX ``Conv`` and TFLite ``CONV_2D`` are all
``conv``; the aligner pairs within a family, the detectors pick by it, and the ops that
exist on one side of a conversion only (``Flatten``, ``Dropout``, …) or pass their input
through are named here.
"""

from __future__ import annotations

import functools

import re

from .records import Tap

__all__ = ["op_family", "tap_family", "normalize_name", "ONE_SIDED_OPS", "PASS_THROUGH_OPS", "MERGE_FAMILIES"]

#: ops whose output equals their input at inference: never matched by order (they would
#: steal the match of the real layer before them), only by mapping or name
PASS_THROUGH_OPS = frozenset(
    {
        "Identity",
        "Dropout",
        "Dropout1d",
        "Dropout2d",
        "Dropout3d",
        "AlphaDropout",
        "SpatialDropout1D",
        "SpatialDropout2D",
        "SpatialDropout3D",
        "GaussianNoise",
        "GaussianDropout",
        "ActivityRegularization",
        "InputLayer",
    }
)
#: ops that often exist on one side of a conversion only; unmatched, they are expected
ONE_SIDED_OPS = PASS_THROUGH_OPS | frozenset(
    {
        "Flatten",
        "Unflatten",
        "Permute",
        "Reshape",
        "ZeroPadding1D",
        "ZeroPadding2D",
        "ZeroPadding3D",
        "ZeroPad1d",
        "ZeroPad2d",
        "ZeroPad3d",
        "ConstantPad2d",
        "Cropping2D",
        # Keras merge layers and lambdas: the torch side does these with functionals
        # (x + y, torch.cat), which module-level capture does not see
        "Add",
        "Subtract",
        "Multiply",
        "Average",
        "Maximum",
        "Minimum",
        "Concatenate",
        "Dot",
        "Lambda",
        "TFOpLambda",
        # layout and shape plumbing that graph formats and converters add (ONNX, TF, TFLite)
        "Transpose", "TRANSPOSE", "RESHAPE", "Squeeze", "SQUEEZE", "Unsqueeze", "ExpandDims",
        "EXPAND_DIMS", "Pad", "PAD", "Shape", "SHAPE", "StridedSlice", "STRIDED_SLICE", "Pack", "PACK",
        "Gather", "Cast", "CAST", "Slice", "SLICE", "ConcatV2",
        "permute", "transpose", "view", "reshape", "flatten", "squeeze", "unsqueeze", "contiguous",
    }
)

_FAMILIES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (family, re.compile(pattern, re.IGNORECASE))
    for family, pattern in (
        ("conv", r"^(lazy)?(conv(transpose)?[123]d|conv[123]d(transpose)?|depthwiseconv[12]d(native)?|separableconv[12]d|conv|convolution)$"),
        ("batchnorm", r"^(sync)?batchnorm(alization|[123]d)?$|^fusedbatchnorm(v[23])?$"),
        ("dense", r"^(lazy)?(linear|dense|einsumdense|gemm|matmul|fullyconnected|addmm)$"),
        ("activation", r"^(relu6?|leakyrelu|prelu|elu|selu|celu|gelu|silu|swish|mish|sigmoid|tanh|hardswish|hardsigmoid|hardtanh|softplus|softmax|logsoftmax|activation|relu_?6|clip.*|logistic|[a-z0-9]*(gelu|silu|swish)[a-z0-9]*|[a-z0-9]+activation)$"),
        ("pool", r"^(adaptive)?(max|avg|average|lp)pool(ing)?[123]d$|^global(average|max)pool(ing[123]d)?$|^(max|average)pool$|^(reduce)?mean$"),
        # a model's own norms too: transformers' LlamaRMSNorm, T5LayerNorm; keras-hub's LlamaLayerNorm
        ("norm", r"^([a-z0-9]*(layernorm(alization)?|rmsnorm(alization)?)|groupnorm(alization)?|instancenorm[123]d|unitnormalization)$"),
        ("add", r"^(add|addv2|sum|add_)$"),
        ("flatten", r"^flatten$"),
        ("embedding", r"^embedding(bag)?$"),
        ("pad", r"^(zeropad(ding)?[123]d|constantpad[123]d|reflectionpad[123]d)$"),
        ("upsample", r"^(upsample|upsampling[123]d|upsamplingnearest2d|upsamplingbilinear2d|resizing)$"),
        ("concat", r"^(concatenate|cat|concat|concatenation|concatv2)$"),
        ("attention", r"^(multiheadattention|attention)$"),
        ("depth_to_space", r"^(pixelshuffle|depthtospace)$"),
    )
)


@functools.lru_cache(maxsize=8192)
def op_family(op: str) -> str:
    """The family an op belongs to across frameworks and formats (``Conv2d``, ``Conv2D``,
    ONNX ``Conv``, TFLite ``CONV_2D`` → ``conv``)."""
    plain = op.replace("_", "") if op.isupper() or "_" in op.strip("_") else op
    for family, pattern in _FAMILIES:
        if pattern.match(plain) or pattern.match(op):
            return family
    return op.lower()


def tap_family(t: Tap) -> str:
    """The family of what a tap's *value* is: its op's family, except that an ``Add`` of a
    constant (a bias) is not a merge of two branches ("affine") — the bias add that completes an
    exporter's ``MatMul`` or ``Conv`` is of their family (``attrs["bias_of"]``) —, and a tensor a converter fused
    several ops into is named by the last op applied (TFLite's
    ``model/relu_1/Relu;model/add/Add;model/conv/convolution`` is an activation's output)."""
    family = op_family(t.op)
    if t.attrs.get("bias_of"):  # the bias add that completes an exporter's MatMul or Conv
        return op_family(t.attrs["bias_of"])
    if family in MERGE_FAMILIES and t.attrs.get("constant_operand"):
        return "affine"
    if ";" in t.name:
        last_op = re.sub(r":\d+$", "", t.name.split(";")[0]).rsplit("/", 1)[-1]
        applied = op_family(last_op)
        if applied in ("activation", "add", "batchnorm", "pool"):
            return applied
    return family


#: families that combine several tensors: such an op is paired only with its own family
#: (else a residual ``Add`` steals the match of the layer before it)
MERGE_FAMILIES = frozenset({"add", "concat", "subtract", "sub", "multiply", "mul", "average", "maximum", "minimum", "dot"})


def normalize_name(name: str) -> str:
    """A name reduced to what survives conversions: ``layer1.0/conv1:0`` → ``layer1_0_conv1``."""
    name = re.sub(r":\d+$", "", name)
    name = re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower()
    return name
