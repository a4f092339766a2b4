"""What ``parity.evaluate`` costs over a dataset: the seed ConvNet (PyTorch) and its Keras twin.

    TF_CPP_MIN_LOG_LEVEL=3 python -m benchmarks.evaluate [--samples 4096] [--batch 64] [--repeats 3] [--no-ray]

Measures (goal in brackets), each timed figure the median of ``--repeats`` runs:

a. plain: both models run on the same batches in this process (torch ``no_grad`` forward,
   Keras ``model(x, training=False)`` on the NHWC copy)                         [reference]
b. ``evaluate(layers="outputs")`` throughput ÷ (a)'s                            [≥ 0.85]
c. ``evaluate(layers="all")`` throughput ÷ (a)'s                                [reported]
d. peak RSS (``VmHWM`` of a fresh subprocess running ``evaluate`` on a memory-mapped
   ``.npy``) at 1× and 8× the samples (8192 and 65536: 205 MiB of data at 8×, a fifth of
   the process — loaded whole, it would show)                                   [8× within 10% of 1×]
e. ``engine="ray"`` with 2 workers beside the local engine, both on the same ``.npy``
   (workers load both models from ``package.module:factory`` specs; the wall time includes
   starting the actors), and the per-shard seconds the workers report           [reported]

f. with ``--resnet50``: the Keras ResNet-50 against its PyTorch port (``parity._zoo.resnet50_pair``)
   in one thread, as a Ray worker of one CPU runs it: seconds per sample of plain forwards,
   ``layers="outputs"`` and ``layers="all"`` after the first batch (the plan), to cost a big run
                                                                                [reported]

The pair is built in code (seeded weights, trained-like BatchNorm statistics), the inputs are
seeded uniform images; results go to ``reports/bench-evaluate.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def torch_model():
    """The seed ConvNet with small BatchNorm variances (as after training), eval mode."""
    import torch

    from parity._zoo import ConvNet

    torch.manual_seed(0)
    model = ConvNet()
    rng = np.random.default_rng(0)
    bn = model.layer1[1]
    with torch.no_grad():
        bn.running_var.copy_(torch.from_numpy(rng.uniform(0.002, 0.05, 16).astype(np.float32)))
        bn.running_mean.copy_(torch.from_numpy(rng.normal(0, 0.05, 16).astype(np.float32)))
    return model.eval()


def keras_model():
    """Its hand conversion to Keras, epsilon matched (a correct pair: every sample agrees)."""
    from parity._zoo import to_keras

    return to_keras(torch_model(), bn_epsilon="match", flatten="permute")


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, 1, 28, 28)).astype(np.float32)


def _rss_child(path: str, batch: int, layers: str) -> tuple[int, int, int]:
    """(peak RSS ``VmHWM``, RSS at the end, ``ru_maxrss``) of a fresh process running evaluate on
    ``path``, in KiB.  ``ru_maxrss`` is kept across exec on Linux, so a child of this big process
    reports at least this process's RSS there: ``VmHWM`` (of the child's own memory) is the figure."""
    code = (
        "import resource, sys, parity\n"
        "from benchmarks.evaluate import torch_model, keras_model\n"
        f"r = parity.evaluate(torch_model(), keras_model(), {path!r}, batch_size={batch}, layers={layers!r}, "
        "progress=False)\n"
        "assert r.samples > 0\n"
        "status = {l.split(':')[0]: int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('Vm')}\n"
        "print(status.get('VmHWM', 0), status.get('VmRSS', 0), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    peak, end, maxrss = (int(v) for v in out.stdout.strip().splitlines()[-1].split())
    return peak, end, maxrss


def _memory(args: argparse.Namespace, results: dict, tmp: Path) -> None:
    """(d): peak RSS of fresh processes evaluating 1× and 8× the samples from a memory-mapped .npy."""
    small, big = tmp / "x1.npy", tmp / "x8.npy"
    np.save(small, _images(args.rss_samples, seed=1))
    np.save(big, _images(8 * args.rss_samples, seed=1))
    (rss1, end1, max1), (rss8, end8, max8) = (_rss_child(str(small), args.batch, args.rss_layers),
                                              _rss_child(str(big), args.batch, args.rss_layers))
    results["rss_kib"] = {"1x": rss1, "8x": rss8, "ratio": rss8 / rss1, "end_1x": end1, "end_8x": end8,
                          "ru_maxrss_1x": max1, "ru_maxrss_8x": max8,
                          "samples_1x": args.rss_samples, "data_mib_8x": big.stat().st_size / 2 ** 20}
    print(f"  d. peak RSS, evaluate(layers={args.rss_layers!r}) on a memory-mapped .npy: {args.rss_samples} samples "
          f"{rss1 / 1024:.0f} MiB, {8 * args.rss_samples} samples ({big.stat().st_size / 2 ** 20:.0f} MiB of data) "
          f"{rss8 / 1024:.0f} MiB = {rss8 / rss1:.3f}×  [goal ≤ 1.10] (VmHWM); RSS at the end {end1 / 1024:.0f} vs "
          f"{end8 / 1024:.0f} MiB; ru_maxrss {max1 / 1024:.0f} vs {max8 / 1024:.0f} MiB (holds the parent's RSS)")


def _resnet50(n: int = 64, batch: int = 8) -> dict:
    """Seconds per sample of the ResNet-50 pair in one thread: plain, outputs, all (after the plan)."""
    import torch

    import parity
    from parity._zoo import resnet50_pair

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        keras_model, torch_model = resnet50_pair(224)
        x = np.random.default_rng(0).uniform(0, 1, (n, 224, 224, 3)).astype(np.float32)  # Keras is A: NHWC
        t = time.perf_counter()
        for i in range(0, n, batch):
            with torch.no_grad():
                torch_model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch].transpose(0, 3, 1, 2))))
            keras_model(x[i:i + batch], training=False)
        out = {"plain_s_per_sample": (time.perf_counter() - t) / n}
        for layers in ("outputs", "all"):
            t = time.perf_counter()
            parity.evaluate(keras_model, torch_model, x[:batch], batch_size=batch, layers=layers, progress=False)
            first = time.perf_counter() - t
            t = time.perf_counter()
            parity.evaluate(keras_model, torch_model, x, batch_size=batch, layers=layers, progress=False)
            whole = time.perf_counter() - t
            out[f"{layers}_plan_s"] = first
            out[f"{layers}_s_per_sample"] = (whole - first) / (n - batch)
    finally:
        torch.set_num_threads(before)
    print(f"  f. ResNet-50 pair, one thread, batch {batch}: plain {out['plain_s_per_sample']:.3f} s/sample, "
          f"layers='outputs' {out['outputs_s_per_sample']:.3f} s/sample (+{out['outputs_plan_s']:.0f} s plan), "
          f"layers='all' {out['all_s_per_sample']:.3f} s/sample (+{out['all_plan_s']:.0f} s plan)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rss-samples", type=int, default=8192, help="samples of the 1× memory run (8× is 8 times)")
    parser.add_argument("--rss-layers", default="outputs", help="layers= of the memory runs (default outputs)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray measure")
    parser.add_argument("--only-rss", action="store_true", help="only the memory measure (d)")
    parser.add_argument("--resnet50", action="store_true", help="also cost ResNet-50 per sample in one thread (slow)")
    parser.add_argument("--out", default=str(ROOT / "reports" / "bench-evaluate.json"))
    args = parser.parse_args(argv)

    import torch

    import parity

    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "torch_threads": torch.get_num_threads(), "load_start": os.getloadavg()[0]},
                     "samples": args.samples, "batch": args.batch}
    if args.only_rss:
        with tempfile.TemporaryDirectory() as tmp:
            _memory(args, results, Path(tmp))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        return 0
    ta, kb = torch_model(), keras_model()
    x = _images(args.samples)
    batches = [x[i:i + args.batch] for i in range(0, len(x), args.batch)]

    def plain() -> None:
        for b in batches:
            with torch.no_grad():
                ta(torch.from_numpy(b))
            kb(np.ascontiguousarray(b.transpose(0, 2, 3, 1)), training=False)

    def run(layers: str):
        return lambda: parity.evaluate(ta, kb, x, batch_size=args.batch, layers=layers, progress=False)

    plain()  # warm-up: first calls build graphs and caches
    run("outputs")()
    # round-robin: each round runs all three once, so load from other processes on a shared
    # machine falls on each measure of a round alike
    rounds: dict[str, list[float]] = {"plain": [], "outputs": [], "all": []}
    for _ in range(args.repeats):
        for name, fn in (("plain", plain), ("outputs", run("outputs")), ("all", run("all"))):
            t = time.perf_counter()
            fn()
            rounds[name].append(time.perf_counter() - t)
    t_plain, t_out, t_all = (statistics.median(rounds[k]) for k in ("plain", "outputs", "all"))
    results["rounds_s"] = rounds
    n = args.samples
    results["throughput"] = {
        "plain_samples_per_s": n / t_plain, "outputs_samples_per_s": n / t_out, "all_samples_per_s": n / t_all,
        "outputs_ratio": t_plain / t_out, "all_ratio": t_plain / t_all,
    }
    print(f"throughput over {n} samples, batch {args.batch} (median of {args.repeats}):")
    print(f"  a. plain torch + Keras forwards   {n / t_plain:8.0f} samples/s  ({t_plain:.2f} s)")
    print(f"  b. evaluate(layers='outputs')     {n / t_out:8.0f} samples/s  ({t_out:.2f} s)  "
          f"= {t_plain / t_out:.2f}× plain  [goal ≥ 0.85]")
    print(f"  c. evaluate(layers='all')         {n / t_all:8.0f} samples/s  ({t_all:.2f} s)  = {t_plain / t_all:.2f}× plain")

    with tempfile.TemporaryDirectory() as tmp:
        _memory(args, results, Path(tmp))

        if not args.no_ray:
            path = Path(tmp) / "x.npy"
            np.save(path, x)
            a_spec, b_spec = "benchmarks.evaluate:torch_model", "benchmarks.evaluate:keras_model"
            t = time.perf_counter()
            local = parity.evaluate(a_spec, b_spec, path, batch_size=args.batch, layers="all", progress=False)
            t_local = time.perf_counter() - t
            t = time.perf_counter()
            on_ray = parity.evaluate(a_spec, b_spec, path, batch_size=args.batch, layers="all", engine="ray",
                                     workers=2, shard_batches=8, progress=False)
            t_ray = time.perf_counter() - t
            shard = on_ray.run_info["shard_seconds"]
            per_sample = sum(shard) / n
            results["ray"] = {"local_s": t_local, "ray_s": t_ray, "shards": len(shard), "shard_batches": 8,
                              "shard_seconds": shard, "worker_seconds_per_sample": per_sample,
                              "same_result": local.as_dict()["outputs"] == on_ray.as_dict()["outputs"]}
            print(f"  e. layers='all' on {n} samples from a .npy: local {t_local:.1f} s, Ray 2 workers {t_ray:.1f} s "
                  f"(actor start-up included); {len(shard)} shards of 8 batches, median "
                  f"{statistics.median(shard):.2f} s each = {1e3 * per_sample:.2f} ms per sample per worker")
    if args.resnet50:
        results["resnet50"] = _resnet50()
    results["machine"]["load_end"] = os.getloadavg()[0]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"load average {results['machine']['load_start']:.2f} → {results['machine']['load_end']:.2f}; "
          f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
