"""The distribution of error/noise ratios the float64 reference sees on the corpus.

``PARITY_CORPUS_REFERENCE=float64 PARITY_CORPUS_READINGS=FILE python -m tests.corpus.run ...``
writes one line per pair; ``python -m tests.corpus.noise FILE`` prints, for the faithful pairs,
the quantiles of each layer's ``ref_err / noise`` and of each pair's largest, the layers
over :data:`parity.reference.NOISE_FACTOR` and, for the bug pairs, the ratio at the bug's layer:
what the factor was chosen from.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np


def _ratio(noise: float | None, ref: float | None, floor: float) -> float | None:
    if noise is None or ref is None:
        return None
    if ref <= floor:
        return 0.0
    return (ref - floor) / noise if noise > 0 else math.inf


def main(argv: list[str]) -> int:
    from parity.reference import NOISE_FACTOR, NOISE_FLOOR

    lines = [json.loads(x) for path in argv for x in open(path, encoding="utf-8") if x.strip()]
    faithful = [x for x in lines if x["bug"] is None]
    layer_ratios, pair_max, over, raw = [], [], [], []
    for x in faithful:
        rs = []
        for name, op, _rel, noise, ref, _ok in x["layers"]:
            if noise and ref is not None:
                raw.append(ref / noise)
            r = _ratio(noise, ref, NOISE_FLOOR)
            if r is None:
                continue
            rs.append(r)
            if r > NOISE_FACTOR:
                over.append((x["case"], name, op, noise, ref, r))
        layer_ratios.extend(rs)
        if rs:
            pair_max.append((max(rs), x["case"]))
    qs = (0.5, 0.9, 0.99, 0.999, 1.0)
    finite = np.array([r for r in layer_ratios if math.isfinite(r)])
    print(f"faithful pairs: {len(faithful)}, layers with a float64 reading: {len(layer_ratios)} "
          f"({sum(1 for r in layer_ratios if not math.isfinite(r))} over a zero noise floor)")
    if raw:
        print("ref_err / noise per layer (no floor), quantiles " + ", ".join(
            f"p{100 * q:g} {np.quantile(raw, q):.3g}" for q in qs))
    if finite.size:
        print("(ref_err − floor) / noise per layer, quantiles " + ", ".join(
            f"p{100 * q:g} {np.quantile(finite, q):.3g}" for q in qs))
    pm = np.array([m for m, _ in pair_max if math.isfinite(m)])
    if pm.size:
        print("largest per pair, quantiles " + ", ".join(f"p{100 * q:g} {np.quantile(pm, q):.3g}" for q in qs))
    for m, case in sorted(pair_max, reverse=True)[:10]:
        print(f"  {m:10.3g}  {case}")
    print(f"layers over k = {NOISE_FACTOR:g}: {len(over)}")
    for case, name, op, noise, ref, r in over[:40]:
        print(f"  {case}  {name} ({op}): noise {noise:.2e} ref_err {ref:.2e} ratio {r:.3g}")
    bugs = [x for x in lines if x["bug"] is not None]
    if bugs:
        found = sum(1 for x in bugs if x["first"] == x["expected"])
        print(f"bug pairs: {len(bugs)}, first divergence at the bug's layer: {found}")
        at = []
        for x in bugs:
            for name, _op, _rel, noise, ref, _ok in x["layers"]:
                if name == x["expected"]:
                    r = _ratio(noise, ref, NOISE_FLOOR)
                    if r is not None:
                        at.append(r)
        if at:
            a = np.array([r for r in at if math.isfinite(r)])
            print("ratio at the bug's layer, quantiles " + ", ".join(f"p{100 * q:g} {np.quantile(a, q):.3g}" for q in (0.0, 0.01, 0.1, 0.5)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
