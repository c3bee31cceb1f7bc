"""Which tests exercise which function, read from tests/ with `ast`.

A test *exercises* a public function of a half when its body (or a helper function of its own
file or of tests/helpers.py that it calls) names that function through an import of that half:

    import ecdit.accelerated.routing as acc          acc.dispatch(...)          the twin
    from ecdit import reference                      reference.routing.combine  the spec
    @pytest.mark.parametrize("half", HALVES)         half.routing.combine       both halves
    for routing in (ref, acc): ...                   routing.expert_capacity    both halves

A test that names the function in both halves is listed under it: "proves the twin equal" when it
names each half on its own (it compares them), "holds on both halves" when it runs one property on
each half through one name. Tests that name only the spec are listed as properties of the spec.
The tolerances a test uses are the entries of tests/tolerances.py it names, FLOAT32 for a bare
`assert_close`, and "exact" for `assert_array_equal`.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

HALF_NAMES = ("reference", "accelerated")
_PACKAGE = {"ecdit.reference": "reference", "ecdit.accelerated": "accelerated",
            "reference": "reference", "accelerated": "accelerated"}
BOTH = "both"


@dataclass(frozen=True)
class Tolerance:
    name: str
    rtol: str
    atol: str
    reason: str
    line: int                    # where tests/tolerances.py defines it


@dataclass
class Test:
    """One test function and what it exercises."""
    file: str                    # "test_routing.py"
    name: str
    line: int                    # the first decorator's line, or the def's
    docstring: str
    hypothesis: bool             # drawn by @given
    over_halves: bool            # parametrized over HALVES
    uses: dict[str, set[str]] = field(default_factory=dict)   # "module.function" -> {"reference", "accelerated", "both"}
    tolerances: tuple[str, ...] = ()

    @property
    def sentence(self) -> str:
        """test_gating_matches_reference_exactly -> 'Gating matches reference exactly.'"""
        words = self.name.removeprefix("test_").replace("__", " ").replace("_", " ").strip()
        return (words[:1].upper() + words[1:] + ".") if words else self.name

    def halves(self, qualname: str) -> set[str]:
        """{'reference', 'accelerated'} or a part of it: the halves of `qualname` this test runs."""
        got = self.uses.get(qualname, set())
        return set(HALF_NAMES) if BOTH in got else set(got)

    def kind(self, qualname: str) -> str | None:
        """'equal' (names each half: compares them), 'both' (one property on each half),
        'spec' or 'twin' (one half only), None (does not name it)."""
        got = self.uses.get(qualname, set())
        if {"reference", "accelerated"} <= got:
            return "equal"
        if BOTH in got:
            return "both"
        if "reference" in got:
            return "spec"
        if "accelerated" in got:
            return "twin"
        return None


def read_tolerances(path: Path) -> dict[str, Tolerance]:
    """NAME = dict(rtol=..., atol=...) entries of tests/tolerances.py, each with the comment above it."""
    text = path.read_text()
    lines = text.splitlines()
    out = {}
    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and isinstance(node.value, ast.Call) and getattr(node.value.func, "id", "") == "dict":
            kw = {k.arg: ast.unparse(k.value) for k in node.value.keywords}
            comment, i = [], node.lineno - 2
            while i >= 0 and lines[i].lstrip().startswith("#") and not lines[i].lstrip().startswith("# ---"):
                comment.insert(0, lines[i].lstrip()[1:].strip())
                i -= 1
            out[node.targets[0].id] = Tolerance(node.targets[0].id, kw.get("rtol", "0"), kw.get("atol", "0"),
                                                " ".join(comment), node.lineno)
    return out


class _Aliases:
    """What a name in a test file stands for: a half package, a half's module, or a function."""

    def __init__(self):
        self.targets: dict[str, set[tuple[str, str | None, str | None]]] = {}

    def add(self, name, half, module=None, function=None):
        self.targets.setdefault(name, set()).add((half, module, function))

    def copy(self):
        new = _Aliases()
        new.targets = {k: set(v) for k, v in self.targets.items()}
        return new


