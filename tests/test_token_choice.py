"""Token-choice top-k routing (GShard, the Sec. 3.5 baseline): reference == accelerated, the
routing invariants, the auxiliary loss, a hand-worked golden case, bad input and gradients.

Configurations are drawn first (G <= 3, S <= 32, D <= 16, E <= 8), then values from a drawn seed
(bounded, unit scale); a `tied` flag rounds router logits to integers so that exact ties between
experts occur and the tie-breaking rule (lower expert index first) is exercised.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from ecdit.accelerated import token_choice as acc
from ecdit.reference import token_choice as ref
from ecdit.reference.primitives import feed_forward, softmax
from ecdit.reference.routing import expert_capacity
from tests.helpers import HALVES, moe_layer, seeds
from tests.tolerances import FLOAT32_GRAD, NEAR_TIE_FINITE_DIFFERENCE, NEAR_TIE_TOP_K, assert_close


# ---------------------------------------------------------------------------------------------
# Strategies and helpers
# ---------------------------------------------------------------------------------------------

@st.composite
def routing_configs(draw):
    """(G, S, E, k, C, seed, tied): an affinity configuration with 1 <= k <= E and 1 <= C <= S."""
    g = draw(st.integers(1, 3))
    s = draw(st.integers(1, 32))
    e = draw(st.integers(1, 8))
    k = draw(st.integers(1, min(e, 3)))
    c = draw(st.integers(1, s))
    return g, s, e, k, c, draw(seeds), draw(st.booleans())


def make_affinity(g, s, e, seed, tied):
    """Eq. 5 affinities (G, S, E) float32; `tied` makes logits small integers (exact ties)."""
    logits = np.random.default_rng(seed).normal(scale=1.5, size=(g, s, e))
    if tied:
        logits = np.round(logits)
    return softmax(logits.astype(np.float32), axis=-1)             # (G, S, E)


@st.composite
def layer_configs(draw):
    """(G, S, D, F, E, k, capacity_factor, seed) for the full layer; f_c drawn on a grid of
    quarters up to E so that 1 <= C <= S."""
    g = draw(st.integers(1, 3))
    s = draw(st.integers(2, 32))
    d = draw(st.integers(1, 16))
    f = draw(st.integers(1, 16))
    e = draw(st.integers(1, 8))
    k = draw(st.integers(1, min(e, 2)))
    quarters = draw(st.integers(1, 4 * e))
    capacity_factor = quarters / 4
    assume(1 <= np.floor(s * capacity_factor / e + 0.5) <= s)    # C = round(S f_c / E), halves up
    return g, s, d, f, e, k, capacity_factor, draw(seeds)


def top_choices_are_clear(x, w_router, k, margin=NEAR_TIE_TOP_K):
    """True when float32 rounding cannot change any token's ordered top-k: the sorted float64
    affinities differ by more than `margin` between ranks 1..k+1 (the (k+1)-th only if it exists)."""
    logits = x.astype(np.float64) @ w_router.astype(np.float64)                 # (G, S, E)
    a = np.exp(logits - logits.max(-1, keepdims=True))
    a = np.sort(a / a.sum(-1, keepdims=True), axis=-1)[..., ::-1]              # (G, S, E) descending
    ranks = min(k + 1, a.shape[-1])
    return ranks < 2 or bool((-np.diff(a[..., :ranks], axis=-1) > margin).all())


def gshard_loop(affinity, k, capacity):
    """Independent oracle: GShard Algorithm 1 written as loops (all second-choice dispatches on),
    generalised to k rounds. Returns gating, index (G, E, C) and kept (G, S, k)."""
    g, s, e = affinity.shape
    gating = np.zeros((g, e, capacity), np.float32)
    index = np.zeros((g, e, capacity), np.int64)
    kept = np.zeros((g, s, k), bool)
    for gi in range(g):
        order = [sorted(range(e), key=lambda i: (-affinity[gi, t, i], i))[:k] for t in range(s)]
        count = [0] * e                                            # c_E <- 0
        for r in range(k):                                         # round r: every token's r-th choice
            for t in range(s):                                     # in token order
                ex = order[t][r]
                if count[ex] < capacity:
                    top = [affinity[gi, t, i] for i in order[t]]
                    gating[gi, ex, count[ex]] = affinity[gi, t, ex] / sum(top)
                    index[gi, ex, count[ex]] = t
                    kept[gi, t, r] = True
                count[ex] += 1
    return gating, index, kept


# ---------------------------------------------------------------------------------------------
# reference == accelerated, one test per public function
# ---------------------------------------------------------------------------------------------

@given(routing_configs())
def test_top_k_experts_matches_reference(cfg):
    g, s, e, k, c, seed, tied = cfg
    affinity = make_affinity(g, s, e, seed, tied)
    w_ref, e_ref = ref.top_k_experts(affinity, k)
    w_acc, e_acc = acc.top_k_experts(affinity, k)
    np.testing.assert_array_equal(np.asarray(e_acc), e_ref)        # ties: lower expert index first
    assert_close(w_acc, w_ref)
    assert_close(w_ref.sum(-1), np.ones((g, s)))


@given(routing_configs())
def test_token_choice_gating_matches_reference(cfg):
    g, s, e, k, c, seed, tied = cfg
    affinity = make_affinity(g, s, e, seed, tied)
    gating_r, index_r, experts_r, kept_r = ref.token_choice_gating(affinity, k, c)
    gating_a, index_a, experts_a, kept_a = acc.token_choice_gating(affinity, k, c)
    assert gating_a.shape == index_a.shape == (g, e, c) and kept_a.shape == experts_a.shape == (g, s, k)
    np.testing.assert_array_equal(np.asarray(index_a), index_r)
    np.testing.assert_array_equal(np.asarray(experts_a), experts_r)
    np.testing.assert_array_equal(np.asarray(kept_a), kept_r)
    assert_close(gating_a, gating_r)


@given(routing_configs())
def test_load_balancing_loss_matches_reference(cfg):
    g, s, e, k, c, seed, tied = cfg
    affinity = make_affinity(g, s, e, seed, tied)
    top1 = np.random.default_rng(seed + 1).integers(0, e, size=(g, s))
    loss_ref = ref.load_balancing_loss(affinity, top1)
    loss_acc = acc.load_balancing_loss(affinity, top1)
    assert np.shape(loss_ref) == np.shape(loss_acc) == ()
    assert_close(loss_acc, loss_ref)


@given(layer_configs())
def test_token_choice_moe_matches_reference(cfg):
    g, s, d, f, e, k, capacity_factor, seed = cfg
    x, w_router, w1, w2 = moe_layer(seed, g, s, d, e, f)
    assume(top_choices_are_clear(x, w_router, k))
    out_r, routing_r = ref.token_choice_moe(x, w_router, w1, w2, capacity_factor, k)
    out_a, routing_a = acc.token_choice_moe(x, w_router, w1, w2, capacity_factor, k)
    assert out_a.shape == (g, s, d)
    assert_close(out_a, out_r)
    assert set(routing_a) == set(routing_r) >= {"gating", "index", "experts_per_token", "aux_loss"}
    for key in ("index", "experts", "kept", "experts_per_token"):
        np.testing.assert_array_equal(np.asarray(routing_a[key]), routing_r[key], err_msg=key)
    assert_close(routing_a["gating"], routing_r["gating"])
    assert_close(routing_a["aux_loss"], routing_r["aux_loss"])
    assert routing_r["experts_per_token"].dtype == routing_a["experts_per_token"].dtype == np.int32
    # A token none of whose choices was kept gets exactly 0 (the block residual passes it on).
    dropped = routing_r["experts_per_token"] == 0                     # (G, S)
    assert (out_r[dropped] == 0).all() and (np.asarray(out_a)[dropped] == 0).all()


def test_accelerated_layer_compiles_once():
    x, w_router, w1, w2 = moe_layer(0, 2, 8, 4, 4, 4)
    acc.token_choice_moe.jitted.clear_cache()                      # so the first call below traces
    before = acc.token_choice_moe.trace_count()
    acc.token_choice_moe(x, w_router, w1, w2, 2.0)
    acc.token_choice_moe(x + 1, w_router, w1, w2, 2.0)
    assert acc.token_choice_moe.trace_count() == before + 1


# ---------------------------------------------------------------------------------------------
# Routing invariants (the reference; the tests above carry them to the accelerated twin)
# ---------------------------------------------------------------------------------------------

@given(routing_configs())
def test_gating_matches_gshard_loop(cfg):
    """First choices of all tokens before any second choice, token order within a round."""
    g, s, e, k, c, seed, tied = cfg
    affinity = make_affinity(g, s, e, seed, tied)
    gating, index, experts, kept = ref.token_choice_gating(affinity, k, c)
    gating_o, index_o, kept_o = gshard_loop(affinity, k, c)
    np.testing.assert_array_equal(index, index_o)
    np.testing.assert_array_equal(kept, kept_o)
    assert_close(gating, gating_o)


@given(routing_configs())
def test_gating_fills_each_expert_up_to_C_with_renormalised_weights_and_drops_only_when_full(cfg):
    g, s, e, k, c, seed, tied = cfg
    affinity = make_affinity(g, s, e, seed, tied)
    gating, index, experts, kept = ref.token_choice_gating(affinity, k, c)
    weights, _ = ref.top_k_experts(affinity, k)
    # Each token reaches at most k distinct experts.
    assert (kept.sum(-1) <= k).all()
    assert all(len(set(row)) == k for row in experts.reshape(-1, k).tolist())
    # Each expert processes min(C, demand) tokens, never more than C, in its first slots.
    demand = np.stack([(experts == i).sum(axis=(1, 2)) for i in range(e)], axis=1)   # (G, E)
    filled = np.stack([((experts == i) & kept).sum(axis=(1, 2)) for i in range(e)], axis=1)  # (G, E)
    np.testing.assert_array_equal(filled, np.minimum(demand, c))
    # Every kept choice sits in exactly one slot, with its renormalised weight; empty slots are (0, 0).
    occupied = np.zeros((g, e, c), bool)
    for gi, t, r in zip(*np.nonzero(kept)):
        ex = experts[gi, t, r]
        slot = np.flatnonzero((index[gi, ex] == t) & (np.arange(c) < filled[gi, ex]))
        assert len(slot) == 1
        occupied[gi, ex, slot[0]] = True
        assert gating[gi, ex, slot[0]] == weights[gi, t, r]
    np.testing.assert_array_equal(occupied, np.arange(c) < filled[..., None])
    assert (gating[~occupied] == 0).all() and (index[~occupied] == 0).all()
    # A dropped choice means its expert was full: C earlier choices took every slot.
    for gi, t, r in zip(*np.nonzero(~kept)):
        assert filled[gi, experts[gi, t, r]] == c


@given(routing_configs())
def test_nothing_dropped_when_capacity_is_s(cfg):
    """C = S (f_c = E): every token gets exactly k experts."""
    g, s, e, k, _, seed, tied = cfg
    affinity = make_affinity(g, s, e, seed, tied)
    gating, index, experts, kept = ref.token_choice_gating(affinity, k, s)
    assert kept.all()


@pytest.mark.parametrize("half", HALVES)
def test_first_choices_take_priority_over_second_choices(half):
    # E = 2, k = 2, C = 1. Token 0 prefers expert 1, token 1 prefers expert 0. Token 0's second
    # choice (expert 0) comes earlier in token order than token 1's first choice, but first
    # choices go first: expert 0 takes token 1, and token 0's second choice is dropped.
    affinity = np.array([[[0.4, 0.6], [0.7, 0.3]]], np.float32)          # (1, 2, 2)
    gating, index, experts, kept = half.token_choice.token_choice_gating(affinity, 2, 1)
    np.testing.assert_array_equal(np.asarray(index), [[[1], [0]]])   # expert 0: token 1; expert 1: token 0
    np.testing.assert_array_equal(np.asarray(kept), [[[True, False], [True, False]]])


@pytest.mark.parametrize("half", HALVES)
def test_priority_follows_token_order(half):
    # Five tokens all prefer expert 2 (of 3), C = 2, k = 1: tokens 0 and 1 fill it, 2-4 are dropped.
    affinity = np.tile(np.array([0.2, 0.3, 0.5], np.float32), (1, 5, 1))  # (1, 5, 3)
    gating, index, experts, kept = half.token_choice.token_choice_gating(affinity, 1, 2)
    np.testing.assert_array_equal(np.asarray(index)[0, 2], [0, 1])
    np.testing.assert_array_equal(np.asarray(kept)[0, :, 0], [True, True, False, False, False])
    assert_close(np.asarray(gating)[0, 2], [1.0, 1.0])               # k = 1: renormalised gate is 1
    assert (np.asarray(gating)[0, :2] == 0).all()


@pytest.mark.parametrize("half", HALVES)
def test_gating_and_aux_loss_match_a_hand_worked_four_token_case(half):
    # 4 tokens, E = 2 experts, k = 2 (each token ranks both), C = 2.
    #   token 0: A = (0.75, 0.25) -> 1st expert 0, 2nd expert 1
    #   token 1: A = (0.60, 0.40) -> 1st expert 0, 2nd expert 1
    #   token 2: A = (0.90, 0.10) -> 1st expert 0, 2nd expert 1
    #   token 3: A = (0.30, 0.70) -> 1st expert 1, 2nd expert 0
    # Round 1 (first choices, token order): expert 0 takes tokens 0, 1; token 2 finds it full
    #   (dropped); expert 1 takes token 3.
    # Round 2 (second choices): token 0 -> expert 1, slot 1 (now full); token 1 -> expert 1 full,
    #   dropped; token 2 -> expert 1 full, dropped; token 3 -> expert 0 full, dropped.
    # So expert 0 = [t0, t1], expert 1 = [t3, t0]; tokens use 2, 1, 0, 1 experts; token 2 gets 0.
    # With k = E = 2 the renormalised gates are the affinities themselves (rows sum to 1).
    # Aux loss: first-choice shares f = (3/4, 1/4), mean affinities P = (0.6375, 0.3625):
    #   2 * (0.75 * 0.6375 + 0.25 * 0.3625) = 1.1375.
    affinity = np.array([[[0.75, 0.25], [0.60, 0.40], [0.90, 0.10], [0.30, 0.70]]], np.float32)
    gating, index, experts, kept = half.token_choice.token_choice_gating(affinity, 2, 2)
    np.testing.assert_array_equal(np.asarray(index), [[[0, 1], [3, 0]]])
    assert_close(gating, [[[0.75, 0.60], [0.70, 0.25]]])
    np.testing.assert_array_equal(np.asarray(experts), [[[0, 1], [0, 1], [0, 1], [1, 0]]])
    np.testing.assert_array_equal(np.asarray(kept), [[[True, True], [True, False],
                                                      [False, False], [True, False]]])
    np.testing.assert_array_equal(np.asarray(kept).sum(-1), [[2, 1, 0, 1]])
    assert_close(half.token_choice.load_balancing_loss(affinity, np.asarray(experts)[..., 0]), 1.1375)


# ---------------------------------------------------------------------------------------------
# The layer: the formula, no drops at C = S, dropped tokens give exactly 0
# ---------------------------------------------------------------------------------------------

@given(layer_configs())
def test_layer_is_the_per_token_formula(cfg):
    """x_out[s] = sum over kept r of w_{s,r} E_{e_{s,r}}(x_s), computed token by token."""
    g, s, d, f, e, k, capacity_factor, seed = cfg
    x, w_router, w1, w2 = moe_layer(seed, g, s, d, e, f)
    out, routing = ref.token_choice_moe(x, w_router, w1, w2, capacity_factor, k)
    affinity = softmax(x @ w_router, axis=-1)
    weights, experts = ref.top_k_experts(affinity, k)
    expected = np.zeros_like(x)
    for gi, t, r in zip(*np.nonzero(routing["kept"])):
        ex = experts[gi, t, r]
        expected[gi, t] += weights[gi, t, r] * feed_forward(x[gi, t], w1[ex], w2[ex])
    assert_close(out, expected)
    np.testing.assert_array_equal(routing["experts_per_token"], routing["kept"].sum(-1))
    # At most C tokens per expert and at most k experts per token.
    c = expert_capacity(s, e, capacity_factor)
    assert routing["gating"].shape == (g, e, c)
    assert (routing["experts_per_token"] <= k).all()
    assert routing["experts_per_token"].sum() <= g * e * c


@given(layer_configs())
def test_layer_drops_nothing_at_capacity_factor_e(cfg):
    """f_c = E gives C = S: every token gets exactly k experts (the accelerated twin follows from
    the equivalence test, which also draws f_c = E, and from the fixed case below)."""
    g, s, d, f, e, k, _, seed = cfg
    x, w_router, w1, w2 = moe_layer(seed, g, s, d, e, f)
    out, routing = ref.token_choice_moe(x, w_router, w1, w2, float(e), k)
    np.testing.assert_array_equal(routing["experts_per_token"], np.full((g, s), k))
    assert routing["kept"].all()


def test_accelerated_layer_drops_nothing_at_capacity_factor_e():
    x, w_router, w1, w2 = moe_layer(5, 2, 12, 8, 4, 8)
    out, routing = acc.token_choice_moe(x, w_router, w1, w2, 4.0)      # C = S = 12, k = 2
    np.testing.assert_array_equal(np.asarray(routing["experts_per_token"]), np.full((2, 12), 2))


@pytest.mark.parametrize("half", HALVES)
def test_collapsed_router_drops_all_but_the_first_tokens(half):
    # Every token's logits rank expert 0, then expert 1, then the rest; C = 1 (S = 8, E = 4,
    # f_c = 0.5). Token 0 takes expert 0 (round 1) and expert 1 (round 2); tokens 1-7 find both
    # full and get output exactly 0, so the block's residual passes them through unchanged.
    g, s, d, f, e = 1, 8, 4, 4, 4
    x, _, w1, w2 = moe_layer(3, g, s, d, e, f)
    x = np.abs(x) + 0.5
    w_router = np.zeros((d, e), np.float32)
    w_router[:, 0], w_router[:, 1] = 2.0, 1.0
    out, routing = half.token_choice.token_choice_moe(x, w_router, w1, w2, 0.5, 2)
    np.testing.assert_array_equal(np.asarray(routing["experts_per_token"]), [[2, 0, 0, 0, 0, 0, 0, 0]])
    assert (np.asarray(out)[0, 1:] == 0).all() and (np.asarray(out)[0, 0] != 0).any()
    assert float(routing["aux_loss"]) > 3.0                                 # collapsed: close to E = 4


# ---------------------------------------------------------------------------------------------
# The auxiliary loss
# ---------------------------------------------------------------------------------------------

@given(routing_configs())
def test_load_balancing_loss_formula(cfg):
    g, s, e, k, c, seed, tied = cfg
    affinity = make_affinity(g, s, e, seed, tied)
    top1 = np.argmax(affinity, axis=-1)                              # first choices, lower index on ties
    expected = np.mean([e * sum(np.mean(top1[gi] == i) * np.mean(affinity[gi, :, i]) for i in range(e))
                        for gi in range(g)])
    assert_close(ref.load_balancing_loss(affinity, top1), expected)
    _, experts = ref.top_k_experts(affinity, k)
    np.testing.assert_array_equal(experts[..., 0], top1)


@pytest.mark.parametrize("half", HALVES)
def test_load_balancing_loss_uniform_is_one_collapsed_is_larger(half):
    g, s, e = 2, 8, 4
    uniform = np.full((g, s, e), 1 / e, np.float32)
    balanced_top1 = np.tile(np.arange(s) % e, (g, 1))                # every expert first for S/E tokens
    assert_close(half.token_choice.load_balancing_loss(uniform, balanced_top1), 1.0)
    collapsed = np.tile(np.array([0.97, 0.01, 0.01, 0.01], np.float32), (g, s, 1))
    loss = float(half.token_choice.load_balancing_loss(collapsed, np.zeros((g, s), np.int64)))
    assert loss > 1.0
    assert_close(loss, e * 0.97)


def test_layer_aux_loss_uses_first_choices():
    x, w_router, w1, w2 = moe_layer(7, 2, 16, 8, 4, 8)
    out, routing = ref.token_choice_moe(x, w_router, w1, w2, 2.0)
    affinity = softmax(x @ w_router, axis=-1)
    assert_close(routing["aux_loss"], ref.load_balancing_loss(affinity, routing["experts"][..., 0]))


# ---------------------------------------------------------------------------------------------
# Bad input: ValueError naming the argument, the same in both halves
# ---------------------------------------------------------------------------------------------

AFF = make_affinity(2, 6, 4, seed=0, tied=False)                      # (G, S, E) = (2, 6, 4)


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("call, name", [
    (lambda m: m.top_k_experts(AFF[0], 2), "affinity"),                          # rank 2
    (lambda m: m.top_k_experts(AFF, 0), "num_selected"),
    (lambda m: m.top_k_experts(AFF, 5), "num_selected"),                         # k > E
    (lambda m: m.top_k_experts(AFF, 1.5), "num_selected"),
    (lambda m: m.top_k_experts(-AFF, 2), "affinity"),                            # negative
    (lambda m: m.top_k_experts(np.zeros_like(AFF), 2), "affinity"),              # no positive entry
    (lambda m: m.top_k_experts(np.where(AFF > 0.3, np.nan, AFF), 2), "affinity"),
    (lambda m: m.token_choice_gating(AFF, 2, 0), "capacity"),
    (lambda m: m.token_choice_gating(AFF, 2, 7), "capacity"),                    # C > S
    (lambda m: m.token_choice_gating(AFF, 2, 2.0), "capacity"),
    (lambda m: m.token_choice_gating(AFF, 5, 2), "num_selected"),
    (lambda m: m.token_choice_gating(AFF[None], 2, 2), "affinity"),              # rank 4
    (lambda m: m.load_balancing_loss(AFF, np.zeros((2, 5), np.int32)), "top1_expert"),
    (lambda m: m.load_balancing_loss(AFF, np.zeros((2, 6), np.float32)), "top1_expert"),
    (lambda m: m.load_balancing_loss(AFF, np.full((2, 6), 4, np.int32)), "top1_expert"),
    (lambda m: m.load_balancing_loss(AFF[0], np.zeros((6,), np.int32)), "affinity"),
])
def test_bad_routing_input_raises_a_value_error_starting_with_the_argument_name(half, call, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        call(half.token_choice)


LAYER = moe_layer(1, 2, 8, 4, 4, 6)                             # x (2, 8, 4), E = 4, F = 6


def _layer_with(**changes):
    args = dict(zip(("x", "w_router", "w1", "w2"), LAYER), capacity_factor=2.0, num_selected=2)
    args.update(changes)
    return args


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("args, name", [
    (_layer_with(x=LAYER[0][0]), "x"),                                           # rank 2
    (_layer_with(w_router=LAYER[1][:3]), "w_router"),                            # D mismatch
    (_layer_with(w1=LAYER[2][:3]), "w1"),                                        # E mismatch
    (_layer_with(w2=LAYER[3][:, :5]), "w2"),                                     # F mismatch
    (_layer_with(num_selected=0), "num_selected"),
    (_layer_with(num_selected=5), "num_selected"),                               # k > E
    (_layer_with(capacity_factor=0.0), "capacity_factor"),
    (_layer_with(capacity_factor=0.1), "capacity_factor"),                       # C = round(0.2) = 0
    (_layer_with(capacity_factor=8.0), "capacity_factor"),                       # C = 16 > S
    (_layer_with(x=np.full_like(LAYER[0], np.inf)), "x"),
])
def test_bad_layer_input_raises_a_value_error_starting_with_the_argument_name(half, args, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        half.token_choice.token_choice_moe(**args)


# ---------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------

def _layer_sum(x, w_router, w1, w2):
    return jnp.sum(acc.token_choice_moe(x, w_router, w1, w2, 1.0)[0])


def test_layer_gradients_are_finite_and_match_finite_differences():
    """jax.grad of sum(out) w.r.t. x and all weights is finite, and its directional derivative
    matches central differences of the float64 reference (routing fixed: step 1e-6)."""
    params = moe_layer(11, 2, 16, 8, 4, 8)                     # f_c = 1: some choices drop
    assert top_choices_are_clear(params[0], params[1], 2, margin=NEAR_TIE_FINITE_DIFFERENCE)
    grads = jax.grad(_layer_sum, argnums=(0, 1, 2, 3))(*params)
    for grad, p in zip(grads, params):
        assert grad.shape == p.shape and bool(jnp.all(jnp.isfinite(grad)))
        assert bool(jnp.any(grad != 0))
    rng = np.random.default_rng(12)
    directions = [rng.standard_normal(p.shape) for p in params]
    h = 1e-6

    def f64(sign):
        moved = [p.astype(np.float64) + sign * h * v for p, v in zip(params, directions)]
        return ref.token_choice_moe(*moved, 1.0)[0].sum()

    numeric = (f64(+1) - f64(-1)) / (2 * h)
    analytic = sum(float(jnp.vdot(gr, v.astype(np.float32))) for gr, v in zip(grads, directions))
    assert_close(analytic, numeric, tol=FLOAT32_GRAD)


def test_aux_loss_gradient_reaches_the_router():
    params = moe_layer(13, 2, 16, 8, 4, 8)
    aux_loss = lambda w: acc.token_choice_moe(params[0], w, params[2], params[3], 2.0)[1]["aux_loss"]
    grad = jax.grad(aux_loss)(params[1])
    assert bool(jnp.all(jnp.isfinite(grad))) and bool(jnp.any(grad != 0))
