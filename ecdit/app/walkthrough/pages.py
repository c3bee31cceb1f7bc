"""Building the pages: read the source, check that nothing on a page would lie, render, check
every link, write. `build(out)` is what `ecdit walkthrough --out DIR` runs."""
from __future__ import annotations

import ast
import html
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import ecdit

from . import code, equations, markup, source, testindex
from .style import CSP, CSS, SCRIPT

SHARED = {"routing.expert_capacity": "ecdit/core/config.py"}   # shown on the spec's page, defined in the core
HALF_TITLES = {"reference": "NumPy spec", "accelerated": "JAX twin"}


class WalkthroughError(ValueError):
    """The pages cannot be built without showing something false; the message names the function."""


@dataclass
class BuildSummary:
    out: Path
    pages: list[str]             # written files, relative to out
    functions: int               # rows: spec functions shown beside their twins
    math: int                    # <math> elements
    tests_linked: int            # distinct tests listed under some function
    seconds: float

    def line(self) -> str:
        modules = sum(1 for p in self.pages if "/" not in p)
        sources = len(self.pages) - modules
        return (f"{modules} pages and {sources} test sources in {self.out}: {self.functions} functions beside "
                f"their twins, {self.math} formulas, {self.tests_linked} tests linked ({self.seconds:.1f} s); "
                f"open {self.out / 'index.html'}")


def project_root() -> Path:
    """The checkout the package was installed from (pip install -e .): the walkthrough reads its
    reference/, accelerated/, tests/ and docs/."""
    root = Path(ecdit.__file__).resolve().parents[1]
    missing = [d for d in ("reference", "accelerated", "tests", "docs") if not (root / d).is_dir()]
    if missing:
        raise WalkthroughError(f"the walkthrough reads the source checkout, and {root} has no "
                               f"{', '.join(missing)}/ (install with pip install -e . from a clone)")
    return root


