"""Expert-choice routing (Sec. 2.3, Eq. 5-8, Algorithm 1), JAX twin of reference/routing.py.

    A = softmax_E(x' W_r)  (5);  expert i keeps its top-C tokens (6);  I_i its chosen tokens (7);
    x_out = sum_i (G_{I_i, i})^T E_i(x'_{I_i})  (8);  C = round(S * f_c / E).

JAX: dispatch is one gather of E*G*C rows and combine one scatter-add; the E experts run as one
batched matmul over the stacked weights (E, D, F). The tokens sent to the experts are
expert-major (E, G, C, D), as in the reference: each expert's G*C tokens are one contiguous
matrix, so the experts are a plain batched matmul with the batch axis leading (no transposes of
the (., F) hidden activations, which the (G, E, C, D) layout made XLA insert: docs/benchmarks.md).
These public stages are the layer's only dispatch and combine: expert choice and token choice
both go through them. The (G, E, C, S) one-hot tensor of Algorithm 1 appears only in
`expert_choice_moe_onehot`, kept for comparison and benchmarks.

Shapes: G routing groups, S tokens per group, D width, E experts, C capacity, F expert hidden.
Ties in top-C break toward the lower token index (jax.lax.top_k's documented order).
"""
import jax
import jax.numpy as jnp

from .dots import dot_last
from .jit import checked_jit
from .primitives import gelu_tanh, softmax
from ecdit.core import contracts
from ecdit.core.config import expert_capacity  # noqa: F401  host-side: the one function both halves call


# ---------------------------------------------------------------------------------------------
# Capacity and regrouping
# ---------------------------------------------------------------------------------------------

