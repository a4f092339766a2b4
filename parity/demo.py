"""``parity demo``: the seed's puzzle, solved in one call.

A person trains the classic PyTorch MNIST ConvNet, converts it to Keras by
copying transposed weights (Keras defaults everywhere), and checks it with
``mean(|tf − torch| / |torch|)``.  The check is *worse* with trained weights
than with untrained ones, and nobody can say why.  parity says why.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def _seed_check(torch_out: np.ndarray, keras_out: np.ndarray) -> float:
    """The seed's own metric, which explodes near zero: mean(|tf − torch| / |torch|)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.mean(np.abs((keras_out - torch_out) / torch_out)))


def run_demo(*, epochs: int = 3, out: str | Path = "reports/demo.json", console: Console | None = None) -> int:
    console = console or Console()
    t0 = time.perf_counter()
    console.rule("[bold]parity demo[/] — the seed's MNIST ConvNet, PyTorch → Keras by hand")
    with console.status("importing torch and TensorFlow…"):
        import torch

        import keras  # noqa: F401  (imported here so the status line covers its start-up)

        from .api import diff
        from ._zoo import ConvNet, load_digits_28, to_keras, train_convnet

    x_train, y_train, x_test, y_test = load_digits_28(seed=0)
    console.print(
        f"data: scikit-learn digits upsampled to 28×28 — {len(x_train)} training and {len(x_test)} "
        "held-out images (offline stand-in for MNIST)"
    )
    torch.manual_seed(0)
    model = ConvNet()
    untrained = copy.deepcopy(model).eval()

    with Progress(
        TextColumn("training ConvNet"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("train", total=None, loss=float("nan"))

        def on_step(epoch: int, step: int, total_steps: int, loss: float) -> None:
            progress.update(task, total=total_steps * epochs, completed=epoch * total_steps + step + 1, loss=loss)

        model, accuracy = train_convnet(model, epochs=epochs, seed=0, progress=on_step)
    console.print(f"held-out accuracy of the trained PyTorch model: [bold]{100 * accuracy:.1f}%[/]")

    bn = model.layer1[1]
    console.print(
        f"trained BatchNorm running_var: median {float(bn.running_var.median()):.4f} "
        f"(min {float(bn.running_var.min()):.4f}); untrained: 1.0"
    )
    console.print(
        "converting both to Keras the way the seed does: conv OIHW→HWIO, dense (out,in)→(in,out), "
        "BatchNorm weights copied, Permute before Flatten — Keras defaults otherwise"
    )
    keras_trained = to_keras(model, bn_epsilon="keras-default", flatten="permute")
    keras_untrained = to_keras(untrained, bn_epsilon="keras-default", flatten="permute")

    x = x_test[:32]
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    rows = []
    for label, tm, km in (("untrained", untrained, keras_untrained), ("trained", model, keras_trained)):
        with torch.no_grad():
            t_out = tm(torch.from_numpy(x)).numpy()
        k_out = np.asarray(km(x_nhwc, training=False))
        agree = float(np.mean(t_out.argmax(1) == k_out.argmax(1)))
        rows.append((label, _seed_check(t_out, k_out), agree))
    console.print(
        Panel(
            "\n".join(
                f"{label:>9}: mean(|tf−torch|/|torch|) = {err:.2e}, labels agree on {100 * agree:.0f}% of images"
                for label, err, agree in rows
            )
            + "\n[dim]The seed's check: larger with trained weights, labels agree — so is the conversion right?[/]",
            title="the hand-rolled check",
        )
    )

    console.rule("parity.diff(untrained torch, untrained keras, x)")
    report_untrained = diff(untrained, keras_untrained, x)
    console.print(report_untrained)
    console.rule("parity.diff(trained torch, trained keras, x, baseline=the untrained pair)")
    report = diff(model, keras_trained, x, baseline=report_untrained)
    console.print(report)

    out = Path(out)
    report.to_json(out)
    html = out.with_suffix(".html")
    report.to_html(html)
    untrained_json = out.parent / "demo-untrained.json"
    report_untrained.to_json(untrained_json)
    console.print(f"reports written: {html} (open it in a browser), {out}, {untrained_json}", highlight=False)
    console.print(f"[dim]demo finished in {time.perf_counter() - t0:.1f} s[/]")
    return 0


# --- parity demo --chain -------------------------------------------------------------------

#: the ONNX node whose ReLU6 the demo's "faulty converter" turns into a plain ReLU
CHAIN_BUG_NODE = "/block1/relu2/Clip"
CHAIN_STAGES = ("torch", "onnx", "saved_model", "tflite_fp32", "tflite_fp16")


def run_chain_demo(
    *,
    out: str | Path = "reports/chain-demo.json",
    work_dir: str | Path | None = None,
    console: Console | None = None,
) -> int:
    """``parity demo --chain``: a small MobileNet-style CNN through torch → ONNX → onnx2tf
    (SavedModel, float32 and float16 TFLite), with one bug injected where onnx2tf works — the
    ReLU6 of ``block1.relu2`` converted as a plain ReLU — and ``parity.chain`` saying which
    stage broke which layer.  Converted files are kept in ``work_dir`` (default: beside
    ``out``, in ``chain-artifacts/``) and reused.  Without onnx2tf it says what to install and
    returns 0."""
    from ._zoo.onnx2tf_chain import ONNX2TF_INSTALL, missing_onnx2tf_modules

    console = console or Console()
    t0 = time.perf_counter()
    console.rule("[bold]parity demo --chain[/] — torch → ONNX → onnx2tf (SavedModel, TFLite fp32, TFLite fp16)")
    missing = [m for m in missing_onnx2tf_modules() + _missing("torch", "onnxruntime")]
    if missing:
        console.print("skipped: ", style="yellow", end="")
        console.print(
            f"the chain demo runs the real converters, and {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed. Install onnx2tf with:\n  {ONNX2TF_INSTALL}\n"
            "(torch and onnxruntime: pip install -e '.[torch,tf,onnx]'), then run `parity demo --chain` again.",
            markup=False, highlight=False,
        )
        return 0
    out = Path(out)
    work = Path(work_dir) if work_dir is not None else out.parent / "chain-artifacts"
    with console.status("importing torch, ONNX and TensorFlow…"):
        import onnx

        import tensorflow  # noqa: F401  (imported here so the status line covers its start-up)

        from .chain import chain
        from ._zoo.onnx2tf_chain import (
            convert_cached,
            export_onnx,
            relu6_to_relu,
            tiny_mobilenet,
        )

    model, x = tiny_mobilenet(seed=0)
    console.print(
        f"model: a MobileNet-style CNN (stem conv, two depthwise/pointwise blocks, BatchNorm + ReLU6 after "
        f"every conv), input {'×'.join(map(str, x.shape))} NCHW"
    )
    onnx_path = export_onnx(model, x, work / "exported" / "m.onnx")
    console.print(f"1. torch.onnx.export → {onnx_path} (BatchNorm folded into the Conv before it)")
    faithful = onnx.load(str(onnx_path))
    broken = relu6_to_relu(faithful, CHAIN_BUG_NODE)
    console.print(
        "2. the injected bug: onnx2tf is fed a graph whose ReLU6 at block1.relu2 (ONNX "
        f"{CHAIN_BUG_NODE}) became a plain ReLU — as if the converter forgot the clip at 6"
    )
    with console.status("running onnx2tf on the faithful graph (once; cached after)…"):
        t = time.perf_counter()
        good = convert_cached(faithful.SerializeToString(), work)
        t_good = time.perf_counter() - t
    with console.status("running onnx2tf on the graph with the bug (once; cached after)…"):
        t = time.perf_counter()
        bad = convert_cached(broken.SerializeToString(), work)
        t_bad = time.perf_counter() - t
    console.print(
        f"3. onnx2tf → SavedModel + float32/float16 TFLite in {t_good + t_bad:.1f} s "
        f"({'cached' if t_good + t_bad < 2 else 'converted'}): {bad['saved_model'].parent}"
    )
    stages = [model, good["onnx"], bad["saved_model"], bad["tflite_fp32"], bad["tflite_fp16"]]
    console.rule("parity.chain(\\[torch, onnx, saved_model, tflite_fp32, tflite_fp16], x)")
    report = chain(stages, x, names=list(CHAIN_STAGES))  # automatic alignment at every stage
    console.print(report)
    console.print(Panel(_chain_story(report), title="what the matrix says"))
    html = out.with_suffix(".html")
    report.to_json(out)
    report.to_html(html)
    console.print(f"reports written: {html} (open it in a browser), {out}", highlight=False)
    console.print(f"[dim]demo finished in {time.perf_counter() - t0:.1f} s[/]")
    return 0


def _chain_story(report) -> str:
    """The matrix in words, read off the report."""
    lines = []
    brk = report.first_break
    if brk is None:
        lines.append("every stage agrees with the PyTorch model.")
    else:
        row = report.row(brk.layer) if brk.layer else None
        lines.append(f"[bold]{brk.stage}[/] is the first stage that goes wrong"
                     + (f", at [bold]{brk.layer}[/] ({row.op})" if row else "") + ".")
        if row is not None:
            before = [c.stage for c in row.cells if c.ok]
            after = [c.stage for c in row.cells if c.status == "inherited"]
            if before:
                lines.append(f"{', '.join(before)} still computed {brk.layer} right; "
                             f"{', '.join(after) or 'no later stage'} only inherit the error.")
    for i, stage in enumerate(report.stages[1:], start=1):
        if report.is_precision_stage(i):
            cells = [r.cells[i - 1] for r in report.matrix if r.cells[i - 1].compared]
            quant = [c for c in cells if c.status == "quantisation"]
            if quant:
                worst = max(c.rel_err for c in quant)
                lines.append(f"{stage} is {report.precisions[i]}: judged with its own tolerance, "
                             f"{len(quant)} layer(s) differ by up to {worst:.1e} — expected quantisation error (≈).")
    lines.append("Conv and BatchNorm rows are blank where a converter folded them (BatchNorm into the Conv, "
                 "the ReLU6 into TFLite's CONV_2D).")
    return "\n".join(lines)


def _missing(*modules: str) -> list[str]:
    import importlib.util

    return [m for m in modules if importlib.util.find_spec(m) is None]