def _module_aliases(tree: ast.Module, spec_modules: tuple[str, ...]) -> _Aliases:
    aliases = _Aliases()
    for node in tree.body:
        if isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if len(parts) == 3 and ".".join(parts[:2]) in _PACKAGE and parts[2] in spec_modules and a.asname:
                    aliases.add(a.asname, _PACKAGE[".".join(parts[:2])], parts[2])
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "ecdit":
                for a in node.names:
                    if a.name in HALF_NAMES:
                        aliases.add(a.asname or a.name, a.name)
            elif node.module in _PACKAGE:
                for a in node.names:
                    if a.name in spec_modules:
                        aliases.add(a.asname or a.name, _PACKAGE[node.module], a.name)
            else:
                parts = node.module.split(".")
                if len(parts) == 3 and ".".join(parts[:2]) in _PACKAGE and parts[2] in spec_modules:
                    for a in node.names:
                        aliases.add(a.asname or a.name, _PACKAGE[".".join(parts[:2])], parts[2], a.name)
    return aliases


def _both_halves_names(node: ast.FunctionDef, nodes: list, aliases: _Aliases, known: dict[str, set[str]]) -> _Aliases:
    """Aliases inside one function: a parametrize over HALVES (or over a list of aliases), loop and
    comprehension variables bound to a tuple of aliases, and plain assignments such as
    `m = half.diffmoe`."""
    local = aliases.copy()
    for dec in node.decorator_list:
        if isinstance(dec, ast.Call) and ast.unparse(dec.func).endswith("parametrize") and len(dec.args) >= 2 \
                and isinstance(dec.args[0], ast.Constant) and isinstance(dec.args[0].value, str):
            name = dec.args[0].value.split(",")[0].strip()
            values = dec.args[1]
            if isinstance(values, ast.Name) and values.id == "HALVES":
                for h in HALF_NAMES:
                    local.add(name, h)
            elif isinstance(values, (ast.List, ast.Tuple)):
                for elt in values.elts:
                    for t in _targets(elt, local, known):
                        local.add(name, *t)
    for sub in nodes:
        pairs = []
        if isinstance(sub, (ast.For, ast.comprehension)) and isinstance(sub.iter, (ast.Tuple, ast.List)):
            pairs = [(sub.target, elt) for elt in sub.iter.elts]
        elif isinstance(sub, ast.Assign) and len(sub.targets) == 1:
            pairs = [(sub.targets[0], sub.value)]
        for target, value in pairs:
            if isinstance(target, ast.Name):
                for t in _targets(value, local, known):
                    if t[2] is None:                             # a half or a module, not a function
                        local.add(target.id, *t)
    return local


def _targets(expr: ast.AST, aliases: _Aliases, known: dict[str, set[str]]) -> set[tuple[str, str | None, str | None]]:
    """What an expression such as acc, half.routing or reference.routing.combine stands for:
    (half, module or None, function or None) for each half it may be."""
    chain = []
    while isinstance(expr, ast.Attribute):
        chain.insert(0, expr.attr)
        expr = expr.value
    if not isinstance(expr, ast.Name) or expr.id not in aliases.targets:
        return set()
    out = set()
    for half, module, function in aliases.targets[expr.id]:
        rest = list(chain)
        if function is not None:
            if not rest:
                out.add((half, module, function))
            continue
        if module is None:
            if not rest:
                out.add((half, None, None))
                continue
            module, rest = rest[0], rest[1:]
            if module not in known:
                continue
        if not rest:
            out.add((half, module, None))
        elif len(rest) == 1 and rest[0] in known.get(module, ()):
            out.add((half, module, rest[0]))
    return out


