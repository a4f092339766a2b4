"""How a quantized B's layers judged in steps (:mod:`parity.quantsteps`) are shown: the
"steps" cell of the layer table, the verdict's words, the lines under the table (what the
column means, the flagged layers worst first, the converter's deny-list) — for the terminal,
the text report and the HTML page alike."""

from __future__ import annotations

from ..quantsteps import ROUNDING_FLOOR
from ..records import LayerDiff, Report

__all__ = ["steps_cell", "steps_phrase", "quant_lines", "divergence_words", "passing_words"]


def steps_cell(d: LayerDiff) -> str:
    """``alone/cumulative`` in steps (``–`` where the layer alone was not measurable); empty
    for a float layer."""
    q = d.quant
    if q is None:
        return ""
    alone = "–" if q.local is None else f"{q.local:.2f}"
    return f"{alone}/{q.cumulative:.2f}"


def steps_phrase(d: LayerDiff) -> str:
    """``86.98 steps of its scale alone (87.10 cumulative)``."""
    q = d.quant
    assert q is not None
    if q.local is None:
        return f"{q.cumulative:.2f} steps of its scale cumulative (alone {q.local_note})"
    return f"{q.local:.2f} steps of its scale alone ({q.cumulative:.2f} cumulative)"


def divergence_words(d: LayerDiff) -> str | None:
    """The verdict's figure for a quantized first divergence (else None)."""
    q = d.quant
    if q is None:
        return None
    return f"{q.steps:.2f} steps of its {q.dtype} scale > {q.limit:g}"


def passing_words(report: Report) -> str:
    """``; 7 quantized layers within 1.5 steps of their scale (worst 0.85 at fc)`` — or ``""``."""
    judged = [d for d in report.layers if d.quant is not None and d.role != "output"]
    if not judged:
        return ""
    worst = max(judged, key=lambda d: d.quant.steps if d.quant is not None else 0.0)
    assert worst.quant is not None
    return (f"; {len(judged)} quantized layers within {worst.quant.limit:g} steps of their scale "
            f"(worst {worst.quant.steps:.2f} at {worst.a_name})")


def quant_lines(report: Report) -> list[tuple[str, str]]:
    """``(text, style)`` lines under the layer table: the steps column's legend, each flagged
    quantized layer (worst first) and the deny-list, ready to paste."""
    s = report.quant
    if s is None:
        return []
    lines = [(
        f"steps: a quantized layer's error in steps of its output scale (RMSE/scale), alone/cumulative — alone is "
        f"A's float layer fed B's dequantized input; rounding alone gives {ROUNDING_FLOOR:.2f}, over {s.limit:g} is "
        f"flagged. {s.layers} layer(s) of B judged so; the float tolerance does not apply to them.", "dim")]
    flagged = sorted((d for d in report.layers if d.quant is not None and not d.quant.ok and d.role != "output"),
                     key=lambda d: -(d.quant.steps if d.quant is not None else 0.0))
    for d in flagged:
        q = d.quant
        assert q is not None
        why = f", {100 * q.clipped:.1f}% clipped at its range" if q.clipped >= 0.01 else ""
        inherited = "" if q.born_here else f" — inherited: its input is {q.input_steps:.1f} steps off already"
        lines.append((f"quantized {d.a_name} ({d.b_op} {d.b_name}): {steps_phrase(d)}{why}{inherited}",
                      "red" if q.born_here else "yellow"))
    if s.exclude:
        what = "TFLite's quantization debugger" if s.converter == "tflite" else "ONNX Runtime's quantize_static"
        lines.append((f"keep in float ({what}, worst first): {s.option}", "bold yellow"))
    return lines
