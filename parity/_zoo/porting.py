"""Shared steps of porting Keras weights into a PyTorch twin (MobileNet-v1, ResNet-50)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["copy_param", "copy_batchnorm", "check_all_ported", "port_layers"]


def copy_param(target: torch.Tensor, value: np.ndarray, name: str) -> None:
    """Copy a Keras weight (already in torch's layout) into ``target``, refusing a shape that does not fit."""
    if tuple(target.shape) != tuple(value.shape):
        raise ValueError(f"{name}: Keras weight of shape {value.shape} does not fit torch's {tuple(target.shape)}")
    target.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))


def copy_batchnorm(module: Any, layer: Any, weights: list[np.ndarray], name: str, bn_eps: float | None) -> None:
    """gamma, beta, moving mean and variance into a BatchNorm; its epsilon from Keras unless ``bn_eps``."""
    gamma, beta, mean, var = weights
    copy_param(module.weight, gamma, name)
    copy_param(module.bias, beta, name)
    copy_param(module.running_mean, mean, name)
    copy_param(module.running_var, var, name)
    module.eps = float(layer.epsilon) if bn_eps is None else float(bn_eps)


def check_all_ported(modules: dict[str, Any], ported: set[str]) -> None:
    """Every parametrised torch module got Keras weights."""
    missing = [n for n, m in modules.items() if any(True for _ in m.parameters()) and n not in ported]
    if missing:
        raise ValueError(f"torch modules without Keras weights: {', '.join(missing)}")


def port_layers(layers: dict[str, Any], torch_model: Any, bn_eps: float | None) -> Any:
    """Copy the weights of Keras ``layers`` (by name) into the same-named children of
    ``torch_model``: Conv2D (HWIO→OIHW), DepthwiseConv2D ((kh,kw,C,1)→(C,1,kh,kw)),
    BatchNormalization, Dense ((in,out)→(out,in)).  Returns the model in eval mode."""
    modules = dict(torch_model.named_children())
    ported: set[str] = set()
    with torch.no_grad():
        for name, layer in layers.items():
            weights = [np.asarray(w) for w in layer.get_weights()]
            if not weights:
                continue
            if name not in modules:
                raise ValueError(f"Keras layer {name!r} has weights but the torch model has no module {name!r}")
            module = modules[name]
            kind = type(layer).__name__
            if kind == "DepthwiseConv2D":
                copy_param(module.weight, weights[0].transpose(2, 3, 0, 1), name)
            elif kind == "Conv2D":
                copy_param(module.weight, weights[0].transpose(3, 2, 0, 1), name)
            elif kind == "Dense":
                copy_param(module.weight, weights[0].T, name)
            elif kind == "BatchNormalization":
                copy_batchnorm(module, layer, weights, name, bn_eps)
            else:
                raise ValueError(f"no port for Keras layer {name!r} of type {kind}")
            if kind in ("DepthwiseConv2D", "Conv2D", "Dense") and len(weights) > 1:
                copy_param(module.bias, weights[1], name)
            ported.add(name)
    check_all_ported(modules, ported)
    return torch_model.eval()
