"""DiffMoE (Shi et al. 2025): expert choice over one batch-level token pool, a capacity predictor,
and dynamic capacity at inference — the system EC-DiT's successor measures it against.

Training. The pool is every token of the batch, N = B S (EC-DiT's pool is one routing group);
k = round(N f_c / E), the project's capacity rule over the pool:

    A = softmax_E(x W_r)                          affinity over the pool, (N, E)              Eq. 5
    expert e keeps the top-k of A[:, e]           gating G (E, k), index I (E, k)             Eq. 6-7
    y[t] = sum_e sum_j [I_ej = t] G_ej E_e(x_t)   weighted combine; unchosen tokens get 0     Eq. 8
    M[t, e] = 1 if expert e chose token t         the assignment, (N, E)
    P = SiLU(sg(x) W1 + b1) W2 + b2               capacity predictor, (N, E); sg = stop_gradient
    q_e = the k-th largest sigmoid(P[t, e])       the predictor's score at expert e's capacity
    L_pred = mean_(t, e) BCE-with-logits(P, M)    the predictor learns "is t among e's top-k?"
    tau_e <- d tau_e + (1 - d) q_e                the threshold, an EMA (d = 0.95)

Inference (dynamic capacity):

    k_e = #{t : sigmoid(P[t, e]) > tau_e}         how many tokens expert e takes (the predictor)
    expert e takes the top-k_e of A[:, e]         which ones (the router), combined as above

Both forms are built on the expert-choice stages of `routing.py`, not beside them: the training
form is `expert_choice_moe` on the batch regrouped as one group (1, B S, D), so DiffMoE's static
form with the pool restricted to one routing group *is* EC-DiT; the dynamic form runs
`expert_choice_gating` at the largest k_e and gives each expert's slots past its own k_e the
weight 0. Both are written once for G pools (`pool_moe`, `pool_moe_dynamic`): DiffMoE is G = 1
pool of the whole batch, and an EC-DiT model with a capacity predictor uses one pool per routing
group (the seed table's "local" rows).

Conventions and deviations from the official code (docs/diffmoe.md): k rounds (the project's
C = round(S f_c / E)) where the code floors; experts have no biases, as everywhere here; the
threshold update and the predictor loss are separate functions the training step calls.

Shapes: B batch, S tokens per image, N = B S tokens in the pool, D width, E experts, F expert
hidden, k capacity per expert over the pool, k_e expert e's dynamic capacity.
"""
import numpy as np

from ecdit.core import contracts
from ecdit.core.checks import checked

from .primitives import sigmoid, silu
from .routing import combine, dispatch, expert_choice_gating, expert_choice_moe, expert_ffn, router_affinity


# ---------------------------------------------------------------------------------------------
# The capacity predictor, its loss and the threshold
# ---------------------------------------------------------------------------------------------

@checked(contracts.capacity_predictor)
def capacity_predictor(x, predictor):
    """P = SiLU(x W1 + b1) W2 + b2: per token, one logit per expert of "this expert would take me"
    (an MLP D -> D -> E with biases, as in the official code). (..., D) -> (..., E)."""
    hidden = silu(x @ predictor["w1"] + predictor["b1"])         # (..., D)
    return hidden @ predictor["w2"] + predictor["b2"]            # (..., E)


@checked(contracts.predictor_loss)
def predictor_loss(predictor_logits, assignment):
    """L_pred = mean over tokens and experts of BCE-with-logits(P, M):
    max(P, 0) - P M + log(1 + exp(-|P|)), the overflow-free form of -M log s(P) - (1 - M) log(1 - s(P))."""
    p, m = predictor_logits, assignment
    bce = np.maximum(p, 0) - p * m + np.log1p(np.exp(-np.abs(p)))  # (..., E)
    return np.mean(bce)                                          # ()


@checked(contracts.update_threshold)
def update_threshold(threshold, kth_score, decay=0.95):
    """tau <- decay tau + (1 - decay) q: the EMA of each expert's k-th largest predictor score. (E,)"""
    return decay * threshold + (1.0 - decay) * kth_score         # (E,)


def _assignment(index, keep, num_tokens, dtype):
    """M (G, N, E): 1 where expert e's slot (g, e, j) holds token t and is kept. index, keep (G, E, C)."""
    g, e, c = index.shape
    m = np.zeros((g, num_tokens, e), dtype=dtype)                # (G, N, E)
    pools = np.broadcast_to(np.arange(g)[:, None, None], index.shape)    # (G, E, C)
    experts = np.broadcast_to(np.arange(e)[None, :, None], index.shape)  # (G, E, C)
    m[pools[keep], index[keep], experts[keep]] = 1.0             # an expert takes a token at most once
    return m                                                     # (G, N, E)


# ---------------------------------------------------------------------------------------------
# Expert choice over G token pools, with the capacity predictor watching
# ---------------------------------------------------------------------------------------------

