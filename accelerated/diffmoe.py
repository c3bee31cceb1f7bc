"""DiffMoE (Shi et al. 2025), JAX twin of reference/diffmoe.py: expert choice over one batch-level
pool of N = B S tokens, the capacity predictor, dynamic capacity at inference.

    training:  expert_choice_moe over (1, N, D);  P = SiLU(sg(x) W1 + b1) W2 + b2;
               q_e = k-th largest sigmoid(P[:, e]);  L_pred = mean BCE(P, M);  tau <- d tau + (1 - d) q
    inference: k_e = #{t : sigmoid(P[t, e]) > tau_e};  expert e takes its top-k_e tokens by affinity

JAX: shapes are static under jit, but k_e is known only from the data. The dynamic layer keeps
one compiled branch per *ceiling* C in {1, 2, 4, ..., N} (powers of two, then the pool size) and
`lax.switch`es, at run time, to the smallest ceiling >= max_e k_e: only that branch runs, so the
expert matmuls cost E x C rows, within 2x of E x max k_e, and halving every k_e halves the
compute. Slots past an expert's own k_e get the weight 0 (as in the spec). The largest ceiling is
the pool itself, which no k_e can exceed: nothing overflows, nothing is dropped. The compute
follows the largest k_e, not their sum (experts share one batched matmul); docs/diffmoe.md says
why and measures it.

Shapes: B batch, S tokens per image, N = B S, D width, E experts, F expert hidden, k capacity.
"""
import jax
import jax.numpy as jnp

from ecdit.core import contracts

from .dots import dot_last
from .jit import checked_jit
from .primitives import sigmoid, silu
from .routing import combine, dispatch, expert_choice_gating, expert_choice_moe, expert_ffn, router_affinity


# ---------------------------------------------------------------------------------------------
# The capacity predictor, its loss and the threshold
# ---------------------------------------------------------------------------------------------

@checked_jit(contracts.capacity_predictor)
def capacity_predictor(x, predictor):
    """P = SiLU(x W1 + b1) W2 + b2, one logit per expert. (..., D) -> (..., E)."""
    hidden = silu(dot_last(x, predictor["w1"]) + predictor["b1"])         # (..., D)
    return dot_last(hidden, predictor["w2"]) + predictor["b2"]            # (..., E)


@checked_jit(contracts.predictor_loss)
def predictor_loss(predictor_logits, assignment):
    """L_pred = mean BCE-with-logits(P, M) = mean(max(P, 0) - P M + log(1 + exp(-|P|)))."""
    p, m = predictor_logits, assignment
    bce = jnp.maximum(p, 0) - p * m + jnp.log1p(jnp.exp(-jnp.abs(p)))  # (..., E)
    return jnp.mean(bce)                                         # ()


@checked_jit(contracts.update_threshold, static_argnames=("decay",))
def update_threshold(threshold, kth_score, decay=0.95):
    """tau <- decay tau + (1 - decay) q. (E,)"""
    return decay * threshold + (1.0 - decay) * kth_score         # (E,)


def _assignment(index, keep, num_tokens, dtype):
    """M (G, N, E): 1 where expert e's kept slot (g, e, j) holds token t. index, keep (G, E, C)."""
    g, e, c = index.shape
    pools = jnp.broadcast_to(jnp.arange(g)[:, None, None], index.shape)    # (G, E, C)
    experts = jnp.broadcast_to(jnp.arange(e)[None, :, None], index.shape)  # (G, E, C)
    m = jnp.zeros((g, num_tokens, e), dtype=dtype)               # (G, N, E)
    return m.at[pools, index, experts].max(keep.astype(dtype))   # (G, N, E)  JAX: one scatter, kept slots only


def _ceilings(num_tokens):
    """The compiled slot counts of the dynamic layer: 1, 2, 4, ... below N, then N itself."""
    out, c = [], 1
    while c < num_tokens:
        out.append(c)
        c *= 2
    return tuple(out) + (num_tokens,)


# ---------------------------------------------------------------------------------------------
# Expert choice over G token pools, with the capacity predictor watching
# ---------------------------------------------------------------------------------------------

def _predictor_records(x, predictor, index):
    """What the capacity predictor adds to expert choice in G pools: its logits on a stop-gradient
    copy of x (G, N, E), its target M (G, N, E) from the chosen slots index (G, E, k), and per pool
    q_e = the k-th largest sigmoid(P[:, e]) (G, E). Shared with the expert-parallel layer
    (accelerated/expert_parallel.py), which averages q over devices instead of over local pools."""
    g, n, d = x.shape
    k = index.shape[-1]
    logits = capacity_predictor(jax.lax.stop_gradient(x), predictor)  # (G, N, E)  no gradient into x
    top, _ = jax.lax.top_k(jnp.swapaxes(logits, 1, 2), k)        # (G, E, k)  JAX: top-k of the logits,
    kth = sigmoid(top[..., -1])                                  # (G, E)     sigmoid is monotone
    keep = jnp.ones(index.shape, dtype=bool)                     # (G, E, k)
    return {"assignment": _assignment(index, keep, n, x.dtype),  # (G, N, E)
            "predictor_logits": logits}, kth.astype(x.dtype)     # (G, N, E), (G, E)


