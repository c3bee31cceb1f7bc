"""Expert-choice routing (Sec. 2.3, Eq. 5-8, Algorithm 1), and the regrouping of tokens.

Each expert chooses its top-C tokens of a routing group, instead of each token choosing experts:

    A = softmax_E(x' W_r)                                   affinity, (G, S, E)            (5)
    G_{s,i} = A_{s,i} if token s is among expert i's top-C, else 0                        (6)
    I_i = {s : G_{s,i} > 0}                                 the tokens expert i processes  (7)
    x_out = sum_i (G_{I_i, i})^T E_i(x'_{I_i})               weighted combine              (8)
    E_i(x) = GeLU(x W1^i) W2^i,     C = round(S * f_c / E)

Every expert gets exactly C tokens (perfect load balance by construction); a token may be chosen
by anywhere from 0 to E experts (adaptive compute, Fig. 6).

Shapes: G routing groups, S tokens per group, D width, E experts, C capacity per expert,
F expert hidden width. Eq. 6's tensor is stored compactly as `gating` and `index`, both
(G, E, C): expert e's c-th choice is token index[g, e, c] with weight gating[g, e, c]; the dense
(S, E) form of Eq. 6 is gating scattered to those positions (zero elsewhere). The tokens sent to
the experts are expert-major, (E, G, C, D): each expert's G * C tokens are one block, so the
experts are one batched matrix product (the layout the fast twin computes in; every routing
method, expert choice and token choice alike, goes through these `dispatch` and `combine`).

Conventions: top-C lists tokens in descending affinity and breaks ties toward the lower token
index (as jax.lax.top_k does); C = round(S * f_c / E) rounds halves up.
"""
import numpy as np

from ecdit.core import contracts
from ecdit.core.checks import checked
from ecdit.core.config import expert_capacity  # noqa: F401  C = round(S f_c / E); the config needs it too
from .primitives import gelu_tanh, softmax


# ---------------------------------------------------------------------------------------------
# Capacity and regrouping
# ---------------------------------------------------------------------------------------------

