"""Reading the two halves with `ast`: each module's docstring, public functions, private helpers,
imports and `# JAX:` notes, without importing (and so without compiling) anything.

A public function is a module-level `def` whose name has no leading underscore, as in
tests/test_mirror.py; a name imported into a module belongs to the module that defines it.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

JAX_NOTE = re.compile(r"#.*?\bJAX:\s*(?P<note>.*)$")   # a code comment that carries a JAX note
EQUATION = re.compile(r"\bEq(?:uation)?s?\.?\s*(?P<first>\d+)(?:\s*(?:-|–|to)\s*(?P<last>\d+))?")


class SourceError(ValueError):
    """The code cannot be shown as it is (a function without a twin, a missing file)."""


@dataclass(frozen=True)
class Function:
    """One module-level function of one half, as written."""
    module: str                  # e.g. "routing"
    name: str
    path: Path
    first_line: int              # the first decorator's line, or the def's
    def_line: int
    last_line: int
    docstring: str               # cleaned (inspect.cleandoc), "" when there is none
    docstring_lines: tuple[int, int] | None   # first and last source line of the docstring
    signature: str               # "name(a, b, c=1)"
    calls: frozenset[str]        # bare names used in the body (calls and references)
    lines: tuple[str, ...]       # the source lines first_line..last_line

    @property
    def public(self) -> bool:
        return not self.name.startswith("_")


@dataclass
class Module:
    """One module of one half."""
    half: str                    # "reference" or "accelerated"
    name: str
    path: Path
    docstring: str
    functions: dict[str, Function] = field(default_factory=dict)   # every module-level def, in order
    imported: dict[str, str] = field(default_factory=dict)         # local name -> "module.function" (spec modules)

    @property
    def public(self) -> dict[str, Function]:
        return {n: f for n, f in self.functions.items() if f.public}

    def helpers_of(self, fn: Function) -> list[Function]:
        """The module's private functions that `fn` reaches, directly or through each other, in
        source order."""
        seen, todo = set(), [fn]
        while todo:
            for name in sorted(todo.pop().calls):
                f = self.functions.get(name)
                if f is not None and not f.public and name not in seen:
                    seen.add(name)
                    todo.append(f)
        return [f for n, f in self.functions.items() if n in seen]


def _signature(node: ast.FunctionDef) -> str:
    return f"{node.name}({ast.unparse(node.args)})"


def _names_used(node: ast.AST) -> frozenset[str]:
    return frozenset(n.id for n in ast.walk(node) if isinstance(n, ast.Name))


def read_module(path: Path, half: str, modules: tuple[str, ...]) -> Module:
    """Parse one source file of a half; `modules` are the spec's module names (for imports)."""
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text, filename=str(path))
    module = Module(half=half, name=path.stem, path=path, docstring=ast.get_docstring(tree) or "")
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module in modules:
            for alias in node.names:
                module.imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.ImportFrom) and node.module == "ecdit.core.config":
            for alias in node.names:
                module.imported[alias.asname or alias.name] = f"core.{alias.name}"
        elif isinstance(node, ast.FunctionDef):
            first = min([d.lineno for d in node.decorator_list] + [node.lineno])
            doc_lines = None
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                doc_lines = (body[0].lineno, body[0].end_lineno)
            module.functions[node.name] = Function(
                module=module.name, name=node.name, path=path, first_line=first, def_line=node.lineno,
                last_line=node.end_lineno, docstring=ast.get_docstring(node) or "", docstring_lines=doc_lines,
                signature=_signature(node), calls=_names_used(node),
                lines=tuple(lines[first - 1:node.end_lineno]))
    return module


def read_half(folder: Path, half: str, modules: tuple[str, ...]) -> dict[str, Module]:
    """Every spec module of one half, by name; a missing file is a SourceError naming it."""
    out = {}
    for name in modules:
        path = folder / f"{name}.py"
        if not path.is_file():
            raise SourceError(f"{half}: no module {name} ({path} is missing)")
        out[name] = read_module(path, half, modules)
    return out


def jax_notes(lines: tuple[str, ...], first_line: int) -> list[tuple[int, str]]:
    """(source line, note) for every `# JAX:` comment in the given lines."""
    out = []
    for i, line in enumerate(lines):
        m = JAX_NOTE.search(line)
        if m:
            out.append((first_line + i, m.group("note").strip()))
    return out


def docstring_jax_notes(docstring: str) -> list[str]:
    """The sentences of a docstring that start with 'JAX:' (each up to the end of its paragraph)."""
    out = []
    for paragraph in re.split(r"\n\s*\n", docstring):
        flat = " ".join(paragraph.split())
        for m in re.finditer(r"\bJAX:\s*(.*)", flat):
            out.append(m.group(1).strip())
    return out


def cited_equations(text: str) -> list[int]:
    """The paper's equation numbers cited as 'Eq. N' or 'Eq. N-M' (ranges expanded), in order, no
    repeats. An equation of another work ("Switch Transformer's Eq. 4") is not the paper's."""
    out = []
    for m in EQUATION.finditer(text):
        owner = re.search(r"(\w+)'s\s+$", text[max(0, m.start() - 40):m.start()])
        if owner and owner.group(1) != "paper":
            continue
        first = int(m.group("first"))
        last = int(m.group("last") or first)
        for n in range(first, max(first, last) + 1):
            if n not in out:
                out.append(n)
    return out


def contract_shapes(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Each contract of ecdit/core/contracts.py as [(argument, dims)] for the arguments whose shape
    it declares ("G S D"): the shapes a reader sees beside a function's signature."""
    tree = ast.parse(path.read_text())
    values: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    values[target.id] = node.value

    def resolve(value, depth=0):
        while isinstance(value, ast.Name) and value.id in values and depth < 10:
            value, depth = values[value.id], depth + 1
        return value

    def dims(value) -> str | None:
        value = resolve(value)
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            return value.value
        if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "Array" and value.args \
                and isinstance(value.args[0], ast.Constant):
            return value.args[0].value
        return None

    out = {}
    for name in values:
        value = resolve(ast.Name(id=name))
        if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "Contract":
            out[name] = [(k.arg, d) for k in value.keywords if k.arg and (d := dims(k.value)) is not None]
    return out


def contract_name(fn: Function) -> str | None:
    """NAME of the `@checked(contracts.NAME)` / `@checked_jit(contracts.NAME, ...)` decorator."""
    for line in fn.lines[:fn.def_line - fn.first_line]:
        m = re.search(r"contracts\.(\w+)", line)
        if m:
            return m.group(1)
    return None
