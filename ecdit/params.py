"""Parameter initialisation: plain dicts of float32 NumPy arrays, made once from a seed.

The same dict feeds `reference/` (as it is) and `accelerated/` (JAX converts NumPy arrays on the
way into jit, or call `to_jax` once to keep them on the device). Matrices are drawn with LeCun
normal scaling (std = 1/sqrt(fan_in)) so activations keep unit scale at any width.

`adaln_zero=True` follows DiT: the AdaLN projection starts at zero, so every gate is 0 and each
block starts as the identity. Tests pass `adaln_zero=False`, otherwise a block's attention and
FFN paths would be multiplied by zero and the equivalence tests could not see them.
"""
from __future__ import annotations

import numpy as np

DTYPE = np.float32


def _normal(rng: np.random.Generator, shape, fan_in: int) -> np.ndarray:
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(DTYPE)


def init_self_attention(rng, d: int, num_heads: int, num_kv_heads: int) -> dict:
    """wq (D, N H), wk and wv (D, K H), wo (N H, D) with H = D / N."""
    h = d // num_heads
    return {
        "wq": _normal(rng, (d, num_heads * h), d),
        "wk": _normal(rng, (d, num_kv_heads * h), d),
        "wv": _normal(rng, (d, num_kv_heads * h), d),
        "wo": _normal(rng, (num_heads * h, d), num_heads * h),
    }


def init_cross_attention(rng, d: int, d_text: int) -> dict:
    """Eq. 2's projections: wq (D, D), wk and wv (Dy, D), and Wout (D, D)."""
    return {
        "wq": _normal(rng, (d, d), d),
        "wk": _normal(rng, (d_text, d), d_text),
        "wv": _normal(rng, (d_text, d), d_text),
        "wo": _normal(rng, (d, d), d),
    }


def init_ffn(rng, d: int, hidden: int) -> dict:
    return {"w1": _normal(rng, (d, hidden), d), "w2": _normal(rng, (hidden, d), hidden)}


def init_moe(rng, d: int, hidden: int, num_experts: int) -> dict:
    """Router W_r (D, E) and stacked expert weights w1 (E, D, F), w2 (E, F, D); each expert has
    the shape of the dense FFN it replaces (Sec. 3.1)."""
    return {
        "w_router": _normal(rng, (d, num_experts), d),
        "w1": _normal(rng, (num_experts, d, hidden), d),
        "w2": _normal(rng, (num_experts, hidden, d), hidden),
    }


def init_timestep_mlp(rng, freq_dim: int, d: int) -> dict:
    return {
        "w1": _normal(rng, (freq_dim, d), freq_dim), "b1": np.zeros((d,), DTYPE),
        "w2": _normal(rng, (d, d), d), "b2": np.zeros((d,), DTYPE),
    }


def init_adaln(rng, d: int, zero: bool = True) -> dict:
    if zero:
        return {"w": np.zeros((d, 6 * d), DTYPE), "b": np.zeros((6 * d,), DTYPE)}
    return {"w": _normal(rng, (d, 6 * d), d), "b": _normal(rng, (6 * d,), 4)}


def init_block(rng, d: int, d_text: int, num_heads: int, num_kv_heads: int, ffn_hidden: int,
               num_experts: int | None = None, adaln_zero: bool = True) -> dict:
    """One DiT block: dense when `num_experts` is None, expert-choice MoE otherwise."""
    block = {
        "adaln": init_adaln(rng, d, zero=adaln_zero),
        "self_attn": init_self_attention(rng, d, num_heads, num_kv_heads),
        "cross_attn": init_cross_attention(rng, d, d_text),
    }
    if num_experts is None:
        block["ffn"] = init_ffn(rng, d, ffn_hidden)
    else:
        block["moe"] = init_moe(rng, d, ffn_hidden, num_experts)
    return block


def count(params) -> int:
    """Number of scalars in a parameter tree of dicts and lists of arrays (the model keeps its
    blocks in a list)."""
    if isinstance(params, dict):
        return sum(count(v) for v in params.values())
    if isinstance(params, (list, tuple)):
        return sum(count(v) for v in params)
    return int(np.size(params))


def to_jax(params):
    """The same parameters as JAX arrays (placed once on the default device)."""
    import jax
    import jax.numpy as jnp
    return jax.tree.map(jnp.asarray, params)