@checked(contracts.group_tokens)
def group_tokens(x, group_size):
    """Regroup (batch, seq, d) into (outer_batch * num_group, group_size, d) (Sec. 3.1).

    Tokens are flattened image after image, so a group larger than one image's S holds several
    images (the paper's inference setting) and a smaller one holds part of an image. The paper's
    (outer_batch, num_group) split only matters for sharding; here both are folded into G."""
    b, s, d = x.shape
    return x.reshape(b * s // group_size, group_size, d)        # (G, group_size, D)


@checked(contracts.ungroup_tokens)
def ungroup_tokens(x_grouped, batch_size):
    """Inverse of `group_tokens`: (G, group_size, d) back to (batch_size, seq, d)."""
    g, group_size, d = x_grouped.shape
    return x_grouped.reshape(batch_size, g * group_size // batch_size, d)  # (B, S, D)


# ---------------------------------------------------------------------------------------------
# Eq. 5-8, one function each
# ---------------------------------------------------------------------------------------------

@checked(contracts.router_affinity)
def router_affinity(x, w_router):
    """Eq. 5: token-expert affinity A = softmax over experts of x' W_r."""
    logits = x @ w_router                                        # (G, S, E)
    return softmax(logits, axis=-1)                              # (G, S, E)  each token's row sums to 1


@checked(contracts.expert_choice_gating)
def expert_choice_gating(affinity, capacity):
    """Eq. 6: each expert keeps the affinities of its top-C tokens; everything else is zero.

    Returns (gating, index), both (G, E, C): expert e's choices in descending affinity, ties
    toward the lower token index (a stable sort keeps equal keys in token order)."""
    per_expert = np.swapaxes(affinity, 1, 2)                     # (G, E, S)  Algorithm 1's 'bse->bes'
    order = np.argsort(-per_expert, axis=-1, kind="stable")      # (G, E, S)  descending, stable
    index = order[..., :capacity]                                # (G, E, C)  top-C token indices
    gating = np.take_along_axis(per_expert, index, axis=-1)      # (G, E, C)  their affinities A_{s,i}
    return gating, index


@checked(contracts.dispatch)
def dispatch(x, index):
    """Eq. 7: gather the tokens x'_{I_i} each expert chose, x_in[e, g, c] = x[g, index[g, e, c]].

    Expert-major (E, G, C, D): expert e's G * C chosen tokens form one block, the input of that
    expert's own matrix products (the layout the fast twin computes in, shared by every routing
    method: expert choice, token choice)."""
    groups = np.arange(x.shape[0])[:, None, None]                # (G, 1, 1)
    chosen = x[groups, index]                                    # (G, E, C, D)
    return np.swapaxes(chosen, 0, 1)                             # (E, G, C, D)


@checked(contracts.expert_ffn)
def expert_ffn(x_in, w1, w2):
    """The experts, E_i(x) = GeLU(x W1^i) W2^i, each applied to its own G * C tokens."""
    hidden = gelu_tanh(np.einsum("egcd,edf->egcf", x_in, w1, optimize=True))  # (E, G, C, F)
    return np.einsum("egcf,efd->egcd", hidden, w2, optimize=True)            # (E, G, C, D)


@checked(contracts.combine)
def combine(expert_out, gating, index, num_tokens):
    """Eq. 8: x_out[g, s] = sum over (e, c) with index[g, e, c] = s of gating[g, e, c] * expert_out[e, g, c].

    A token no expert chose gets zero (in the DiT block the residual carries it through); a token
    chosen several times sums its contributions in increasing expert order."""
    e, g, c, d = expert_out.shape
    weighted = np.swapaxes(gating, 0, 1)[..., None] * expert_out  # (E, G, C, D)
    out = np.zeros((g, num_tokens, d), dtype=weighted.dtype)     # (G, S, D)
    groups = np.arange(g)[None, :, None]                         # (1, G, 1)
    np.add.at(out, (groups, np.swapaxes(index, 0, 1)), weighted)  # scatter-add, repeats accumulate
    return out                                                   # (G, S, D)


@checked(contracts.experts_per_token)
def experts_per_token(index, num_tokens):
    """How many experts chose each token, |{i : s in I_i}|: the compute allocation of Fig. 6."""
    g = index.shape[0]
    counts = np.zeros((g, num_tokens), dtype=np.int32)           # (G, S)
    groups = np.arange(g)[:, None, None]                         # (G, 1, 1)
    np.add.at(counts, (groups, index), 1)
    return counts                                                # (G, S), sums to E * C per group


# ---------------------------------------------------------------------------------------------
# The layer, two ways
# ---------------------------------------------------------------------------------------------

@checked(contracts.expert_choice_moe)
def expert_choice_moe(x, w_router, w1, w2, capacity_factor):
    """The EC MoE layer, Eq. 5-8, with index-based dispatch and combine.

    x (G, S, D) is the router input x' of Eq. 4, w_router (D, E), w1 (E, D, F), w2 (E, F, D).
    Returns (out (G, S, D), routing) where routing is a dict of `gating` (G, E, C), `index`
    (G, E, C) and `experts_per_token` (G, S)."""
    g, s, d = x.shape
    capacity = expert_capacity(s, w_router.shape[1], capacity_factor)
    affinity = router_affinity(x, w_router)                      # (G, S, E)     Eq. 5
    gating, index = expert_choice_gating(affinity, capacity)     # (G, E, C) x2  Eq. 6
    x_in = dispatch(x, index)                                    # (E, G, C, D)  Eq. 7
    x_e = expert_ffn(x_in, w1, w2)                               # (E, G, C, D)
    out = combine(x_e, gating, index, s)                         # (G, S, D)     Eq. 8
    routing = {"gating": gating, "index": index, "experts_per_token": experts_per_token(index, s)}
    return out, routing


@checked(contracts.expert_choice_moe_onehot)
def expert_choice_moe_onehot(x, w_router, w1, w2, capacity_factor):
    """Algorithm 1, line by line: dispatch and combine through the one-hot tensor (G, E, C, S).

    Same inputs and outputs as `expert_choice_moe`; kept to show the two forms agree and to
    benchmark what the one-hot matrices cost (memory grows as E * C * S)."""
    g, s, d = x.shape
    capacity = expert_capacity(s, w_router.shape[1], capacity_factor)
    # 1. Compute token-expert affinity scores
    logits = np.einsum("bsd,de->bse", x, w_router, optimize=True)          # (G, S, E)
    affinity = softmax(logits, axis=-1)                                     # (G, S, E)
    # 2. Select the top-k tokens for each expert (transpose inside expert_choice_gating)
    gating, index = expert_choice_gating(affinity, capacity)               # (G, E, C)
    dispatch_mask = np.eye(s, dtype=x.dtype)[index]                         # (G, E, C, S)  one_hot
    # 3. Process the tokens by each expert and combine
    x_in = np.einsum("becs,bsd->ebcd", dispatch_mask, x, optimize=True)    # (E, G, C, D)
    x_e = expert_ffn(x_in, w1, w2)                                          # (E, G, C, D)
    out = np.einsum("becs,bec,ebcd->bsd", dispatch_mask, gating, x_e, optimize=True)  # (G, S, D)
    routing = {"gating": gating, "index": index,
               "experts_per_token": dispatch_mask.sum(axis=(1, 2)).astype(np.int32)}  # (G, S)
    return out, routing
