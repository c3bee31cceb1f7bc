"""Attention: grouped-query self-attention (Table 1's #Head / #KV) and multi-head
cross-attention to text embeddings (Sec. 2.2, Eq. 2-3).

Shapes: B batch, S image tokens, L text tokens, D width (d_x), Dy text width (d_y),
N query heads, K key/value heads, R = N / K query heads per kv head, H = D / N head dim.
No biases in the projections (the paper's Eq. 2 has none).
"""
import numpy as np

from ecdit.core import contracts
from ecdit.core.checks import checked
from .primitives import softmax


@checked(contracts.self_attention)
def self_attention(x, params, num_heads, num_kv_heads):
    """Multi-head self-attention with grouped-query attention (GQA, Table 1).

    Q = x Wq is split into N heads, K = x Wk and V = x Wv into K heads; query head n attends with
    kv head n // R (R = N / K), and the heads are joined and projected by Wo:
        head_n = softmax(Q_n K_{n//R}^T / sqrt(H)) V_{n//R},   out = concat(head_1..N) Wo.
    With K = N this is ordinary multi-head attention."""
    b, s, d = x.shape
    n, k = num_heads, num_kv_heads
    h, r = d // n, n // k
    q = (x @ params["wq"]).reshape(b, s, k, r, h)                # (B, S, K, R, H)  query heads grouped by kv head
    key = (x @ params["wk"]).reshape(b, s, k, h)                 # (B, S, K, H)
    value = (x @ params["wv"]).reshape(b, s, k, h)               # (B, S, K, H)
    logits = np.einsum("bskrh,btkh->bkrst", q, key, optimize=True) / np.sqrt(h).astype(x.dtype)  # (B, K, R, S, S)
    weights = softmax(logits, axis=-1)                           # (B, K, R, S, S)  over keys t
    heads = np.einsum("bkrst,btkh->bskrh", weights, value, optimize=True)  # (B, S, K, R, H)
    return heads.reshape(b, s, d) @ params["wo"]                 # (B, S, D)  head n = k * R + r


@checked(contracts.cross_attention)
def cross_attention(x, y, params, num_heads, text_mask=None):
    """Multi-head cross-attention of image tokens to text embeddings, Eq. 2-3:

        Q_x = x Wq (D x D),  K_y = Enc(y) Wk (Dy x D),  V_y = Enc(y) Wv (Dy x D)        (2)
        C_h = softmax(Q_x,h K_y,h^T / sqrt(H)) V_y,h                                      (3)
        MHCA(x) = concat(C_1, ..., C_N) Wout

    Eq. 3 prints sqrt(d_x); we scale by sqrt(H), the head dim, as in Vaswani et al. and PixArt-alpha
    (docs/errata.md). `text_mask` (B, L) marks real caption tokens (True) against padding;
    padded keys get zero weight."""
    b, s, d = x.shape
    l = y.shape[1]
    n = num_heads
    h = d // n
    q = (x @ params["wq"]).reshape(b, s, n, h)                   # (B, S, N, H)   Eq. 2
    key = (y @ params["wk"]).reshape(b, l, n, h)                 # (B, L, N, H)   Eq. 2
    value = (y @ params["wv"]).reshape(b, l, n, h)               # (B, L, N, H)   Eq. 2
    logits = np.einsum("bsnh,blnh->bnsl", q, key, optimize=True) / np.sqrt(h).astype(x.dtype)  # (B, N, S, L)
    if text_mask is not None:
        keep = text_mask[:, None, None, :]                       # (B, 1, 1, L)
        logits = np.where(keep, logits, np.finfo(logits.dtype).min)  # padding -> weight exp(-huge) = 0
    weights = softmax(logits, axis=-1)                           # (B, N, S, L)   Eq. 3
    heads = np.einsum("bnsl,blnh->bsnh", weights, value, optimize=True)  # (B, S, N, H)
    return heads.reshape(b, s, d) @ params["wo"]                 # (B, S, D)      concat + Wout
