"""Expert-choice routing (Sec. 2.3, Eq. 5-8, Algorithm 1), JAX twin of reference/routing.py.

    A = softmax_E(x' W_r)  (5);  expert i keeps its top-C tokens (6);  I_i its chosen tokens (7);
    x_out = sum_i (G_{I_i, i})^T E_i(x'_{I_i})  (8);  C = round(S * f_c / E).

JAX: dispatch is one gather of E*C rows per group and combine one scatter-add; the E experts run
as one batched matmul over the stacked weights (E, D, F). The (G, E, C, S) one-hot tensor of
Algorithm 1 appears only in `expert_choice_moe_onehot`, kept for comparison and benchmarks.

Shapes: G routing groups, S tokens per group, D width, E experts, C capacity, F expert hidden.
Ties in top-C break toward the lower token index (jax.lax.top_k's documented order).
"""
import jax
import jax.numpy as jnp

from accelerated._jit import checked_jit
from accelerated.primitives import gelu_tanh, softmax
from ecdit import validate
from reference import routing as _reference


# ---------------------------------------------------------------------------------------------
# Capacity and regrouping
# ---------------------------------------------------------------------------------------------

def expert_capacity(tokens_per_group, num_experts, capacity_factor):
    """C = round(S * f_c / E), halves up; ValueError when C < 1 or C > S.

    JAX: capacity is host-side integer arithmetic on static shapes (it fixes array shapes, so it
    can never be traced); it is the reference function itself, not a copy of it."""
    return _reference.expert_capacity(tokens_per_group, num_experts, capacity_factor)


