"""torch → ONNX → onnx2tf (SavedModel, float32 and float16 TFLite): the conversion helpers
behind the onnx2tf integration tests and ``parity demo --chain``.

onnx2tf runs as a subprocess (``python -m onnx2tf``) in a temporary working directory,
never in-process: it configures TensorFlow globally, prints a lot, and writes files next to
where it runs.  The offline traps measured in ``CONVERTERS.md`` are handled here:

- for a 4-D, 3-channel input with a batch ≤ 20 onnx2tf downloads a calibration file from
  GitHub and crashes offline; it looks in its working directory first, so a stand-in
  (:data:`CALIBRATION_FILE`, float32 20×128×128×3 in [0, 1)) is put there;
- the float32 and float16 ``.tflite`` files land *inside* the SavedModel directory, named
  after the ONNX file (``m_float32.tflite``, ``m_float16.tflite``); they are moved beside it;
- ``-k input`` keeps an NCHW input (by default onnx2tf makes it NHWC).

A failed conversion raises :class:`ConversionError` with the command and the tail of
onnx2tf's log; a missing onnx2tf raises :class:`ConverterNotInstalled` with the install line.

>>> model, x = tiny_mobilenet()                                     # doctest: +SKIP
>>> onnx_path = export_onnx(model, x, "out/m.onnx")                  # doctest: +SKIP
>>> out = convert_onnx2tf(onnx_path, "out")                          # doctest: +SKIP
>>> out.saved_model, out.tflite_fp32, out.tflite_fp16                 # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConversionError, ConverterNotInstalled, InputError

__all__ = [
    "CALIBRATION_FILE",
    "ONNX2TF_INSTALL",
    "ConversionError",
    "ConverterNotInstalled",
    "Onnx2tfOutputs",
    "missing_onnx2tf_modules",
    "onnx2tf_version",
    "tiny_mobilenet",
    "tiny_mobilenet_model",
    "export_onnx",
    "convert_onnx2tf",
    "onnx2tf_flags",
    "relu6_to_relu",
    "scale_weight",
    "node_output",
    "convert_cached",
]

#: the file onnx2tf loads (or downloads) as calibration data for 3-channel image inputs
CALIBRATION_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
#: how to install onnx2tf here (its own pins want TF 2.19 / numpy 1.26; it runs on TF 2.21 / numpy 2)
ONNX2TF_INSTALL = (
    "pip install --no-deps onnx2tf==1.29.24 && "
    "pip install onnx-graphsurgeon sng4onnx psutil ai-edge-litert onnxsim onnxoptimizer"
)
#: modules ``python -m onnx2tf`` imports before it converts anything
_ONNX2TF_MODULES = ("onnx2tf", "onnx", "onnx_graphsurgeon", "sng4onnx", "tensorflow", "psutil")
#: onnx2tf's log lines that say nothing (TensorFlow start-up chatter)
_NOISE = ("I0000", "W0000", "E0000", "WARNING: All log messages", "oneDNN", "cuda", "instructions")


@dataclass(frozen=True)
class Onnx2tfOutputs:
    """What one onnx2tf run produced, moved into its output directory."""

    saved_model: Path
    tflite_fp32: Path
    tflite_fp16: Path
    #: onnx2tf's whole log (stdout and stderr), TensorFlow chatter removed
    log: str
    #: wall time of the conversion, in seconds
    seconds: float


# --- availability --------------------------------------------------------------------------


def missing_onnx2tf_modules() -> list[str]:
    """The modules onnx2tf needs that are not installed (empty when it can run)."""
    return [m for m in _ONNX2TF_MODULES if importlib.util.find_spec(m) is None]


def onnx2tf_version() -> str:
    """onnx2tf's installed version (read from its metadata, without importing it)."""
    from importlib import metadata

    try:
        return metadata.version("onnx2tf")
    except metadata.PackageNotFoundError:
        raise ConverterNotInstalled(f"onnx2tf is not installed; install it with: {ONNX2TF_INSTALL}") from None


def onnx2tf_flags(*, keep_nchw: Sequence[str] = ()) -> list[str]:
    """The onnx2tf options :func:`convert_onnx2tf` passes (besides ``-i``/``-o``): signature
    defs in the SavedModel (``-osd``), the ONNX input/output names in the TFLite signature
    (``-coion``), errors-only logging (``-v error``), and ``-k NAME…`` for inputs kept NCHW."""
    flags = ["-osd", "-coion", "-v", "error"]
    if keep_nchw:
        flags += ["-k", *keep_nchw]
    return flags


# --- the model and the export --------------------------------------------------------------