@checked_jit(contracts.group_tokens, static_argnames=("group_size",))
def group_tokens(x, group_size):
    """Regroup (batch, seq, d) into (outer_batch * num_group, group_size, d) (Sec. 3.1); a group
    may span several images."""
    b, s, d = x.shape
    return x.reshape(b * s // group_size, group_size, d)        # (G, group_size, D)


@checked_jit(contracts.ungroup_tokens, static_argnames=("batch_size",))
def ungroup_tokens(x_grouped, batch_size):
    """Inverse of `group_tokens`: (G, group_size, d) back to (batch_size, seq, d)."""
    g, group_size, d = x_grouped.shape
    return x_grouped.reshape(batch_size, g * group_size // batch_size, d)  # (B, S, D)


# ---------------------------------------------------------------------------------------------
# Eq. 5-8, one function each
# ---------------------------------------------------------------------------------------------

@checked_jit(contracts.router_affinity)
def router_affinity(x, w_router):
    """Eq. 5: token-expert affinity A = softmax over experts of x' W_r."""
    logits = dot_last(x, w_router)                                        # (G, S, E)
    return softmax(logits, axis=-1)                              # (G, S, E)


@checked_jit(contracts.expert_choice_gating, static_argnames=("capacity",))
def expert_choice_gating(affinity, capacity):
    """Eq. 6: each expert's top-C tokens and their affinities, (gating, index) both (G, E, C);
    descending, ties toward the lower token index."""
    per_expert = jnp.swapaxes(affinity, 1, 2)                    # (G, E, S)
    gating, index = jax.lax.top_k(per_expert, capacity)          # (G, E, C) x2  JAX: exact top-k, not approx_max_k
    return gating, index


def _token_rows(index, num_tokens):
    """index (G, E, C) -> rows (E, G C) of the flattened tokens x.reshape(G S, D): row g S + s is
    token s of group g. JAX: dispatch and combine address one flat (G S, D) array."""
    g, e, c = index.shape
    rows = index + (jnp.arange(g, dtype=index.dtype) * num_tokens)[:, None, None]  # (G, E, C)
    return jnp.swapaxes(rows, 0, 1).reshape(e, g * c)            # (E, G C)


@checked_jit(contracts.dispatch)
def dispatch(x, index):
    """Eq. 7: gather the tokens each expert chose, x_in[e, g, c] = x[g, index[g, e, c]]."""
    g, s, d = x.shape
    e, c = index.shape[1:]
    rows = _token_rows(index, s)                                 # (E, G C)
    x_in = jnp.take(x.reshape(g * s, d), rows, axis=0, mode="clip")  # (E, G C, D)  JAX: one gather, no one-hot
    return x_in.reshape(e, g, c, d)                              # (E, G, C, D)


@checked_jit(contracts.expert_ffn)
def expert_ffn(x_in, w1, w2):
    """The experts, E_i(x) = GeLU(x W1^i) W2^i: one batched matmul over the stacked weights."""
    e, g, c, d = x_in.shape
    rows = x_in.reshape(e, g * c, d)                             # (E, G C, D)  JAX: batch axis leading
    hidden = gelu_tanh(jnp.einsum("end,edf->enf", rows, w1))     # (E, G C, F)
    return jnp.einsum("enf,efd->end", hidden, w2).reshape(e, g, c, d)  # (E, G, C, D)


@checked_jit(contracts.combine, static_argnames=("num_tokens",))
def combine(expert_out, gating, index, num_tokens):
    """Eq. 8: x_out[g, s] = sum over (e, c) with index[g, e, c] = s of gating[g, e, c] * expert_out[e, g, c]."""
    e, g, c, d = expert_out.shape
    weights = jnp.swapaxes(gating, 0, 1)[..., None]              # (E, G, C, 1)  gating[g, e, c]
    rows = _token_rows(index, num_tokens).reshape(-1)            # (E G C,)
    out = jnp.zeros((g * num_tokens, d), dtype=expert_out.dtype)  # (G S, D)
    out = out.at[rows].add((weights * expert_out).reshape(e * g * c, d), mode="promise_in_bounds")  # JAX: one scatter-add
    return out.reshape(g, num_tokens, d)                         # (G, S, D)


@checked_jit(contracts.experts_per_token, static_argnames=("num_tokens",))
def experts_per_token(index, num_tokens):
    """How many experts chose each token: the compute allocation of Fig. 6."""
    g = index.shape[0]
    groups = jnp.arange(g)[:, None, None]                        # (G, 1, 1)
    counts = jnp.zeros((g, num_tokens), dtype=jnp.int32)         # (G, S)
    return counts.at[groups, index].add(1)                       # (G, S), sums to E * C per group


# ---------------------------------------------------------------------------------------------
# The layer, two ways
# ---------------------------------------------------------------------------------------------

@checked_jit(contracts.expert_choice_moe, static_argnames=("capacity_factor",))
def expert_choice_moe(x, w_router, w1, w2, capacity_factor):
    """The EC MoE layer, Eq. 5-8, with gather dispatch and scatter-add combine.
    Returns (out (G, S, D), {gating, index (G, E, C), experts_per_token (G, S)})."""
    capacity = expert_capacity(x.shape[1], w_router.shape[1], capacity_factor)
    return _expert_choice_layer(x, w_router, capacity, lambda x_in: expert_ffn(x_in, w1, w2))


def _expert_choice_layer(x, w_router, capacity, experts):
    """The body of `expert_choice_moe` with the experts given: experts maps the dispatched
    (E, G, C, D) tokens to the experts' outputs (E, G, C, D). Here the local batched FFN; the
    expert-parallel layer (accelerated/expert_parallel.py) passes its all_to_all exchange."""
    g, s, d = x.shape
    affinity = router_affinity(x, w_router)                      # (G, S, E)     Eq. 5
    gating, index = expert_choice_gating(affinity, capacity)     # (G, E, C) x2  Eq. 6
    x_e = experts(dispatch(x, index))                            # (E, G, C, D)  Eq. 7, the experts
    out = combine(x_e, gating, index, s)                         # (G, S, D)     Eq. 8
    routing = {"gating": gating, "index": index, "experts_per_token": experts_per_token(index, s)}
    return out, routing


@checked_jit(contracts.expert_choice_moe_onehot, static_argnames=("capacity_factor",))
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
    x_in = jnp.einsum("becs,bsd->ebcd", dispatch_mask, x)                  # (E, G, C, D)
    x_e = expert_ffn(x_in, w1, w2)                                          # (E, G, C, D)
    out = jnp.einsum("becs,bec,ebcd->bsd", dispatch_mask, gating, x_e)     # (G, S, D)
    routing = {"gating": gating, "index": index,
               "experts_per_token": dispatch_mask.sum(axis=(1, 2)).astype(jnp.int32)}  # (G, S)
    return out, routing
