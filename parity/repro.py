"""A repro to file: the smallest runnable piece of each model that shows a divergence.

``report.save_repro(dir)`` (``parity diff A B --repro DIR``) writes, for the first divergence
(or the layer named), a directory a converter's bug tracker can take as it is:

- ``input_a.npy`` / ``input_b.npy`` — model A's recorded input of the layer, in A's and in B's
  layout (B's layer was fed the second);
- ``output_a.npy`` / ``output_b.npy`` — both layers' outputs as the whole models computed them
  (B's in B's layout);
- each side's layer alone: a torch ``nn`` layer as its class, constructor arguments and weights
  (``a_weights.npz``), a Keras layer as its serialized config and weights, an ONNX model as the
  piece of its graph between the layer's input and its tensor (``b_piece.onnx``);
- ``repro.py`` — needs numpy and the two frameworks only; runs both pieces on the input, prints
  their relative error beside the one parity measured, and exits 0 (1 when a piece cannot be
  rebuilt, saying why).

A TFLite model cannot be cut (its interpreter runs whole models only): the bundle holds the whole
``.tflite`` and the inputs it was fed, and ``repro.py`` reruns it and reads the layer's tensor
against A's recorded output — the error as compared, not the layer's own.  What cannot be cut out
(a custom torch module) is said in ``README.txt`` and in ``repro.py``, which then compares the
recorded outputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ParityError

__all__ = ["ReproSource", "save_repro"]


@dataclass
class ReproSource:
    """What a repro of one layer needs, kept from a live comparison."""

    a_name: str
    b_name: str
    a_op: str
    b_op: str
    #: A's recorded input of the layer (A's layout) and the same in B's layout, or None
    input_a: np.ndarray | None
    input_b: np.ndarray | None
    output_a: np.ndarray
    output_b: np.ndarray
    #: how B's tensor is brought into A's layout: ("identity" | "permute", perm)
    transform: tuple[str, tuple[int, ...] | None]
    rel_err: float
    own_err: float | None
    backend_a: Any = None
    backend_b: Any = None
    #: for a graph B: the tensor whose A counterpart is the layer's input (where the piece starts)
    b_source: str | None = None
    #: B's model inputs as B was fed them, and B's tap's attributes: for a format whose runtime runs
    #: whole models only (TFLite), the bundle reruns the whole model and reads the layer's tensor
    model_inputs_b: Any = None
    b_attrs: dict | None = None


def save_repro(sources: dict[str, ReproSource] | None, out: str | Path, layer: str | None = None,
               first: str | None = None) -> Path:
    """Write the repro bundle of ``layer`` (default: the first divergence ``first``) to ``out``."""
    if not sources:
        raise ParityError(
            "this report has no live models to cut a repro from: it was loaded from a file, or came from "
            "recorded traces, or its pair agrees. Run parity.diff(a, b, inputs) on the live models (or "
            "`parity diff A B --repro DIR`) and call report.save_repro(dir) on that report."
        )
    name = layer or first
    if name is None or name not in sources:
        raise ParityError(
            f"no repro for layer {name!r}: a repro is kept for the layers where an error is born "
            f"({', '.join(sorted(sources))}). Name one of them."
        )
    src = sources[name]
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ParityError(f"cannot write the repro to {str(out)!r}: {exc.strerror}. Give a writable directory.") from exc
    np.save(out / "output_a.npy", np.asarray(src.output_a), allow_pickle=False)
    np.save(out / "output_b.npy", np.asarray(src.output_b), allow_pickle=False)
    if src.input_a is not None:
        np.save(out / "input_a.npy", np.asarray(src.input_a), allow_pickle=False)
    if src.input_b is not None:
        np.save(out / "input_b.npy", np.asarray(src.input_b), allow_pickle=False)
    pieces = {"a": _piece(src.backend_a, src.a_name, out, "a", None),
              "b": _piece(src.backend_b, src.b_name, out, "b", src.b_source, src.model_inputs_b, src.b_attrs)}
    meta = {
        "a_layer": src.a_name, "b_layer": src.b_name, "a_op": src.a_op, "b_op": src.b_op,
        "transform": list(src.transform[:1]) + [list(src.transform[1]) if src.transform[1] else None],
        "rel_err": src.rel_err, "own_err": src.own_err, "pieces": pieces,
        "have_input": src.input_a is not None and src.input_b is not None,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    (out / "repro.py").write_text(_SCRIPT)
    (out / "README.txt").write_text(_readme(meta))
    return out


def _piece(backend: Any, name: str, out: Path, side: str, source: str | None, model_inputs: Any = None,
           attrs: dict | None = None) -> dict:
    """Write ``side``'s layer alone, as its backend can give it — or, for a runtime that runs whole
    models only, the whole model, the inputs it was fed and the tensor to read; the record of what
    was written."""
    if backend is None:
        return {"kind": "none", "why": "the model was not at hand (recorded traces)"}
    try:
        writer = getattr(backend, "export_piece", None)
        if writer is not None:
            return writer(name, out, side, source)
        whole = getattr(backend, "export_whole", None)
        if whole is not None:
            return whole(name, out, side, model_inputs, attrs or {})
    except NotImplementedError as exc:
        return {"kind": "none", "why": str(exc)}
    return {"kind": "none", "why": f"a {backend.framework} model's layers cannot be cut out"}


def _readme(meta: dict) -> str:
    lines = [
        f"parity repro: {meta['a_layer']} ({meta['a_op']}) in A <-> {meta['b_layer']} ({meta['b_op']}) in B",
        f"relative error as compared in the whole models: {meta['rel_err']:.4g}",
    ]
    if meta["own_err"] is not None:
        lines.append(f"own error (B's layer fed A's input): {meta['own_err']:.4g}")
    for side in ("a", "b"):
        p = meta["pieces"][side]
        what = {"torch": "a torch.nn layer: class, arguments and weights", "keras": "a Keras layer: config and weights",
                "onnx": "the piece of the ONNX graph computing it",
                "tfgraph": "the piece of the TensorFlow graph computing it (a frozen GraphDef)",
                "tflite": "the whole TFLite model and the inputs it was fed (the interpreter runs whole models "
                          "only): repro.py reruns it and reads the layer's tensor"}.get(p["kind"], f"not included: {p.get('why', '')}")
        lines.append(f"model {side.upper()}: {what}")
    lines.append("run: python repro.py   (numpy and the frameworks of the pieces only)")
    return "\n".join(lines) + "\n"


_SCRIPT = '''"""Reproduce a divergence parity found: run both layers alone on the input recorded from model A.

