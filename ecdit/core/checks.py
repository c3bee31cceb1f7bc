"""Argument checks shared by `reference/` and `accelerated/`: declared once, not re-derived.

Every public function of either half declares what its arguments must look like, once, in
`ecdit.core.contracts`, as a `Contract`:

    router_affinity = Contract(x="G S D", w_router="D E")

A string lists the axes of one array argument. A name (a letter or a word: `D`, `Dy`) binds on
first sight and must agree everywhere else (here D: the last axis of x and the first of
w_router); an integer is a fixed length; `...` stands for any number of axes; `*name` binds a
run of axes as a tuple (`x0="B *rest", noise="B *rest"`: the same shape); any other token is an
arithmetic expression of bound names (`6*D`, `K*D//N`), checked once everything is bound.
`Array` adds a dtype, optional (None allowed) and value checks; `Int` and `Float` declare scalars,
which may bind a name (`num_heads=Int(binds="N", divides="D")`) or be bounded by bound ones
(`capacity=Int(at_most="S")`); `Params` declares a dict of arrays (or of dicts).

Both halves run the same contract before they compute: the reference through the `checked`
decorator, the JAX twin through `accelerated.jit.checked_jit`. A bad argument raises the same
ValueError in both, and the message starts with the argument's name, then says what was expected
and what came, e.g.

    w_router: shape (3, 4) does not fit (D, E): axis D has length 3, but x set D = 4

Arguments are checked in the order the contract lists them: shapes and scalars first, then
values. Shape checks work on NumPy arrays, JAX arrays and JAX tracers alike (shapes are static
under jit). Value checks (NaN and infinity, index ranges, empty masks) need concrete values: they
run on NumPy and JAX arrays and are skipped on tracers, i.e. when a public function is called
from inside another jit-compiled function whose own entry point has already checked its inputs.

NumPy only: JAX is looked up in sys.modules, never imported, so the specification can be read
and run without it.
"""
from __future__ import annotations

import ast
import functools
import inspect
import math
import numbers
import operator
import sys
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


# ---------------------------------------------------------------------------------------------
# Scalars and single values
# ---------------------------------------------------------------------------------------------

def is_traced(a) -> bool:
    """True for a JAX tracer (abstract value inside jit/grad/vmap): no concrete data to inspect."""
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(a, jax.core.Tracer)


def is_jax_array(a) -> bool:
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(a, jax.Array)


def positive_int(name: str, v, minimum: int = 1) -> int:
    """A Python (or NumPy) integer >= minimum; bools and floats are refused."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise ValueError(f"{name}: expected an integer, got {v!r}")
    if v < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {v}")
    return int(v)


def real_number(name: str, v, lo=None, hi=None, lo_open=False, hi_open=False) -> float:
    """A finite real number (bools refused) in [lo, hi]; `lo_open` / `hi_open` exclude the ends."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ValueError(f"{name}: expected a number, got {v!r}")
    if not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {v}")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ValueError(f"{name}: expected a number {'>' if lo_open else '>='} {lo}, got {v}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise ValueError(f"{name}: expected a number {'<' if hi_open else '<='} {hi}, got {v}")
    return float(v)


def positive_float(name: str, v) -> float:
    """A finite real number > 0."""
    return real_number(name, v, lo=0.0, lo_open=True)


def one_of(name: str, v, choices) -> Any:
    if v not in choices:
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {v!r}")
    return v


def boolean(name: str, v) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{name}: expected True or False, got {v!r}")
    return v


def shape_of(name: str, a) -> tuple[int, ...]:
    """The shape of an array-like, or a ValueError naming `name` when it has none."""
    shape = getattr(a, "shape", None)
    if shape is None:
        if isinstance(a, (list, tuple, numbers.Number)):
            return tuple(np.shape(a))
        raise ValueError(f"{name}: expected an array, got {type(a).__name__}")
    return tuple(shape)


