"""The walkthrough's pages (ecdit.app.walkthrough) cannot go stale or lie: every public function
of the spec is shown once beside its twin with a test that runs both halves, the formulas are
MathML with no TeX left, every link lands, nothing is loaded from elsewhere, the same source
gives the same bytes, and each way the source could make a page lie stops the build with a
message naming the function. Checked in a real browser by tests/test_walkthrough_browser.py."""
import ast
import re
import shutil
from pathlib import Path

import pytest

from ecdit import reference
from ecdit.app.walkthrough import WalkthroughError, build, equations, pages, testindex

ROOT = Path(__file__).resolve().parents[1]
SECTION = re.compile(r'<section class="row" id="(\w+)">(.*?)</section>', re.S)


def spec_public(module):
    tree = ast.parse((ROOT / "reference" / f"{module}.py").read_text())
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")]


def rows(out, module):
    return SECTION.findall((out / f"{module}.html").read_text())


# ---------------------------------------------------------------------------------------------
# What the pages show
# ---------------------------------------------------------------------------------------------

def test_build_writes_the_index_and_one_page_per_spec_module(walkthrough_pages):
    out, summary = walkthrough_pages
    for name in ("index.html", *(f"{m}.html" for m in reference.MODULES)):
        assert (out / name).is_file(), name
    assert summary.functions == sum(len(spec_public(m)) for m in reference.MODULES) + len(pages.SHARED)
    assert summary.math >= summary.functions                    # a formula for every function, at least
    assert summary.tests_linked > 0


@pytest.mark.parametrize("module", reference.MODULES)
def test_every_public_spec_function_appears_once_beside_its_twin(walkthrough_pages, module):
    out, _ = walkthrough_pages
    found = rows(out, module)
    names = [name for name, _ in found]
    shared = [q.split(".")[1] for q in pages.SHARED if q.startswith(module + ".")]
    assert sorted(names) == sorted(spec_public(module) + shared)
    for name, body in found:
        if name in shared:
            assert 'class="half shared"' in body, name
            continue
        assert body.count('class="half spec"') == 1 and body.count('class="half twin"') == 1, name
        assert f"reference/{module}.py" in body and f"accelerated/{module}.py" in body, name


@pytest.mark.parametrize("module", reference.MODULES)
def test_every_row_links_a_test_that_calls_both_halves_at_a_test_definition(walkthrough_pages, module):
    out, _ = walkthrough_pages
    for name, body in rows(out, module):
        listed = body.split('<div class="tests">')[1].split("<details>")[0]   # the both-halves lists
        links = re.findall(r'<li><a href="tests/(\w+)\.html#L(\d+)"', listed)
        assert links, f"{module}.{name}: no test that runs both halves is listed"
        for stem, line in links:
            text = (ROOT / "tests" / f"{stem}.py").read_text().splitlines()[int(line) - 1]
            assert text.startswith(("@", "def test")), f"{module}.{name}: {stem}.py line {line} is {text!r}"


def test_jax_notes_are_lifted_out_of_the_code_into_notes(walkthrough_pages):
    """Every `# JAX:` comment of the twin's public functions appears as a note beside its row and
    no longer inside the code pane."""
    out, _ = walkthrough_pages
    count = 0
    for module in reference.MODULES:
        text = (ROOT / "accelerated" / f"{module}.py").read_text()
        notes = re.findall(r"#.*?\bJAX:\s*(.*)$", text, re.M)
        page = (out / f"{module}.html").read_text()
        code = "".join(re.findall(r'<pre class="code">.*?</pre>', page, re.S))
        assert "JAX:" not in re.sub(r"<[^>]+>", "", code), module
        for note in notes:
            count += 1
            assert note.split()[0] in page, (module, note)
    assert count > 10


