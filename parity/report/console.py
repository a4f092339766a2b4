"""Temporary minimal console rendering."""
import io
def fmt_float(x):
    return f"{x:.1e}"
def verdict_line(r):
    d = r.first_divergence
    return "PARITY" if d is None else f"DIVERGES at {d.a_name}"
def render_report(report, console, options):
    yield verdict_line(report)
    for d in report.layers:
        yield f"{d.a_name:20s} {d.b_name:20s} {d.op:12s} {d.transform:12s} {d.rel_err:.2e} {'ok' if d.ok else 'FAIL'}"
    for dg in report.diagnoses:
        yield dg.message
def render_text(report, width=100):
    from rich.console import Console
    buf = io.StringIO(); Console(file=buf, width=width, color_system=None).print(report); return buf.getvalue()
