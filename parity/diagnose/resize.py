"""``resize_mode``: a bilinear or nearest resize under another coordinate convention.

Where an output pixel samples its input depends on a convention the frameworks spell
differently: ``half_pixel`` (torch ``align_corners=False``, Keras ``UpSampling2D``, TF2
``tf.image.resize``), ``align_corners`` (torch ``align_corners=True``, TF1
``resize_bilinear(align_corners=True)``), ``asymmetric`` (TF1's default, ``half_pixel_centers=False``)
and ``pytorch_half_pixel``; nearest-neighbour resizes also round the coordinate (``floor``,
``round_prefer_floor``, ``round_prefer_ceil``).  A's resize is recomputed from A's own input under
every convention: the one that reproduces A is A's, the one that reproduces B names B's.
"""

from __future__ import annotations

import numpy as np

from ..records import Diagnosis
from .base import Context, detector, nchw_io
from .base import rel_diff as _rel

_FIT_OK = 1e-4
_REPRODUCED = 1e-3

#: bilinear conventions (ONNX coordinate_transformation_mode), and the nearest ones with rounding;
#: the evidence's ``convention_a``/``convention_b`` index ``LINEAR + NEAREST``
LINEAR = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric")
NEAREST = (("asymmetric", "floor"), ("half_pixel", "round_prefer_floor"), ("half_pixel", "round_prefer_ceil"),
           ("align_corners", "round_prefer_floor"), ("asymmetric", "round_prefer_ceil"))

_WORDS = {
    "half_pixel": "half_pixel (torch align_corners=False, Keras UpSampling2D / tf.image.resize)",
    "pytorch_half_pixel": "pytorch_half_pixel",
    "align_corners": "align_corners (torch align_corners=True, TF1 align_corners=True)",
    "asymmetric": "asymmetric (TF1 resize_bilinear's default, half_pixel_centers=False)",
}


def _coords(n_out: int, n_in: int, mode: str) -> np.ndarray:
    o = np.arange(n_out, dtype=np.float64)
    scale = n_out / n_in
    if mode == "align_corners":
        return o * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros(n_out)
    if mode == "asymmetric":
        return o / scale
    if mode == "pytorch_half_pixel" and n_out == 1:
        return np.zeros(n_out)
    return (o + 0.5) / scale - 0.5


def _linear_axis(x: np.ndarray, axis: int, n_out: int, mode: str) -> np.ndarray:
    n_in = x.shape[axis]
    c = np.clip(_coords(n_out, n_in, mode), 0, n_in - 1)
    i0 = np.floor(c).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = (c - i0).reshape([-1 if k == axis else 1 for k in range(x.ndim)])
    return np.take(x, i0, axis=axis) * (1 - w) + np.take(x, i1, axis=axis) * w


def _nearest_axis(x: np.ndarray, axis: int, n_out: int, mode: str, rounding: str) -> np.ndarray:
    n_in = x.shape[axis]
    c = _coords(n_out, n_in, mode)
    if rounding == "floor":
        idx = np.floor(c)
    elif rounding == "round_prefer_ceil":
        idx = np.floor(c + 0.5)
    else:
        idx = np.ceil(c - 0.5)
    return np.take(x, np.clip(idx.astype(int), 0, n_in - 1), axis=axis)


def _resized(x: np.ndarray, out_hw: tuple[int, int], convention) -> np.ndarray:
    if isinstance(convention, tuple):
        y = _nearest_axis(x, 2, out_hw[0], *convention)
        return _nearest_axis(y, 3, out_hw[1], *convention)
    return _linear_axis(_linear_axis(x, 2, out_hw[0], convention), 3, out_hw[1], convention)


def _name(convention) -> str:
    return f"{convention[0]} with {convention[1]} rounding" if isinstance(convention, tuple) else _WORDS[convention]


@detector("resize_mode", {"upsample"})
def resize_mode(ctx: Context) -> Diagnosis | None:
    io = nchw_io(ctx)
    if io is None or io[0].shape[1] != io[1].shape[1]:
        return None
    x4, a4, b4 = io[0].astype(np.float64), io[1], io[2]
    if not np.all(np.isfinite(x4)) or (a4.shape[2] <= x4.shape[2] and a4.shape[3] <= x4.shape[3]):
        return None
    out_hw = (a4.shape[2], a4.shape[3])
    fits = {}
    for convention in (*LINEAR, *NEAREST):
        y = _resized(x4, out_hw, convention)
        fits[convention] = (_rel(a4, y), _rel(b4, y))
    conv_a = min(fits, key=lambda k: fits[k][0])
    if fits[conv_a][0] > _FIT_OK:
        return None
    # B's convention: among those that do not also reproduce A (conventions that coincide at this
    # scale — nearest half_pixel and floor at ×2 — are the same computation here)
    others = [k for k in fits if fits[k][0] > _FIT_OK]
    if not others:
        return None
    conv_b = min(others, key=lambda k: fits[k][1])
    fit_b, as_compared = fits[conv_b][1], _rel(a4, b4)
    if not (fit_b <= _REPRODUCED and as_compared > 10 * max(fit_b, 1e-12)):
        return None
    nearest = isinstance(conv_a, tuple)
    evidence = {"rel_err_as_compared": float(as_compared), "rel_err_a_vs_recomputed": float(fits[conv_a][0]),
                "rel_err_b_vs_other_convention": float(fit_b), "nearest": 1.0 if nearest else 0.0}
    msg = (
        f"The {'nearest-neighbour' if nearest else 'bilinear'} resize samples its input at other coordinates: "
        f"recomputed from A's input, {_name(conv_a)} reproduces A ({fits[conv_a][0]:.1e}) and {_name(conv_b)} "
        f"reproduces B ({fit_b:.1e}, against {as_compared:.2g} as compared). Give B's resize A's convention "
        "(ONNX Resize coordinate_transformation_mode / nearest_mode, TF half_pixel_centers / align_corners, torch "
        "align_corners)."
    )
    conventions = (*LINEAR, *NEAREST)
    evidence.update({"convention_a": float(conventions.index(conv_a)), "convention_b": float(conventions.index(conv_b))})
    return Diagnosis(code="resize_mode", layer=ctx.match.a.name, message=msg, evidence=evidence)