Written by parity (report.save_repro / parity diff --repro); needs numpy and the frameworks of
the pieces only.  Prints the relative error of B's layer against A's and exits 0; exits 1 when a
piece cannot be run here, saying why.
"""
import json
import pathlib
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
META = json.loads((HERE / "meta.json").read_text())


def run(piece, x):
    kind = piece["kind"]
    if kind == "torch":
        import torch

        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in piece["kwargs"].items()}
        layer = getattr(torch.nn, piece["class"])(**kwargs)
        state = dict(np.load(HERE / piece["weights"]))
        layer.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        layer.eval()
        with torch.no_grad():
            return layer(torch.from_numpy(x)).numpy()
    if kind == "keras":
        import keras

        layer = keras.saving.deserialize_keras_object(json.loads((HERE / piece["config"]).read_text()))
        layer.build(x.shape)
        weights = np.load(HERE / piece["weights"])
        layer.set_weights([weights[f"w{i}"] for i in range(len(weights.files))])
        return np.asarray(layer(x, training=False))
    if kind == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(HERE / piece["model"]), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x})[0]
    if kind == "tfgraph":
        import tensorflow as tf

        graph_def = tf.compat.v1.GraphDef()
        graph_def.ParseFromString((HERE / piece["model"]).read_bytes())
        graph = tf.Graph()
        with graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as session:
            return session.run(piece["target"], {piece["source"]: x})
    if kind == "tflite":
        return run_whole_tflite(piece)
    raise RuntimeError(piece.get("why", "no piece"))


def run_whole_tflite(piece):
    """The whole TFLite model rerun on the inputs it was fed, the layer's tensor read (dequantized)."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        import tensorflow as tf

        Interpreter, OpResolverType = tf.lite.Interpreter, tf.lite.experimental.OpResolverType
    interp = Interpreter(model_path=str(HERE / piece["model"]), experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    fed = [np.load(HERE / f) for f in piece["inputs"]]
    for d, x in zip(interp.get_input_details(), fed):
        if tuple(d["shape"]) != x.shape:
            interp.resize_tensor_input(d["index"], list(x.shape), strict=False)
    interp.allocate_tensors()
    for d, x in zip(interp.get_input_details(), fed):
        interp.set_tensor(d["index"], x)
    interp.invoke()
    y = interp.get_tensor(piece["tensor_index"])
    (detail,) = [d for d in interp.get_tensor_details() if d["index"] == piece["tensor_index"]]
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if y.dtype.kind in "iu" and scale:
        y = (y.astype(np.float32) - zero_point) * scale
    return y


def to_a_layout(y):
    kind, perm = META["transform"]
    return np.transpose(y, perm) if kind == "permute" and perm else y


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(b - a) / max(np.linalg.norm(a), 1e-30))


def main():
    print(f"A: {META['a_layer']} ({META['a_op']})  <->  B: {META['b_layer']} ({META['b_op']})")
    output_a = np.load(HERE / "output_a.npy")
    recorded = rel(output_a, to_a_layout(np.load(HERE / "output_b.npy")))
    print(f"recorded in the whole models: relative error {recorded:.4e} (parity: {META['rel_err']:.4e})")
    if META["pieces"]["b"].get("whole"):
        try:
            y_b = to_a_layout(run(META["pieces"]["b"], None))
        except Exception as exc:  # noqa: BLE001
            print(f"model B cannot be run here: {exc}")
            return 1
        print(f"B's whole model rerun (its runtime runs whole models only), tensor {META['pieces']['b']['tensor']!r} "
              f"against A's recorded output: relative error {rel(output_a, y_b):.4e}")
        return 0
    if not META["have_input"]:
        print("no recorded input of this layer: the pieces cannot be run alone")
        return 1
    x_a, x_b = np.load(HERE / "input_a.npy"), np.load(HERE / "input_b.npy")
    try:
        y_a = run(META["pieces"]["a"], x_a)
    except Exception as exc:  # noqa: BLE001
        print(f"model A's layer cannot be run here: {exc}")
        y_a = output_a
        print("  (using A's recorded output instead)")
    try:
        y_b = to_a_layout(run(META["pieces"]["b"], x_b))
    except Exception as exc:  # noqa: BLE001
        print(f"model B's layer cannot be run here: {exc}")
        return 1
    alone = rel(y_a, y_b)
    own = META["own_err"]
    print(f"both layers alone on A's input: relative error {alone:.4e}"
          + (f" (parity's own error: {own:.4e})" if own is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''
