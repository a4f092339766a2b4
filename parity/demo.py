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

        from . import diff
        from .zoo import ConvNet, load_digits_28, to_keras, train_convnet

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
