"""Hand-made records for tests of the pure-NumPy stages."""

from __future__ import annotations

from typing import Any

import numpy as np

from parity.capture.base import Backend, append_tap
from parity.records import InputSpec, LayerParams, ModelInfo, Param, Tap, Trace


def make_trace(specs, framework="torch", name="M"):
    """``specs``: (name, op, value, layout[, attrs]) tuples in execution order, then outputs."""
    taps = []
    for i, spec in enumerate(specs):
        tap_name, op, value, layout = spec[:4]
        attrs = spec[4] if len(spec) > 4 else {}
        value = np.asarray(value)
        taps.append(
            Tap(
                name=tap_name,
                op=op,
                index=i,
                shape=tuple(value.shape),
                dtype=str(value.dtype),
                layout=layout,
                value=value,
                role="output" if op == "output" else "layer",
                attrs=attrs,
            )
        )
    info = ModelInfo(framework=framework, framework_version="0", name=name, kind="test")
    return Trace(taps=tuple(taps), model=info)


def nchw_to_nhwc(x):
    return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))


def make_layer_diff(index, name, rel_err, *, op="Conv2d", rtol=1e-3, atol=1e-5, b_name=None, role="layer",
                    own_err=None):
    """A hand-made :class:`LayerDiff` of a 100-element layer with ‖a‖ = 10 and error ``rel_err``;
    ``ok`` is what its tolerance says of that error."""
    from parity.records import LayerDiff, Metrics, tolerance_ratio

    metrics = Metrics(
        numel=100, rel_err=rel_err, err_norm=10.0 * rel_err, max_abs=rel_err, max_abs_index=(0,),
        mean_abs=rel_err, cosine=1.0, mismatched=0, norm_a=10.0, norm_b=10.0, rms_a=1.0,
    )
    return LayerDiff(
        index=index, a_name=name, b_name=b_name or f"b/{name}", op=op, b_op=op, shape=(100,), b_shape=(100,),
        dtype="float32", transform="identity", ambiguous=False, how="name", metrics=metrics, rtol=rtol, atol=atol,
        ok=tolerance_ratio(metrics, rtol, atol) <= 1.0, role=role, own_err=own_err,
    )


def make_report(layers, *, unmatched=(), framework_b="onnx", rtol=None, atol=None):
    """A hand-made :class:`Report` of model A ("torch") against a model of ``framework_b``;
    ``unmatched``: (A layer name, reason) pairs."""
    from parity.records import InputsSummary, Report, UnmatchedLayer

    info_a = ModelInfo(framework="torch", framework_version="0", name="Net", kind="test")
    info_b = ModelInfo(framework=framework_b, framework_version="0", name="net", kind="test")
    inputs = InputsSummary(shapes_a=((1, 100),), shapes_b=((1, 100),), dtypes=("float32",), conversions=(),
                           source="given")
    return Report(
        a=info_a, b=info_b, layers=tuple(layers),
        unmatched=tuple(UnmatchedLayer(side="a", name=n, op="BatchNorm2d", shape=(100,), reason=r) for n, r in unmatched),
        inputs=inputs, rtol=rtol, atol=atol,
    )


# --- a hand-made conversion chain (parity.chain's records without any framework) ---------------------

CHAIN_LAYERS = [("stem", "Conv2d"), ("stem_bn", "BatchNorm2d"), ("stem_relu", "ReLU"),
                ("pool", "AdaptiveAvgPool2d"), ("fc", "Linear"), ("output", "output")]
CHAIN_STAGES = ("torch", "onnx", "keras-bad", "tflite16-bad")
CHAIN_PRECISIONS = ("float32", "float32", "float32", "float16")


def chain_trace0():
    """Stage 0's trace: six 100-element layers (values unused by the matrix)."""
    return make_trace([(name, op, np.zeros(100, dtype="float32"), None) for name, op in CHAIN_LAYERS])


def layer_diffs(errors, **kw):
    """A LayerDiff per ``{layer name: rel err}`` of :data:`CHAIN_LAYERS`, in that order."""
    ops = dict(CHAIN_LAYERS)
    return [make_layer_diff(i, name, err, op=ops[name], role="output" if name == "output" else "layer", **kw)
            for i, (name, err) in enumerate(errors.items())]