def test_the_twin_lines_that_depart_from_the_spec_are_marked(walkthrough_pages):
    out, _ = walkthrough_pages
    (name, body), = [(n, b) for n, b in rows(out, "routing") if n == "expert_choice_gating"]
    twin = body.split('class="half twin"')[1]
    departs = re.findall(r'<span class="ln departs" id="a(\d+)">', twin)
    source = (ROOT / "accelerated" / "routing.py").read_text().splitlines()
    assert departs and all("top_k" in source[int(n) - 1] for n in departs)   # lax.top_k for argsort + take


def test_the_index_has_the_layers_glossary_table_deviations_and_errata(walkthrough_pages):
    out, _ = walkthrough_pages
    index = (out / "index.html").read_text()
    for anchor in ("layers", "shapes", "table", "deviations", "errata"):
        assert f'id="{anchor}"' in index, anchor
    for module in reference.MODULES:
        assert f'<a href="{module}.html">{module}</a>' in index.split('id="layers"')[1].split("</pre>")[0], module
    assert index.count("<tr><td>") >= sum(len(spec_public(m)) for m in reference.MODULES)


# ---------------------------------------------------------------------------------------------
# It cannot lie
# ---------------------------------------------------------------------------------------------

def test_pages_are_self_contained_behind_a_content_security_policy(walkthrough_pages):
    out, _ = walkthrough_pages
    for path in out.rglob("*.html"):
        text = path.read_text()
        assert f'content="{pages.CSP}"' in text, path
        assert "default-src 'none'" in pages.CSP
        assert not re.search(r'\s(?:src|href)="(?:[a-z][a-z0-9+.-]*:|//)', text, re.I), path
        assert "<link" not in text and "@import" not in text and "url(" not in text, path


def test_rendered_math_holds_no_tex(walkthrough_pages):
    out, _ = walkthrough_pages
    for path in out.glob("*.html"):
        for math in re.findall(r"<math.*?</math>", path.read_text(), re.S):
            assert "\\" not in re.sub(r"<[^>]+>", "", math), (path.name, math[:200])


def test_the_same_source_gives_the_same_bytes(walkthrough_pages, tmp_path):
    out, first = walkthrough_pages
    second = build(tmp_path)
    assert second.pages == first.pages
    for name in first.pages:
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


def test_an_unknown_tex_macro_is_an_error_naming_the_formula():
    with pytest.raises(equations.MathError, match=r"routing.dispatch: unknown TeX \\notamacro"):
        equations.render(r"x = \notamacro{y}", where="routing.dispatch")
    assert "<math" in equations.render(r"x = \frac{a}{b}", where="fine")


def test_an_unknown_tex_macro_stops_the_build_naming_the_function(monkeypatch, tmp_path):
    monkeypatch.setitem(equations.FUNCTIONS, "routing.dispatch", equations.Formula("Eq. 7", (r"\notamacro{x}",)))
    with pytest.raises(WalkthroughError, match=r"routing.dispatch: unknown TeX \\notamacro"):
        build(tmp_path)


def test_a_link_to_nowhere_or_off_the_pages_is_refused():
    good = {"a.html": '<a href="b.html#x">b</a><p id="top"><a href="#top">up</a></p>', "b.html": '<h1 id="x">x</h1>'}
    assert pages.check_links(good) == 3 - 1                      # two links (h1 has none)
    for broken, why in ((('<a href="b.html#y">', "no element of b.html")),
                        (('<a href="c.html">', "page that does not exist")),
                        (('<a href="https://example.com/">', "off the pages")),
                        (('<img src="//cdn.example/x.png">', "off the pages"))):
        with pytest.raises(WalkthroughError, match=f"a.html: .*{why}"):
            pages.check_links({**good, "a.html": broken})


# ---------------------------------------------------------------------------------------------
# A copy of the source, changed so that a page would lie
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def source_copy(tmp_path):
    """The files the walkthrough reads, copied, so a test can break them."""
    root = tmp_path / "src"
    for folder in ("reference", "accelerated", "docs"):
        shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__", "*.png", "*.json"))
    (root / "tests").mkdir()
    for path in (ROOT / "tests").glob("*.py"):
        shutil.copy(path, root / "tests" / path.name)
    (root / "ecdit" / "core").mkdir(parents=True)
    for name in ("config.py", "contracts.py"):
        shutil.copy(ROOT / "ecdit" / "core" / name, root / "ecdit" / "core" / name)
    return root


