"""What parity costs on a real network: the Keras ResNet-50 and its PyTorch port.

    TF_CPP_MIN_LOG_LEVEL=3 KERAS_BACKEND=tensorflow python -m benchmarks.run [--batch 8] [--size 224] [--repeats 5]

Every timed figure is the median of ``--repeats`` runs after one warm-up run (the best run
and all samples are in the JSON).  (a)–(e) run round-robin — each round runs all five once —
so load from other processes on a shared machine falls on every measure of a round alike.  The pair is :func:`parity._zoo.resnet50.resnet50_pair` (Keras'
v1 layout, trained-like BatchNorm statistics), saved once to a scratch directory so the
subprocess measurements load the very same weights.

Measures (goal in brackets):

a. plain torch forward (``torch.no_grad()``, eval)                               [reference]
b. plain Keras ``model(x, training=False)``                                        [reference]
c. ``parity.diff(torch, keras, x)`` wall, and ÷ (a + b)                             [≤ 1.5]
   c64: ``parity.diff(..., reference="float64")`` ÷ (a + b + a64), a64 the plain float64
   torch forward its twin adds (the float64 reference's cost: one more run of one model) [≤ 1.5]
d. ``parity.capture(torch_model, x)`` ÷ (a)                                          [≤ 1.15]
e. ``parity.capture(keras_model, x)`` ÷ (b)                                          [≤ 1.5]
f. ``parity.compare.compare`` over every aligned pair of a precomputed alignment   [≤ 0.3 s]
g. peak RSS of a fresh subprocess running ``parity.diff`` ÷ one running the two
   plain forwards (``VmHWM`` of each child)                                         [≤ 1.2]
   g_spill: the same with ``max_memory="256MB"`` (activations spilled to disk)       [≤ 1.2]
h. ``parity.capture(torch, x, granularity="ops")`` ÷ TorchLens ``trace`` with every
   layer saved, in a fresh subprocess (TorchLens wraps torch's functions for good)   [≤ 0.33]
i. ``parity diff a.onnx b.onnx`` ÷ Polygraphy layerwise (``polygraphy run
   --onnxrt --onnx-outputs mark all`` saving, then comparing against, every tensor),
   both as the CLI a user runs (interpreter start-up included)                      [≤ 0.05]

A measure that misses its goal is printed with what bounds it: a cProfile of the call
(top functions by own time, and parity's stages by cumulative time), or for memory the bytes
the two traces hold.  Results go to ``reports/bench.json``.  The machine may be shared:
the load average at start and end is recorded, and timings are only as steady as it is.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

ROOT = Path(__file__).resolve().parents[1]
#: the ``max_memory`` of the spilling peak-RSS run (g_spill)
SPILL_BUDGET = "256MB"

#: parity's stages inside ``parity.diff``: (label, file suffix, function name)
STAGES = (
    ("prepare_inputs", "parity/inputs.py", "prepare_inputs"),
    ("capture torch", "parity/capture/torch.py", "capture"),
    ("capture keras", "parity/capture/keras.py", "capture"),
    ("capture onnx", "parity/capture/onnx.py", "capture"),
    ("align", "parity/align.py", "align"),
    ("compare (metrics)", "parity/compare.py", "compare"),
    ("own_errors (replay)", "parity/replay.py", "own_errors"),
    ("diagnose", "parity/diagnose/__init__.py", "diagnose"),
    ("weight parity", "parity/api.py", "_weight_parity"),
    ("model-level diagnoses", "parity/api.py", "_model_level_diagnoses"),
    ("explain first", "parity/api.py", "_explain_first"),
)


# --- measuring -------------------------------------------------------------------------


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> dict:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return {"median": statistics.median(samples), "min": min(samples), "samples": samples}


def timed_interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, dict]:
    """Like :func:`timed` for several functions, run round-robin: round r runs each once."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[k].append(time.perf_counter() - t0)
    return {k: {"median": statistics.median(v), "min": min(v), "samples": v} for k, v in samples.items()}