_JAX_FINITE = None


def _jax_all_finite(a) -> bool:
    """All entries of a JAX array finite, in one fused pass on the array's own device.

    x * 0 is 0 for every finite x and NaN for NaN and +-inf, and a sum is NaN as soon as one
    term is, so `isfinite(sum(x * 0))` is exactly "every entry is finite". Compiled, it is a
    single vectorised reduction: about 5x faster on CPU than `all(isfinite(x))`, which matters
    because the public API scans every expert weight on every call (docs/benchmarks.md).
    """
    global _JAX_FINITE
    jax = sys.modules["jax"]
    jnp = jax.numpy
    if not jnp.issubdtype(a.dtype, jnp.inexact):             # ints and bools; bfloat16 is inexact
        return True
    if _JAX_FINITE is None:
        _JAX_FINITE = jax.jit(lambda v: jnp.isfinite(jnp.sum(v * jnp.zeros((), v.dtype))))
    return bool(_JAX_FINITE(a))


# JAX arrays already checked finite, by id (a weak reference: an entry leaves when its array is
# freed). A jax.Array is immutable, so one that was finite stays finite: the same weights passed on
# every call are scanned once, not once per call (at E = 64, D = 1024 the scan of 2 E D F expert
# weights cost as much as a large part of the layer; docs/performance.md). A donated array is
# deleted, not changed, so it cannot come back with other values under the same object.
_KNOWN_FINITE: "weakref.WeakValueDictionary[int, object]" = weakref.WeakValueDictionary()


def finite(name: str, a) -> None:
    """Reject NaN and infinity (skipped on tracers: values are unknown while tracing). A JAX array
    is scanned once: later calls with the same (immutable) array object pass at once."""
    if is_traced(a):
        return
    if is_jax_array(a):
        if _KNOWN_FINITE.get(id(a)) is a:
            return
        ok = _jax_all_finite(a)
        if ok:
            try:
                _KNOWN_FINITE[id(a)] = a
            except TypeError:                                    # an array type without weak references
                pass
    else:
        arr = np.asarray(a)
        inexact = np.issubdtype(arr.dtype, np.inexact) or is_extended_float(arr.dtype)
        ok = not inexact or bool(np.isfinite(arr).all())
    if not ok:
        raise ValueError(f"{name}: contains NaN or infinity")


# ---------------------------------------------------------------------------------------------
# Axis expressions: names, integers, `...`, `*name`, arithmetic of bound names
# ---------------------------------------------------------------------------------------------

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}


def _names(expr: str) -> set[str]:
    return {n.id for n in ast.walk(ast.parse(expr, mode="eval")) if isinstance(n, ast.Name)}


