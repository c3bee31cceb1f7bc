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
weight 0.

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
    """M (N, E): 1 where expert e's slot (e, j) holds token t and is kept. index, keep (1, E, C)."""
    e = index.shape[1]
    m = np.zeros((num_tokens, e), dtype=dtype)                   # (N, E)
    experts = np.broadcast_to(np.arange(e)[:, None], index.shape[1:])  # (E, C)
    m[index[0][keep[0]], experts[keep[0]]] = 1.0                 # an expert takes a token at most once
    return m                                                     # (N, E)


# ---------------------------------------------------------------------------------------------
# The layer: training (static k over the pool) and inference (dynamic k_e)
# ---------------------------------------------------------------------------------------------

@checked(contracts.diffmoe_moe)
def diffmoe_moe(x, w_router, w1, w2, predictor, capacity_factor):
    """The DiffMoE layer as trained: expert choice over the pool of all B S tokens.

    x (B, S, D) is the router input x' of Eq. 4 (as in EC-DiT), w_router (D, E), w1 (E, D, F),
    w2 (E, F, D), predictor {w1 (D, D), b1 (D,), w2 (D, E), b2 (E,)}. Returns (out (B, S, D),
    routing): expert choice's `gating`, `index` (1, E, k) over the pool, `experts_per_token`
    (B, S), and `assignment` (B, S, E) 0/1, `predictor_logits` (B, S, E), `kth_score` (E,)."""
    b, s, d = x.shape
    n, e = b * s, w_router.shape[1]
    pool = x.reshape(1, n, d)                                    # (1, N, D)  one group: the whole batch
    out, routing = expert_choice_moe(pool, w_router, w1, w2, capacity_factor)  # (1, N, D)  Eq. 5-8
    k = routing["index"].shape[-1]                               # round(N f_c / E)
    logits = capacity_predictor(x, predictor)                    # (B, S, E)  sg(x): the spec takes no gradients
    scores = np.sort(sigmoid(logits.reshape(n, e)), axis=0)      # (N, E)  ascending per expert
    kth = scores[n - k]                                          # (E,)  the k-th largest
    keep = np.ones(routing["index"].shape, dtype=bool)           # (1, E, k)  every slot is used
    routing = dict(routing, experts_per_token=routing["experts_per_token"].reshape(b, s),  # (B, S)
                   assignment=_assignment(routing["index"], keep, n, x.dtype).reshape(b, s, e),  # (B, S, E)
                   predictor_logits=logits, kth_score=kth)
    return out.reshape(b, s, d), routing                         # (B, S, D)


@checked(contracts.diffmoe_moe_dynamic)
def diffmoe_moe_dynamic(x, w_router, w1, w2, predictor, threshold):
    """The DiffMoE layer at inference: expert e takes k_e = #{t : sigmoid(P[t, e]) > tau_e} tokens,
    its top-k_e by router affinity, over the pool of all B S tokens.

    Returns (out (B, S, D), routing): `capacity` (E,) the k_e, `slots` () the slots per expert
    computed (here max k_e; the twin rounds it up to a compiled size), `assignment` (B, S, E),
    `experts_per_token` (B, S), `predictor_logits` (B, S, E)."""
    b, s, d = x.shape
    n, e = b * s, w_router.shape[1]
    pool = x.reshape(1, n, d)                                    # (1, N, D)
    logits = capacity_predictor(x, predictor)                    # (B, S, E)
    capacity = np.sum(sigmoid(logits.reshape(n, e)) > threshold, axis=0).astype(np.int32)  # (E,)  k_e
    slots = int(capacity.max())                                  # the largest k_e
    out = np.zeros((1, n, d), dtype=x.dtype)                     # (1, N, D)  no expert takes anything
    assignment = np.zeros((n, e), dtype=x.dtype)                 # (N, E)
    if slots > 0:
        affinity = router_affinity(pool, w_router)               # (1, N, E)      Eq. 5
        gating, index = expert_choice_gating(affinity, slots)    # (1, E, slots)  each expert's top-slots
        keep = np.arange(slots)[None, None, :] < capacity[None, :, None]  # (1, E, slots)  j < k_e
        gating = np.where(keep, gating, 0).astype(gating.dtype)  # slots past k_e weigh 0
        out = combine(expert_ffn(dispatch(pool, index), w1, w2), gating, index, n)  # (1, N, D)  Eq. 7-8
        assignment = _assignment(index, keep, n, x.dtype)        # (N, E)
    routing = {"capacity": capacity, "slots": np.int32(slots),
               "assignment": assignment.reshape(b, s, e),         # (B, S, E)
               "experts_per_token": assignment.sum(axis=-1).astype(np.int32).reshape(b, s),  # (B, S)
               "predictor_logits": logits}                       # (B, S, E)
    return out.reshape(b, s, d), routing                         # (B, S, D)