def profile(fn: Callable[[], Any], top: int = 12) -> dict:
    """One profiled call: top functions by own time, and parity's stages by cumulative time."""
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    fn()
    prof.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    raw = stats.stats  # type: ignore[attr-defined]

    def label(key: tuple) -> str:
        filename, line, func = key
        if filename == "~":
            return func
        parts = Path(filename).parts
        short = "/".join(parts[-3:]) if "site-packages" not in parts else "/".join(
            parts[parts.index("site-packages") + 1:][:1] + parts[-1:]
        )
        return f"{short}:{line}({func})"

    rows = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    by_tottime = [
        {"function": label(k), "calls": v[1], "tottime": round(v[2], 4), "cumtime": round(v[3], 4)} for k, v in rows
    ]
    stages = {}
    for name, suffix, func in STAGES:
        ct = sum(v[3] for k, v in raw.items() if k[0].endswith(suffix) and k[2] == func)
        if ct:
            stages[name] = round(ct, 4)
    return {"wall_profiled": round(wall, 4), "top_tottime": by_tottime, "stages_cumtime": stages}


def trace_bytes(trace: Any) -> int:
    return int(sum(t.value.nbytes for t in trace.taps if t.value is not None))


def peak_rss_mb() -> float:
    """This process's peak RSS.  ``VmHWM`` belongs to the process's own address space;
    ``ru_maxrss`` would not do: Linux carries it across ``execve``, so a child started by a
    4 GB parent reports at least the parent's 4 GB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(mode: str, workdir: Path, repeats: int) -> None:
    """Run in a fresh interpreter; print one JSON line."""
    import numpy as np

    x = np.load(workdir / "x.npy")
    out: dict[str, Any] = {}
    if mode in ("rss-load", "rss-plain", "rss-diff", "rss-diff-spill", "rss-diff-64"):
        tm, km = _load_pair(workdir)
        if mode == "rss-plain":
            import torch

            with torch.no_grad():
                tm(torch.from_numpy(x))
            km(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), training=False)
        elif mode == "rss-diff":
            import parity

            report = parity.diff(tm, km, x)
            out["ok"] = bool(report.ok)
        elif mode == "rss-diff-64":
            import parity

            report = parity.diff(tm, km, x, reference="float64")
            out["ok"] = bool(report.ok)
        elif mode == "rss-diff-spill":
            import parity

            report = parity.diff(tm, km, x, max_memory=SPILL_BUDGET)
            out["ok"] = bool(report.ok)
        out["maxrss_mb"] = peak_rss_mb()
    elif mode == "torchlens":
        import torch

        import parity

        tm = _load_torch(workdir)
        xt = torch.from_numpy(x)
        trace = parity.capture(tm, x, granularity="ops")
        out["parity_tensors"] = len(trace.taps)
        del trace

        def plain() -> Any:
            with torch.no_grad():
                return tm(xt)

        # parity first: TorchLens wraps torch's functions for the rest of the process
        t = timed_interleaved(
            {
                "plain": plain,
                "parity_modules": lambda: parity.capture(tm, x),
                "parity_ops": lambda: parity.capture(tm, x, granularity="ops"),
            },
            repeats,
        )
        out.update(t)
        out["profile"] = profile(lambda: parity.capture(tm, x, granularity="ops"))
        try:
            import torchlens as tl
            from torchlens.options import CaptureOptions
        except Exception as exc:  # noqa: BLE001
            out["skipped"] = f"torchlens not importable: {type(exc).__name__}: {exc}"
        else:
            opts = CaptureOptions(layers_to_save="all", cache=False)
            logged = tl.trace(tm, xt, capture=opts)
            out["torchlens_tensors"] = len(logged.layers)
            out["torchlens_version"] = tl.__version__
            del logged
            out["torchlens"] = timed(lambda: tl.trace(tm, xt, capture=opts), repeats)
    print("BENCH-JSON " + json.dumps(out))


def _load_torch(workdir: Path) -> Any:
    import torch

    from parity._zoo.resnet50 import ResNet50

    meta = json.loads((workdir / "meta.json").read_text())
    tm = ResNet50(num_classes=meta["classes"])
    tm.load_state_dict(torch.load(workdir / "resnet50.pt"))
    return tm.eval()


def _load_pair(workdir: Path) -> tuple[Any, Any]:
    import keras

    return _load_torch(workdir), keras.saving.load_model(workdir / "resnet50.keras", compile=False)


def run_child(mode: str, workdir: Path, repeats: int, timeout: float = 1800) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.run", "--child", mode, "--workdir", str(workdir), "--repeats", str(repeats)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH-JSON "):
            return json.loads(line[len("BENCH-JSON "):])
    raise RuntimeError(f"child {mode} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def wall(cmd: list[str], timeout: float = 1800) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
    elapsed = time.perf_counter() - t0
    if proc.returncode not in (0, 1):  # parity diff exits 1 when the models disagree
        raise RuntimeError(f"{' '.join(cmd[:3])}… failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return elapsed


# --- the run ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measure, after one warm-up (default 5)")
    p.add_argument("--onnx-batch", type=int, default=1, help="batch of the ONNX comparison (i) (default 1)")
    p.add_argument("--onnx-repeats", type=int, default=3, help="CLI runs per tool for (i) (default 3)")
    p.add_argument("--skip", default="", help="comma-separated measures to skip, e.g. h,i")
    p.add_argument("--json", default=str(ROOT / "reports" / "bench.json"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, Path(args.workdir), args.repeats)
        return 0

    import numpy as np
    import torch
    from rich.console import Console

    import parity
    from parity.align import align
    from parity.compare import compare
    from parity.tolerance import Tolerances
    from parity._zoo.resnet50 import resnet50_pair

    console = Console(width=max(Console().width, 150))
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    results: dict[str, Any] = {
        "config": {
            "batch": args.batch,
            "size": args.size,
            "repeats": args.repeats,
            "warmup": 1,
            "torch_threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "loadavg_start": os.getloadavg(),
        },
        "measures": {},
        "profiles": {},
        "context": {},
        "notes": [],
    }
    measures: dict[str, dict] = results["measures"]

    def record(key: str, label: str, value: float | None, unit: str, goal: float | None = None, **extra: Any) -> None:
        ok = None if goal is None or value is None else value <= goal
        measures[key] = {"label": label, "value": value, "unit": unit, "goal": goal, "ok": ok, **extra}
        shown = "skipped" if value is None else f"{value:.3f} {unit}"
        console.print(f"  ({key}) {label}: {shown}" + ("" if goal is None else f"  [goal ≤ {goal}]"))

    console.print(f"[bold]ResNet-50 pair[/] batch {args.batch}, {args.size}×{args.size}, median of {args.repeats} after 1 warm-up")
    t0 = time.perf_counter()
    keras_model, torch_model = resnet50_pair(input_size=args.size, seed=0)
    results["config"]["build_pair_s"] = round(time.perf_counter() - t0, 2)
    x = np.random.default_rng(0).standard_normal((args.batch, 3, args.size, args.size)).astype("float32")
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    xt = torch.from_numpy(x)

    workdir = Path(tempfile.mkdtemp(prefix="parity-bench-"))
    try:
        keras_model.save(workdir / "resnet50.keras")
        torch.save(torch_model.state_dict(), workdir / "resnet50.pt")
        np.save(workdir / "x.npy", x)
        (workdir / "meta.json").write_text(json.dumps({"classes": torch_model.num_classes}))

        # (a)–(e) interleaved: each round runs all five once, so a burst of load from another
        # process on the machine hits every measure of that round alike
        def torch_forward() -> Any:
            with torch.no_grad():
                return torch_model(xt)

        import copy

        torch64, xt64 = copy.deepcopy(torch_model).double(), xt.double()

        def torch_forward64() -> Any:
            with torch.no_grad():
                return torch64(xt64)

        report = parity.diff(torch_model, keras_model, x)
        results["report"] = {
            "ok": report.ok,
            "coverage": list(report.coverage),
            "max_rel_err": max(d.metrics.rel_err for d in report.layers),
        }
        t = timed_interleaved(
            {
                "a": torch_forward,
                "b": lambda: keras_model(x_nhwc, training=False),
                "c": lambda: parity.diff(torch_model, keras_model, x),
                "d": lambda: parity.capture(torch_model, x),
                "e": lambda: parity.capture(keras_model, x_nhwc),
                "a64": torch_forward64,
                "c64": lambda: parity.diff(torch_model, keras_model, x, reference="float64"),
            },
            args.repeats,
        )
        ta, tb, tc, td, te = (t[k] for k in "abcde")
        ta64, tc64 = t["a64"], t["c64"]
        plain = ta["median"] + tb["median"]
        record("a", "plain torch forward", ta["median"], "s", samples=ta["samples"], min=ta["min"])
        record("b", "plain Keras model(x, training=False)", tb["median"], "s", samples=tb["samples"], min=tb["min"])
        record("c_wall", "parity.diff wall", tc["median"], "s", samples=tc["samples"], min=tc["min"])
        per_round = lambda num, den: statistics.median(n / d for n, d in zip(num, den))  # noqa: E731
        ab = [x + y for x, y in zip(ta["samples"], tb["samples"])]
        record("c", "parity.diff ÷ (a + b)", tc["median"] / plain, "×", 1.5,
               ratio_of_mins=tc["min"] / (ta["min"] + tb["min"]), median_of_round_ratios=per_round(tc["samples"], ab))
        record("a64", "plain float64 torch forward", ta64["median"], "s", samples=ta64["samples"], min=ta64["min"])
        record("c64_wall", "parity.diff(reference='float64') wall", tc64["median"], "s", samples=tc64["samples"],
               min=tc64["min"])
        record("c64", "parity.diff(reference='float64') ÷ (a + b + a64)", tc64["median"] / (plain + ta64["median"]),
               "×", 1.5, over_plain_diff=tc64["median"] / tc["median"])
        record("d_wall", "parity.capture(torch) wall", td["median"], "s", samples=td["samples"], min=td["min"])
        record("d", "torch capture ÷ (a)", td["median"] / ta["median"], "×", 1.15, ratio_of_mins=td["min"] / ta["min"],
               median_of_round_ratios=per_round(td["samples"], ta["samples"]))
        record("e_wall", "parity.capture(keras) wall", te["median"], "s", samples=te["samples"], min=te["min"])
        record("e", "Keras capture ÷ (b)", te["median"] / tb["median"], "×", 1.5, ratio_of_mins=te["min"] / tb["min"],
               median_of_round_ratios=per_round(te["samples"], tb["samples"]))
        def missed(key: str) -> bool:  # by the median, or even by the best run
            m = measures[key]
            return m["ok"] is False or m.get("ratio_of_mins", 0.0) > m["goal"]

        if missed("c"):
            results["profiles"]["c"] = profile(lambda: parity.diff(torch_model, keras_model, x))
        if missed("d"):
            results["profiles"]["d"] = profile(lambda: parity.capture(torch_model, x))
        if missed("e"):
            results["profiles"]["e"] = profile(lambda: parity.capture(keras_model, x_nhwc))

        # (f) metrics over a precomputed alignment
        trace_a, trace_b = parity.capture(torch_model, x), parity.capture(keras_model, x_nhwc)
        alignment = align(trace_a, trace_b)
        tol = Tolerances.build()
        tf_ = timed(lambda: compare(alignment, tol), args.repeats)
        record("f", f"compare() on {len(alignment.matches)} aligned pairs", tf_["median"], "s", 0.3,
               samples=tf_["samples"], min=tf_["min"])
        if tf_["median"] > 0.3:
            results["profiles"]["f"] = profile(lambda: compare(alignment, tol))

            def one_pass() -> None:  # the floor: read every compared value once, in float32
                for m in alignment.matches:
                    for v in (m.a.value, m.b.value):
                        flat = v.reshape(-1)
                        np.dot(flat, flat)

            floor = timed(one_pass, args.repeats)
            results["profiles"]["f"]["one_float32_read_of_both_traces_s"] = round(floor["median"], 4)
            console.print(f"      floor: one float32 read of both traces' values takes {floor['median']:.3f} s")
        bytes_a, bytes_b = trace_bytes(trace_a), trace_bytes(trace_b)
        results["traces"] = {"torch_taps": len(trace_a.taps), "keras_taps": len(trace_b.taps),
                             "torch_mb": round(bytes_a / 2**20, 1), "keras_mb": round(bytes_b / 2**20, 1)}
        del trace_a, trace_b, alignment, report

        # (g) peak RSS, one fresh subprocess per measurement
        if "g" not in skip:
            modes = ("rss-load", "rss-plain", "rss-diff", "rss-diff-spill", "rss-diff-64")
            rss = {mode: run_child(mode, workdir, 1)["maxrss_mb"] for mode in modes}
            record("g", "peak RSS parity.diff ÷ plain forwards", rss["rss-diff"] / rss["rss-plain"], "×", 1.2,
                   rss_mb=rss)
            record("g_spill", f"peak RSS parity.diff(max_memory={SPILL_BUDGET!r}) ÷ plain forwards",
                   rss["rss-diff-spill"] / rss["rss-plain"], "×", 1.2, rss_mb=rss)
            record("g64", "peak RSS parity.diff(reference='float64') ÷ plain forwards",
                   rss["rss-diff-64"] / rss["rss-plain"], "×", 1.2, rss_mb=rss)
            if measures["g"]["ok"] is False:
                results["profiles"]["g"] = {
                    "rss_models_loaded_mb": round(rss["rss-load"]),
                    "rss_plain_forwards_mb": round(rss["rss-plain"]),
                    "rss_parity_diff_mb": round(rss["rss-diff"]),
                    "torch_trace_values_mb": results["traces"]["torch_mb"],
                    "keras_trace_values_mb": results["traces"]["keras_mb"],
                }
            console.print(f"      peak RSS MB: models loaded {rss['rss-load']:.0f}, + plain forwards "
                          f"{rss['rss-plain']:.0f}, + parity.diff {rss['rss-diff']:.0f}, + parity.diff spilling "
                          f"past {SPILL_BUDGET} {rss['rss-diff-spill']:.0f}")
        else:
            record("g", "peak RSS parity.diff ÷ plain forwards", None, "×", 1.2)

        # (h) op-level capture vs TorchLens
        if "h" not in skip:
            h = run_child("torchlens", workdir, args.repeats)
            if "skipped" in h:
                record("h", "parity ops capture ÷ TorchLens", None, "×", 0.33, note=h["skipped"])
                results["notes"].append(h["skipped"])
            else:
                record("h_parity", f"parity.capture(ops) wall ({h['parity_tensors']} tensors)", h["parity_ops"]["median"],
                       "s", samples=h["parity_ops"]["samples"], min=h["parity_ops"]["min"])
                record("h_torchlens", f"TorchLens {h['torchlens_version']} trace, all saved ({h['torchlens_tensors']} tensors)",
                       h["torchlens"]["median"], "s", samples=h["torchlens"]["samples"], min=h["torchlens"]["min"])
                record("h", "parity ops capture ÷ TorchLens", h["parity_ops"]["median"] / h["torchlens"]["median"], "×", 0.33,
                       ratio_of_mins=h["parity_ops"]["min"] / h["torchlens"]["min"])
                results["context"]["h_child"] = {
                    k: {"median": h[k]["median"], "min": h[k]["min"]} for k in ("plain", "parity_modules", "parity_ops")
                }
                console.print("      same child, interleaved: plain forward {plain:.3f} s, module capture {mod:.3f} s, "
                              "op capture {ops:.3f} s (medians)".format(
                                  plain=h["plain"]["median"], mod=h["parity_modules"]["median"], ops=h["parity_ops"]["median"]))
                if measures["h"]["ok"] is False or measures["h"]["ratio_of_mins"] > 0.33:
                    results["profiles"]["h"] = h["profile"]
        else:
            record("h", "parity ops capture ÷ TorchLens", None, "×", 0.33)

        # (i) ONNX: parity's CLI vs Polygraphy layerwise
        if "i" not in skip:
            measure_onnx(args, torch_model, workdir, record, results)
        else:
            record("i", "parity diff a.onnx b.onnx ÷ Polygraphy layerwise", None, "×", 0.05)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    results["config"]["loadavg_end"] = os.getloadavg()
    print_table(console, results)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    console.print(f"wrote {out}")
    return 0


def measure_onnx(args: argparse.Namespace, torch_model: Any, workdir: Path, record: Callable, results: dict) -> None:
    import numpy as np
    import torch

    if shutil.which("polygraphy", path=str(Path(sys.executable).parent)) is None:
        record("i", "parity diff a.onnx b.onnx ÷ Polygraphy layerwise", None, "×", 0.05,
               note="polygraphy not installed")
        results["notes"].append("(i) skipped: polygraphy not installed")
        return
    a, b = workdir / "a.onnx", workdir / "b.onnx"
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((args.onnx_batch, 3, args.size, args.size)).astype("float32"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and constant-folding notes
        torch.onnx.export(torch_model, (x,), str(a), input_names=["input"], output_names=["logits"], dynamo=False)
    shutil.copy(a, b)  # the same model twice: both tools compare every tensor and find them equal
    np.save(workdir / "x_onnx.npy", x.numpy())
    bindir = Path(sys.executable).parent
    parity_cmd = [str(bindir / "parity"), "diff", str(a), str(b), "--inputs", str(workdir / "x_onnx.npy"),
                  "--json", str(workdir / "onnx-report.json")]
    poly = str(bindir / "polygraphy")
    ref = workdir / "poly-a.json"
    poly_save = [poly, "run", str(a), "--onnxrt", "--onnx-outputs", "mark", "all", "--save-outputs", str(ref)]
    poly_cmp = [poly, "run", str(b), "--onnxrt", "--onnx-outputs", "mark", "all", "--load-outputs", str(ref)]

    def polygraphy() -> float:
        return wall(poly_save) + wall(poly_cmp)

    n = max(1, args.onnx_repeats)
    wall(parity_cmd)  # warm-up (file cache)
    tp = [wall(parity_cmd) for _ in range(n)]
    polygraphy()
    tg = [polygraphy() for _ in range(n)]
    pm, gm = statistics.median(tp), statistics.median(tg)
    record("i_parity", f"parity diff a.onnx b.onnx (CLI, batch {args.onnx_batch})", pm, "s", samples=tp, min=min(tp))
    record("i_polygraphy", "polygraphy run … --onnx-outputs mark all, save + compare", gm, "s", samples=tg, min=min(tg))
    record("i", "parity diff a.onnx b.onnx ÷ Polygraphy layerwise", pm / gm, "×", 0.05, ratio_of_mins=min(tp) / min(tg))
    if pm / gm > 0.05:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import parity.cli"], cwd=ROOT, check=True)
        import_parity = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import onnxruntime, onnx"], cwd=ROOT, check=True)
        import_ort = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], cwd=ROOT, check=True)
        bare = time.perf_counter() - t0
        results["profiles"]["i"] = {
            "python_startup_s": round(bare, 3),
            "import_parity_cli_s": round(import_parity, 3),
            "import_onnx_onnxruntime_s": round(import_ort, 3),
            "profile_in_process": profile(lambda: __import__("parity").diff(str(a), str(b), x.numpy())),
        }


def print_table(console: Any, results: dict) -> None:
    from rich.table import Table

    cfg = results["config"]
    table = Table(title=f"parity benchmarks — ResNet-50, batch {cfg['batch']}, {cfg['size']}×{cfg['size']}, "
                        f"median of {cfg['repeats']} (load avg {cfg['loadavg_start'][0]:.1f} → {cfg['loadavg_end'][0]:.1f})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("best run", justify="right")
    table.add_column("per-round", justify="right")
    table.add_column("goal", justify="right")
    table.add_column("", justify="center")
    for key, m in results["measures"].items():
        value = "skipped" if m["value"] is None else (f"{m['value']:.3f} s" if m["unit"] == "s" else f"{m['value']:.2f}×")
        goal = "" if m["goal"] is None else f"≤ {m['goal']}{' s' if m['unit'] == 's' else '×'}"
        mark = "" if m["ok"] is None else ("[green]✓[/]" if m["ok"] else "[red]✗[/]")
        best = m.get("min", m.get("ratio_of_mins"))
        best = "" if best is None else (f"{best:.3f} s" if "min" in m else f"{best:.2f}×")
        paired = m.get("median_of_round_ratios")
        paired = "" if paired is None else f"{paired:.2f}×"
        table.add_row(f"({key}) {m['label']}", value, best, paired, goal, mark)
    console.print(table)
    rep = results.get("report")
    if rep:
        console.print(f"parity.diff verdict: ok={rep['ok']}, coverage {rep['coverage'][0]}/{rep['coverage'][1]}, "
                      f"max rel err {rep['max_rel_err']:.2e}")
    tr = results.get("traces")
    if tr:
        console.print(f"traces held: torch {tr['torch_taps']} taps / {tr['torch_mb']} MB, "
                      f"Keras {tr['keras_taps']} taps / {tr['keras_mb']} MB")
    for key, prof in results["profiles"].items():
        console.print(f"\n[bold]({key}) missed its goal — what bounds it[/]")
        inner = prof.get("profile_in_process", prof)
        for k, v in prof.items():
            if k != "profile_in_process" and not isinstance(v, (dict, list)):
                console.print(f"  {k}: {v}")
        if "stages_cumtime" in inner:
            console.print(f"  profiled wall {inner['wall_profiled']:.3f} s; parity stages (cumulative s): "
                          + ", ".join(f"{k} {v:.3f}" for k, v in inner["stages_cumtime"].items()))
            for row in inner["top_tottime"][:10]:
                console.print(f"    {row['tottime']:8.3f} s own  {row['cumtime']:8.3f} s cum  {row['calls']:>7}×  {row['function']}")


if __name__ == "__main__":
    sys.exit(main())
