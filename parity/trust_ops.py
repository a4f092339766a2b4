"""The allow-lists :mod:`parity.trust` checks model files against (data only; no framework import).

TensorFlow graphs: :data:`TF_OPS` are the op types an untrusted SavedModel or GraphDef may hold —
arithmetic, activations, convolutions and pooling, reductions, shapes and indexing, casts, random
numbers from a seed, control flow and function calls (whose bodies are checked too), resource
variables and constants, string formatting in memory.  None of them reads or writes a file, prints, runs Python, talks to another
process or loads a library.  Everything else (``WriteFile``, ``ReadFile``, ``PrintV2`` — whose
``output_stream`` may be a file —, ``PyFunc``/``EagerPyFunc``, summaries, datasets, lookup tables
read from files, ``ImmutableConst`` (maps a file), send/receive and collectives, custom ops) is
refused: parity cannot tell what an op it does not know does.  :data:`TF_CHECKPOINT_OPS` are allowed
only in the SavedModel's own saver (the graph its ``saver_def`` names), which loading never runs.

TorchScript and ``torch.export``: every ATen, ``prim`` and quantized operator is a tensor computation except
:data:`TORCH_DENIED_OPS`, found by reading every registered schema for file names, printing, RPC and
global state (``tests/test_trust.py`` re-checks the schemas of the installed torch); operators of any
other namespace (custom ops) and C++ classes other than quantized packed weights are refused.
"""

from __future__ import annotations

__all__ = ["TF_OPS", "TF_CHECKPOINT_OPS", "TORCH_DENIED_OPS", "TORCH_NAMESPACES", "TORCH_CLASS_NAMESPACES", "KERAS_MODULES",
           "TF_SYMBOL_MODULES", "TF_SYMBOLS"]

#: ATen/prim operators that reach outside the tensors they are given, and what they would do
TORCH_DENIED_OPS: dict[str, str] = {
    "save": "writes a tensor to a file",
    "from_file": "maps a file into memory, and writes to it with shared=True",
    "_print": "prints to the terminal",
    "Print": "prints to the terminal",
    "print": "prints to the terminal",
    "rpc_async": "calls another process",
    "rpc_sync": "calls another process",
    "rpc_remote": "calls another process",
    "manual_seed": "resets the process's random generator",
    "seed": "resets the process's random generator",
}

#: operator namespaces whose ops (minus :data:`TORCH_DENIED_OPS`) untrusted torch code may call:
#: ATen, TorchScript's primitives, and the quantized kernels (none of whose schemas takes a string)
TORCH_NAMESPACES = frozenset({"aten", "prim", "quantized", "_quantized"})

#: ``torch.classes`` namespaces whose C++ classes untrusted TorchScript may hold: quantized packed
#: weights (``LinearPackedParamsBase``, ``Conv2dPackedParamsBase``), restored as tensors
TORCH_CLASS_NAMESPACES = frozenset({"quantized"})

#: module roots a ``.keras`` config may name (Keras imports the module a config names)
KERAS_MODULES = ("keras",)

#: TensorFlow API modules whose functions a Keras 2 ``TFOpLambda`` layer may name (``math.add``):
#: tf_keras looks the name up in the TF API and calls it while rebuilding the model
TF_SYMBOL_MODULES = frozenset({"__operators__", "math", "nn", "linalg", "signal", "bitwise", "image"})

#: top-level TensorFlow functions a ``TFOpLambda`` may name (``tf.print``, ``tf.py_function``,
#: ``tf.load_op_library`` and ``tf.io``/``tf.raw_ops`` are not among them)
TF_SYMBOLS = frozenset(
    {
        "abs", "add", "add_n", "argmax", "argmin", "argsort", "broadcast_to", "cast", "clip_by_norm",
        "clip_by_value", "concat", "cos", "cumsum", "divide", "einsum", "equal", "exp", "expand_dims", "eye",
        "fill", "floor", "gather", "gather_nd", "greater", "greater_equal", "identity", "less", "less_equal",
        "linspace", "logical_and", "logical_not", "logical_or", "matmul", "maximum", "minimum", "multiply",
        "negative", "norm", "not_equal", "one_hot", "ones", "ones_like", "pad", "pow", "range", "rank",
        "realdiv", "reduce_all", "reduce_any", "reduce_logsumexp", "reduce_max", "reduce_mean", "reduce_min",
        "reduce_prod", "reduce_sum", "repeat", "reshape", "reverse", "roll", "round", "rsqrt", "scatter_nd",
        "searchsorted", "shape", "sigmoid", "sign", "sin", "size", "slice", "sort", "split", "sqrt", "square",
        "squeeze", "stack", "stop_gradient", "strided_slice", "subtract", "tanh", "tensor_scatter_nd_update",
        "tile", "transpose", "truediv", "unstack", "where", "zeros", "zeros_like", "ensure_shape",
        "convert_to_tensor", "constant",
    }
)

