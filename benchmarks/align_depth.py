"""How alignment scales with depth: two MLPs of N same-shape layers with different names.

    python -m benchmarks.align_depth [--depths 125,250,500,1000] [--width 16]

Model A's layers are named ``blocks.{i}.fc`` / ``blocks.{i}.act`` (torch), B's ``dense_{i}`` /
``activation_{i}`` (Keras): nothing pairs by name, every layer has the same shape, so every
pair is a candidate for value matching and order alignment.  Three cases per depth:
``faithful`` (B's values equal A's), ``diverged`` (B's values noisy from the middle on: the
second half pairs by order, not values) and ``noise`` (every value of B unrelated to A's).
Prints the wall time of :func:`parity.align.align` per case and depth, and the ratio to the
previous depth (≈ 2 per doubling is linear, ≈ 4 quadratic).  Not a test: figures only.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from parity.align import align
from parity.records import ModelInfo, Tap, Trace


def _trace(values: list[tuple[str, str, np.ndarray]], framework: str) -> Trace:
    taps = [
        Tap(name=name, op=op, index=i, shape=tuple(v.shape), dtype=str(v.dtype), layout="NC", value=v,
            role="output" if op == "output" else "layer")
        for i, (name, op, v) in enumerate(values)
    ]
    return Trace(taps=tuple(taps), model=ModelInfo(framework=framework, framework_version="0", name="mlp", kind="bench"))


def pair(depth: int, width: int, case: str, seed: int = 0) -> tuple[Trace, Trace]:
    rng = np.random.default_rng(seed)
    a_specs, b_specs = [], []
    for i in range(depth):
        fc = rng.standard_normal((2, width)).astype(np.float32)
        act = np.tanh(fc)
        a_specs += [(f"blocks.{i}.fc", "Linear", fc), (f"blocks.{i}.act", "Tanh", act)]
        if case == "noise":
            fc_b, act_b = rng.standard_normal((2, width)).astype(np.float32), rng.standard_normal((2, width)).astype(np.float32)
        elif case == "diverged" and i >= depth // 2:  # half as much noise as signal: paired by order
            fc_b = fc + np.float32(0.5) * rng.standard_normal(fc.shape).astype(np.float32)
            act_b = act + np.float32(0.5) * rng.standard_normal(act.shape).astype(np.float32)
        else:
            fc_b, act_b = fc, act
        b_specs += [(f"dense_{i}", "Dense", fc_b), (f"activation_{i}", "Activation", act_b)]
    out = rng.standard_normal((2, 3)).astype(np.float32)
    a_specs.append(("output", "output", out))
    b_specs.append(("output", "output", out))
    return _trace(a_specs, "torch"), _trace(b_specs, "keras")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="125,250,500,1000")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--cases", default="faithful,diverged,noise")
    args = parser.parse_args(argv)
    depths = [int(d) for d in args.depths.split(",")]
    print(f"{'case':<10} {'depth':>6} {'layers':>7} {'align s':>9} {'× prev':>7} {'matched':>8}")
    for case in args.cases.split(","):
        previous = None
        for depth in depths:
            ta, tb = pair(depth, args.width, case)
            start = time.perf_counter()
            al = align(ta, tb)
            took = time.perf_counter() - start
            ratio = f"{took / previous:.2f}" if previous else "—"
            print(f"{case:<10} {depth:>6} {2 * depth:>7} {took:>9.3f} {ratio:>7} {len(al.matches):>8}", flush=True)
            previous = took


if __name__ == "__main__":
    main()
