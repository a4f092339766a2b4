"""The HTML report in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

``make test`` installs Chromium and sets PARITY_REQUIRE_BROWSER=1, so there a
missing browser fails the suite instead of skipping it.  Screenshots are
written to ``reports/test-artifacts/``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import parity

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    if os.environ.get("PARITY_REQUIRE_BROWSER"):
        raise RuntimeError("PARITY_REQUIRE_BROWSER is set but no chromium is installed (apt-get install chromium)")
    pytest.skip("needs Debian's chromium (apt-get install chromium); `make test` installs it", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

ARTIFACTS = Path(__file__).resolve().parent.parent / "reports" / "test-artifacts"
# Without the background-networking flags Chromium phones home at start, which this check would count.
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-default-apps",
]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def diverging_report():
    torch = pytest.importorskip("torch")
    pytest.importorskip("keras")
    from parity._zoo import ConvNet, randomize_bn, to_keras

    torch.manual_seed(0)
    model = randomize_bn(ConvNet().eval(), seed=1)
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype("float32")
    return parity.diff(model, to_keras(model, bn_epsilon="keras-default"), x)


def open_page(browser, html: str, tmp_path: Path):
    path = tmp_path / "report.html"
    path.write_text(html, encoding="utf-8")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    events = {"console": [], "errors": [], "requests": [], "dialogs": []}
    page.on("console", lambda m: events["console"].append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: events["errors"].append(str(e)))
    page.on("request", lambda r: events["requests"].append(r.url))
    page.on("dialog", lambda d: (events["dialogs"].append(d.message), d.dismiss()))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, events


def test_the_report_loads_offline_and_shows_where_and_why(browser, diverging_report, tmp_path):
    page, events = open_page(browser, diverging_report.to_html(), tmp_path)
    assert events["errors"] == [] and [c for c in events["console"] if c.startswith("error")] == []
    assert [u for u in events["requests"] if not u.startswith(("file:", "data:"))] == []

    assert page.locator("header.verdict.bad h1").inner_text().startswith("✗ DIVERGES at layer1.1")
    first = page.locator("#layer-table tr.first")
    assert first.count() == 1 and first.locator("td.name").first.inner_text().startswith("layer1.1")
    assert page.locator("#diagnoses .code").first.inner_text() == "bn_epsilon"
    assert page.locator("#chart svg").count() == 1
    titles = page.locator('#chart g[id^="pt-"] > title')
    assert titles.count() == len(diverging_report.layers)
    assert titles.nth(1).text_content().startswith("#1 layer1.1 (BatchNorm2d) ↔ layer1_1")
    assert page.locator("#detail-1 img").evaluate("img => img.naturalWidth") > 0  # the heat map decodes

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "html-report.png"), full_page=True)
    assert (ARTIFACTS / "html-report.png").stat().st_size > 10_000
    page.close()


def test_the_table_sorts_filters_and_answers_a_click_on_the_chart(browser, diverging_report, tmp_path):
    page, events = open_page(browser, diverging_report.to_html(), tmp_path)
    names = lambda: page.locator("#layer-table tbody tr:visible td.name:nth-child(2)").all_inner_texts()  # noqa: E731
    order = [d.a_name for d in diverging_report.layers]
    assert [n.split()[0] for n in names()] == order

    err = {d.a_name: d.rel_err for d in diverging_report.layers}
    page.locator("#layer-table th", has_text="rel err").click()
    shown = [err[n.split()[0]] for n in names()]
    assert shown == sorted(err.values())
    page.locator("#layer-table th", has_text="rel err").click()
    shown = [err[n.split()[0]] for n in names()]
    assert shown == sorted(err.values(), reverse=True)

    page.fill("#filter", "BatchNorm")
    assert [n.split()[0] for n in names()] == ["layer1.1"]
    page.fill("#filter", "")
    page.check("#only-flagged")
    assert {n.split()[0] for n in names()} == {d.a_name for d in diverging_report.layers if not d.ok}
    page.uncheck("#only-flagged")

    page.locator("#pt-1").click()
    assert page.locator("#row-1").get_attribute("class").split()[-1] == "highlight"
    assert events["errors"] == []
    page.close()


def test_a_hostile_layer_name_renders_as_text(browser, tmp_path):
    from .test_html import EVIL, pair

    page, events = open_page(browser, pair(bug_rows=1, name=EVIL).to_html(), tmp_path)
    assert events["dialogs"] == [] and events["errors"] == []
    assert page.locator("#layer-table img").count() == 0
    assert page.locator("#row-0 td.name").first.inner_text().startswith(EVIL)
    assert EVIL in page.locator("#divergence").inner_text()
    page.close()


# --- a 1280-px window ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deep_report():
    """A 25-block ResNet (156 compared tensors) by hand in Keras with Keras' BatchNorm epsilon."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("keras")
    from parity._zoo import DeepResNet, randomize_bn, to_keras

    torch.manual_seed(0)
    model = randomize_bn(DeepResNet(25)).eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype("float32")
    return parity.diff(model, to_keras(model, bn_epsilon="keras-default"), x)


@pytest.fixture(scope="module")
def onnx_report(tmp_path_factory):
    """torch → ONNX with a scaled conv weight: ONNX's long value names, estimated own errors."""
    pytest.importorskip("onnxruntime")
    from .test_report_widths import onnx_reports

    return onnx_reports.__wrapped__(tmp_path_factory)[1]


@pytest.mark.parametrize("which", ["deep", "onnx", "convnet"])
def test_the_report_fits_a_1280_px_window(browser, which, request, tmp_path):
    report = request.getfixturevalue({"deep": "deep_report", "onnx": "onnx_report", "convnet": "diverging_report"}[which])
    page, events = open_page(browser, report.to_html(), tmp_path)
    page.set_viewport_size({"width": 1280, "height": 800})
    assert events["errors"] == []
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    wrap = page.locator(".table-wrap")
    assert wrap.evaluate("e => e.scrollWidth <= e.clientWidth"), wrap.evaluate("e => [e.scrollWidth, e.clientWidth]")
    # names wrap, badges do not: every badge and number is one line box
    broken = page.evaluate(
        """() => Array.from(document.querySelectorAll('#layer-table .tag, #layer-table .code'))
                  .filter(e => e.getClientRects().length > 1).map(e => e.textContent)"""
    )
    assert broken == []
    # evidence: a few labelled numbers, the rest folded
    for diagnosis in page.locator("#diagnoses .diagnosis").all():
        shown = diagnosis.locator("p.evidence .kv")
        assert 1 <= shown.count() <= 4
        folded = diagnosis.locator("details")
        if folded.count():
            assert folded.get_attribute("open") is None and folded.locator("tr").count() >= 1
    # the x axis names layers where they fit: every one for short models, every k-th (and the
    # first divergence) for long ones
    ticks = [t.strip() for t in page.locator("#chart svg text").all_text_contents()]
    names = [d.a_name for d in report.layers]
    named = [n for n in names if n in ticks]
    if len(names) <= 60:
        assert named == names
    else:
        assert 30 <= len(named) <= 61 and report.first_divergence.a_name in named
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"html-1280-{which}.png"
    page.screenshot(path=str(shot))  # the first screen, as a 1280×800 window shows it
    assert shot.stat().st_size > 10_000
    page.locator("#layers").screenshot(path=str(ARTIFACTS / f"html-1280-{which}-table.png"))
    page.close()
