"""Argument checks shared by `reference/` and `accelerated/`.

Both halves call the same checker before they compute, so a bad argument raises the same
`ValueError` in the specification and in its fast twin, and the message always names the
argument. Shape checks work on NumPy arrays, JAX arrays and JAX tracers alike (shapes are
static under `jax.jit`). Value checks (non-finite entries, empty text masks) need concrete
values: they run on NumPy and JAX arrays, and are skipped on tracers, i.e. when a public
function is called from inside another jit-compiled function whose own entry point has
already checked its inputs.

Dimension glossary (used in every message): B batch, S tokens (per image, or per routing group),
L text tokens, D model width, Dy text width, N heads, K kv-heads, H head dim, F FFN hidden,
E experts, C capacity, G groups.
"""
from __future__ import annotations

import math
import numbers
import sys

import numpy as np


# ---------------------------------------------------------------------------------------------
# Primitive checks
# ---------------------------------------------------------------------------------------------

def _is_traced(a) -> bool:
    """True for a JAX tracer (abstract value inside jit/grad/vmap): no concrete data to inspect."""
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(a, jax.core.Tracer)


def _is_jax_array(a) -> bool:
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(a, jax.Array)


def shape_of(name: str, a) -> tuple[int, ...]:
    """The shape of an array-like, or a ValueError naming `name` when it has none."""
    shape = getattr(a, "shape", None)
    if shape is None:
        if isinstance(a, (list, tuple, numbers.Number)):
            return tuple(np.shape(a))
        raise ValueError(f"{name}: expected an array, got {type(a).__name__}")
    return tuple(shape)


def array(name: str, a, ndim: int, layout: str) -> tuple[int, ...]:
    """Check that `a` is a numeric array of rank `ndim`; `layout` names its axes, e.g. '(G, S, D)'."""
    shape = shape_of(name, a)
    dtype = getattr(a, "dtype", None)
    if dtype is None:
        dtype = np.asarray(a).dtype
    if not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)):
        raise ValueError(f"{name}: expected a numeric array {layout}, got dtype {dtype}")
    if len(shape) != ndim:
        raise ValueError(f"{name}: expected a rank-{ndim} array {layout}, got shape {shape}")
    if any(n == 0 for n in shape):
        raise ValueError(f"{name}: expected a non-empty array {layout}, got shape {shape}")
    return shape


def dim(name: str, axis: str, actual: int, expected: int, reason: str) -> None:
    """Check one axis length; `reason` says where the expected length comes from."""
    if actual != expected:
        raise ValueError(f"{name}: axis {axis} has length {actual}, expected {expected} ({reason})")


_JAX_FINITE = None


def _jax_all_finite(a) -> bool:
    """All entries of a JAX array finite, in one fused pass on the array's own device.

    x * 0 is 0 for every finite x and NaN for NaN and +-inf, and a sum is NaN as soon as one
    term is, so `isfinite(sum(x * 0))` is exactly "every entry is finite". Compiled, it is a
    single vectorised reduction: about 5x faster on CPU than `all(isfinite(x))`, which matters
    because the public API scans every expert weight on every call (docs/benchmarks.md).
    """
    global _JAX_FINITE
    import jax
    import jax.numpy as jnp
    if not jnp.issubdtype(a.dtype, jnp.inexact):             # ints and bools; bfloat16 is inexact
        return True
    if _JAX_FINITE is None:
        _JAX_FINITE = jax.jit(lambda v: jnp.isfinite(jnp.sum(v * jnp.zeros((), v.dtype))))
    return bool(_JAX_FINITE(a))


def finite(name: str, a) -> None:
    """Reject NaN and infinity (skipped on tracers: values are unknown while tracing)."""
    if _is_traced(a):
        return
    if _is_jax_array(a):
        ok = _jax_all_finite(a)
    else:
        arr = np.asarray(a)
        ok = (not np.issubdtype(arr.dtype, np.inexact)) or bool(np.isfinite(arr).all())
    if not ok:
        raise ValueError(f"{name}: contains NaN or infinity")