def _spec_modules(root: Path) -> tuple[str, ...]:
    tree = ast.parse((root / "reference" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "MODULES":
            return tuple(ast.literal_eval(node.value))
    raise WalkthroughError("reference/__init__.py defines no MODULES")


# ---------------------------------------------------------------------------------------------
# What the pages show, read and checked
# ---------------------------------------------------------------------------------------------

@dataclass
class Site:
    root: Path
    modules: tuple[str, ...]
    spec: dict[str, source.Module]
    twin: dict[str, source.Module]
    shared: dict[str, source.Function]
    tests: list[testindex.Test]
    tolerances: dict[str, testindex.Tolerance]
    contracts: dict[str, list[tuple[str, str]]] = field(default_factory=dict)   # contract -> [(argument, dims)]
    rows: dict[str, list[str]] = field(default_factory=dict)   # module -> function names, in page order

    def qualnames(self):
        return [f"{m}.{n}" for m in self.modules for n in self.rows[m]]

    def tests_of(self, qual: str) -> dict[str, list[testindex.Test]]:
        out: dict[str, list[testindex.Test]] = {"equal": [], "both": [], "spec": [], "twin": []}
        for t in self.tests:
            kind = t.kind(qual)
            if kind:
                out[kind].append(t)
        return out


def read_site(root: Path) -> Site:
    modules = _spec_modules(root)
    try:
        spec = source.read_half(root / "reference", "reference", modules)
        twin = source.read_half(root / "accelerated", "accelerated", modules)
    except source.SourceError as e:
        raise WalkthroughError(str(e)) from None
    shared = {}
    for qual, path in SHARED.items():
        core = source.read_module(root / path, "core", modules)
        shared[qual] = core.functions[qual.split(".")[1]]
    known = {m: set(spec[m].public) for m in modules}
    for qual in SHARED:
        m, n = qual.split(".")
        known[m].add(n)
    tolerances = testindex.read_tolerances(root / "tests" / "tolerances.py")
    tests = testindex.read_tests(root / "tests", modules, known, set(tolerances))
    site = Site(root, modules, spec, twin, shared, tests, tolerances,
                contracts=source.contract_shapes(root / "ecdit" / "core" / "contracts.py"))
    for m in modules:
        names = list(spec[m].public)
        for qual in SHARED:
            sm, sn = qual.split(".")
            if sm == m:
                names.insert(0, sn)
        site.rows[m] = names
    check_site(site)
    return site


def check_site(site: Site) -> None:
    """Every WalkthroughError the source alone can show, all at once, one per line."""
    problems = []
    for m in site.modules:
        spec, twin = site.spec[m].public, site.twin[m].public
        for name in spec:
            if name not in twin:
                problems.append(f"reference.{m}.{name}: no twin (accelerated/{m}.py has no public {name})")
            elif spec[name].signature != twin[name].signature:
                problems.append(f"{m}.{name}: the twin's signature {twin[name].signature} differs from the spec's "
                                f"{spec[name].signature}")
        for name in twin:
            if name not in spec:
                problems.append(f"accelerated.{m}.{name}: a twin without a spec (reference/{m}.py has no {name})")
        for n in source.cited_equations(site.spec[m].docstring):
            if n not in equations.PAPER:
                problems.append(f"reference.{m} (module docstring) cites Eq. {n}, which has no rendered form "
                                "(PAPER in ecdit/app/walkthrough/equations.py)")
    quals = site.qualnames()
    for qual in quals:
        m, name = qual.split(".")
        fn = site.shared.get(qual) or site.spec[m].functions[name]
        if qual not in equations.FUNCTIONS:
            problems.append(f"{qual}: no formula (add it to FUNCTIONS in ecdit/app/walkthrough/equations.py)")
        for n in source.cited_equations(fn.docstring):
            if n not in equations.PAPER:
                problems.append(f"{qual} cites Eq. {n}, which has no rendered form (PAPER in "
                                "ecdit/app/walkthrough/equations.py)")
        tests = site.tests_of(qual)
        if not tests["equal"] and not tests["both"]:
            problems.append(f"{qual}: no test runs both halves (no test in tests/ calls the reference's and the "
                            f"accelerated {name})")
    for qual in equations.FUNCTIONS:
        if qual not in quals:
            problems.append(f"{qual}: FUNCTIONS in ecdit/app/walkthrough/equations.py has a formula for a function "
                            "the spec does not have")
    if problems:
        raise WalkthroughError("\n".join(problems))


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

def _page(title: str, body: str, nav: str, depth: int = 0) -> str:
    up = "../" * depth
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<meta name=\"color-scheme\" content=\"light dark\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{nav}\n<main>\n{body}\n</main>\n"
        f"<footer>Built from the source by <code>ecdit walkthrough</code>. The spec is <code>reference/</code>, "
        f"its twin <code>accelerated/</code>; <a href=\"{up}index.html#shapes\">shapes glossary</a>.</footer>\n"
        f"<script>{SCRIPT}</script>\n</body>\n</html>\n")


def _nav(site: Site, current: str | None, depth: int = 0) -> str:
    up = "../" * depth
    here = ' aria-current="page"' if current == "index" else ""
    links = [f'<a href="{up}index.html"{here}>ecdit walkthrough</a>']
    for m in site.modules:
        cur = ' aria-current="page"' if current == m else ""
        links.append(f'<a href="{up}{m}.html"{cur}>{m}</a>')
    links.append(f'<a href="{up}index.html#shapes">shapes</a>')
    links.append(f'<a href="{up}index.html#errata">errata</a>')
    return '<nav class="top">' + "".join(links) + "</nav>"


def _formula_block(latexes, where: str, tag: str = "") -> tuple[str, int]:
    out = []
    for i, latex in enumerate(latexes):
        try:
            mathml = equations.render(latex, where=where)
        except equations.MathError as e:
            raise WalkthroughError(str(e)) from None
        t = tag if i == len(latexes) - 1 else ""
        out.append(f'<div class="eq"><div class="body">{mathml}</div><div class="tag">{html.escape(t)}</div></div>')
    return "".join(out), len(latexes)


def _eq_tag(numbers: list[int]) -> str:
    if not numbers:
        return ""
    if len(numbers) > 2 and numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"({numbers[0]})–({numbers[-1]})"
    return ", ".join(f"({n})" for n in numbers)


class Renderer:
    def __init__(self, site: Site):
        self.site = site
        self.math = 0
        self.linked_tests: set[tuple[str, str]] = set()
        self.test_files: set[str] = {"tolerances.py"}
        self.index_ids: set[str] = set()
        unique: dict[str, list[str]] = {}
        for m in site.modules:
            for n in site.rows[m]:
                unique.setdefault(n, []).append(m)
        self.by_name = {n: ms[0] for n, ms in unique.items() if len(ms) == 1}
        self.test_lines = {t.name: (t.file, t.line) for t in site.tests}

    # --- links ----------------------------------------------------------------------------
    def resolver(self, module: str, half: str):
        mod = (self.site.spec if half == "reference" else self.site.twin)[module]

        def resolve(name: str):
            if name in self.site.rows[module]:
                return f"#{name}"
            target = mod.imported.get(name)
            if target is None:
                return None
            tm, tn = target.split(".")
            if tm == "core":
                for qual in SHARED:
                    if qual.endswith("." + tn):
                        return f"{qual.split('.')[0]}.html#{tn}"
                return None
            return f"{tm}.html#{tn}" if tn in self.site.rows.get(tm, ()) else None
        return resolve

    def prose_linker(self, module: str | None, depth: int = 0, on_index: bool = False):
        up = "../" * depth

        def link(text: str):
            t = text.strip()
            t = re.sub(r"\(.*\)$", "", t)
            t = t.removeprefix("ecdit.").removeprefix("reference.").removeprefix("accelerated.")
            if t.startswith(("reference/", "accelerated/")):
                t = t.split("/", 1)[1].removesuffix(".py")
                return f"{up}{t}.html" if t in self.site.rows else None
            if re.fullmatch(r"test_\w+", t) and t in self.test_lines:
                f, line = self.test_lines[t]
                return f"{up}tests/{Path(f).stem}.html#L{line}"
            if "." in t:
                m, _, n = t.partition(".")
                if m in self.site.rows and n in self.site.rows[m]:
                    return f"{up}{m}.html#{n}"
                if m in self.site.rows and not n:
                    return f"{up}{m}.html"
            if module and t in self.site.rows.get(module, ()):
                return f"#{t}" if not on_index else f"{module}.html#{t}"
            if t in self.by_name:
                return f"{up}{self.by_name[t]}.html#{t}"
            if t in self.site.rows:
                return f"{up}{t}.html"
            return self._doc_link(t, up, on_index)
        return link

    def _doc_link(self, target: str, up: str, on_index: bool):
        """docs/errata.md#anchor, errata.md, #anchor (on the index) -> the rendered section, if any."""
        path, _, anchor = target.partition("#")
        name = Path(path).name
        prefix = {"errata.md": "errata-", "model.md": "dev-"}.get(name)
        if name == "errata.md" and not anchor:
            return f"{up}index.html#errata"
        if prefix and anchor and f"{prefix}{anchor}" in self.index_ids:
            return f"{up}index.html#{prefix}{anchor}" if not on_index else f"#{prefix}{anchor}"
        if not path and anchor and on_index:
            for p in ("dev-", "errata-"):
                if f"{p}{anchor}" in self.index_ids:
                    return f"#{p}{anchor}"
        return None

    # --- module pages ---------------------------------------------------------------------
    def module_page(self, m: str) -> str:
        site = self.site
        spec, twin = site.spec[m], site.twin[m]
        link = self.prose_linker(m)
        title, rest = _title_and_rest(spec.docstring)
        cited = source.cited_equations(spec.docstring)
        for n in site.rows[m]:
            fn = site.shared.get(f"{m}.{n}") or spec.functions[n]
            cited += [k for k in source.cited_equations(fn.docstring) if k not in cited]
        parts = [f"<h1>{m}</h1>", f'<p class="lede">{markup.inline(title, link)}.</p>',
                 '<p class="legend"><span><span class="swatch" style="background:var(--depart);'
                 'border-left:3px solid var(--depart-edge)"></span>a line of the twin (or the spec) with no '
                 'counterpart on the other side</span><span><span class="chip">JAX</span> a <code># JAX:</code> '
                 'note, shown under the twin</span><span>click a name in the code to mark it in both halves'
                 '</span></p>',
                 '<div class="prose">' + markup.docstring(rest, link) + "</div>"]
        notes = source.docstring_jax_notes(twin.docstring)
        if notes:
            parts.append('<div class="callout"><strong>Where the twin departs, module-wide.</strong> '
                         + " ".join(markup.inline(n, link) for n in notes) + "</div>")
        if cited:
            parts.append(f'<h2 id="equations">The paper\'s equations on this page</h2>')
            for n in sorted(cited):
                parts.append(self.paper_equation(n, m))
        for n in site.rows[m]:
            parts.append(self.row(m, n))
        return _page(f"ecdit · {m}", "\n".join(parts), _nav(site, m))

    def paper_equation(self, n: int, module: str) -> str:
        eq = equations.PAPER[n]
        users = [name for name in self.site.rows[module]
                 if n in source.cited_equations((self.site.shared.get(f"{module}.{name}")
                                                 or self.site.spec[module].functions[name]).docstring)]
        printed, k = _formula_block([eq.printed], f"Eq. {n}", f"({n})")
        self.math += k
        out = [f'<div class="paper-eq" id="eq-{n}"><div><strong>Eq. {n}</strong>, {html.escape(eq.title)}, as the '
               f'paper prints it:</div>{printed}']
        if eq.here:
            here, k = _formula_block([eq.here], f"Eq. {n} (as read here)")
            self.math += k
            erratum = markup.slug(eq.erratum) if eq.erratum else ""
            out.append(f'<div class="here">As this project reads it (<a href="index.html#errata-{erratum}">errata: '
                       f'{html.escape(eq.erratum or "")}</a>):</div>{here}')
        if users:
            out.append('<div class="here">Computed by ' + ", ".join(f'<a href="#{u}"><code>{u}</code></a>'
                                                                   for u in users) + ".</div>")
        out.append("</div>")
        return "".join(out)

    def row(self, m: str, name: str) -> str:
        site = self.site
        qual = f"{m}.{name}"
        shared = site.shared.get(qual)
        spec_fn = shared or site.spec[m].functions[name]
        formula = equations.FUNCTIONS[qual]
        cited = source.cited_equations(spec_fn.docstring)
        paper = formula.source.startswith(("Eq.", "Algorithm"))      # the formula is the paper's own
        math, k = _formula_block(formula.latex, qual, _eq_tag(cited) if paper else "")
        self.math += k
        chips = "".join(f'<a class="chip" href="#eq-{n}">the paper\'s Eq. {n}</a>' for n in cited)
        link = self.prose_linker(m)
        parts = [f'<section class="row" id="{name}">',
                 f'<h2><a class="self" href="#{name}">{name}</a><span class="source-label">'
                 f'{html.escape(formula.source)}</span>{chips}</h2>',
                 f'<div class="signature"><code>{html.escape(spec_fn.signature)}</code>{self.shapes(spec_fn)}</div>',
                 math,
                 f'<div class="prose">{markup.docstring(spec_fn.docstring, link)}</div>']
        if shared:
            lines = code.lines_of(shared)
            parts.append('<div class="half shared"><h3>One function both halves call <span class="where">'
                         f'{SHARED[qual]}, line {shared.def_line}: integer arithmetic on static shapes, '
                         'so it is never traced or compiled</span></h3>'
                         + code.pane(lines, self.resolver(m, "reference"), "s", departures=False) + "</div>")
        else:
            twin_fn = site.twin[m].functions[name]
            spec_lines, twin_lines = code.lines_of(spec_fn), code.lines_of(twin_fn)
            code.mark_departures(spec_lines, twin_lines)
            note_ids, notes = {}, []
            for line in twin_lines:
                if line.note is not None:
                    note_ids[line.number] = f"{name}-jax-{len(notes) + 1}"
                    notes.append((note_ids[line.number], f'<a href="#a{line.number}">line {line.number}</a>',
                                  line.note))
            helpers = site.twin[m].helpers_of(twin_fn)
            for note in source.docstring_jax_notes(twin_fn.docstring):
                notes.append((f"{name}-jax-{len(notes) + 1}", "docstring", note))
            for h in helpers:
                for number, note in source.jax_notes(h.lines, h.first_line):
                    notes.append((f"{name}-jax-{len(notes) + 1}", f"in <code>{h.name}</code>, line {number}", note))
                for note in source.docstring_jax_notes(h.docstring):
                    notes.append((f"{name}-jax-{len(notes) + 1}", f"in <code>{h.name}</code>", note))
            spec_pane = code.pane(spec_lines, self.resolver(m, "reference"), "r")
            twin_pane = code.pane(twin_lines, self.resolver(m, "accelerated"), "a", note_ids)
            note_html = ""
            if notes:
                note_html = '<ol class="notes">' + "".join(
                    f'<li id="{i}"><strong>JAX</strong> ({where}): {markup.inline(text, link)}</li>'
                    for i, where, text in notes) + "</ol>"
            parts.append(
                '<div class="pair">'
                f'<div class="half spec"><h3>{HALF_TITLES["reference"]} <span class="where">reference/{m}.py, '
                f'line {spec_fn.def_line}</span></h3>{spec_pane}</div>'
                f'<div class="half twin"><h3>{HALF_TITLES["accelerated"]} <span class="where">accelerated/{m}.py, '
                f'line {twin_fn.def_line}</span></h3>{twin_pane}{note_html}</div></div>')
            spec_helpers = site.spec[m].helpers_of(spec_fn)
            for half, hs in (("reference", spec_helpers), ("accelerated", helpers)):
                for h in hs:
                    lines = code.lines_of(h)
                    parts.append(f'<details><summary>{HALF_TITLES[half]}\'s private helper <code>{h.name}</code> '
                                 f'({half}/{m}.py, line {h.def_line})</summary>'
                                 + code.pane(lines, self.resolver(m, half), None, departures=False) + "</details>")
        parts.append(self.tests_block(qual))
        parts.append("</section>")
        return "\n".join(parts)

    def shapes(self, fn: source.Function) -> str:
        """The argument shapes the function's contract declares, linked to the glossary."""
        declared = self.site.contracts.get(source.contract_name(fn) or "", [])
        if not declared:
            return ""
        items = " · ".join(f"<code>{html.escape(a)}</code> {html.escape(d)}" for a, d in declared)
        return f' <span class="shapes"><a href="index.html#shapes">shapes</a>: {items}</span>'

    def tests_block(self, qual: str) -> str:
        groups = self.site.tests_of(qual)
        out = ['<div class="tests">']
        titles = {"equal": "Proven equal: the test calls the spec and the twin and compares them",
                  "both": "Holds in both halves: one property, checked on the spec and on the twin"}
        for kind in ("equal", "both"):
            if groups[kind]:
                out.append(f"<h3>{titles[kind]}</h3><ul>")
                out += [self.test_item(t) for t in groups[kind]]
                out.append("</ul>")
        others = groups["spec"] + groups["twin"]
        if others:
            out.append(f"<details><summary>{len(others)} more test{'s' if len(others) > 1 else ''} call one half of "
                       f"it (usually to build inputs or margins for another function)</summary><ul>")
            out += [self.test_item(t) for t in others]
            out.append("</ul></details>")
        out.append("</div>")
        return "".join(out)

    def test_item(self, t: testindex.Test) -> str:
        self.linked_tests.add((t.file, t.name))
        self.test_files.add(t.file)
        href = f"tests/{Path(t.file).stem}.html#L{t.line}"
        chips = []
        if t.hypothesis:
            chips.append('<span class="chip" title="drawn by hypothesis: many shapes and values">property</span>')
        if t.over_halves:
            chips.append('<span class="chip" title="parametrized over both halves">each half</span>')
        for name in t.tolerances:
            if name == "exact":
                chips.append('<span class="chip" title="np.testing.assert_array_equal: equal bit for bit">exact</span>')
                continue
            tol = self.site.tolerances[name]
            chips.append(f'<a class="chip" href="tests/tolerances.html#L{tol.line}" title="{html.escape(tol.reason)}">'
                         f'{name}: rtol {html.escape(tol.rtol)}, atol {html.escape(tol.atol)}</a>')
        title = f' title="{html.escape(t.docstring.splitlines()[0])}"' if t.docstring else ""
        return (f'<li><a href="{href}"{title}>{html.escape(t.sentence)}</a> <span class="signature">'
                f'{html.escape(t.file)}</span>{"".join(chips)}</li>')

    # --- the index ------------------------------------------------------------------------
    def index_page(self) -> str:
        site = self.site
        root = site.root
        deviations = _section(root / "docs" / "model.md", "Deviations from the paper")
        errata = (root / "docs" / "errata.md").read_text()
        for text, prefix in ((deviations, "dev-"), (errata, "errata-")):
            for line in text.splitlines():
                if line.startswith("#"):
                    self.index_ids.add(prefix + markup.slug(line.lstrip("#")))
        link = self.prose_linker(None, on_index=True)
        parts = ["<h1>ecdit: the annotated walkthrough</h1>",
                 '<p class="lede">Every equation of EC-DiT (Sun et al., <em>Scaling Diffusion Transformers with '
                 'Adaptive Expert-Choice Routing</em>) and of the systems it is measured against: the NumPy '
                 'specification beside its jit-compiled JAX twin, line by line, with the tests that prove the two '
                 'equal. Built from the source; every page is checked in a headless browser by the test suite.</p>',
                 '<h2 id="pages">The pages, in reading order</h2><ol>']
        for m in site.modules:
            title, _ = _title_and_rest(site.spec[m].docstring)
            parts.append(f'<li><a href="{m}.html"><code>{m}</code></a>: {markup.inline(title, link)} '
                         f'({len(site.rows[m])} functions)</li>')
        parts.append("</ol>")
        parts.append('<h2 id="layers">The layers</h2><p class="prose">Each layer imports only from the layers below '
                     'it (<code>tests/test_layers.py</code>); this walkthrough reads the two lowest layers above the '
                     'core. The modules of the spec link to their pages.</p>')
        parts.append(self.layers_picture(root / "docs" / "architecture.md"))
        parts.append(self.glossary(root / "docs" / "equations.md"))
        parts.append(self.table())
        parts.append('<h2 id="deviations">Deviations from the paper</h2>')
        parts.append('<div class="prose">' + markup.markdown(deviations.split("\n", 1)[1], link, 1, "dev-") + "</div>")
        parts.append('<h2 id="errata">Errata: where the paper\'s text is inconsistent</h2>')
        parts.append('<div class="prose">' + markup.markdown(errata.split("\n", 1)[1], link, 1, "errata-") + "</div>")
        return _page("ecdit · the annotated walkthrough", "\n".join(parts), _nav(site, "index"))

    def layers_picture(self, path: Path) -> str:
        m = re.search(r"```\n(.*?)```", path.read_text(), re.S)
        if not m:
            raise WalkthroughError(f"{path}: no layers picture (a ``` block) to show")
        lines, out, in_spec = m.group(1).rstrip("\n").splitlines(), [], False
        for line in lines:
            text = html.escape(line)
            if "ecdit.reference" in line:
                in_spec = True
            if in_spec:
                for mod in self.site.modules:
                    text = re.sub(rf"(?<![\w.]){mod}(?![\w.])", f'<a href="{mod}.html">{mod}</a>', text)
            if in_spec and "└" in line:
                in_spec = False
            out.append(text)
        return '<pre class="layers">' + "\n".join(out) + "</pre>"

    def glossary(self, path: Path) -> str:
        section = _section(path, "Dimension glossary")
        return ('<h2 id="shapes">The shapes glossary</h2><div class="prose">'
                + markup.markdown(section.split("\n", 1)[1], self.prose_linker(None, on_index=True)) + "</div>")

    def table(self) -> str:
        site = self.site
        out = ['<h2 id="table">Equation → spec → twin → tests</h2>',
               '<p class="prose">Every public function of the spec, what it computes, and how many tests prove its '
               'twin equal (or check one property on both halves).</p>',
               "<table><thead><tr><th>function, source</th><th>formula</th><th>spec</th><th>twin</th><th>tests</th></tr>"
               "</thead><tbody>"]
        for m in site.modules:
            for n in site.rows[m]:
                qual = f"{m}.{n}"
                f = equations.FUNCTIONS[qual]
                try:
                    formula = equations.render(f.latex[0], display=False, where=qual)
                except equations.MathError as e:
                    raise WalkthroughError(str(e)) from None
                self.math += 1
                g = site.tests_of(qual)
                if qual in site.shared:
                    spec = twin = f'<a href="{m}.html#{n}">{SHARED[qual]}</a> (one function)'
                else:
                    s_fn, t_fn = site.spec[m].functions[n], site.twin[m].functions[n]
                    spec = f'<a href="{m}.html#r{s_fn.def_line}">reference/{m}.py:{s_fn.def_line}</a>'
                    twin = f'<a href="{m}.html#a{t_fn.def_line}">accelerated/{m}.py:{t_fn.def_line}</a>'
                out.append(f'<tr><td><a href="{m}.html#{n}"><code>{m}.{n}</code></a><br>{html.escape(f.source)}</td>'
                           f'<td>{formula}</td><td>{spec}</td><td>{twin}</td>'
                           f'<td>{len(g["equal"])} equal, {len(g["both"])} both halves</td></tr>')
        out.append("</tbody></table>")
        return "".join(out)

    # --- test sources ---------------------------------------------------------------------
    def test_page(self, name: str) -> str:
        path = self.site.root / "tests" / name
        lines = code.lines_of_source(path.read_text())
        body = (f"<h1><code>tests/{html.escape(name)}</code></h1>"
                + code.pane(lines, lambda _: None, "L", departures=False).replace('class="code"', 'class="code source"'))
        return _page(f"ecdit · tests/{name}", body, _nav(self.site, None, depth=1), depth=1)


def _title_and_rest(docstring: str) -> tuple[str, str]:
    """A module docstring's first paragraph, on one line and without its full stop, and the rest."""
    first, _, rest = docstring.strip().partition("\n\n")
    return " ".join(first.split()).rstrip("."), rest


def _section(path: Path, heading: str) -> str:
    """The '## heading...' section of a Markdown file, up to the next heading of its level."""
    text = path.read_text()
    m = re.search(rf"^(#+) {re.escape(heading)}.*$", text, re.M)
    if not m:
        raise WalkthroughError(f"{path}: no section '{heading}' to show")
    level = len(m.group(1))
    rest = text[m.start():]
    end = re.search(rf"^#{{1,{level}}} ", rest[m.end() - m.start():], re.M)
    return rest if end is None else rest[:m.end() - m.start() + end.start()]


# ---------------------------------------------------------------------------------------------
# Links
# ---------------------------------------------------------------------------------------------

_ID = re.compile(r'\sid="([^"]*)"')
_LINK_ATTR = re.compile(r'<(\w+)[^>]*?\s(href|src)="([^"]*)"')


def check_links(pages: dict[str, str]) -> int:
    """Every href and src of every page points at a page that exists and an id on it; nothing
    points off the pages (no scheme, no //). Returns the number of links checked."""
    ids = {name: set(_ID.findall(text)) for name, text in pages.items()}
    problems, count = [], 0
    for name, text in pages.items():
        here = Path(name).parent
        for tag, key, value in _LINK_ATTR.findall(text):
            value = html.unescape(value)
            count += 1
            if re.match(r"^[a-z][a-z0-9+.-]*:|^//", value, re.I):
                problems.append(f"{name}: <{tag} {key}=\"{value}\"> points off the pages")
                continue
            target, _, anchor = value.partition("#")
            page = name if not target else str((here / target).as_posix())
            page = _normalise(page)
            if page not in ids:
                problems.append(f"{name}: <{tag} {key}=\"{value}\"> points to a page that does not exist")
            elif anchor and anchor not in ids[page]:
                problems.append(f"{name}: <{tag} {key}=\"{value}\"> points to no element of {page}")
    if problems:
        raise WalkthroughError("\n".join(problems))
    return count


def _normalise(path: str) -> str:
    parts = []
    for part in path.split("/"):
        if part == "..":
            if parts:
                parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return "/".join(parts)


# ---------------------------------------------------------------------------------------------
# The build
# ---------------------------------------------------------------------------------------------

def render_pages(site: Site) -> tuple[dict[str, str], Renderer]:
    r = Renderer(site)
    pages = {"index.html": r.index_page()}
    for m in site.modules:
        pages[f"{m}.html"] = r.module_page(m)
    for name in sorted(r.test_files):
        pages[f"tests/{Path(name).stem}.html"] = r.test_page(name)
    return pages, r


def build(out, root: Path | None = None) -> BuildSummary:
    """Read, check, render and write the pages into `out` (created if needed; files of the same
    names are replaced, nothing else is touched)."""
    start = time.perf_counter()
    root = Path(root) if root is not None else project_root()
    site = read_site(root)
    pages, r = render_pages(site)
    check_links(pages)
    out = Path(out)
    for name, text in pages.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    functions = sum(len(v) for v in site.rows.values())
    return BuildSummary(out, sorted(pages), functions, r.math, len(r.linked_tests), time.perf_counter() - start)