TF_CHECKPOINT_OPS = frozenset(
    {
        "SaveV2", "RestoreV2", "MergeV2Checkpoints", "ShardedFilename", "ShardedFilespec", "StringJoin",
        "StaticRegexFullMatch", "Save", "SaveSlices", "Restore", "RestoreSlice", "DisableCopyOnRead",
    }
)

TF_OPS = frozenset(
    {
        # graph structure, functions and control flow (called functions are checked too)
        "Placeholder", "PlaceholderV2", "PlaceholderWithDefault", "Const", "HostConst", "Identity", "IdentityN",
        "NoOp", "StopGradient", "PreventGradient", "Snapshot", "EnsureShape", "CheckNumerics", "CheckNumericsV2",
        "Assert", "_Arg", "_Retval", "PartitionedCall", "StatefulPartitionedCall", "If", "StatelessIf", "While",
        "StatelessWhile", "Case", "StatelessCase", "Switch", "Merge", "Enter", "Exit", "NextIteration",
        "LoopCond", "ControlTrigger", "RefSwitch", "RefMerge", "RefEnter", "RefExit", "RefNextIteration",
        "RefIdentity", "OptionalFromValue", "OptionalGetValue", "OptionalHasValue", "OptionalNone",
        # variables and resources held in memory
        "VarHandleOp", "ReadVariableOp", "AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp",
        "VarIsInitializedOp", "VariableShape", "ResourceGather", "ResourceGatherNd", "DestroyResourceOp",
        "VariableV2", "Variable", "Assign", "AssignAdd", "AssignSub", "TensorListReserve", "TensorListFromTensor",
        "TensorListStack", "TensorListGetItem", "TensorListSetItem", "TensorListLength", "TensorListElementShape",
        "TensorListPushBack", "TensorListPopBack", "TensorListConcatV2", "TensorListSplit", "TensorListResize",
        "EmptyTensorList", "TensorListGather", "TensorListScatterIntoExistingList", "TensorArrayV3",
        "TensorArrayReadV3", "TensorArrayWriteV3", "TensorArrayGatherV3", "TensorArrayScatterV3",
        "TensorArraySizeV3", "TensorArrayConcatV3", "TensorArraySplitV3",
        # element-wise arithmetic and math
        "Add", "AddV2", "AddN", "Sub", "Mul", "MulNoNan", "Div", "DivNoNan", "RealDiv", "TruncateDiv", "FloorDiv",
        "FloorMod", "TruncateMod", "Mod", "Pow", "Maximum", "Minimum", "SquaredDifference", "Neg", "Abs", "Sign",
        "Reciprocal", "Inv", "Square", "Sqrt", "Rsqrt", "Exp", "Expm1", "Log", "Log1p", "Sin", "Cos", "Tan",
        "Asin", "Acos", "Atan", "Atan2", "Sinh", "Cosh", "Tanh", "Asinh", "Acosh", "Atanh", "Erf", "Erfc",
        "Erfinv", "Ndtri", "Lgamma", "Digamma", "Floor", "Ceil", "Round", "Rint", "IsNan", "IsInf", "IsFinite",
        "Xlogy", "Xdivy", "Xlog1py", "ClipByValue", "BiasAdd", "BiasAddV1", "Cast", "Bitcast", "Complex",
        "Real", "Imag", "ComplexAbs", "Conj", "Angle", "LeftShift", "RightShift", "BitwiseAnd", "BitwiseOr",
        "BitwiseXor", "Invert", "PopulationCount",
        # comparisons and logic
        "Equal", "NotEqual", "Less", "LessEqual", "Greater", "GreaterEqual", "LogicalAnd", "LogicalOr",
        "LogicalNot", "Select", "SelectV2", "Where", "ApproximateEqual",
        # activations and normalisation
        "Relu", "Relu6", "Elu", "Selu", "LeakyRelu", "Sigmoid", "Softplus", "Softsign", "Softmax", "LogSoftmax",
        "Gelu", "FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3", "BatchNormWithGlobalNormalization",
        "LRN", "L2Loss",
        # linear algebra, convolutions, pooling, resizing
        "MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum", "Conv", "Conv2D", "Conv3D",
        "Conv1D", "DepthwiseConv2dNative", "Conv2DBackpropInput", "Conv3DBackpropInputV2",
        "DepthwiseConv2dNativeBackpropInput", "FusedPadConv2D", "FusedResizeAndPadConv2D", "_FusedConv2D",
        "_FusedMatMul", "_FusedDepthwiseConv2dNative", "_FusedBatchNormEx", "MaxPool", "MaxPoolV2", "MaxPool3D",
        "AvgPool", "AvgPool3D", "MaxPoolWithArgmax", "ResizeBilinear", "ResizeNearestNeighbor", "ResizeBicubic",
        "ResizeArea", "ScaleAndTranslate", "CropAndResize", "Dilation2D", "MatrixDiag", "MatrixDiagV2",
        "MatrixDiagV3", "MatrixDiagPart", "MatrixDiagPartV2", "MatrixDiagPartV3", "MatrixSetDiag",
        "MatrixSetDiagV2", "MatrixSetDiagV3", "MatrixBandPart", "MatrixInverse", "MatrixDeterminant",
        "Cholesky", "Qr", "Svd", "SelfAdjointEigV2", "MatrixSolve", "MatrixTriangularSolve", "Cross", "FFT",
        "IFFT", "RFFT", "IRFFT", "FFT2D", "IFFT2D", "RFFT2D", "IRFFT2D", "FFT3D", "IFFT3D",
        # reductions and scans
        "Sum", "Mean", "Max", "Min", "Prod", "All", "Any", "ArgMax", "ArgMin", "Cumsum", "Cumprod",
        "CumulativeLogsumexp", "EuclideanNorm", "TopKV2", "TopK", "InTopKV2", "SegmentSum", "SegmentMean",
        "SegmentMax", "SegmentMin", "UnsortedSegmentSum", "UnsortedSegmentMax", "UnsortedSegmentMin",
        "UnsortedSegmentProd", "Bincount", "DenseBincount",
        # shapes, indexing, copies
        "Shape", "ShapeN", "Size", "Rank", "Reshape", "Squeeze", "ExpandDims", "Transpose", "ConjugateTranspose",
        "Pack", "Unpack", "Concat", "ConcatV2", "ConcatOffset", "Split", "SplitV", "Slice", "StridedSlice",
        "StridedSliceGrad", "TensorStridedSliceUpdate", "Gather", "GatherV2", "GatherNd", "ScatterNd",
        "TensorScatterUpdate", "TensorScatterAdd", "TensorScatterSub", "TensorScatterMax", "TensorScatterMin",
        "Pad", "PadV2", "MirrorPad", "Tile", "Fill", "ZerosLike", "OnesLike", "Range", "LinSpace", "OneHot",
        "Reverse", "ReverseV2", "ReverseSequence", "Roll", "BroadcastTo", "BroadcastArgs",
        "BroadcastGradientArgs", "SpaceToBatchND", "BatchToSpaceND", "SpaceToBatch", "BatchToSpace",
        "SpaceToDepth", "DepthToSpace", "ExtractImagePatches", "InvertPermutation", "Unique", "UniqueV2",
        "UniqueWithCounts", "SparseToDense", "DynamicStitch", "ParallelDynamicStitch", "DynamicPartition",
        "Bucketize", "LowerBound", "UpperBound", "SearchSorted", "Diag", "DiagPart",
        "Empty", "DeepCopy", "InplaceUpdate", "InplaceAdd", "InplaceSub", "Unravel", "UnravelIndex",
        "ListDiff", "SetSize", "NonMaxSuppressionV3", "NonMaxSuppressionV4", "NonMaxSuppressionV5",
        # strings held in memory (formatting, no I/O)
        "AsString", "StringFormat", "StringLength", "StringToNumber", "Substr", "StringUpper", "StringLower",
        "StringStrip", "StringSplitV2", "ReduceJoin",
        # quantisation (arithmetic)
        "FakeQuantWithMinMaxVars", "FakeQuantWithMinMaxVarsPerChannel", "FakeQuantWithMinMaxArgs",
        "QuantizeV2", "Dequantize", "QuantizeAndDequantizeV2", "QuantizeAndDequantizeV3",
        "QuantizeAndDequantizeV4",
        # random numbers (from seeds in the graph)
        "RandomUniform", "RandomUniformInt", "RandomStandardNormal", "TruncatedNormal", "Multinomial",
        "StatelessRandomUniform", "StatelessRandomUniformV2", "StatelessRandomUniformInt",
        "StatelessRandomUniformIntV2", "StatelessRandomNormal", "StatelessRandomNormalV2",
        "StatelessTruncatedNormal", "StatelessTruncatedNormalV2", "StatelessRandomGetKeyCounter",
        "StatelessRandomGetKeyCounterAlg", "StatelessRandomGetAlg", "RandomShuffle",
    }
)