def positive_int(name: str, v, minimum: int = 1) -> int:
    """A Python (or NumPy) integer >= minimum; bools and floats are refused."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise ValueError(f"{name}: expected an integer, got {v!r}")
    if v < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {v}")
    return int(v)


def positive_float(name: str, v) -> float:
    """A finite real number > 0."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ValueError(f"{name}: expected a number, got {v!r}")
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {v}")
    return float(v)


def finite_float(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {v!r}")
    return float(v)


def params(name: str, p, keys: tuple[str, ...]) -> None:
    """A parameter dict must hold exactly the arrays a function reads (no silent extras missing)."""
    if not isinstance(p, dict):
        raise ValueError(f"{name}: expected a dict of arrays with keys {keys}, got {type(p).__name__}")
    missing = [k for k in keys if k not in p]
    if missing:
        raise ValueError(f"{name}: missing parameter(s) {missing}; expected keys {keys}")


# ---------------------------------------------------------------------------------------------
# flow (Sec. 2.1, Eq. 1)
# ---------------------------------------------------------------------------------------------

def logit_normal_timesteps(z, mu, sigma) -> None:
    array("z", z, 1, "(B,)")
    finite("z", z)
    finite_float("mu", mu)
    positive_float("sigma", sigma)


def _timesteps(t, batch: int) -> None:
    array("t", t, 1, "(B,)")
    dim("t", "B", shape_of("t", t)[0], batch, "one timestep per sample of x0")
    finite("t", t)


def interpolate(x0, noise, t) -> None:
    velocity_target(x0, noise)
    _timesteps(t, shape_of("x0", x0)[0])


def velocity_target(x0, noise) -> None:
    s0 = shape_of("x0", x0)
    if len(s0) < 1 or 0 in s0:
        raise ValueError(f"x0: expected a non-empty array (B, ...), got shape {s0}")
    sn = shape_of("noise", noise)
    if sn != s0:
        raise ValueError(f"noise: shape {sn} differs from x0's shape {s0}")
    finite("x0", x0)
    finite("noise", noise)


def rectified_flow_loss(velocity, x0, noise) -> None:
    velocity_target(x0, noise)
    sv = shape_of("velocity", velocity)
    if sv != shape_of("x0", x0):
        raise ValueError(f"velocity: shape {sv} differs from x0's shape {shape_of('x0', x0)}")
    finite("velocity", velocity)


def euler_sample(velocity_fn, noise, num_steps) -> None:
    if not callable(velocity_fn):
        raise ValueError(f"velocity_fn: expected a callable v(x, t), got {type(velocity_fn).__name__}")
    s = shape_of("noise", noise)
    if len(s) < 1 or 0 in s:
        raise ValueError(f"noise: expected a non-empty array (B, ...), got shape {s}")
    finite("noise", noise)
    positive_int("num_steps", num_steps)


# ---------------------------------------------------------------------------------------------
# primitives
# ---------------------------------------------------------------------------------------------

def softmax(x, axis) -> None:
    s = shape_of("x", x)
    if not isinstance(axis, numbers.Integral) or not -len(s) <= axis < len(s):
        raise ValueError(f"axis: {axis!r} is not an axis of x with shape {s}")
    finite("x", x)


def elementwise(x) -> None:
    shape_of("x", x)
    finite("x", x)


def layer_norm(x, eps) -> None:
    s = shape_of("x", x)
    if len(s) < 1:
        raise ValueError(f"x: expected at least one axis to normalise, got shape {s}")
    finite("x", x)
    positive_float("eps", eps)


def feed_forward(x, w1, w2) -> None:
    sx = shape_of("x", x)
    if len(sx) < 1:
        raise ValueError(f"x: expected an array (..., D), got shape {sx}")
    d = sx[-1]
    d1, f = array("w1", w1, 2, "(D, F)")
    dim("w1", "D", d1, d, "the last axis of x")
    f2, d2 = array("w2", w2, 2, "(F, D)")
    dim("w2", "F", f2, f, "the last axis of w1")
    for name, a in (("x", x), ("w1", w1), ("w2", w2)):
        finite(name, a)


# ---------------------------------------------------------------------------------------------
# attention (Sec. 2.2, Eq. 2-3; GQA from Table 1)
# ---------------------------------------------------------------------------------------------

def self_attention(x, params_, num_heads, num_kv_heads) -> None:
    b, s, d = array("x", x, 3, "(B, S, D)")
    n = positive_int("num_heads", num_heads)
    k = positive_int("num_kv_heads", num_kv_heads)
    if d % n:
        raise ValueError(f"num_heads: {n} does not divide the width D = {d}")
    if n % k:
        raise ValueError(f"num_kv_heads: {k} does not divide num_heads = {n} (each kv head serves num_heads / num_kv_heads query heads)")
    h = d // n
    params("params", params_, ("wq", "wk", "wv", "wo"))
    for key, expected in (("wq", (d, n * h)), ("wk", (d, k * h)), ("wv", (d, k * h)), ("wo", (n * h, d))):
        sh = array(f"params['{key}']", params_[key], 2, "(in, out)")
        if sh != expected:
            raise ValueError(f"params['{key}']: shape {sh}, expected {expected} for D={d}, N={n}, K={k}, H={h}")
    finite("x", x)
    for key in ("wq", "wk", "wv", "wo"):
        finite(f"params['{key}']", params_[key])


def text_mask(mask, b: int, l: int) -> None:
    if mask is None:
        return
    sm = array("text_mask", mask, 2, "(B, L)")
    if sm != (b, l):
        raise ValueError(f"text_mask: shape {sm}, expected (B, L) = {(b, l)} to match x and y")
    if not _is_traced(mask):
        m = np.asarray(mask)
        if m.dtype != np.bool_:
            raise ValueError(f"text_mask: expected booleans, got dtype {m.dtype}")
        if not m.any(axis=1).all():
            raise ValueError("text_mask: some caption has no valid token (every row needs at least one True)")


def cross_attention(x, y, params_, num_heads, text_mask_) -> None:
    b, s, d = array("x", x, 3, "(B, S, D)")
    by, l, dy = array("y", y, 3, "(B, L, Dy)")
    dim("y", "B", by, b, "one caption per image in x")
    n = positive_int("num_heads", num_heads)
    if d % n:
        raise ValueError(f"num_heads: {n} does not divide the width D = {d}")
    params("params", params_, ("wq", "wk", "wv", "wo"))
    for key, expected in (("wq", (d, d)), ("wk", (dy, d)), ("wv", (dy, d)), ("wo", (d, d))):
        sh = array(f"params['{key}']", params_[key], 2, "(in, out)")
        if sh != expected:
            raise ValueError(f"params['{key}']: shape {sh}, expected {expected} for D={d}, Dy={dy}")
    text_mask(text_mask_, b, l)
    finite("x", x)
    finite("y", y)
    for key in ("wq", "wk", "wv", "wo"):
        finite(f"params['{key}']", params_[key])


# ---------------------------------------------------------------------------------------------
# routing (Sec. 2.3, Eq. 5-8, Algorithm 1)
# ---------------------------------------------------------------------------------------------

def expert_capacity(tokens_per_group, num_experts, capacity_factor) -> None:
    positive_int("tokens_per_group", tokens_per_group)
    positive_int("num_experts", num_experts)
    positive_float("capacity_factor", capacity_factor)


def router_affinity(x, w_router) -> None:
    g, s, d = array("x", x, 3, "(G, S, D)")
    dr, e = array("w_router", w_router, 2, "(D, E)")
    dim("w_router", "D", dr, d, "the last axis of x")
    finite("x", x)
    finite("w_router", w_router)


def expert_choice_gating(affinity, capacity) -> None:
    g, s, e = array("affinity", affinity, 3, "(G, S, E)")
    c = positive_int("capacity", capacity)
    if c > s:
        raise ValueError(f"capacity: {c} exceeds the S = {s} tokens of a group (an expert cannot choose a token twice)")
    finite("affinity", affinity)


def _index(index, g: int, e: int, s: int | None) -> int:
    gi, ei, c = array("index", index, 3, "(G, E, C)")
    dim("index", "G", gi, g, "one routing per group")
    dim("index", "E", ei, e, "one row of chosen tokens per expert")
    dtype = getattr(index, "dtype", None)
    if dtype is None or not np.issubdtype(dtype, np.integer):
        raise ValueError(f"index: expected integer token indices, got dtype {dtype}")
    if s is not None and not _is_traced(index):
        idx = np.asarray(index)
        if idx.min() < 0 or idx.max() >= s:
            raise ValueError(f"index: token indices must lie in [0, {s}), got range [{idx.min()}, {idx.max()}]")
    return c


def dispatch(x, index) -> None:
    g, s, d = array("x", x, 3, "(G, S, D)")
    gi = array("index", index, 3, "(G, E, C)")
    _index(index, g, gi[1], s)
    finite("x", x)


def _expert_weights(w1, w2, e: int, d: int, per_expert: str) -> None:
    """Stacked expert weights w1 (E, D, F) and w2 (E, F, D) for E experts of width D."""
    e1, d1, f = array("w1", w1, 3, "(E, D, F)")
    dim("w1", "E", e1, e, per_expert)
    dim("w1", "D", d1, d, "the width of the expert input")
    e2, f2, d2 = array("w2", w2, 3, "(E, F, D)")
    dim("w2", "E", e2, e, per_expert)
    dim("w2", "F", f2, f, "the last axis of w1")
    dim("w2", "D", d2, d, "the output width equals the input width")
    finite("w1", w1)
    finite("w2", w2)


def expert_ffn(x_in, w1, w2) -> None:
    g, e, c, d = array("x_in", x_in, 4, "(G, E, C, D)")
    _expert_weights(w1, w2, e, d, "one expert per row of x_in")
    finite("x_in", x_in)


def combine(expert_out, gating, index, num_tokens) -> None:
    g, e, c, d = array("expert_out", expert_out, 4, "(G, E, C, D)")
    sg = array("gating", gating, 3, "(G, E, C)")
    if sg != (g, e, c):
        raise ValueError(f"gating: shape {sg}, expected (G, E, C) = {(g, e, c)} from expert_out")
    s = positive_int("num_tokens", num_tokens)
    ci = _index(index, g, e, s)
    dim("index", "C", ci, c, "the capacity axis of expert_out")
    finite("expert_out", expert_out)
    finite("gating", gating)


def experts_per_token(index, num_tokens) -> None:
    g, e, c = array("index", index, 3, "(G, E, C)")
    s = positive_int("num_tokens", num_tokens)
    _index(index, g, e, s)


def expert_choice_moe(x, w_router, w1, w2, capacity_factor) -> None:
    router_affinity(x, w_router)
    d, e = shape_of("w_router", w_router)
    _expert_weights(w1, w2, e, d, "one expert per column of w_router")
    positive_float("capacity_factor", capacity_factor)


def group_tokens(x, group_size) -> None:
    b, s, d = array("x", x, 3, "(B, S, D)")
    gs = positive_int("group_size", group_size)
    if (b * s) % gs:
        raise ValueError(f"group_size: {gs} does not divide the B * S = {b} * {s} = {b * s} tokens of x")


def ungroup_tokens(x_grouped, batch_size) -> None:
    g, gs, d = array("x_grouped", x_grouped, 3, "(G, group_size, D)")
    b = positive_int("batch_size", batch_size)
    if (g * gs) % b:
        raise ValueError(f"batch_size: {b} does not divide the G * group_size = {g * gs} tokens of x_grouped")


# ---------------------------------------------------------------------------------------------
# blocks (Sec. 2.3: timestep MLP, AdaLN, the DiT block with Eq. 4)
# ---------------------------------------------------------------------------------------------

def sinusoidal_embedding(t, dim_, scale, max_period) -> None:
    array("t", t, 1, "(B,)")
    n = positive_int("dim", dim_, minimum=2)
    if n % 2:
        raise ValueError(f"dim: expected an even width (cos and sin halves), got {n}")
    positive_float("scale", scale)
    positive_float("max_period", max_period)
    finite("t", t)


def timestep_mlp(t_freq, params_) -> None:
    b, f = array("t_freq", t_freq, 2, "(B, F_t)")
    params("params", params_, ("w1", "b1", "w2", "b2"))
    f1, d = array("params['w1']", params_["w1"], 2, "(F_t, D)")
    dim("params['w1']", "F_t", f1, f, "the last axis of t_freq")
    sb1 = shape_of("params['b1']", params_["b1"])
    if sb1 != (d,):
        raise ValueError(f"params['b1']: shape {sb1}, expected {(d,)}")
    sw2 = array("params['w2']", params_["w2"], 2, "(D, D)")
    if sw2 != (d, d):
        raise ValueError(f"params['w2']: shape {sw2}, expected {(d, d)}")
    sb2 = shape_of("params['b2']", params_["b2"])
    if sb2 != (d,):
        raise ValueError(f"params['b2']: shape {sb2}, expected {(d,)}")
    finite("t_freq", t_freq)
    for key in ("w1", "b1", "w2", "b2"):
        finite(f"params['{key}']", params_[key])


def adaln_modulation(c, params_) -> None:
    b, d = array("c", c, 2, "(B, D)")
    params("params", params_, ("w", "b"))
    sw = array("params['w']", params_["w"], 2, "(D, 6 D)")
    if sw != (d, 6 * d):
        raise ValueError(f"params['w']: shape {sw}, expected {(d, 6 * d)}")
    sb = shape_of("params['b']", params_["b"])
    if sb != (6 * d,):
        raise ValueError(f"params['b']: shape {sb}, expected {(6 * d,)}")
    finite("c", c)
    finite("params['w']", params_["w"])
    finite("params['b']", params_["b"])


def modulate(x, shift, scale) -> None:
    b, s, d = array("x", x, 3, "(B, S, D)")
    for name, a in (("shift", shift), ("scale", scale)):
        sh = array(name, a, 2, "(B, D)")
        if sh != (b, d):
            raise ValueError(f"{name}: shape {sh}, expected (B, D) = {(b, d)} from x")
    for name, a in (("x", x), ("shift", shift), ("scale", scale)):
        finite(name, a)


def dit_block(x, c, y, params_, num_heads, num_kv_heads, capacity_factor, group_size, text_mask_,
              num_selected=2) -> None:
    b, s, d = array("x", x, 3, "(B, S, D)")
    sc = array("c", c, 2, "(B, D)")
    if sc != (b, d):
        raise ValueError(f"c: shape {sc}, expected (B, D) = {(b, d)} from x")
    by = array("y", y, 3, "(B, L, Dy)")[0]
    dim("y", "B", by, b, "one caption per image in x")
    if not isinstance(params_, dict):
        raise ValueError(f"params: expected a dict of parameter dicts, got {type(params_).__name__}")
    params("params", params_, ("adaln", "self_attn", "cross_attn"))
    kinds = [k for k in ("ffn", "moe", "token_choice") if k in params_]
    if len(kinds) != 1:
        raise ValueError("params: a block needs exactly one of 'ffn' (dense), 'moe' (expert choice) "
                         f"or 'token_choice' (top-k), got {kinds or 'none'}")
    if kinds[0] != "ffn":
        params(f"params['{kinds[0]}']", params_[kinds[0]], ("w_router", "w1", "w2"))
        positive_float("capacity_factor", capacity_factor)
        if kinds[0] == "token_choice":
            positive_int("num_selected", num_selected)
        if group_size is not None:
            gs = positive_int("group_size", group_size)
            if (b * s) % gs:
                raise ValueError(f"group_size: {gs} does not divide the B * S = {b * s} tokens of x")
    else:
        params("params['ffn']", params_["ffn"], ("w1", "w2"))
    finite("x", x)
    finite("c", c)
    finite("y", y)