@checked_jit(validate.group_tokens, static_argnames=("group_size",))
def group_tokens(x, group_size):
    """Regroup (batch, seq, d) into (outer_batch * num_group, group_size, d) (Sec. 3.1); a group
    may span several images."""
    b, s, d = x.shape
    return x.reshape(b * s // group_size, group_size, d)        # (G, group_size, D)


@checked_jit(validate.ungroup_tokens, static_argnames=("batch_size",))
def ungroup_tokens(x_grouped, batch_size):
    """Inverse of `group_tokens`: (G, group_size, d) back to (batch_size, seq, d)."""
    g, group_size, d = x_grouped.shape
    return x_grouped.reshape(batch_size, g * group_size // batch_size, d)  # (B, S, D)


# ---------------------------------------------------------------------------------------------
# Eq. 5-8, one function each
# ---------------------------------------------------------------------------------------------

@checked_jit(validate.router_affinity)
def router_affinity(x, w_router):
    """Eq. 5: token-expert affinity A = softmax over experts of x' W_r."""
    logits = x @ w_router                                        # (G, S, E)
    return softmax(logits, axis=-1)                              # (G, S, E)


@checked_jit(validate.expert_choice_gating, static_argnames=("capacity",))
def expert_choice_gating(affinity, capacity):
    """Eq. 6: each expert's top-C tokens and their affinities, (gating, index) both (G, E, C);
    descending, ties toward the lower token index."""
    per_expert = jnp.swapaxes(affinity, 1, 2)                    # (G, E, S)
    gating, index = jax.lax.top_k(per_expert, capacity)          # (G, E, C) x2  JAX: exact top-k, not approx_max_k
    return gating, index


@checked_jit(validate.dispatch)
def dispatch(x, index):
    """Eq. 7: gather the tokens each expert chose, x_in[g, e, c] = x[g, index[g, e, c]]."""
    groups = jnp.arange(x.shape[0])[:, None, None]               # (G, 1, 1)
    return x[groups, index]                                      # (G, E, C, D)  JAX: a gather, no one-hot


@checked_jit(validate.expert_ffn)
def expert_ffn(x_in, w1, w2):
    """The experts, E_i(x) = GeLU(x W1^i) W2^i: one batched matmul over the stacked weights."""
    hidden = gelu_tanh(jnp.einsum("gecd,edf->gecf", x_in, w1))  # (G, E, C, F)
    return jnp.einsum("gecf,efd->gecd", hidden, w2)              # (G, E, C, D)


@checked_jit(validate.combine, static_argnames=("num_tokens",))
def combine(expert_out, gating, index, num_tokens):
    """Eq. 8: x_out[s] = sum over (e, c) with index[e, c] = s of gating[e, c] * expert_out[e, c]."""
    g, e, c, d = expert_out.shape
    weighted = gating[..., None] * expert_out                    # (G, E, C, D)
    groups = jnp.arange(g)[:, None, None]                        # (G, 1, 1)
    out = jnp.zeros((g, num_tokens, d), dtype=weighted.dtype)    # (G, S, D)
    return out.at[groups, index].add(weighted)                   # (G, S, D)  JAX: one scatter-add


@checked_jit(validate.experts_per_token, static_argnames=("num_tokens",))
def experts_per_token(index, num_tokens):
    """How many experts chose each token: the compute allocation of Fig. 6."""
    g = index.shape[0]
    groups = jnp.arange(g)[:, None, None]                        # (G, 1, 1)
    counts = jnp.zeros((g, num_tokens), dtype=jnp.int32)         # (G, S)
    return counts.at[groups, index].add(1)                       # (G, S), sums to E * C per group


# ---------------------------------------------------------------------------------------------
# The layer, two ways
# ---------------------------------------------------------------------------------------------

@checked_jit(validate.expert_choice_moe, static_argnames=("capacity_factor",))
def expert_choice_moe(x, w_router, w1, w2, capacity_factor):
    """The EC MoE layer, Eq. 5-8, with gather dispatch and scatter-add combine.
    Returns (out (G, S, D), {gating, index (G, E, C), experts_per_token (G, S)})."""
    g, s, d = x.shape
    capacity = expert_capacity(s, w_router.shape[1], capacity_factor)
    affinity = router_affinity(x, w_router)                      # (G, S, E)     Eq. 5
    gating, index = expert_choice_gating(affinity, capacity)     # (G, E, C) x2  Eq. 6
    x_in = dispatch(x, index)                                    # (G, E, C, D)  Eq. 7
    x_e = expert_ffn(x_in, w1, w2)                               # (G, E, C, D)
    out = combine(x_e, gating, index, s)                         # (G, S, D)     Eq. 8
    routing = {"gating": gating, "index": index, "experts_per_token": experts_per_token(index, s)}
    return out, routing


@checked_jit(validate.expert_choice_moe, static_argnames=("capacity_factor",))
def expert_choice_moe_onehot(x, w_router, w1, w2, capacity_factor):
    """Algorithm 1, line by line, with the one-hot dispatch tensor (G, E, C, S)."""
    g, s, d = x.shape
    capacity = expert_capacity(s, w_router.shape[1], capacity_factor)
    # 1. Compute token-expert affinity scores
    logits = jnp.einsum("bsd,de->bse", x, w_router)                        # (G, S, E)
    affinity = softmax(logits, axis=-1)                                     # (G, S, E)
    # 2. Select the top-k tokens for each expert
    gating, index = expert_choice_gating(affinity, capacity)               # (G, E, C)
    dispatch_mask = jax.nn.one_hot(index, s, dtype=x.dtype)                # (G, E, C, S)
    # 3. Process the tokens by each expert and combine
    x_in = jnp.einsum("becs,bsd->becd", dispatch_mask, x)                  # (G, E, C, D)
    x_e = expert_ffn(x_in, w1, w2)                                          # (G, E, C, D)
    out = jnp.einsum("becs,bec,becd->bsd", dispatch_mask, gating, x_e)     # (G, S, D)
    routing = {"gating": gating, "index": index,
               "experts_per_token": dispatch_mask.sum(axis=(1, 2)).astype(jnp.int32)}  # (G, S)
    return out, routing