def chain_reports(keras_own=None):
    """The reports of stages 1..3 of :data:`CHAIN_STAGES` against stage 0."""
    onnx = make_report(layer_diffs({name: 1e-7 for name, _ in CHAIN_LAYERS}))
    # keras-bad: stem_bn over tolerance and everything after it; fc is in neither list ("absent")
    keras = make_report(
        [make_layer_diff(0, "stem", 1e-7), make_layer_diff(1, "stem_bn", 5e-2, op="BatchNorm2d"),
         make_layer_diff(2, "stem_relu", 4e-2, op="ReLU", own_err=keras_own),
         make_layer_diff(3, "pool", 3e-2, op="AdaptiveAvgPool2d"),
         make_layer_diff(5, "output", 3e-2, op="output", role="output")],
        framework_b="keras",
    )
    # a float16 stage, judged with float16's tolerance: stem within it (not within float32's), stem_bn
    # fused by the converter, pool without a counterpart; stem_relu over (as in keras-bad), fc over (not)
    from parity.chain import PRECISION_TOLERANCES

    rtol, atol = PRECISION_TOLERANCES["float16"]
    tflite = make_report(
        [make_layer_diff(0, "stem", 5e-3, rtol=rtol, atol=atol),
         make_layer_diff(2, "stem_relu", 4e-2, op="ReLU", rtol=rtol, atol=atol),
         make_layer_diff(4, "fc", 2e-2, op="Linear", rtol=rtol, atol=atol),
         make_layer_diff(5, "output", 2e-2, op="output", role="output", rtol=rtol, atol=atol)],
        unmatched=[("stem_bn", "fused"), ("pool", "shape (7,) fits nothing")], framework_b="tflite", rtol=rtol, atol=atol,
    )
    return [onnx, keras, tflite]


def make_chain(reports=None, stages=CHAIN_STAGES, precisions=CHAIN_PRECISIONS):
    """A :class:`ChainReport` of ``reports`` (default :func:`chain_reports`) built as parity.chain builds it."""
    from parity.chain import ChainReport, chain_matrix

    reports = chain_reports() if reports is None else reports
    matrix = chain_matrix(chain_trace0(), reports, stages, precisions)
    return ChainReport(stages=tuple(stages), reports=tuple(reports), matrix=matrix, precisions=tuple(precisions),
                       precision_sources=("default", "default", "default", "given")[: len(stages)])


# --- a backend of a few NumPy lines (the door any backend fills in) -------------------------


class Chain:
    """A model that is a list of named NumPy functions applied in order."""

    def __init__(self, name: str, layers: list[tuple[str, Any]], float64: list[tuple[str, Any]] | None = None,
                 features: int = 6, params: dict[str, dict[str, np.ndarray]] | None = None,
                 attrs: dict[str, dict[str, Any]] | None = None) -> None:
        self.name, self.layers, self.float64, self.features = name, layers, float64, features
        #: module name → its own parameters (``layer_params`` reads them); layer name → tap attrs
        self.params, self.attrs = params, attrs or {}


class ChainBackend(Backend):
    framework = "numpy-chain"

    @classmethod
    def accepts(cls, obj: Any) -> bool:
        return isinstance(obj, Chain)

    def info(self) -> ModelInfo:
        return ModelInfo(framework=self.framework, framework_version="1", name=self.model.name, kind="chain",
                         input_spec=self.input_spec())

    def input_spec(self):
        return (InputSpec(name="x", shape=(None, self.model.features), dtype="float32", layout="NC"),)

    def run(self, inputs, hook=None):
        x = np.asarray(inputs[0])
        for name, fn in self.model.layers:
            if hook is not None:
                hook(name, x)
            x = fn(x)
        return x

    def capture(self, inputs, *, containers: bool = False):
        taps: list = []
        x = np.asarray(inputs[0])
        for name, fn in self.model.layers:
            x = np.asarray(fn(x))
            append_tap(taps, name, "Dense", x, "NC", attrs=dict(self.model.attrs.get(name, {})))
        append_tap(taps, "output", "output", x, "NC", role="output")
        return self._trace(taps, [np.asarray(inputs[0])])

    def can_call(self, name: str) -> bool:
        return any(n == name for n, _ in self.model.layers)

    def layer_inputs(self, inputs, names):
        found: dict[str, np.ndarray] = {}
        self.run(inputs, lambda name, x: found.setdefault(name, x.copy()) if name in names else None)
        return found

    def call_layer(self, name: str, x: np.ndarray) -> np.ndarray:
        return dict(self.model.layers)[name](x)

    @property
    def reads_params(self) -> bool:
        return self.model.params is not None

    def layer_params(self, name: str):
        if self.model.params is None:
            return None
        own = self.model.params.get(name, {})
        return LayerParams("numpy-chain", "generic", "Chain", {
            n: Param(n, np.asarray(v), str(np.asarray(v).dtype), tuple(np.shape(v))) for n, v in own.items()})

    def twin(self, kind: str, *, seed: int = 0):
        """A float64 twin only (``dtype`` is what the layers compute in), when the model has one."""
        if kind != "float64" or self.model.float64 is None:
            return None
        return ChainBackend(Chain(self.model.name, self.model.float64, features=self.model.features))


# --- small torch models (torch imported when called) -------------------------------------------


def conv_chain():
    """conv 3→8, ReLU, conv 8→8, ReLU, conv 1×1 8→4 (seeded, eval): the chain the replay and
    repro tests break one layer of."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1),
                               torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1)).eval()


def scaled_copy(model, scales: dict[str, float]):
    """A copy of torch ``model`` with the weights of the named submodules scaled."""
    import copy

    import torch

    twin = copy.deepcopy(model)
    with torch.no_grad():
        for name, k in scales.items():
            twin.get_submodule(name).weight.mul_(k)
    return twin
