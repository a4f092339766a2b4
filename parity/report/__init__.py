"""Renderers of a :class:`~parity.records.Report`: the terminal (:mod:`.console`), HTML
(:mod:`.html`), JSON (:mod:`.jsonio`), Model Explorer node data (:mod:`.explorer`).

Importing this package installs them as the report's renderer
(:func:`parity.records.set_report_renderer`), so ``report.to_html()`` and ``rich.print(report)``
work while :mod:`parity.records` imports nothing from here.  Each renderer's module (and rich,
Jinja2, matplotlib) is imported when it is first used: importing this package stays light.
"""

from __future__ import annotations

from typing import Any, Iterator

from ..records import Report, set_report_renderer

__all__ = ["RENDERER"]


class _Renderer:
    """The :class:`~parity.records.ReportRenderer` this package installs."""

    def rich(self, report: Report, console: Any, options: Any) -> Iterator[Any]:
        from .console import render_report

        return render_report(report, console, options)

    def summary(self, report: Report) -> str:
        from .console import verdict_line
        from .text import shown

        return shown(verdict_line(report))

    def text(self, report: Report) -> str:
        from .console import render_text

        return render_text(report)

    def to_dict(self, report: Report) -> dict:
        from .jsonio import report_to_dict

        return report_to_dict(report)

    def to_json(self, report: Report, path: Any) -> str:
        from .jsonio import report_to_json

        return report_to_json(report, path)

    def to_html(self, report: Report, path: Any) -> str:
        from .html import render_html

        return render_html(report, path)

    def compact_html(self, report: Report) -> str:
        from .html import render_compact_html

        return render_compact_html(report)

    def to_model_explorer(self, report: Report, path: Any, *, side: str, graph_id: str) -> dict:
        from .explorer import to_model_explorer

        return to_model_explorer(report, path, side=side, graph_id=graph_id)


#: the renderer every Report uses once this package is imported
RENDERER = _Renderer()
set_report_renderer(RENDERER)