def evaluate(expr: str, dims: dict[str, int]) -> int:
    """An integer expression of bound names (+, -, *, //), e.g. "K*D//N" or "B*S"."""
    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            return dims[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        raise SyntaxError(f"unsupported axis expression {expr!r}")
    return ev(ast.parse(expr, mode="eval"))


@functools.lru_cache(maxsize=None)
def _parse_axes(axes: str) -> tuple[tuple[str, str], ...]:
    """'G S D' -> (('name', 'G'), ('name', 'S'), ('name', 'D')); kinds: name, int, expr, star, any."""
    out = []
    for tok in axes.split():
        if tok == "...":
            out.append(("any", tok))
        elif tok.startswith("*"):
            out.append(("star", tok[1:]))
        elif tok.isidentifier():
            out.append(("name", tok))
        elif tok.isdigit():
            out.append(("int", tok))
        else:
            _names(tok)                                          # a syntax error shows at import
            out.append(("expr", tok))
    if sum(kind in ("any", "star") for kind, _ in out) > 1:
        raise SyntaxError(f"axes {axes!r}: at most one '...' or '*name'")
    return tuple(out)


def _layout(axes: str) -> str:
    return "(" + ", ".join(axes.split()) + ("," if len(axes.split()) == 1 else "") + ")"


class _Binding:
    """Names bound so far, with where each came from (for the error messages)."""

    def __init__(self, preset: dict[str, int] | None = None):
        self.dims: dict[str, Any] = dict(preset or {})
        self.origin: dict[str, str] = {k: "the caller" for k in self.dims}
        self.deferred: list[tuple[str, tuple, str, str, int]] = []

    def bind(self, name: str, value, origin: str) -> None:
        self.dims[name] = value
        self.origin[name] = origin

    def mismatch(self, arg, shape, axes, name, actual, expected, origin) -> ValueError:
        return ValueError(f"{arg}: shape {shape} does not fit {_layout(axes)}: axis {name} has length "
                          f"{actual}, but {origin} set {name} = {expected}")


# ---------------------------------------------------------------------------------------------
# Specs of one argument
# ---------------------------------------------------------------------------------------------

_DTYPES = ("numeric", "int", "bool")

# Floating types NumPy knows only through the ml_dtypes extension that JAX registers (their
# kind is 'V', so np.issubdtype(dtype, np.number) is False): accepted as numeric, so the twin runs
# in bfloat16 on accelerators (benchmarks/accelerator.py times it there).
EXTENDED_FLOATS = ("bfloat16",)


def is_extended_float(dtype) -> bool:
    """True for a floating dtype of EXTENDED_FLOATS (bfloat16)."""
    return getattr(dtype, "name", None) in EXTENDED_FLOATS


@dataclass(frozen=True)
class Array:
    """An array argument with named axes (see the module docstring).

    dtype: "numeric" (any number or bool; NaN/inf rejected when `finite`), "int" or "bool".
    optional: None is accepted. below: int arrays only, every entry in [0, below) (a bound name
    or expression), e.g. token indices below S. values: a further check of concrete values,
    values(name, array) raising ValueError."""
    axes: str
    dtype: str = "numeric"
    optional: bool = False
    finite: bool = True
    below: str | None = None
    values: Callable | None = None

    def __post_init__(self):
        _parse_axes(self.axes)
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype: expected one of {_DTYPES}, got {self.dtype!r}")

    def check_shape(self, name: str, a, b: _Binding) -> None:
        if a is None and self.optional:
            return
        shape = shape_of(name, a)
        dtype = getattr(a, "dtype", None)
        dtype = np.asarray(a).dtype if dtype is None else dtype
        if self.dtype == "int" and not np.issubdtype(dtype, np.integer):
            raise ValueError(f"{name}: expected integer entries {_layout(self.axes)}, got dtype {dtype}")
        if self.dtype == "bool" and not np.issubdtype(dtype, np.bool_):
            raise ValueError(f"{name}: expected booleans {_layout(self.axes)}, got dtype {dtype}")
        if not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_) or is_extended_float(dtype)):
            raise ValueError(f"{name}: expected a numeric array {_layout(self.axes)}, got dtype {dtype}")
        tokens = _parse_axes(self.axes)
        fixed = [t for t in tokens if t[0] not in ("any", "star")]
        variadic = len(fixed) < len(tokens)
        if variadic and len(shape) < len(fixed):
            raise ValueError(f"{name}: expected an array of rank >= {len(fixed)} {_layout(self.axes)}, got shape {shape}")
        if not variadic and len(shape) != len(fixed):
            raise ValueError(f"{name}: expected a rank-{len(fixed)} array {_layout(self.axes)}, got shape {shape}")
        if tokens != (("any", "..."),) and any(n == 0 for n in shape):
            raise ValueError(f"{name}: expected a non-empty array {_layout(self.axes)}, got shape {shape}")
        star = next((i for i, t in enumerate(tokens) if t[0] in ("any", "star")), None)
        if star is None:
            pairs = list(zip(tokens, shape))
        else:
            tail = len(tokens) - star - 1
            rest = shape[star:len(shape) - tail]
            pairs = list(zip(tokens[:star], shape[:star])) + [(tokens[star], rest)]
            pairs += list(zip(tokens[star + 1:], shape[len(shape) - tail:]))
        for (kind, tok), n in pairs:
            if kind == "int" and n != int(tok):
                raise ValueError(f"{name}: shape {shape} does not fit {_layout(self.axes)}: axis {tok!r} "
                                 f"has length {n}")
            if kind in ("name", "star"):
                label = tok if kind == "name" else "*" + tok
                if tok in b.dims:
                    if b.dims[tok] != n:
                        raise b.mismatch(name, shape, self.axes, label, n, b.dims[tok], b.origin[tok])
                else:
                    b.bind(tok, n, name)
            if kind == "expr":
                b.deferred.append((name, shape, self.axes, tok, n))

    def check_values(self, name: str, a, b: _Binding) -> None:
        if a is None or is_traced(a):
            return
        if self.finite:
            finite(name, a)
        if self.below is not None:
            bound = evaluate(self.below, b.dims)
            arr = np.asarray(a)
            if arr.min() < 0 or arr.max() >= bound:
                raise ValueError(f"{name}: entries must lie in [0, {self.below} = {bound}), got range "
                                 f"[{arr.min()}, {arr.max()}]")
        if self.values is not None:
            self.values(name, a)