def tiny_mobilenet(seed: int = 0, in_ch: int = 3, size: int = 32, batch: int = 2) -> tuple[Any, np.ndarray]:
    """A small MobileNet-style CNN (stem conv + BN + ReLU6, two depthwise/pointwise blocks,
    global pool, classifier) with trained-like BatchNorm statistics, and a seeded input batch
    (``batch × in_ch × size × size``, NCHW).  Torch names: ``stem.0/1/2``, ``block1.dw``,
    ``block1.bn1``, ``block1.relu1``, ``block1.pw``, …, ``pool``, ``flatten``, ``fc``."""
    from collections import OrderedDict

    import torch
    import torch.nn as nn

    from .torch_models import MobileNetBlock, randomize_bn

    torch.manual_seed(seed)
    model = nn.Sequential(OrderedDict([
        ("stem", nn.Sequential(nn.Conv2d(in_ch, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())),
        ("block1", MobileNetBlock(8, 16, stride=1)),
        ("block2", MobileNetBlock(16, 32, stride=2)),
        ("pool", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(32, 10)),
    ]))
    randomize_bn(model, seed=seed)
    model.eval()
    x = np.random.default_rng(seed).standard_normal((batch, in_ch, size, size)).astype(np.float32)
    return model, x


def tiny_mobilenet_model() -> Any:
    """:func:`tiny_mobilenet`'s model alone (seed 0), for ``package.module:factory`` specs:
    ``parity align parity._zoo.onnx2tf_chain:tiny_mobilenet_model m_float32.tflite --shape 2,3,32,32``."""
    return tiny_mobilenet()[0]


def export_onnx(model: Any, example: np.ndarray, path: str | Path, *, opset: int = 17) -> Path:
    """``torch.onnx.export`` (the TorchScript exporter: scope-named tensors such as
    ``/block1/relu2/Clip_output_0``; BatchNorm is folded into the Conv before it) with the
    input named ``input`` and the output ``output``, for ``example``'s fixed shape."""
    import warnings

    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's DeprecationWarning / TracerWarnings
            torch.onnx.export(
                model.eval(), (torch.from_numpy(np.asarray(example, dtype=np.float32)),), str(path),
                input_names=["input"], output_names=["output"], opset_version=opset, dynamo=False,
            )
    except Exception as exc:  # the exporter raises many types; name what failed
        raise ConversionError(
            f"torch.onnx.export of {type(model).__name__} to {path} failed: {type(exc).__name__}: {exc}. "
            "Check that the model runs on the example input and uses only exportable ops."
        ) from exc
    return path


# --- onnx2tf -------------------------------------------------------------------------------


def convert_onnx2tf(
    onnx_path: str | Path,
    out_dir: str | Path,
    *,
    keep_nchw: Sequence[str] = (),
    timeout: float = 600.0,
) -> Onnx2tfOutputs:
    """Run onnx2tf on ``onnx_path``; the results go to ``out_dir``: ``saved_model/``,
    ``<stem>_float32.tflite`` and ``<stem>_float16.tflite``.  ``keep_nchw`` names inputs kept
    NCHW (``-k``).  Runs ``python -m onnx2tf`` in a fresh temporary directory holding a
    stand-in calibration file, so it never downloads one."""
    onnx_path = Path(onnx_path).resolve()
    out_dir = Path(out_dir)
    if not onnx_path.is_file():
        raise InputError(f"ONNX file {str(onnx_path)!r} does not exist; export the model first (export_onnx).")
    missing = missing_onnx2tf_modules()
    if missing:
        raise ConverterNotInstalled(
            f"onnx2tf cannot run: {', '.join(missing)} not installed; install with: {ONNX2TF_INSTALL}"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="parity-onnx2tf-"))
    try:
        rng = np.random.default_rng(0)
        np.save(work / CALIBRATION_FILE, rng.random((20, 128, 128, 3), dtype=np.float32))
        staged = work / "saved_model"
        command = [sys.executable, "-m", "onnx2tf", "-i", str(onnx_path), "-o", str(staged),
                   *onnx2tf_flags(keep_nchw=keep_nchw)]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1", PYTHONWARNINGS="ignore")
        t0 = time.perf_counter()
        try:
            run = subprocess.run(command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            log = _clean_log((exc.stdout or b"").decode("utf-8", "replace"))
            raise ConversionError(
                f"onnx2tf did not finish converting {onnx_path.name} within {timeout:g} s. Its log ends:\n"
                f"{_tail(log)}\nGive a longer timeout= or a smaller model.",
                command=command, returncode=None, log_tail=_tail(log),
            ) from None
        seconds = time.perf_counter() - t0
        log = _clean_log(run.stdout.decode("utf-8", "replace"))
        stem = onnx_path.stem
        produced = {
            "SavedModel": staged / "saved_model.pb",
            "float32 TFLite": staged / f"{stem}_float32.tflite",
            "float16 TFLite": staged / f"{stem}_float16.tflite",
        }
        lacking = [what for what, p in produced.items() if not p.exists()]
        if run.returncode != 0 or lacking:
            what = f"exited with status {run.returncode}" if run.returncode else f"wrote no {', no '.join(lacking)}"
            raise ConversionError(
                f"onnx2tf {what} converting {onnx_path}. Command: {' '.join(command)} (in {work}). "
                f"Its log ends:\n{_tail(log)}\nIf the log names an unsupported op or a failed download, "
                "see the onnx2tf notes in CONVERTERS.md.",
                command=command, returncode=run.returncode, log_tail=_tail(log),
            )
        tflite_fp32 = out_dir / produced["float32 TFLite"].name
        tflite_fp16 = out_dir / produced["float16 TFLite"].name
        for src, dst in ((produced["float32 TFLite"], tflite_fp32), (produced["float16 TFLite"], tflite_fp16)):
            os.replace(src, dst)
        saved_model = out_dir / "saved_model"
        shutil.rmtree(saved_model, ignore_errors=True)
        shutil.move(str(staged), saved_model)
        return Onnx2tfOutputs(saved_model=saved_model, tflite_fp32=tflite_fp32, tflite_fp16=tflite_fp16,
                              log=log, seconds=seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def convert_cached(
    onnx_bytes: bytes, root: str | Path, *, keep_nchw: Sequence[str] = (), timeout: float = 600.0
) -> dict[str, Path]:
    """onnx2tf's outputs for the ONNX model ``onnx_bytes``, converted once into
    ``root/onnx2tf-<hash>`` (the hash covers the bytes, onnx2tf's version and its flags; the
    layout of the integration tests' artifact cache, so the two share conversions) and
    reused after; returns the paths of ``onnx``, ``saved_model``, ``tflite_fp32``, ``tflite_fp16``.
    The directory is built beside its final place and renamed into it when complete;
    ``timeout`` bounds the conversion (seconds)."""
    from .cache import cached_dir, content_key

    flags = " ".join(onnx2tf_flags(keep_nchw=keep_nchw))

    def build(tmp: Path) -> None:
        (tmp / "m.onnx").write_bytes(onnx_bytes)
        convert_onnx2tf(tmp / "m.onnx", tmp, keep_nchw=keep_nchw, timeout=timeout)

    out = cached_dir(root, "onnx2tf", content_key(onnx_bytes, onnx2tf_version(), flags), build)
    return {"onnx": out / "m.onnx", "saved_model": out / "saved_model",
            "tflite_fp32": out / "m_float32.tflite", "tflite_fp16": out / "m_float16.tflite"}


def _clean_log(text: str) -> str:
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # onnx2tf colours its messages
    return "\n".join(line for line in text.splitlines() if line.strip() and not any(n in line for n in _NOISE))


def _tail(log: str, lines: int = 25) -> str:
    kept = log.splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in kept) if kept else "    (nothing)"


# --- injected bugs (what a faulty converter would do) --------------------------------------


def _node(model: Any, name: str) -> Any:
    for node in model.graph.node:
        if node.name == name:
            return node
    from difflib import get_close_matches

    names = [n.name for n in model.graph.node]
    close = get_close_matches(name, names, n=5)
    raise InputError(
        f"the ONNX graph has no node {name!r}"
        + (f"; closest: {', '.join(close)}." if close else f"; its nodes: {', '.join(names[:12])}…")
    )


def node_output(model: Any, name: str) -> str:
    """The (first) output tensor name of ONNX node ``name``."""
    return _node(model, name).output[0]


def relu6_to_relu(model: Any, node: str) -> Any:
    """A copy of ONNX ``model`` with the ReLU6 ``Clip`` node ``node`` turned into a ``Relu``
    (the clip at 6 forgotten): the bug a converter makes when it maps ReLU6 to ReLU."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    target = _node(out, node)
    if target.op_type != "Clip":
        raise InputError(f"node {node!r} is a {target.op_type}, not the Clip of a ReLU6; name a Clip node.")
    target.op_type = "Relu"
    del target.input[1:]
    del target.attribute[:]
    return out


def scale_weight(model: Any, node: str, factor: float) -> Any:
    """A copy of ONNX ``model`` with the weight initializer of node ``node`` (its input 1, a
    Conv's or Gemm's weight) multiplied by ``factor``: a corrupted weight."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    target = _node(out, node)
    if len(target.input) < 2:
        raise InputError(f"node {node!r} ({target.op_type}) has no weight input.")
    weight = target.input[1]
    for i, init in enumerate(out.graph.initializer):
        if init.name == weight:
            scaled = (numpy_helper.to_array(init) * np.float32(factor)).astype(numpy_helper.to_array(init).dtype)
            out.graph.initializer[i].CopyFrom(numpy_helper.from_array(scaled, weight))
            return out
    raise InputError(f"node {node!r}'s weight {weight!r} is not an initializer (it is computed); scale another node.")
