"""`dot_last`: x (..., D) @ w (D, F) computed as one 2-D matmul (a helper of the JAX twin, not an
equation: reference/ writes these products as `x @ w`).

JAX: XLA's CPU backend runs `x @ w` with x of rank 3 (B, S, D) fast in the forward pass, but the
weight gradient of that product contracts x and the output cotangent over two axes (B and S),
and that dot_general runs at half the speed of the same product on (B S, D): a dense FFN's
forward + backward on (4, 4096, 256) x (256, 2048) took 1.70 s at rank 3 and 0.88 s flattened
(2-core AMD EPYC, 2026-12-04; docs/benchmarks.md). Reshaping the leading axes into one is free
(a bitcast under jit), so every dense projection of the twin goes through here.
"""
import jax.numpy as jnp


def dot_last(x, w):
    """x (..., D) @ w (D, F) -> (..., F), contracting the last axis of x in one (N, D) x (D, F) matmul."""
    lead = x.shape[:-1]
    out = jnp.reshape(x, (-1, x.shape[-1])) @ w                  # (prod(...), F)
    return jnp.reshape(out, lead + (w.shape[-1],))               # (..., F)
