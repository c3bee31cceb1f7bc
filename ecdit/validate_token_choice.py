"""Argument checks for token-choice top-k routing (GShard), shared by `reference/token_choice.py`
and `accelerated/token_choice.py`.

Same contract as `ecdit.validate`, whose primitive checks these reuse: both halves call the same
checker before they compute, a bad argument raises `ValueError` whose message starts with the
argument's name, shape checks work on NumPy arrays, JAX arrays and tracers, and value checks
(non-finite or negative entries, out-of-range expert ids) are skipped on tracers.

Dimension glossary: G groups, S tokens per group, D width, E experts, C capacity, F expert
hidden, k experts per token (`num_selected`).
"""
from __future__ import annotations

import numpy as np

from ecdit import validate
from ecdit.validate import array, dim, finite, positive_int, shape_of


# ---------------------------------------------------------------------------------------------
# Pieces shared by several entry points
# ---------------------------------------------------------------------------------------------

def _num_selected(num_selected, num_experts: int) -> int:
    """1 <= k <= E: a token picks k distinct experts."""
    k = positive_int("num_selected", num_selected)
    if k > num_experts:
        raise ValueError(
            f"num_selected: {k} exceeds the E = {num_experts} experts (a token picks k distinct experts)")
    return k


def _affinity(affinity) -> tuple[int, int, int]:
    """Eq. 5's affinity (G, S, E): finite, non-negative, every token with some positive entry, so
    the sum of its top-k affinities (the renormalising denominator) is positive."""
    g, s, e = array("affinity", affinity, 3, "(G, S, E)")
    finite("affinity", affinity)
    if not validate._is_traced(affinity):
        a = np.asarray(affinity)
        if (a < 0).any():
            raise ValueError("affinity: expected non-negative entries (softmax probabilities, Eq. 5), "
                             f"got a minimum of {a.min()}")
        if not (a.max(axis=-1) > 0).all():
            raise ValueError("affinity: some token has no positive affinity, so its top-k gates "
                             "cannot be renormalised (expected softmax probabilities, Eq. 5)")
    return g, s, e


# ---------------------------------------------------------------------------------------------
# One checker per public function
# ---------------------------------------------------------------------------------------------

def top_k_experts(affinity, num_selected) -> None:
    g, s, e = _affinity(affinity)
    _num_selected(num_selected, e)


def token_choice_gating(affinity, num_selected, capacity) -> None:
    g, s, e = _affinity(affinity)
    _num_selected(num_selected, e)
    c = positive_int("capacity", capacity)
    if c > s:
        raise ValueError(f"capacity: {c} exceeds the S = {s} tokens of a group (an expert can receive "
                         "each token at most once, so slots past S would always be empty)")


def load_balancing_loss(affinity, top1_expert) -> None:
    g, s, e = _affinity(affinity)
    st = array("top1_expert", top1_expert, 2, "(G, S)")
    dim("top1_expert", "G", st[0], g, "one row per group of affinity")
    dim("top1_expert", "S", st[1], s, "one first choice per token of affinity")
    dtype = getattr(top1_expert, "dtype", None)
    if dtype is None or not np.issubdtype(dtype, np.integer):
        raise ValueError(f"top1_expert: expected integer expert ids, got dtype {dtype}")
    if not validate._is_traced(top1_expert):
        t = np.asarray(top1_expert)
        if t.min() < 0 or t.max() >= e:
            raise ValueError(f"top1_expert: expert ids must lie in [0, {e}), got range [{t.min()}, {t.max()}]")


def token_choice_moe(x, w_router, w1, w2, capacity_factor, num_selected) -> None:
    validate.expert_choice_moe(x, w_router, w1, w2, capacity_factor)   # the same shapes as the EC layer
    _num_selected(num_selected, shape_of("w_router", w_router)[1])
