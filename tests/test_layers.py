"""The architecture holds: each layer imports only from the layers below it, no module imports
itself back through others (function-level imports counted), and the specification loads no JAX.

    core -> reference -> accelerated -> systems -> app -> benchmarks      (docs/architecture.md)

The checks walk the source with `ast`, so an import hidden inside a function counts as much as
one at the top of a file. The checker functions are tested on small made-up trees first, so a
circle or a JAX import in the specification is shown to fail them, not only the real tree to
pass.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Source folder -> installed package name (pyproject.toml maps the three top-level folders).
FOLDERS = {"ecdit": "ecdit", "reference": "ecdit.reference", "accelerated": "ecdit.accelerated",
           "benchmarks": "ecdit.benchmarks"}

# Layers, bottom to top. A module belongs to the first prefix that matches it.
LAYERS = (
    ("core", ("ecdit.core",)),
    ("reference", ("ecdit.reference",)),
    ("accelerated", ("ecdit.accelerated",)),
    ("systems", ("ecdit.systems",)),
    ("app", ("ecdit.app", "ecdit.__main__")),
    ("benchmarks", ("ecdit.benchmarks",)),
)
TOP = "ecdit"                                    # the package's own __init__: imports nothing of ecdit

# Third-party packages a layer must never import (by AST), with the reason.
FORBIDDEN = {
    "core": {"jax", "jaxlib", "optax", "matplotlib", "tqdm"},          # NumPy only
    "reference": {"jax", "jaxlib", "optax", "matplotlib", "tqdm"},     # the spec reads without JAX
    "accelerated": {"optax", "matplotlib", "tqdm"},                    # the twin: maths only
    "systems": {"matplotlib"},                                         # plots are the application's
}


# ---------------------------------------------------------------------------------------------
# The checkers
# ---------------------------------------------------------------------------------------------

def layer_of(module: str) -> int:
    """Index of the module's layer in LAYERS (-1 for the top package `ecdit` itself)."""
    if module == TOP:
        return -1
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise ValueError(f"{module}: belongs to no layer; add it to LAYERS")


def imports_of(module: str, source: str, is_package: bool, known: set[str]) -> set[str]:
    """Every module `source` imports (anywhere in the file), resolved to absolute names; for
    `from X import name`, X.name when that is a module of the project, else X."""
    out = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module
            for a in node.names:
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return out


def project_modules(root: Path = ROOT) -> dict[str, tuple[str, bool]]:
    """{module name: (source, is_package)} of every module the project installs."""
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package] + parts)
            if folder == "ecdit" and len(parts) and parts[0] in ("reference", "accelerated", "benchmarks"):
                continue
            out[name] = (path.read_text(), path.name == "__init__.py")
    return out


def import_graph(modules: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """Edges between the project's own modules (third-party imports dropped)."""
    known = set(modules)
    graph = {}
    for name, (source, is_package) in modules.items():
        graph[name] = {m for m in imports_of(name, source, is_package, known) if m in known and m != name}
    return graph


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """'a -> b' for every import of a module from a higher layer."""
    return sorted(f"{a} ({LAYERS[layer_of(a)][0] if layer_of(a) >= 0 else 'ecdit'}) -> {b} "
                  f"({LAYERS[layer_of(b)][0]})"
                  for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules [a, b, ..., a], or None."""
    state: dict[str, int] = {}                                   # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def forbidden_imports(modules: dict[str, tuple[str, bool]]) -> list[str]:
    """'module imports jax' for every third-party import its layer forbids."""
    out = []
    for name, (source, is_package) in modules.items():
        layer = LAYERS[layer_of(name)][0] if layer_of(name) >= 0 else None
        for imported in imports_of(name, source, is_package, set()):
            if imported.split(".")[0] in FORBIDDEN.get(layer, ()):
                out.append(f"{name} imports {imported}")
    return sorted(out)


# ---------------------------------------------------------------------------------------------
# The checkers catch what they should (made-up trees)
# ---------------------------------------------------------------------------------------------

def test_a_circle_through_function_level_imports_is_found():
    modules = {
        "ecdit.systems.train": ("from ecdit.systems import checkpoint\n", False),
        "ecdit.systems.checkpoint": ("def load():\n    from ecdit.systems.train import make_optimizer\n", False),
    }
    cycle = find_cycle(import_graph(modules))
    assert cycle is not None and set(cycle) == {"ecdit.systems.train", "ecdit.systems.checkpoint"}


def test_an_upward_import_is_a_layer_violation():
    modules = {
        "ecdit.reference.routing": ("from ecdit.core import contracts\n", False),
        "ecdit.core.contracts": ("def f():\n    from ecdit.reference.routing import dispatch\n", False),
    }
    assert layer_violations(import_graph(modules)) == [
        "ecdit.core.contracts (core) -> ecdit.reference.routing (reference)"]


def test_jax_in_the_specification_is_forbidden_even_inside_a_function():
    modules = {"ecdit.reference.flow": ("import numpy as np\ndef f():\n    import jax.numpy as jnp\n", False)}
    assert forbidden_imports(modules) == ["ecdit.reference.flow imports jax.numpy"]


def test_relative_imports_resolve_inside_the_package():
    known = {"ecdit.reference.primitives", "ecdit.reference.model"}
    assert imports_of("ecdit.reference.routing", "from .primitives import softmax\nfrom . import model\n",
                      False, known) == {"ecdit.reference.primitives", "ecdit.reference.model"}


# ---------------------------------------------------------------------------------------------
# The real tree
# ---------------------------------------------------------------------------------------------

MODULES = project_modules()
GRAPH = import_graph(MODULES)


def test_every_module_belongs_to_a_layer():
    assert len(MODULES) > 30
    for name in MODULES:
        layer_of(name)                                           # raises for a module outside the layers


def test_each_layer_imports_only_from_the_layers_below():
    assert layer_violations(GRAPH) == []


def test_there_is_no_import_circle_counting_function_level_imports():
    assert find_cycle(GRAPH) is None


def test_no_layer_imports_a_package_it_must_not():
    assert forbidden_imports(MODULES) == []


def test_the_twin_holds_only_mirrors_of_the_specification_and_its_named_helpers():
    """Beyond the mirror, only accelerated.HELPERS: the jit helper and the sharded expert-choice layer."""
    from ecdit.accelerated import HELPERS
    spec = {m.rpartition(".")[2] for m in MODULES if m.startswith("ecdit.reference.")}
    twin = {m.rpartition(".")[2] for m in MODULES if m.startswith("ecdit.accelerated.")}
    assert twin == spec | set(HELPERS)


@pytest.mark.parametrize("package", ["ecdit.reference", "ecdit.core.contracts", "ecdit"])
def test_importing_the_specification_loads_no_jax_optax_matplotlib_or_tqdm(package):
    code = (f"import sys, {package}; "
            "print(sorted(m for m in ('jax', 'optax', 'matplotlib', 'tqdm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_nothing_generic_is_installed_at_the_top_level():
    """pyproject installs only the `ecdit` package tree (no top-level reference/benchmarks)."""
    import tomllib
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(p == "ecdit" or p.startswith("ecdit.") for p in tool["packages"])
    assert set(tool["package-dir"]) == {"ecdit.reference", "ecdit.accelerated", "ecdit.benchmarks"}