@checked_jit(contracts.pool_moe, static_argnames=("capacity_factor",))
def pool_moe(x, w_router, w1, w2, predictor, capacity_factor):
    """Expert choice in each of G pools plus the capacity predictor. x (G, N, D) -> (out (G, N, D),
    {gating, index (G, E, k), experts_per_token (G, N), assignment (G, N, E), predictor_logits
    (G, N, E), kth_score (E,) averaged over pools})."""
    out, routing = expert_choice_moe(x, w_router, w1, w2, capacity_factor)  # (G, N, D)  Eq. 5-8
    records, kth = _predictor_records(x, predictor, routing["index"])  # (G, N, E) x2, (G, E)
    return out, dict(routing, **records, kth_score=jnp.mean(kth, axis=0))  # kth_score (E,)


def _dynamic(x, w_router, predictor, threshold, experts, largest):
    """The body of `pool_moe_dynamic`, with the expert FFN and the max over pools given:
    experts (E, G, C, D) -> (E, G, C, D) the experts' outputs, largest(m) the max of m over every
    pool (identity here; the expert-parallel layer passes its exchange and a pmax over devices, so
    every device runs the same compiled ceiling)."""
    g, n, d = x.shape
    logits = capacity_predictor(x, predictor)                    # (G, N, E)
    capacity = jnp.sum(sigmoid(logits) > threshold, axis=1, dtype=jnp.int32)  # (G, E)  k_ge
    affinity = router_affinity(x, w_router)                      # (G, N, E)  Eq. 5
    sizes = _ceilings(n)
    branch = jnp.searchsorted(jnp.asarray(sizes), largest(jnp.max(capacity)))  # the smallest ceiling >= max k_ge

    def run(slots):                                              # one compiled branch per ceiling
        def layer():
            gating, index = expert_choice_gating(affinity, slots)    # (G, E, slots)
            keep = jnp.arange(slots)[None, None, :] < capacity[:, :, None]  # (G, E, slots)  j < k_ge
            gating = jnp.where(keep, gating, 0)                  # slots past k_ge weigh 0
            out = combine(experts(dispatch(x, index)), gating, index, n)  # (G, N, D)
            return out, _assignment(index, keep, n, x.dtype), jnp.int32(slots)
        return layer

    out, assignment, slots = jax.lax.switch(branch, [run(c) for c in sizes])  # JAX: only one branch runs
    routing = {"capacity": capacity, "slots": slots, "assignment": assignment,  # (G, N, E)
               "experts_per_token": jnp.sum(assignment, axis=-1).astype(jnp.int32),  # (G, N)
               "predictor_logits": logits}                       # (G, N, E)
    return out, routing                                          # (G, N, D)


@checked_jit(contracts.pool_moe_dynamic)
def pool_moe_dynamic(x, w_router, w1, w2, predictor, threshold):
    """Dynamic capacity in each of G pools: expert e takes the top-k_ge of pool g by affinity,
    k_ge = #{t in g : sigmoid(P[t, e]) > tau_e}. Returns (out (G, N, D), {capacity (G, E), slots ()
    the compiled ceiling that ran, assignment (G, N, E), experts_per_token (G, N), predictor_logits})."""
    return _dynamic(x, w_router, predictor, threshold, lambda x_in: expert_ffn(x_in, w1, w2), lambda m: m)


# ---------------------------------------------------------------------------------------------
# DiffMoE: one pool holding the whole batch, in training (static k) and inference (dynamic k_e)
# ---------------------------------------------------------------------------------------------

def _batch_shaped(routing, b, s):
    """The pool-shaped records of a one-pool routing as (B, S, ...) arrays."""
    out = dict(routing)
    for name in ("experts_per_token", "assignment", "predictor_logits"):
        out[name] = routing[name].reshape((b, s) + routing[name].shape[2:])  # (B, S[, E])
    return out


@checked_jit(contracts.diffmoe_moe, static_argnames=("capacity_factor",))
def diffmoe_moe(x, w_router, w1, w2, predictor, capacity_factor):
    """The DiffMoE layer as trained: expert choice over the pool of all B S tokens. Returns
    (out (B, S, D), {gating, index (1, E, k), experts_per_token (B, S), assignment (B, S, E),
    predictor_logits (B, S, E), kth_score (E,)})."""
    b, s, d = x.shape
    out, routing = pool_moe(x.reshape(1, b * s, d), w_router, w1, w2, predictor, capacity_factor)  # (1, N, D)
    return out.reshape(b, s, d), _batch_shaped(routing, b, s)    # (B, S, D)


@checked_jit(contracts.diffmoe_moe_dynamic)
def diffmoe_moe_dynamic(x, w_router, w1, w2, predictor, threshold):
    """The DiffMoE layer at inference: expert e takes its top-k_e tokens by affinity, k_e =
    #{t : sigmoid(P[t, e]) > tau_e}. Returns (out (B, S, D), {capacity (E,), slots () the
    compiled ceiling that ran, assignment (B, S, E), experts_per_token (B, S), predictor_logits})."""
    b, s, d = x.shape
    out, routing = pool_moe_dynamic(x.reshape(1, b * s, d), w_router, w1, w2, predictor, threshold)  # (1, N, D)
    routing = dict(_batch_shaped(routing, b, s), capacity=routing["capacity"][0])  # capacity (E,)
    return out.reshape(b, s, d), routing                         # (B, S, D)
