"""Expert-choice routing (Sec. 2.3, Eq. 5-8, Algorithm 1), JAX twin of reference/routing.py.

    A = softmax_E(x' W_r)  (5);  expert i keeps its top-C tokens (6);  I_i its chosen tokens (7);
    x_out = sum_i (G_{I_i, i})^T E_i(x'_{I_i})  (8);  C = round(S * f_c / E).

JAX: dispatch is one gather of E*C rows per group and combine one scatter-add; the E experts run
as one batched matmul over the stacked weights (E, D, F). The (G, E, C, S) one-hot tensor of
Algorithm 1 appears only in `expert_choice_moe_onehot`, kept for comparison and benchmarks.

Layout (speed, not maths): the public per-stage functions keep the (G, E, C, .) layout of the
reference, but the layer itself works expert-major: it gathers the chosen rows straight into
(E, G*C, D), so each expert's G*C tokens are one contiguous matrix, the experts are a plain
batched matmul with the batch axis leading (no transposes of the (., F) hidden activations), and
the combine scatters from that layout. Same gather, same matmuls, same scatter-add (for a given
token its contributions still add up in increasing expert order), same results; with the
(G, E, C, D) layout XLA transposed the hidden activations around the expert einsums, which cost
time and memory (docs/benchmarks.md measures the layer).

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
    g, e, c, d = x_in.shape
    x_e = jnp.swapaxes(x_in, 0, 1).reshape(e, g * c, d)           # (E, G C, D)  JAX: expert-major
    out = _experts_by_expert(x_e, w1, w2)                         # (E, G C, D)
    return jnp.swapaxes(out.reshape(e, g, c, d), 0, 1)            # (G, E, C, D)


def _experts_by_expert(x_e, w1, w2):
    """E_i on expert-major rows: x_e (E, N, D) -> (E, N, D), batch axis leading (a plain batched
    matmul for XLA, no transposes of the (E, N, F) hidden activations)."""
    hidden = gelu_tanh(jnp.einsum("end,edf->enf", x_e, w1))      # (E, N, F)
    return jnp.einsum("enf,efd->end", hidden, w2)                # (E, N, D)


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
    e = w_router.shape[1]
    capacity = expert_capacity(s, e, capacity_factor)
    affinity = router_affinity(x, w_router)                      # (G, S, E)     Eq. 5
    gating, index = expert_choice_gating(affinity, capacity)     # (G, E, C) x2  Eq. 6
    rows = _expert_major_rows(index, s)                          # (E, G C)      JAX: expert-major
    x_in = _dispatch_by_expert(x, rows)                          # (E, G C, D)   Eq. 7
    x_e = _experts_by_expert(x_in, w1, w2)                       # (E, G C, D)
    out = _combine_by_expert(x_e, gating, rows, g, s)            # (G, S, D)     Eq. 8
    routing = {"gating": gating, "index": index, "experts_per_token": experts_per_token(index, s)}
    return out, routing


# JAX: the layer's expert-major stages (see the module docstring). Row g*S + s of
# x.reshape(G S, D) is token s of group g; `rows` (E, G C) lists expert e's chosen rows, group
# after group, each group's in the top-C order of `index`.

def _expert_major_rows(index, num_tokens):
    """index (G, E, C) -> rows (E, G C) of the flattened (G S, D) tokens."""
    g, e, c = index.shape
    rows = index + (jnp.arange(g, dtype=index.dtype) * num_tokens)[:, None, None]  # (G, E, C)
    return jnp.swapaxes(rows, 0, 1).reshape(e, g * c)            # (E, G C)


def _dispatch_by_expert(x, rows):
    """Eq. 7 as one gather: x (G, S, D) -> x_in (E, G C, D)."""
    g, s, d = x.shape
    return jnp.take(x.reshape(g * s, d), rows, axis=0, mode="clip")  # (E, G C, D)  rows are in range


def _combine_by_expert(x_e, gating, rows, num_groups, num_tokens):
    """Eq. 8 as one scatter-add from expert-major rows: x_e (E, G C, D) -> (G, S, D)."""
    e, n, d = x_e.shape
    weights = jnp.swapaxes(gating, 0, 1).reshape(e, n, 1)        # (E, G C, 1)   gating[g, e, c]
    out = jnp.zeros((num_groups * num_tokens, d), dtype=x_e.dtype)  # (G S, D)
    out = out.at[rows.reshape(-1)].add((weights * x_e).reshape(e * n, d), mode="promise_in_bounds")
    return out.reshape(num_groups, num_tokens, d)                # (G, S, D)


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
