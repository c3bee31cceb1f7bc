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

from .jit import checked_jit
from .primitives import sigmoid, silu
from .routing import combine, dispatch, expert_choice_gating, expert_choice_moe, expert_ffn, router_affinity


# ---------------------------------------------------------------------------------------------
# The capacity predictor, its loss and the threshold
# ---------------------------------------------------------------------------------------------

@checked_jit(contracts.capacity_predictor)
def capacity_predictor(x, predictor):
    """P = SiLU(x W1 + b1) W2 + b2, one logit per expert. (..., D) -> (..., E)."""
    hidden = silu(x @ predictor["w1"] + predictor["b1"])         # (..., D)
    return hidden @ predictor["w2"] + predictor["b2"]            # (..., E)


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
    """M (N, E): 1 where expert e's kept slot holds token t. index, keep (1, E, C)."""
    e = index.shape[1]
    experts = jnp.broadcast_to(jnp.arange(e)[:, None], index.shape[1:])  # (E, C)
    m = jnp.zeros((num_tokens, e), dtype=dtype)                  # (N, E)
    return m.at[index[0], experts].max(keep[0].astype(dtype))    # (N, E)  JAX: one scatter, kept slots only


def _ceilings(num_tokens):
    """The compiled slot counts of the dynamic layer: 1, 2, 4, ... below N, then N itself."""
    out, c = [], 1
    while c < num_tokens:
        out.append(c)
        c *= 2
    return tuple(out) + (num_tokens,)


# ---------------------------------------------------------------------------------------------
# The layer: training (static k over the pool) and inference (dynamic k_e)
# ---------------------------------------------------------------------------------------------

@checked_jit(contracts.diffmoe_moe, static_argnames=("capacity_factor",))
def diffmoe_moe(x, w_router, w1, w2, predictor, capacity_factor):
    """The DiffMoE layer as trained: expert choice over the pool of all B S tokens. Returns
    (out (B, S, D), {gating, index (1, E, k), experts_per_token (B, S), assignment (B, S, E),
    predictor_logits (B, S, E), kth_score (E,)})."""
    b, s, d = x.shape
    n, e = b * s, w_router.shape[1]
    pool = x.reshape(1, n, d)                                    # (1, N, D)  one group: the whole batch
    out, routing = expert_choice_moe(pool, w_router, w1, w2, capacity_factor)  # (1, N, D)  Eq. 5-8
    k = routing["index"].shape[-1]
    logits = capacity_predictor(jax.lax.stop_gradient(x), predictor)  # (B, S, E)  no gradient into x
    top, _ = jax.lax.top_k(logits.reshape(n, e).T, k)            # (E, k)  JAX: top-k of the logits,
    kth = sigmoid(top[:, -1])                                    # (E,)    sigmoid is monotone
    keep = jnp.ones(routing["index"].shape, dtype=bool)          # (1, E, k)
    routing = dict(routing, experts_per_token=routing["experts_per_token"].reshape(b, s),  # (B, S)
                   assignment=_assignment(routing["index"], keep, n, x.dtype).reshape(b, s, e),  # (B, S, E)
                   predictor_logits=logits, kth_score=kth)
    return out.reshape(b, s, d), routing                         # (B, S, D)


@checked_jit(contracts.diffmoe_moe_dynamic)
def diffmoe_moe_dynamic(x, w_router, w1, w2, predictor, threshold):
    """The DiffMoE layer at inference: expert e takes its top-k_e tokens by affinity, k_e =
    #{t : sigmoid(P[t, e]) > tau_e}. Returns (out (B, S, D), {capacity (E,), slots () the
    compiled ceiling that ran, assignment (B, S, E), experts_per_token (B, S), predictor_logits})."""
    b, s, d = x.shape
    n, e = b * s, w_router.shape[1]
    pool = x.reshape(1, n, d)                                    # (1, N, D)
    logits = capacity_predictor(x, predictor)                    # (B, S, E)
    capacity = jnp.sum(sigmoid(logits.reshape(n, e)) > threshold, axis=0, dtype=jnp.int32)  # (E,)  k_e
    affinity = router_affinity(pool, w_router)                   # (1, N, E)  Eq. 5
    sizes = _ceilings(n)
    branch = jnp.searchsorted(jnp.asarray(sizes), jnp.max(capacity))  # the smallest ceiling >= max k_e

    def run(slots):                                              # one compiled branch per ceiling
        def layer():
            gating, index = expert_choice_gating(affinity, slots)    # (1, E, slots)
            keep = jnp.arange(slots)[None, None, :] < capacity[None, :, None]  # (1, E, slots)  j < k_e
            gating = jnp.where(keep, gating, 0)                  # slots past k_e weigh 0
            out = combine(expert_ffn(dispatch(pool, index), w1, w2), gating, index, n)  # (1, N, D)
            return out, _assignment(index, keep, n, x.dtype), jnp.int32(slots)
        return layer

    out, assignment, slots = jax.lax.switch(branch, [run(c) for c in sizes])  # JAX: only one branch runs
    routing = {"capacity": capacity, "slots": slots,
               "assignment": assignment.reshape(b, s, e),         # (B, S, E)
               "experts_per_token": jnp.sum(assignment, axis=-1).astype(jnp.int32).reshape(b, s),  # (B, S)
               "predictor_logits": logits}                       # (B, S, E)
    return out.reshape(b, s, d), routing                         # (B, S, D)
