"""Convert a corpus timm model with litert-torch — run in the litert venv, not the project's.

litert-torch 0.10.0 cannot share the project's venv (its ``ai-edge-litert[model-utils]`` pins
downgrade typing_extensions and it pulls transformers 5.x), so it lives in ``.venv-litert``
(``make litert``) and :mod:`tests.corpus.timm_litert` runs this script with that venv's python:

    .venv-litert/bin/python tests/corpus/litert_convert.py FAMILY OUT_DIR [--bug NAME LAYER]

It builds model A of timm family ``FAMILY`` exactly as the main venv does
(:func:`tests.corpus.timm_models.build`: the same seed, torch and timm versions), injects the bug
into a copy when one is named (:func:`tests.corpus.timm_models.inject`), converts it with
``litert_torch.convert`` on the family's input batch, and writes ``OUT_DIR/model.tflite`` and
``OUT_DIR/meta.json``: the litert-torch version, the conversion time, litert-torch's own output
difference against the torch model it converted, and a digest of A's parameters (the main venv
checks that it built the same A).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: tests.corpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family")
    parser.add_argument("out", type=Path)
    parser.add_argument("--bug", nargs=2, metavar=("NAME", "LAYER"))
    args = parser.parse_args(argv)

    import torch

    from tests.corpus import timm_models as tm
    from tests.corpus.cases import Bug

    import litert_torch

    fam = tm.family(args.family)
    a = tm.build(fam)
    digest = tm.state_digest(a)
    model = a if args.bug is None else tm.inject(a, fam, Bug(args.bug[0], args.bug[1]))
    x = torch.from_numpy(tm.inputs(fam))
    start = time.perf_counter()
    edge = litert_torch.convert(model.eval(), (x,))
    seconds = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    edge.export(str(args.out / "model.tflite"))
    with torch.no_grad():
        want = model(x).numpy()
    got = edge(x)
    got = got.numpy() if hasattr(got, "numpy") else got
    meta = {
        "litert_torch": litert_torch.__version__,
        "torch": torch.__version__,
        "seconds": round(seconds, 2),
        "output_max_abs_diff": float(abs(got - want).max()),
        "a_digest": digest,
    }
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
