"""Token-choice top-k routing (GShard), the baseline EC-DiT is compared with (Sec. 3.5, Fig. 5).

Each token chooses its top-k experts, instead of each expert choosing tokens (Sec. 2.3); the
paper's baseline is top-2, "which matches the activation size of EC-DiT with f_c = 2.0":

    A = softmax_E(x' W_r)                                    affinity, (G, S, E)           Eq. 5
    e_{s,1..k} = top-k_i A_{s,i}                             token s's experts, best first
    w_{s,r} = A_{s,e_{s,r}} / sum_{r'=1..k} A_{s,e_{s,r'}}   gates renormalised over the k (GShard)
    p_{s,r} = #{(r', s') before (r, s) : e_{s',r'} = e_{s,r}}   slot in expert e_{s,r}'s buffer
    kept_{s,r} = [p_{s,r} < C]                               overflow beyond capacity is dropped
    x_out[s] = sum_{r : kept_{s,r}} w_{s,r} E_{e_{s,r}}(x'_s),   E_i(x) = GeLU(x W1^i) W2^i
    l_aux = E * sum_e f_e P_e,  f_e = #{s : e_{s,1} = e} / S,  P_e = mean_s A_{s,e}  (mean over G)

Priority order ("before"): every token's 1st choice, in token order, then every token's 2nd
choice, in token order, and so on (GShard Algorithm 1 fills all first choices before any second
choice; Mesh-TF's `_top_2_gating` does the same with cumulative sums). Capacity is the project's
C = round(S * f_c / E) (`expert_capacity`), so top-2 with f_c = 2 gives C = 2S/E slots per
expert, exactly the average load: any imbalance drops choices.

Unlike expert choice, each token reaches at most k experts (exactly k when nothing overflows) and
an expert may receive anywhere from 0 to C tokens: a token whose k choices all overflow gets
output 0, and the DiT block's residual carries it through unchanged.

Shapes: G routing groups, S tokens per group, D width, E experts, C capacity per expert,
F expert hidden width, k experts per token (`num_selected`). The result is stored in the same
compact form as expert choice, `gating` and `index` both (G, E, C), so `dispatch`, `expert_ffn`
and `combine` of reference/routing.py run unchanged: slot (e, c) holds token index[g, e, c] with
weight gating[g, e, c]. An empty slot has gating 0 and index 0: the expert computes on token 0
and combine adds 0 times that to token 0, which changes nothing (the price of static shapes).

Conventions: top-k lists experts in descending affinity, ties toward the lower expert index (as
jax.lax.top_k does); every second choice is dispatched when it fits: GShard's random dispatch of
the second expert (with probability 2 w_{s,2}, Algorithm 1) is left out, so the layer stays
deterministic.
"""
import numpy as np

from ecdit.core import contracts
from ecdit.core.checks import checked
from .routing import combine, dispatch, expert_capacity, expert_ffn, router_affinity


# ---------------------------------------------------------------------------------------------
# Routing: top-k per token, capacity per expert, the auxiliary loss
# ---------------------------------------------------------------------------------------------

@checked(contracts.top_k_experts)
def top_k_experts(affinity, num_selected):
    """e_{s,1..k} = top-k_i A_{s,i} and w_{s,r} = A_{s,e_{s,r}} / sum_{r'} A_{s,e_{s,r'}}.

    GShard Algorithm 1's top_2 and its normalised g1, g2, for any k: each token's k best
    experts in descending affinity (ties toward the lower expert index: a stable sort keeps
    equal keys in expert order) and their gates renormalised to sum to 1. The denominator is at
    least the top-1 affinity >= 1/E for softmax rows, so no epsilon is needed. Returns
    (weights, experts), both (G, S, k)."""
    order = np.argsort(-affinity, axis=-1, kind="stable")        # (G, S, E)  descending, stable
    experts = order[..., :num_selected]                          # (G, S, k)  e_{s,1..k}, best first
    top = np.take_along_axis(affinity, experts, axis=-1)         # (G, S, k)  A_{s,e_{s,r}}
    weights = top / np.sum(top, axis=-1, keepdims=True)          # (G, S, k)  w_{s,r}, sums to 1
    return weights, experts


