"""The pages' inline style and the one optional inline script (no file is loaded from anywhere:
the Content-Security-Policy of every page forbids it)."""
from pygments.formatters import HtmlFormatter

CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; base-uri 'none'; "
       "form-action 'none'")

_LIGHT = HtmlFormatter(style="default").get_style_defs(".code")
_DARK = HtmlFormatter(style="github-dark").get_style_defs(".code")

CSS = """
:root { --bg: #fdfdfc; --fg: #1d1f21; --muted: #5c6370; --rule: #d8dadf; --panel: #f5f6f8;
  --accent: #2456a6; --depart: #fff1c7; --depart-edge: #d49b00; --note: #eef4ff; --note-edge: #4a7fd6;
  --spec: #2f7d3b; --twin: #8a3fb0; --chip: #eceef2; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #15171a; --fg: #e3e5e8; --muted: #9aa2ad; --rule: #353941; --panel: #1d2025;
    --accent: #8cb4ff; --depart: #3a3217; --depart-edge: #d9a521; --note: #1b2638; --note-edge: #6f9ef0;
    --spec: #7cc68a; --twin: #cf9af0; --chip: #2a2e35; }
}
* { box-sizing: border-box; }
html { background: var(--bg); color: var(--fg); }
body { margin: 0 auto; padding: 0 1.5rem 4rem; max-width: 1800px; font: 16px/1.55 system-ui, -apple-system,
  "Segoe UI", Roboto, "Noto Sans", sans-serif; overflow-wrap: anywhere; }
a { color: var(--accent); }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", "Liberation Mono", Menlo, Consolas, monospace;
  font-size: 0.85em; }
nav.top { position: sticky; top: 0; z-index: 2; background: var(--bg); border-bottom: 1px solid var(--rule);
  padding: 0.5rem 0; display: flex; flex-wrap: wrap; gap: 0.25rem 0.9rem; font-size: 0.9rem; }
nav.top a { text-decoration: none; }
nav.top a[aria-current] { font-weight: 700; text-decoration: underline; }
h1 { font-size: 1.8rem; margin: 1.2rem 0 0.4rem; }
h2 { font-size: 1.35rem; margin: 2rem 0 0.6rem; border-bottom: 1px solid var(--rule); }
.lede { color: var(--muted); max-width: 60rem; }
.prose { max-width: 62rem; }
pre { overflow-x: auto; }
pre.formula { background: var(--panel); padding: 0.5rem 0.8rem; border-radius: 4px; margin: 0.6rem 0; }
math { font-family: "TeX Gyre Termes Math", "Latin Modern Math", "STIX Two Math", math; font-size: 1.1em; }
.eq { display: flex; align-items: center; gap: 1rem; margin: 0.5rem 0; max-width: 62rem; }
.eq .body { flex: 1; min-width: 0; overflow-x: auto; overflow-y: hidden; padding: 0.2rem 0; }
.eq .tag { color: var(--muted); white-space: nowrap; font-size: 0.9rem; }
.paper-eq { border-left: 3px solid var(--rule); padding-left: 0.8rem; margin: 0.8rem 0; }
.paper-eq .here { color: var(--muted); font-size: 0.9rem; }
section.row { border-top: 2px solid var(--rule); margin-top: 2.2rem; padding-top: 0.6rem; }
section.row h2 { border: 0; margin: 0.2rem 0; font-family: ui-monospace, "DejaVu Sans Mono", monospace;
  font-size: 1.25rem; }
section.row h2 a.self { text-decoration: none; color: inherit; }
.source-label { display: inline-block; background: var(--chip); border-radius: 3px; padding: 0 0.45rem;
  font-size: 0.85rem; color: var(--muted); margin-left: 0.4rem; font-family: system-ui, sans-serif; }
.signature { color: var(--muted); font-size: 0.9rem; }
.shapes { margin-left: 1rem; }
.pair { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 1rem; margin: 0.8rem 0; }
@media (max-width: 1100px) { .pair { grid-template-columns: minmax(0, 1fr); } }
.half h3 { font-size: 0.9rem; margin: 0 0 0.3rem; font-weight: 600; }
.half.spec h3 { color: var(--spec); }
.half.twin h3 { color: var(--twin); }
.half h3 .where { font-weight: 400; color: var(--muted); }
pre.code { background: var(--panel); border: 1px solid var(--rule); border-radius: 4px; margin: 0;
  padding: 0.4rem 0; line-height: 1.45; font-size: 0.8rem; }
pre.code .ln { display: block; padding: 0 0.6rem 0 0; border-left: 3px solid transparent; min-width: max-content; }
pre.code .ln.departs { background: var(--depart); border-left-color: var(--depart-edge); }
pre.code .no { display: inline-block; width: 3.2em; padding-right: 0.8em; text-align: right; color: var(--muted);
  user-select: none; }
pre.code a.ref { text-decoration: underline dotted; }
pre.code a.note-mark { margin-left: 0.8em; font: 600 0.7rem system-ui, sans-serif; background: var(--note-edge);
  color: var(--bg); border-radius: 3px; padding: 0 0.3em; text-decoration: none; }
ol.notes { margin: 0.5rem 0 0; padding: 0.4rem 0.8rem 0.4rem 2rem; background: var(--note);
  border-left: 3px solid var(--note-edge); border-radius: 0 4px 4px 0; font-size: 0.9rem; }
.callout { background: var(--note); border-left: 3px solid var(--note-edge); padding: 0.5rem 0.9rem;
  border-radius: 0 4px 4px 0; margin: 0.8rem 0; max-width: 62rem; }
details { margin: 0.5rem 0; }
details > summary { cursor: pointer; color: var(--muted); font-size: 0.9rem; }
.tests h3 { font-size: 1rem; margin: 0.8rem 0 0.3rem; }
.tests ul { margin: 0.2rem 0; padding-left: 1.2rem; }
.tests li { margin: 0.2rem 0; }
.chip { display: inline-block; background: var(--chip); border-radius: 3px; padding: 0 0.4rem; margin-left: 0.3rem;
  font-size: 0.78rem; color: var(--muted); white-space: nowrap; text-decoration: none; }
.legend span { display: inline-block; margin-right: 1rem; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; vertical-align: middle; border-radius: 2px;
  margin-right: 0.3em; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.9rem; display: block; overflow-x: auto; }
th, td { border: 1px solid var(--rule); padding: 0.3rem 0.5rem; vertical-align: top; text-align: left; }
th { background: var(--panel); }
blockquote { margin: 0.6rem 0; padding: 0.1rem 0.9rem; border-left: 3px solid var(--rule); color: var(--muted); }
pre.layers { line-height: 1.25; }
.layers a { font-weight: 600; }
pre.source { background: var(--panel); border: 1px solid var(--rule); border-radius: 4px; padding: 0.4rem 0;
  font-size: 0.8rem; line-height: 1.45; }
pre.source .ln { display: block; min-width: max-content; padding-right: 0.6rem; }
pre.source .ln:target { background: var(--depart); }
.hl { outline: 2px solid var(--depart-edge); border-radius: 2px; }
footer { margin-top: 3rem; color: var(--muted); font-size: 0.85rem; border-top: 1px solid var(--rule);
  padding-top: 0.6rem; }
""" + _LIGHT + "\n@media (prefers-color-scheme: dark) {\n" + _DARK + "\n}\n"

# Clicking a linked or plain name in a code pane outlines every occurrence of that name in both
# panes of the row (the spec and its twin), so a reader can follow one variable across the halves.
SCRIPT = """
document.addEventListener('click', function (e) {
  var t = e.target.closest('pre.code .n, pre.code .nf, pre.code .nb');
  if (!t || e.target.closest('a')) return;
  var row = t.closest('section.row'); if (!row) return;
  var name = t.textContent, on = !t.classList.contains('hl');
  row.querySelectorAll('pre.code .hl').forEach(function (x) { x.classList.remove('hl'); });
  if (on) row.querySelectorAll('pre.code .n, pre.code .nf, pre.code .nb').forEach(function (x) {
    if (x.textContent === name) x.classList.add('hl'); });
});
"""