@checked(contracts.pool_moe)
def pool_moe(x, w_router, w1, w2, predictor, capacity_factor):
    """Expert choice in each of G pools of N tokens (Eq. 5-8, k = round(N f_c / E) per pool), plus
    the capacity predictor on the same tokens. DiffMoE is one pool holding the batch
    (`diffmoe_moe`); EC-DiT with a predictor is one pool per routing group (the model's blocks).

    x (G, N, D). Returns (out (G, N, D), routing): `gating`, `index` (G, E, k),
    `experts_per_token` (G, N), `assignment` (G, N, E), `predictor_logits` (G, N, E) and
    `kth_score` (E,): each pool's k-th largest sigmoid(P[:, e]), averaged over the pools (the
    official code averages tau over devices, each device one pool; one pool: exactly q_e)."""
    g, n, d = x.shape
    out, routing = expert_choice_moe(x, w_router, w1, w2, capacity_factor)  # (G, N, D)  Eq. 5-8
    k = routing["index"].shape[-1]                               # round(N f_c / E)
    logits = capacity_predictor(x, predictor)                    # (G, N, E)  sg(x): the spec takes no gradients
    scores = np.sort(sigmoid(logits), axis=1)                    # (G, N, E)  ascending per pool and expert
    kth = np.mean(scores[:, n - k], axis=0)                      # (E,)  the k-th largest, mean over pools
    keep = np.ones(routing["index"].shape, dtype=bool)           # (G, E, k)  every slot is used
    routing = dict(routing, assignment=_assignment(routing["index"], keep, n, x.dtype),  # (G, N, E)
                   predictor_logits=logits, kth_score=kth.astype(x.dtype))
    return out, routing                                          # (G, N, D)


@checked(contracts.pool_moe_dynamic)
def pool_moe_dynamic(x, w_router, w1, w2, predictor, threshold):
    """Dynamic capacity in each of G pools: expert e takes k_ge = #{t in pool g : sigmoid(P[t, e])
    > tau_e} tokens of pool g, its top-k_ge by router affinity.

    x (G, N, D). Returns (out (G, N, D), routing): `capacity` (G, E) the k_ge, `slots` () the slots
    per expert computed (here max k_ge; the twin rounds it up to a compiled size), `assignment`
    (G, N, E), `experts_per_token` (G, N), `predictor_logits` (G, N, E)."""
    g, n, d = x.shape
    e = w_router.shape[1]
    logits = capacity_predictor(x, predictor)                    # (G, N, E)
    capacity = np.sum(sigmoid(logits) > threshold, axis=1).astype(np.int32)  # (G, E)  k_ge
    slots = int(capacity.max())                                  # the largest k_ge
    out = np.zeros((g, n, d), dtype=x.dtype)                     # (G, N, D)  no expert takes anything
    assignment = np.zeros((g, n, e), dtype=x.dtype)              # (G, N, E)
    if slots > 0:
        affinity = router_affinity(x, w_router)                  # (G, N, E)      Eq. 5
        gating, index = expert_choice_gating(affinity, slots)    # (G, E, slots)  each expert's top-slots
        keep = np.arange(slots)[None, None, :] < capacity[:, :, None]  # (G, E, slots)  j < k_ge
        gating = np.where(keep, gating, 0).astype(gating.dtype)  # slots past k_ge weigh 0
        out = combine(expert_ffn(dispatch(x, index), w1, w2), gating, index, n)  # (G, N, D)  Eq. 7-8
        assignment = _assignment(index, keep, n, x.dtype)        # (G, N, E)
    routing = {"capacity": capacity, "slots": np.int32(slots), "assignment": assignment,  # (G, N, E)
               "experts_per_token": assignment.sum(axis=-1).astype(np.int32),  # (G, N)
               "predictor_logits": logits}                       # (G, N, E)
    return out, routing                                          # (G, N, D)


# ---------------------------------------------------------------------------------------------
# DiffMoE: one pool holding the whole batch, in training (static k) and inference (dynamic k_e)
# ---------------------------------------------------------------------------------------------

def _batch_shaped(routing, b, s):
    """The pool-shaped records of a one-pool routing as (B, S, ...) arrays."""
    out = dict(routing)
    for name in ("experts_per_token", "assignment", "predictor_logits"):
        out[name] = routing[name].reshape((b, s) + routing[name].shape[2:])  # (B, S[, E])
    return out


@checked(contracts.diffmoe_moe)
def diffmoe_moe(x, w_router, w1, w2, predictor, capacity_factor):
    """The DiffMoE layer as trained: expert choice over the pool of all B S tokens.

    x (B, S, D) is the router input x' of Eq. 4 (as in EC-DiT), w_router (D, E), w1 (E, D, F),
    w2 (E, F, D), predictor {w1 (D, D), b1 (D,), w2 (D, E), b2 (E,)}. Returns (out (B, S, D),
    routing): expert choice's `gating`, `index` (1, E, k) over the pool, `experts_per_token`
    (B, S), and `assignment` (B, S, E) 0/1, `predictor_logits` (B, S, E), `kth_score` (E,)."""
    b, s, d = x.shape
    out, routing = pool_moe(x.reshape(1, b * s, d), w_router, w1, w2, predictor, capacity_factor)  # (1, N, D)
    return out.reshape(b, s, d), _batch_shaped(routing, b, s)    # (B, S, D)


@checked(contracts.diffmoe_moe_dynamic)
def diffmoe_moe_dynamic(x, w_router, w1, w2, predictor, threshold):
    """The DiffMoE layer at inference: expert e takes k_e = #{t : sigmoid(P[t, e]) > tau_e} tokens,
    its top-k_e by router affinity, over the pool of all B S tokens.

    Returns (out (B, S, D), routing): `capacity` (E,) the k_e, `slots` () the slots per expert
    computed (here max k_e; the twin rounds it up to a compiled size), `assignment` (B, S, E),
    `experts_per_token` (B, S), `predictor_logits` (B, S, E)."""
    b, s, d = x.shape
    out, routing = pool_moe_dynamic(x.reshape(1, b * s, d), w_router, w1, w2, predictor, threshold)  # (1, N, D)
    routing = dict(_batch_shaped(routing, b, s), capacity=routing["capacity"][0])  # capacity (E,)
    return out.reshape(b, s, d), routing                         # (B, S, D)