def _as_array(spec) -> Array | Params:
    return Array(spec) if isinstance(spec, str) else spec


class Params:
    """A dict of arrays (or of further dicts): every listed key must be there; extra keys are
    allowed (a block's dict may carry more than one function reads). A key whose spec is
    optional may be missing."""

    def __init__(self, optional: bool = False, **specs):
        self.specs = {k: _as_array(v) for k, v in specs.items()}
        self.optional = optional

    def _items(self, name, p):
        if not isinstance(p, dict):
            raise ValueError(f"{name}: expected a dict of arrays with keys {tuple(self.specs)}, got {type(p).__name__}")
        missing = [k for k, s in self.specs.items() if k not in p and not s.optional]
        if missing:
            raise ValueError(f"{name}: missing parameter(s) {missing}; expected keys {tuple(self.specs)}")
        return [(f"{name}['{k}']", s, p.get(k)) for k, s in self.specs.items()]

    def check_shape(self, name, p, b):
        if p is None and self.optional:
            return
        for sub, spec, value in self._items(name, p):
            spec.check_shape(sub, value, b)

    def check_values(self, name, p, b):
        if p is None:
            return
        for sub, spec, value in self._items(name, p):
            spec.check_values(sub, value, b)


class _Scalar:
    """A scalar's checks all happen with the shapes; there are no array values to scan."""

    def check_values(self, name, v, b):
        pass


@dataclass(frozen=True)
class Int(_Scalar):
    """An integer scalar >= minimum. binds: the name it sets; at_most / divides / multiple_of:
    bounds by a bound name, an expression or a number (divides may be a tuple of them); why: the
    reason shown when a bound fails."""
    minimum: int = 1
    binds: str | None = None
    at_most: str | None = None
    divides: str | tuple | None = None
    multiple_of: int | None = None
    optional: bool = False
    why: str = ""

    def check_shape(self, name, v, b):
        if v is None and self.optional:
            return
        v = positive_int(name, v, self.minimum)
        why = f" ({self.why})" if self.why else ""
        if self.binds:
            b.bind(self.binds, v, name)
        if self.multiple_of and v % self.multiple_of:
            raise ValueError(f"{name}: expected a multiple of {self.multiple_of}{why}, got {v}")
        if self.at_most is not None:
            bound = evaluate(self.at_most, b.dims)
            if v > bound:
                raise ValueError(f"{name}: {v} exceeds {self.at_most} = {bound}{why}")
        divides = (self.divides,) if isinstance(self.divides, str) else (self.divides or ())
        for expr in divides:
            total = evaluate(expr, b.dims)
            if total % v:
                raise ValueError(f"{name}: {v} does not divide {expr} = {total}{why}")