def _tolerances_named(nodes: list, tolerance_names: set[str]) -> list[str]:
    found = []
    for sub in nodes:
        if isinstance(sub, ast.Name) and sub.id in tolerance_names and sub.id not in found:
            found.append(sub.id)
        if isinstance(sub, ast.Call):
            fn = ast.unparse(sub.func)
            if fn.endswith("assert_close") and len(sub.args) < 3 and not any(k.arg == "tol" for k in sub.keywords):
                if "FLOAT32" not in found:
                    found.append("FLOAT32")
            elif fn.endswith(("assert_array_equal", "assert_equal")) and "exact" not in found:
                found.append("exact")
    return found


def read_tests(folder: Path, spec_modules: tuple[str, ...], known: dict[str, set[str]],
               tolerance_names: set[str]) -> list[Test]:
    """Every test function of tests/test_*.py that exercises some spec or twin function, with
    those functions.

    `known` maps each spec module to its public function names (plus names it re-exports that the
    walkthrough shows, such as routing.expert_capacity)."""
    helper_tree = ast.parse((folder / "helpers.py").read_text()) if (folder / "helpers.py").is_file() else None
    shared_helpers = {n.name: n for n in (helper_tree.body if helper_tree else []) if isinstance(n, ast.FunctionDef)}
    shared_aliases = _module_aliases(helper_tree, spec_modules) if helper_tree else _Aliases()
    memo: dict[int, tuple[dict, list, set]] = {}
    keep = []                                                    # the trees stay alive, so id(node) is unique

    def own(fn: ast.FunctionDef, aliases: _Aliases) -> tuple[dict, list, set]:
        """What one function names itself: (uses, tolerances, names of the functions it calls)."""
        if id(fn) not in memo:
            nodes = list(ast.walk(fn))
            scoped = _both_halves_names(fn, nodes, aliases, known)
            uses: dict[str, set[str]] = {}
            calls = set()
            for sub in nodes:
                if isinstance(sub, (ast.Attribute, ast.Name)):
                    found = {(h, f"{m}.{f}") for h, m, f in _targets(sub, scoped, known) if f is not None}
                    halves = {h for h, _ in found}
                    for half, qual in found:                     # one name for both halves: one property on each
                        uses.setdefault(qual, set()).add(BOTH if len(halves) > 1 else half)
                elif isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name):
                    calls.add(sub.func.id)
            memo[id(fn)] = (uses, _tolerances_named(nodes, tolerance_names), calls)
        return memo[id(fn)]

    tests = []
    for path in sorted(folder.glob("test_*.py")):
        text = path.read_text()
        tree = ast.parse(text, filename=str(path))
        keep.append(tree)
        aliases = _module_aliases(tree, spec_modules)
        if not aliases.targets and not any(name in text for name in shared_helpers):
            continue                                             # names no half: nothing to list
        local_helpers = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("test")}

        def closure(node: ast.FunctionDef) -> tuple[dict, list]:
            uses: dict[str, set[str]] = {}
            tols: list[str] = []
            todo, seen = [(node, aliases)], {node.name}
            while todo:
                fn, fn_aliases = todo.pop()
                u, t, calls = own(fn, fn_aliases)
                for q, h in u.items():
                    uses.setdefault(q, set()).update(h)
                tols += [x for x in t if x not in tols]
                for name in sorted(calls - seen):
                    if name in local_helpers:
                        todo.append((local_helpers[name], fn_aliases if fn_aliases is not shared_aliases else aliases))
                    elif name in shared_helpers:
                        todo.append((shared_helpers[name], shared_aliases))
                    seen.add(name)
            return uses, tols

        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
                uses, tols = closure(node)
                if not uses:
                    continue
                decorators = [ast.unparse(d) for d in node.decorator_list]
                first = min([d.lineno for d in node.decorator_list] + [node.lineno])
                tests.append(Test(
                    file=path.name, name=node.name, line=first, docstring=ast.get_docstring(node) or "",
                    hypothesis=any(re.match(r"(hypothesis\.)?given\(", d) for d in decorators),
                    over_halves=any("parametrize" in d and "HALVES" in d for d in decorators),
                    uses=uses, tolerances=tuple(tols)))
    return tests