@checked(contracts.token_choice_gating)
def token_choice_gating(affinity, num_selected, capacity):
    """Top-k per token, then at most C tokens per expert, filled in priority order.

    p_{s,r} = #{(r', s') before (r, s) : e_{s',r'} = e_{s,r}} with "before" meaning an earlier
    round r' < r, or the same round and an earlier token s' < s (GShard Algorithm 1: its first
    loop places every first choice before its second loop places any second choice); choice
    (s, r) is kept when p_{s,r} < C. Counting dropped choices in p changes nothing: a buffer
    fills in priority order, and once full it stays full.

    Returns (gating, index, experts, kept): gating and index (G, E, C), the compact form
    `dispatch`/`combine` consume (empty slots: gating 0, index 0); experts (G, S, k), each
    token's choices best first; kept (G, S, k) bool, which of those choices were dispatched."""
    g, s, e = affinity.shape
    k = num_selected
    weights, experts = top_k_experts(affinity, k)                # (G, S, k) x2
    # Buffer positions: the k * S choices in priority order, round-major, then token order
    choice = np.eye(e, dtype=np.int64)[np.swapaxes(experts, 1, 2)]   # (G, k, S, E)  one-hot masks
    flat = choice.reshape(g, k * s, e)                               # (G, k S, E)   priority order
    earlier = np.cumsum(flat, axis=1) - flat                         # (G, k S, E)   earlier choices per expert
    position = np.sum(earlier * flat, axis=-1).reshape(g, k, s)      # (G, k, S)     p_{s,r}
    position = np.swapaxes(position, 1, 2)                           # (G, S, k)
    kept = position < capacity                                       # (G, S, k)     overflow dropped
    # Scatter the kept choices into their slots (e_{s,r}, p_{s,r})
    groups = np.broadcast_to(np.arange(g)[:, None, None], kept.shape)  # (G, S, k)
    tokens = np.broadcast_to(np.arange(s)[None, :, None], kept.shape)  # (G, S, k)
    slots = (groups[kept], experts[kept], position[kept])            # 3 x (n_kept,) one slot each
    gating = np.zeros((g, e, capacity), dtype=weights.dtype)         # (G, E, C)     empty slot: weight 0
    gating[slots] = weights[kept]
    index = np.zeros((g, e, capacity), dtype=np.int64)               # (G, E, C)     empty slot: token 0
    index[slots] = tokens[kept]
    return gating, index, experts, kept


@checked(contracts.load_balancing_loss)
def load_balancing_loss(affinity, top1_expert):
    """l_aux = E * sum_e f_e P_e, averaged over groups; 1 for uniform routing, up to E when collapsed.

    GShard (Lepikhin et al. 2020, Algorithm 1: l_aux = (1/E) sum_e (c_e / S) m_e): f_e = c_e / S
    is the share of tokens whose FIRST choice is e (counted before capacity, as c_e is) and
    P_e = m_e the mean affinity of e. The paper writes the sum with a factor 1/E; we use E
    instead, the scale of GShard's Mesh-TensorFlow code (`mean_e(density_1_proxy * density_1)
    * E^2`) and of Switch Transformer's Eq. 4 (Fedus et al. 2021, N sum_i f_i P_i), so uniform
    routing gives exactly 1. The constant only rescales the loss weight. f is piecewise
    constant: the gradient reaches the router through P alone."""
    e = affinity.shape[-1]
    first = np.eye(e, dtype=affinity.dtype)[top1_expert]         # (G, S, E)  one-hot first choices
    fraction = np.mean(first, axis=1)                            # (G, E)     f_e
    mean_affinity = np.mean(affinity, axis=1)                    # (G, E)     P_e
    return e * np.mean(np.sum(fraction * mean_affinity, axis=-1))  # ()


# ---------------------------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------------------------

@checked(contracts.token_choice_moe)
def token_choice_moe(x, w_router, w1, w2, capacity_factor, num_selected=2):
    """The token-choice MoE layer: Eq. 5, top-k gating with capacity C = round(S f_c / E), and
    the shared dispatch / experts / combine of Eq. 7-8.

    x (G, S, D) is the router input x' of Eq. 4, w_router (D, E), w1 (E, D, F), w2 (E, F, D).
    Returns (out (G, S, D), routing) where routing holds `gating`, `index` (G, E, C), `experts`
    and `kept` (G, S, k), `experts_per_token` (G, S) int32 (the kept choices: 0 to k; empty
    slots do not count) and `aux_loss`, the scalar load-balancing loss (add it, weighted, to
    the training loss)."""
    g, s, d = x.shape
    capacity = expert_capacity(s, w_router.shape[1], capacity_factor)
    affinity = router_affinity(x, w_router)                      # (G, S, E)     Eq. 5
    gating, index, experts, kept = token_choice_gating(          # (G, E, C) x2, (G, S, k) x2
        affinity, num_selected, capacity)
    x_in = dispatch(x, index)                                    # (E, G, C, D)  Eq. 7
    x_e = expert_ffn(x_in, w1, w2)                               # (E, G, C, D)
    out = combine(x_e, gating, index, s)                         # (G, S, D)     Eq. 8
    routing = {"gating": gating, "index": index, "experts": experts, "kept": kept,
               "experts_per_token": np.sum(kept, axis=-1, dtype=np.int32),     # (G, S)
               "aux_loss": load_balancing_loss(affinity, experts[..., 0])}    # ()
    return out, routing