@dataclass(frozen=True)
class Float(_Scalar):
    """A finite real scalar in [lo, hi] (open ends with lo_open / hi_open)."""
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    optional: bool = False

    def check_shape(self, name, v, b):
        if v is None and self.optional:
            return
        real_number(name, v, self.lo, self.hi, self.lo_open, self.hi_open)


POSITIVE = Float(lo=0.0, lo_open=True)
FINITE = Float()


@dataclass(frozen=True)
class OneOf(_Scalar):
    """One of a fixed set of words (a mode argument)."""
    choices: tuple

    def check_shape(self, name, v, b):
        one_of(name, v, self.choices)


@dataclass(frozen=True)
class Instance(_Scalar):
    """An argument of a given type (a config, a callable)."""
    kind: type | str
    what: str = ""

    def check_shape(self, name, v, b):
        ok = callable(v) if self.kind == "callable" else isinstance(v, self.kind)
        if not ok:
            want = self.what or getattr(self.kind, "__name__", str(self.kind))
            raise ValueError(f"{name}: expected {want}, got {type(v).__name__}")


CALLABLE = Instance("callable", "a callable")
BOOL = Instance(bool, "True or False")


# ---------------------------------------------------------------------------------------------
# A function's contract, and the decorator
# ---------------------------------------------------------------------------------------------

class Contract:
    """What every argument of one public function must look like.

    Contract(x="G S D", w_router="D E", where=fn): keywords in checking order (arguments not
    listed are not checked); `where(args, dims)` runs last, for rules no spec can say (it gets the
    bound arguments and the bound names and raises ValueError naming the argument)."""

    def __init__(self, where: Callable | None = None, **specs):
        self.specs = {k: _as_array(v) for k, v in specs.items()}
        self.where = where

    def __repr__(self):
        return f"Contract({', '.join(self.specs)})"

    def check(self, arguments: dict, preset: dict | None = None) -> dict[str, Any]:
        """Check the (name -> value) arguments; returns the bound names, e.g. {'G': 2, 'S': 8}."""
        b = _Binding(preset)
        for name, spec in self.specs.items():
            spec.check_shape(name, arguments.get(name), b)
        for name, shape, axes, expr, n in b.deferred:
            expected = evaluate(expr, b.dims)
            if n != expected:
                raise ValueError(f"{name}: shape {shape} does not fit {_layout(axes)}: axis {expr} has length "
                                 f"{n}, expected {expected} ({', '.join(f'{k} = {b.dims[k]}' for k in sorted(_names(expr)))})")
        for name, spec in self.specs.items():
            spec.check_values(name, arguments.get(name), b)
        if self.where is not None:
            self.where(arguments, b.dims)
        return b.dims

    def bind(self, fn: Callable) -> Callable[..., dict]:
        """A function (*args, **kwargs) -> bound names that checks a call of `fn`; raises TypeError
        at decoration time when the contract names an argument `fn` does not have."""
        signature = inspect.signature(fn)
        unknown = set(self.specs) - set(signature.parameters)
        if unknown:
            raise TypeError(f"contract of {fn.__qualname__} names unknown argument(s) {sorted(unknown)}")

        def check_call(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return self.check(bound.arguments)
        return check_call


def checked(contract: Contract):
    """Decorator: run `contract` on every call of the function, then the function itself.

    The reference half uses it on every public function; `accelerated.jit.checked_jit` runs the
    same contract before its compiled body."""
    def wrap(fn):
        check_call = contract.bind(fn)

        @functools.wraps(fn)
        def public(*args, **kwargs):
            check_call(*args, **kwargs)
            return fn(*args, **kwargs)

        public.contract = contract
        return public
    return wrap
