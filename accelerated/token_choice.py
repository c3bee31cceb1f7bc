"""Token-choice top-k routing (GShard), JAX twin of reference/token_choice.py (Sec. 3.5 baseline).

    e_{s,1..k} = top-k_i A_{s,i};  w_{s,r} = A_{s,e_{s,r}} / sum_{r'} A_{s,e_{s,r'}};
    p_{s,r} = #{(r', s') before (r, s) : e_{s',r'} = e_{s,r}};  kept_{s,r} = [p_{s,r} < C];
    x_out[s] = sum_{r : kept_{s,r}} w_{s,r} E_{e_{s,r}}(x'_s);  l_aux = E * sum_e f_e P_e.

Priority order: all first choices in token order, then all second choices, and so on.

JAX: buffer positions are an exclusive cumulative sum over the stacked one-hot choice masks
(G, k S, E), the standard Mesh-TF/GShard form (never the (G, E, C, S) dispatch tensor); kept
choices are scattered into the (G, E, C) slots in one scatter whose out-of-range positions
(p >= C, the overflow) are dropped by the scatter itself. Dispatch, the batched experts and the
scatter-add combine are those of accelerated/routing.py.

Shapes: G routing groups, S tokens per group, D width, E experts, C capacity, F expert hidden,
k experts per token. Empty slots hold gating 0 and index 0 (harmless: they add 0 to token 0).
Ties in top-k break toward the lower expert index (jax.lax.top_k's documented order).
"""
import jax
import jax.numpy as jnp

from .jit import checked_jit
from .routing import combine, dispatch, expert_capacity, expert_ffn, router_affinity
from ecdit.core import contracts


# ---------------------------------------------------------------------------------------------
# Routing: top-k per token, capacity per expert, the auxiliary loss
# ---------------------------------------------------------------------------------------------

@checked_jit(contracts.top_k_experts, static_argnames=("num_selected",))
def top_k_experts(affinity, num_selected):
    """e_{s,1..k} = top-k_i A_{s,i} and w_{s,r} = A_{s,e_{s,r}} / sum_{r'} A_{s,e_{s,r'}};
    returns (weights, experts), both (G, S, k), best first, ties toward the lower expert."""
    top, experts = jax.lax.top_k(affinity, num_selected)         # (G, S, k) x2  JAX: exact, lower index first
    weights = top / jnp.sum(top, axis=-1, keepdims=True)         # (G, S, k)  w_{s,r}, sums to 1
    return weights, experts


@checked_jit(contracts.token_choice_gating, static_argnames=("num_selected", "capacity"))
def token_choice_gating(affinity, num_selected, capacity):
    """Top-k per token, then at most C tokens per expert in priority order (first choices before
    second choices, token order within a round); p_{s,r} < C is kept.
    Returns (gating, index (G, E, C), experts, kept (G, S, k)); empty slots: gating 0, index 0."""
    g, s, e = affinity.shape
    k = num_selected
    weights, experts = top_k_experts(affinity, k)                # (G, S, k) x2
    # Buffer positions: the k * S choices in priority order, round-major, then token order
    choice = jax.nn.one_hot(jnp.swapaxes(experts, 1, 2), e, dtype=jnp.int32)   # (G, k, S, E)  one-hot
    flat = choice.reshape(g, k * s, e)                               # (G, k S, E)   priority order
    earlier = jnp.cumsum(flat, axis=1) - flat                        # (G, k S, E)   earlier choices per expert
    position = jnp.sum(earlier * flat, axis=-1).reshape(g, k, s)     # (G, k, S)     p_{s,r}
    position = jnp.swapaxes(position, 1, 2)                          # (G, S, k)
    kept = position < capacity                                       # (G, S, k)     overflow dropped
    # Scatter the kept choices into their slots (e_{s,r}, p_{s,r})
    groups = jnp.broadcast_to(jnp.arange(g)[:, None, None], kept.shape)  # (G, S, k)
    tokens = jnp.broadcast_to(jnp.arange(s)[None, :, None], kept.shape)  # (G, S, k)
    slots = (groups, experts, position)                              # 3 x (G, S, k) JAX: all choices, static shape
    gating = jnp.zeros((g, e, capacity), dtype=weights.dtype)        # (G, E, C)     empty slot: weight 0
    gating = gating.at[slots].set(weights, mode="drop")              # JAX: p >= C is out of range, dropped
    index = jnp.zeros((g, e, capacity), dtype=jnp.int32)             # (G, E, C)     empty slot: token 0
    index = index.at[slots].set(tokens, mode="drop")
    return gating, index, experts, kept


@checked_jit(contracts.load_balancing_loss)
def load_balancing_loss(affinity, top1_expert):
    """l_aux = E * sum_e f_e P_e averaged over groups (GShard Algorithm 1 scaled by E^2, as in its
    Mesh-TF code and Switch Transformer's Eq. 4): 1 for uniform routing, up to E when collapsed."""
    e = affinity.shape[-1]
    first = jax.nn.one_hot(top1_expert, e, dtype=affinity.dtype)  # (G, S, E)  one-hot first choices
    fraction = jnp.mean(first, axis=1)                           # (G, E)     f_e
    mean_affinity = jnp.mean(affinity, axis=1)                   # (G, E)     P_e
    return e * jnp.mean(jnp.sum(fraction * mean_affinity, axis=-1))  # ()


# ---------------------------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------------------------

@checked_jit(contracts.token_choice_moe, static_argnames=("capacity_factor", "num_selected"))
def token_choice_moe(x, w_router, w1, w2, capacity_factor, num_selected=2):
    """The token-choice MoE layer: Eq. 5, top-k gating with C = round(S f_c / E), gather dispatch,
    batched experts, scatter-add combine. Returns (out (G, S, D), {gating, index (G, E, C),
    experts, kept (G, S, k), experts_per_token (G, S) int32, aux_loss ()})."""
    capacity = expert_capacity(x.shape[1], w_router.shape[1], capacity_factor)
    return _token_choice_layer(x, w_router, capacity, num_selected, lambda x_in: expert_ffn(x_in, w1, w2),
                               lambda aux: aux)


def _token_choice_layer(x, w_router, capacity, num_selected, experts, over_groups):
    """The body of `token_choice_moe` with the experts and the last step of the aux loss's mean
    over groups given: experts (E, G, C, D) -> (E, G, C, D); over_groups(aux) of this call's mean
    over its G groups. Here the local FFN and the identity; the expert-parallel layer
    (accelerated/expert_parallel.py) passes its all_to_all exchange and a pmean over devices."""
    g, s, d = x.shape
    affinity = router_affinity(x, w_router)                      # (G, S, E)     Eq. 5
    gating, index, chosen, kept = token_choice_gating(           # (G, E, C) x2, (G, S, k) x2
        affinity, num_selected, capacity)
    x_e = experts(dispatch(x, index))                            # (E, G, C, D)  Eq. 7, the experts
    out = combine(x_e, gating, index, s)                         # (G, S, D)     Eq. 8
    routing = {"gating": gating, "index": index, "experts": chosen, "kept": kept,
               "experts_per_token": jnp.sum(kept, axis=-1, dtype=jnp.int32),   # (G, S)
               "aux_loss": over_groups(load_balancing_loss(affinity, chosen[..., 0]))}  # ()
    return out, routing
