"""Attention: grouped-query self-attention and multi-head cross-attention (Sec. 2.2, Eq. 2-3),
JAX twin of reference/attention.py.

JAX: the score-softmax-value product goes through jax.nn.dot_product_attention (the same
softmax(Q K^T / sqrt(H)) V; it handles GQA natively and lets XLA or cuDNN fuse it).

Shapes: B batch, S image tokens, L text tokens, D width, Dy text width, N query heads,
K kv heads, H = D / N head dim.
"""
import jax

from .dots import dot_last
from .jit import checked_jit
from ecdit.core import contracts


@checked_jit(contracts.self_attention, static_argnames=("num_heads", "num_kv_heads"))
def self_attention(x, params, num_heads, num_kv_heads):
    """Multi-head self-attention with grouped-query attention (GQA, Table 1); query head n uses
    kv head n // (N / K)."""
    b, s, d = x.shape
    n, k = num_heads, num_kv_heads
    h = d // n
    q = dot_last(x, params["wq"]).reshape(b, s, n, h)                   # (B, S, N, H)
    key = dot_last(x, params["wk"]).reshape(b, s, k, h)                 # (B, S, K, H)
    value = dot_last(x, params["wv"]).reshape(b, s, k, h)               # (B, S, K, H)
    heads = jax.nn.dot_product_attention(q, key, value)          # (B, S, N, H)
    return dot_last(heads.reshape(b, s, d), params["wo"])                 # (B, S, D)


@checked_jit(contracts.cross_attention, static_argnames=("num_heads",))
def cross_attention(x, y, params, num_heads, text_mask=None):
    """Multi-head cross-attention to text embeddings, Eq. 2-3, scaled by sqrt(H) (docs/errata.md);
    padded text positions (text_mask False) get zero weight."""
    b, s, d = x.shape
    l = y.shape[1]
    n = num_heads
    h = d // n
    q = dot_last(x, params["wq"]).reshape(b, s, n, h)                   # (B, S, N, H)   Eq. 2
    key = dot_last(y, params["wk"]).reshape(b, l, n, h)                 # (B, L, N, H)   Eq. 2
    value = dot_last(y, params["wv"]).reshape(b, l, n, h)               # (B, L, N, H)   Eq. 2
    keep = None if text_mask is None else text_mask[:, None, None, :]  # (B, 1, 1, L)
    heads = jax.nn.dot_product_attention(q, key, value, mask=keep)     # (B, S, N, H)  Eq. 3
    return dot_last(heads.reshape(b, s, d), params["wo"])                 # (B, S, D)      concat + Wout
