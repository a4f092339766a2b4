"""Models known only by their layers' parameter records, for tests of weight parity and the
detectors without any framework: a :class:`Records` backend's one door is
:meth:`~parity.capture.base.Backend.layer_params`, and the records are in the canonical
(PyTorch) layout, as the torch and Keras backends read them."""

from __future__ import annotations

import numpy as np

from parity.capture.base import Backend
from parity.errors import MappingError
from parity.records import LayerParams, Param

RNG = np.random.default_rng(0)


class Records(Backend):
    """A model known only by its layers' parameter records."""

    def __init__(self, framework: str, layers: dict[str, LayerParams], *, reads: bool = True) -> None:
        super().__init__(None)
        self.framework = framework
        self.layers = layers
        self.reads = reads

    @classmethod
    def accepts(cls, obj):
        return False

    def info(self):
        raise NotImplementedError

    def input_spec(self):
        return None

    def capture(self, inputs, *, containers=False):
        raise NotImplementedError

    def layer_params(self, name):
        if not self.reads:
            return None
        if name not in self.layers:
            raise MappingError(f"no layer {name!r}")
        return self.layers[name]

    @property
    def reads_params(self):
        return self.reads


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def p(name, value, dtype="float32", raw=None):
    return Param(name, value, dtype, tuple(raw if raw is not None else value.shape))


def torch_layer(kind, cls, **params):
    names = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias", "mean": "running_mean",
             "var": "running_var", "embeddings": "weight"}
    return LayerParams("torch", kind, cls, {r: p(names.get(r, r), v) for r, v in params.items() if v is not None})


def keras_layer(kind, cls, **params):
    names = {"mean": "moving_mean", "var": "moving_variance"}
    return LayerParams("keras", kind, cls, {r: p(names.get(r, r), v) for r, v in params.items() if v is not None})