def _append(path, text):
    path.write_text(path.read_text() + text)


def test_a_spec_function_without_a_twin_stops_the_build_naming_it(source_copy):
    _append(source_copy / "reference" / "routing.py", '\n\ndef made_up(x):\n    """Eq. 5."""\n    return x\n')
    with pytest.raises(WalkthroughError, match=r"reference\.routing\.made_up: no twin"):
        pages.read_site(source_copy)


def test_a_function_no_test_runs_in_both_halves_stops_the_build_naming_it(source_copy):
    for half in ("reference", "accelerated"):
        _append(source_copy / half / "routing.py", "\n\ndef made_up(x):\n    return x\n")
    with pytest.raises(WalkthroughError) as e:
        pages.read_site(source_copy)
    assert "routing.made_up: no test runs both halves" in str(e.value)
    assert "routing.made_up: no formula" in str(e.value)


def test_an_equation_cited_without_a_rendered_form_stops_the_build(source_copy):
    path = source_copy / "reference" / "routing.py"
    path.write_text(path.read_text().replace('"""Eq. 7: gather', '"""Eq. 42 and Eq. 7: gather', 1))
    with pytest.raises(WalkthroughError, match=r"routing\.dispatch cites Eq\. 42, which has no rendered form"):
        pages.read_site(source_copy)


def test_the_unchanged_copy_builds(source_copy, tmp_path):
    """The three tests above fail for the change they make, not for the copy."""
    summary = build(tmp_path / "out", root=source_copy)
    assert summary.functions > 60


# ---------------------------------------------------------------------------------------------
# Which tests exercise which function
# ---------------------------------------------------------------------------------------------

def test_the_test_index_tells_comparisons_from_properties_on_each_half(tmp_path):
    (tmp_path / "test_made_up.py").write_text('''
import pytest
import ecdit.reference.routing as ref
import ecdit.accelerated.routing as acc
from ecdit import accelerated, reference
from tests.helpers import HALVES

def test_compares(x):
    assert_close(acc.dispatch(x), ref.dispatch(x))

@pytest.mark.parametrize("half", HALVES)
def test_property(half):
    m = half.routing
    np.testing.assert_array_equal(m.combine(1), 1)

def test_loop():
    for r in (ref, acc):
        r.group_tokens(1, tol=SAMPLER)

def test_spec_only():
    ref.router_affinity(1)

def test_nothing():
    pass
''')
    known = {"routing": {"dispatch", "combine", "group_tokens", "router_affinity"}}
    tests = {t.name: t for t in testindex.read_tests(tmp_path, ("routing",), known, {"SAMPLER"})}
    assert tests["test_compares"].kind("routing.dispatch") == "equal"
    assert tests["test_compares"].tolerances == ("FLOAT32",)
    assert tests["test_property"].kind("routing.combine") == "both"
    assert tests["test_property"].tolerances == ("exact",) and tests["test_property"].over_halves
    assert tests["test_loop"].kind("routing.group_tokens") == "both"
    assert tests["test_loop"].tolerances == ("SAMPLER",)
    assert tests["test_spec_only"].kind("routing.router_affinity") == "spec"
    assert "test_nothing" not in tests
    assert tests["test_property"].sentence == "Property."


def test_equation_citations_expand_ranges_and_leave_other_works_out():
    from ecdit.app.walkthrough import source
    assert source.cited_equations("Eq. 5-8, then Eq. 2 and Eq. 6 again") == [5, 6, 7, 8, 2]
    assert source.cited_equations("Switch Transformer's Eq. 4 and the paper's Eq. 3") == [3]
