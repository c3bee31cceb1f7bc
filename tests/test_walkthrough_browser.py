"""The walkthrough in a real headless Chromium (tests/browser.py): every page of it, on a wide and
on a narrow window. Every formula is laid out as MathML with a box of its own, the spec and its
twin sit side by side on the wide window and stack on the narrow one, no page scrolls sideways,
every in-page link lands, nothing is requested from anywhere else, the console stays clean, and a
screenshot shows a page, not a blank.

Without Chromium these tests skip, with the reason; under CI=true they fail instead, so CI cannot
pass by skipping them (.ci/run installs Debian's chromium). WALKTHROUGH_SCREENSHOTS=DIR keeps
the screenshots there for a person to look at.
"""
import io
import os
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from ecdit import reference
from tests.browser import Chromium, find_chromium

WIDE, NARROW, HEIGHT = (1600, 600, 1000)
PAGES = ("index", *reference.MODULES)

# Run in the page: what a reader would find wrong, as data.
CHECK = r"""
(() => {
  const maths = [...document.querySelectorAll('math')];
  const box = e => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  const where = e => (e.closest('[id]') || {}).id || '(page)';
  const rows = [...document.querySelectorAll('section.row')].map(row => {
    const s = row.querySelector(':scope > .pair > .half.spec'), t = row.querySelector(':scope > .pair > .half.twin');
    if (!s || !t) return {id: row.id, layout: 'one'};
    const a = s.getBoundingClientRect(), b = t.getBoundingClientRect();
    const side = Math.abs(a.top - b.top) < 1 && b.left >= a.right - 1 && a.width > 0 && b.width > 0;
    const stacked = b.top >= a.bottom - 1 && Math.abs(a.left - b.left) < 1;
    return {id: row.id, layout: side ? 'side' : stacked ? 'stacked' : 'other'};
  });
  return {
    math: maths.length,
    emptyMath: maths.filter(m => !box(m)).map(where),
    notMathLayout: maths.filter(m => !getComputedStyle(m).display.includes('math')).map(where),
    rows,
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    anchors: document.querySelectorAll('a[href^="#"]').length,
    deadAnchors: [...document.querySelectorAll('a[href^="#"]')].map(a => decodeURIComponent(a.getAttribute('href').slice(1)))
      .filter(id => id && !document.getElementById(id)),
    resources: performance.getEntriesByType('resource').map(e => e.name),
  };
})()
"""


@pytest.fixture(scope="module")
def browser():
    if find_chromium() is None:
        reason = ("Chromium is not installed (Debian: apt-get install chromium), so the walkthrough's browser "
                  "checks cannot run")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; under CI=true they must not be skipped")
        pytest.skip(reason)
    with Chromium() as b:
        yield b


def _not_blank(png: bytes, what: str):
    image = matplotlib.image.imread(io.BytesIO(png))             # (H, W, 3 or 4) floats in [0, 1]
    rgb = image[..., :3]
    q = (rgb.reshape(-1, 3) * 255).astype(np.int32)
    colours = len(np.unique(q[:, 0] << 16 | q[:, 1] << 8 | q[:, 2]))
    assert rgb.std() > 0.03 and colours > 50, f"{what}: the screenshot is blank (std {rgb.std():.3f}, {colours} colours)"


def _keep(png: bytes, name: str):
    folder = os.environ.get("WALKTHROUGH_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / name).write_bytes(png)


@pytest.mark.parametrize("name", PAGES)
def test_page_renders_its_math_lays_out_both_halves_and_stays_local(browser, walkthrough_pages, name):
    out, _ = walkthrough_pages
    url = (out / f"{name}.html").as_uri()
    page = browser.open(url, WIDE, HEIGHT)
    try:
        wide = page.evaluate(CHECK)
        png = page.screenshot()
        _keep(png, f"{name}-wide.png")
        _not_blank(png, f"{name} at {WIDE} px")
        page.resize(NARROW, HEIGHT)
        narrow = page.evaluate(CHECK)
        png = page.screenshot()
        _keep(png, f"{name}-narrow.png")
        _not_blank(png, f"{name} at {NARROW} px")
    finally:
        page.close()
    assert wide["math"] > 0, name
    assert wide["emptyMath"] == [] and narrow["emptyMath"] == [], "math without a rendered box"
    assert wide["notMathLayout"] == [], "math not laid out as MathML"
    if name != "index":
        assert wide["rows"], name
        assert {r["id"] for r in wide["rows"] if r["layout"] not in ("side", "one")} == set(), wide["rows"]
        assert {r["id"] for r in narrow["rows"] if r["layout"] not in ("stacked", "one")} == set(), narrow["rows"]
        assert any(r["layout"] == "side" for r in wide["rows"])
    for got, width in ((wide, WIDE), (narrow, NARROW)):
        assert got["scrollWidth"] <= got["innerWidth"] == width, f"{name} scrolls sideways at {width} px"
    assert wide["anchors"] > 0 and wide["deadAnchors"] == [], wide["deadAnchors"]
    assert wide["resources"] == [] and narrow["resources"] == []
    assert page.requests == [url], f"{name} requested {page.requests}"
    assert page.console_errors == [], page.console_errors


def test_a_test_source_page_loads_clean(browser, walkthrough_pages):
    out, summary = walkthrough_pages
    name = next(p for p in summary.pages if p.startswith("tests/test_routing"))
    url = (out / name).as_uri()
    page = browser.open(url + "#L1", NARROW, HEIGHT)
    try:
        got = page.evaluate(CHECK)
        _not_blank(page.screenshot(), name)
    finally:
        page.close()
    assert got["scrollWidth"] <= got["innerWidth"]
    assert page.requests == [url] and page.console_errors == []


def test_the_checks_catch_a_page_that_loads_from_elsewhere_or_breaks(browser, walkthrough_pages, tmp_path):
    """The harness is not blind: a copy of a page with a CDN stylesheet, an inline error and a
    formula that is not laid out, a wide paragraph and a dead anchor fails each check the real pages pass."""
    out, _ = walkthrough_pages
    text = (out / "primitives.html").read_text()
    bad = text.replace("<head>", '<head><link rel="stylesheet" href="https://cdn.example.com/katex.css">', 1)
    bad = bad.replace("</body>", "<script>console.error('boom')</script>"
                      "<math style='display:none'><mi>x</mi></math><p style='width:3000px'>wide</p>"
                      '<a href="#nowhere">dead</a></body>', 1)
    path = tmp_path / "primitives.html"
    path.write_text(bad)
    page = browser.open(path.as_uri(), WIDE, HEIGHT)
    try:
        got = page.evaluate(CHECK)
    finally:
        page.close()
    assert any("cdn.example.com" in e for e in page.console_errors)      # refused by the page's own CSP
    assert any("boom" in e for e in page.console_errors)
    assert "https://cdn.example.com/katex.css" in page.requests or any("cdn.example.com" in e for e in page.console_errors)
    assert got["emptyMath"] and got["deadAnchors"] == ["nowhere"]
    assert got["scrollWidth"] > got["innerWidth"]
