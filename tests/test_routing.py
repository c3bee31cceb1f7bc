"""Expert-choice routing (Eq. 5-8, Algorithm 1): the accelerated twin equals the reference, and
the properties the paper claims hold in both: perfect load balance, gating = affinity of the
chosen tokens, permutation equivariance, activated compute independent of E."""
import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import ecdit.accelerated.routing as acc
import ecdit.reference.routing as ref
from tests.helpers import HALVES, dense_gating, moe_layer, moe_shapes, normal, seeds, tied_values, topc_margin
from tests.tolerances import EXACT, NEAR_TIE, assert_close


# ---------------------------------------------------------------------------------------------
# Capacity
# ---------------------------------------------------------------------------------------------

@given(s=st.integers(1, 5000), e=st.integers(1, 128), f=st.floats(0.01, 8.0))
def test_capacity_is_round_half_up_of_S_fc_over_E_or_a_named_error(s, e, f):
    exact = s * f / e
    expected = math.floor(exact + 0.5)
    for routing in (ref, acc):
        if 1 <= expected <= s:
            assert routing.expert_capacity(s, e, f) == expected
        else:
            with pytest.raises(ValueError, match="capacity_factor"):
                routing.expert_capacity(s, e, f)


def test_capacity_rounds_halves_up_not_to_even():
    assert ref.expert_capacity(10, 4, 1.0) == 3      # 2.5 -> 3 (Python's round would give 2)
    assert ref.expert_capacity(6, 4, 1.0) == 2       # 1.5 -> 2


@given(s=st.integers(64, 4096), f=st.sampled_from([1.0, 2.0]), e=st.sampled_from([4, 8, 16, 32, 64]))
def test_activated_compute_E_times_C_stays_S_times_fc_as_E_grows(s, f, e):
    """Sec. 3.6: more experts add parameters, not compute. E * C differs from S * f_c only by
    rounding C, i.e. by at most E / 2 token-slots."""
    assume(s * f / e >= 0.5)
    c = ref.expert_capacity(s, e, f)
    assert abs(e * c - s * f) <= e / 2


# ---------------------------------------------------------------------------------------------
# Eq. 5: affinity
# ---------------------------------------------------------------------------------------------

@given(shape=moe_shapes(), seed=seeds)
def test_router_affinity_matches_reference_and_rows_sum_to_one(shape, seed):
    g, s, d, e, f, _ = shape
    x, w_router, _, _ = moe_layer(seed, g, s, d, e, f)
    expected = ref.router_affinity(x, w_router)                  # (G, S, E)
    assert_close(acc.router_affinity(x, w_router), expected)
    assert_close(expected.sum(axis=-1), np.ones((g, s)))
    assert (expected >= 0).all()


# ---------------------------------------------------------------------------------------------
# Eq. 6: gating
# ---------------------------------------------------------------------------------------------

@given(g=st.integers(1, 3), s=st.integers(1, 20), e=st.integers(1, 6), c_frac=st.floats(0, 1), seed=seeds)
def test_gating_matches_reference_exactly_even_with_ties(g, s, e, c_frac, seed):
    """Identical inputs with many exact ties: both halves pick the same tokens in the same order."""
    capacity = max(1, round(c_frac * s))
    affinity = tied_values(np.random.default_rng(seed), (g, s, e))
    gating_r, index_r = ref.expert_choice_gating(affinity, capacity)
    gating_a, index_a = acc.expert_choice_gating(affinity, capacity)
    np.testing.assert_array_equal(np.asarray(index_a), index_r)
    np.testing.assert_array_equal(np.asarray(gating_a), gating_r)


@pytest.mark.parametrize("half", HALVES)
@given(g=st.integers(1, 3), s=st.integers(1, 20), e=st.integers(1, 6), c_frac=st.floats(0, 1), seed=seeds,
       tied=st.booleans())
def test_gating_equals_affinity_of_the_top_C_tokens_and_zero_elsewhere(half, g, s, e, c_frac, seed, tied):
    capacity = max(1, round(c_frac * s))
    rng = np.random.default_rng(seed)
    affinity = tied_values(rng, (g, s, e)) if tied else rng.random((g, s, e)).astype(np.float32)
    gating, index = (np.asarray(a) for a in half.routing.expert_choice_gating(affinity, capacity))
    dense = dense_gating(gating, index, s)                       # (G, S, E)
    chosen = np.zeros((g, s, e), bool)
    for gi in range(g):
        for ei in range(e):
            chosen[gi, index[gi, ei], ei] = True
    np.testing.assert_array_equal(dense[chosen], affinity[chosen])      # gating = A on chosen tokens
    assert (dense[~chosen] == 0).all()                                  # zero elsewhere
    for gi in range(g):
        for ei in range(e):
            picked = affinity[gi, index[gi, ei], ei]
            rest = affinity[gi, ~chosen[gi, :, ei], ei]
            assert (np.diff(picked) <= 0).all()                         # descending affinity
            if rest.size:
                assert picked.min() >= rest.max()                       # top-C, not any C


@pytest.mark.parametrize("half", HALVES)
def test_gating_matches_a_hand_worked_three_token_case(half):
    """Hand-worked (one group, S = 3 tokens, E = 3 experts, C = 1):
        token 0 affinity [0.6, 0.3, 0.1]
        token 1 affinity [0.2, 0.5, 0.3]
        token 2 affinity [0.6, 0.1, 0.3]
    expert 0 sees [0.6, 0.2, 0.6]: tokens 0 and 2 tie, the lower index wins -> token 0;
    expert 1 sees [0.3, 0.5, 0.1] -> token 1;  expert 2 sees [0.1, 0.3, 0.3]: tie -> token 1.
    So token 1 is processed by two experts, token 0 by one, token 2 by none (adaptive compute)."""
    affinity = np.array([[[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.6, 0.1, 0.3]]], np.float32)
    gating, index = half.routing.expert_choice_gating(affinity, 1)
    np.testing.assert_array_equal(np.asarray(index), [[[0], [1], [1]]])
    assert_close(gating, np.float32([[[0.6], [0.5], [0.3]]]), tol=EXACT)          # the affinities themselves
    np.testing.assert_array_equal(np.asarray(half.routing.experts_per_token(np.asarray(index), 3)), [[1, 2, 0]])


@pytest.mark.parametrize("half", HALVES)
def test_gating_ties_break_toward_lower_token_index(half):
    affinity = np.full((1, 5, 1), 0.5, np.float32)               # all five tokens tie for one expert
    _, index = half.routing.expert_choice_gating(affinity, 3)
    np.testing.assert_array_equal(np.asarray(index), [[[0, 1, 2]]])


# ---------------------------------------------------------------------------------------------
# Eq. 7-8: dispatch, experts, combine
# ---------------------------------------------------------------------------------------------

@given(shape=moe_shapes(), seed=seeds)
def test_dispatch_expert_ffn_combine_and_counts_match_reference(shape, seed):
    g, s, d, e, f, cf = shape
    x, w_router, w1, w2 = moe_layer(seed, g, s, d, e, f)
    c = ref.expert_capacity(s, e, cf)
    rng = np.random.default_rng(seed + 1)
    index = np.argsort(rng.random((g, e, s)), axis=-1)[..., :c]  # (G, E, C) distinct tokens per expert
    gating = rng.random((g, e, c)).astype(np.float32)
    x_in = ref.dispatch(x, index)
    assert_close(acc.dispatch(x, index), x_in)
    np.testing.assert_array_equal(x_in[0, 0, 0], x[0, index[0, 0, 0]])
    y = ref.expert_ffn(x_in, w1, w2)
    assert_close(acc.expert_ffn(x_in, w1, w2), y)
    assert_close(acc.combine(y, gating, index, s), ref.combine(y, gating, index, s))
    np.testing.assert_array_equal(np.asarray(acc.experts_per_token(index, s)), ref.experts_per_token(index, s))


@pytest.mark.parametrize("half", HALVES)
def test_expert_ffn_applies_each_experts_own_weights(half):
    """Expert e's tokens go through w1[e], w2[e] and no other: E_i(x) = GeLU(x W1^i) W2^i."""
    rng = np.random.default_rng(0)
    x_in = normal(rng, (3, 1, 2, 4))                             # (E, G, C, D): expert-major
    w1, w2 = normal(rng, (3, 4, 5)), normal(rng, (3, 5, 4))
    out = np.asarray(half.routing.expert_ffn(x_in, w1, w2))
    for e in range(3):
        h = x_in[e, 0] @ w1[e]
        gelu = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))
        assert_close(out[e, 0], gelu @ w2[e])


@pytest.mark.parametrize("half", HALVES)
def test_combine_sums_the_weighted_outputs_of_every_expert_that_chose_a_token(half):
    """Two experts chose token 1: its output is the gated sum of both; token 2 was not chosen."""
    expert_out = np.array([[[[1.0, 0.0]]], [[[0.0, 2.0]]]], np.float32)  # (E=2, G=1, C=1, D=2)
    gating = np.array([[[0.5], [0.25]]], np.float32)                     # (1, 2, 1)
    index = np.array([[[1], [1]]])                                       # both experts chose token 1
    out = np.asarray(half.routing.combine(expert_out, gating, index, 3))
    assert_close(out, [[[0, 0], [0.5, 0.5], [0, 0]]], tol=EXACT)


# ---------------------------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------------------------

@given(shape=moe_shapes(), seed=seeds)
def test_expert_choice_moe_matches_reference(shape, seed):
    g, s, d, e, f, cf = shape
    x, w_router, w1, w2 = moe_layer(seed, g, s, d, e, f)
    c = ref.expert_capacity(s, e, cf)
    assume(topc_margin(ref.router_affinity(x, w_router), c) > NEAR_TIE)
    out_r, routing_r = ref.expert_choice_moe(x, w_router, w1, w2, cf)
    out_a, routing_a = acc.expert_choice_moe(x, w_router, w1, w2, cf)
    assert_close(out_a, out_r)
    np.testing.assert_array_equal(np.asarray(routing_a["index"]), routing_r["index"])
    assert_close(routing_a["gating"], routing_r["gating"])
    np.testing.assert_array_equal(np.asarray(routing_a["experts_per_token"]), routing_r["experts_per_token"])


@pytest.mark.parametrize("half", HALVES)
@given(shape=moe_shapes(), seed=seeds)
def test_every_expert_receives_exactly_C_distinct_tokens_in_every_group(half, shape, seed):
    """Perfect load balance by construction (Sec. 2.3): E * C (token, expert) pairs per group."""
    g, s, d, e, f, cf = shape
    x, w_router, w1, w2 = moe_layer(seed, g, s, d, e, f)
    c = half.routing.expert_capacity(s, e, cf)
    _, routing = half.routing.expert_choice_moe(x, w_router, w1, w2, cf)
    index = np.asarray(routing["index"])
    assert index.shape == (g, e, c)
    for gi in range(g):
        for ei in range(e):
            assert len(set(index[gi, ei].tolist())) == c                # C distinct tokens
    counts = np.asarray(routing["experts_per_token"])                   # (G, S)
    np.testing.assert_array_equal(counts.sum(axis=1), np.full(g, e * c))
    assert counts.min() >= 0 and counts.max() <= e


@pytest.mark.parametrize("half", HALVES)
@given(shape=moe_shapes(), seed=seeds)
def test_algorithm1_onehot_form_gives_the_same_output_as_gather_scatter(half, shape, seed):
    g, s, d, e, f, cf = shape
    x, w_router, w1, w2 = moe_layer(seed, g, s, d, e, f)
    out, routing = half.routing.expert_choice_moe(x, w_router, w1, w2, cf)
    out_1h, routing_1h = half.routing.expert_choice_moe_onehot(x, w_router, w1, w2, cf)
    assert_close(out_1h, out)
    np.testing.assert_array_equal(np.asarray(routing_1h["index"]), np.asarray(routing["index"]))
    np.testing.assert_array_equal(np.asarray(routing_1h["experts_per_token"]), np.asarray(routing["experts_per_token"]))


@pytest.mark.parametrize("half", HALVES)
@given(shape=moe_shapes(), seed=seeds)
def test_permuting_the_tokens_of_a_group_permutes_the_output_the_same_way(half, shape, seed):
    """Expert choice looks at the whole group but not at token positions: MoE(P x) = P MoE(x)
    (continuous random inputs, so no exact ties whose lower-index rule would see the order)."""
    g, s, d, e, f, cf = shape
    x, w_router, w1, w2 = moe_layer(seed, g, s, d, e, f)
    c = ref.expert_capacity(s, e, cf)
    assume(topc_margin(ref.router_affinity(x, w_router), c) > NEAR_TIE)
    perm = np.random.default_rng(seed).permutation(s)
    out, routing = half.routing.expert_choice_moe(x, w_router, w1, w2, cf)
    out_p, routing_p = half.routing.expert_choice_moe(x[:, perm], w_router, w1, w2, cf)
    assert_close(out_p, np.asarray(out)[:, perm])
    np.testing.assert_array_equal(np.asarray(routing_p["experts_per_token"]),
                                  np.asarray(routing["experts_per_token"])[:, perm])


@pytest.mark.parametrize("half", HALVES)
def test_unchosen_tokens_get_zero_output(half):
    """capacity_factor small enough that some tokens are chosen by no expert: their row is 0."""
    x, w_router, w1, w2 = moe_layer(3, 1, 16, 8, 2, 8)
    out, routing = half.routing.expert_choice_moe(x, w_router, w1, w2, 0.5)   # C = 4, 8 slots for 16 tokens
    counts = np.asarray(routing["experts_per_token"])[0]
    assert (counts == 0).any()
    assert (np.asarray(out)[0, counts == 0] == 0).all()
    assert (np.abs(np.asarray(out)[0, counts > 0]).sum(axis=-1) > 0).all()


# ---------------------------------------------------------------------------------------------
# Regrouping (Sec. 3.1)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("half", HALVES)
@given(b=st.integers(1, 4), s=st.integers(1, 12), d=st.integers(1, 5), k=st.integers(1, 4), seed=seeds)
def test_group_tokens_round_trips_and_groups_may_span_images(half, b, s, d, k, seed):
    x = normal(np.random.default_rng(seed), (b, s, d))
    tokens = b * s
    divisors = [n for n in range(1, tokens + 1) if tokens % n == 0]
    group_size = divisors[(k - 1) % len(divisors)]
    grouped = np.asarray(half.routing.group_tokens(x, group_size))
    assert grouped.shape == (tokens // group_size, group_size, d)
    np.testing.assert_array_equal(grouped.reshape(-1, d), x.reshape(-1, d))      # image after image
    np.testing.assert_array_equal(np.asarray(half.routing.ungroup_tokens(grouped, b)), x)
    assert_close(acc.group_tokens(x, group_size), ref.group_tokens(x, group_size))


@pytest.mark.parametrize("half", HALVES)
def test_an_inference_group_of_two_images_routes_across_both(half):
    """group_size = 2 S (the paper's 512-token inference groups over 256-token images): one
    group holds both images, and its experts may choose more tokens of one image than the other."""
    rng = np.random.default_rng(0)
    b, s, d, e = 2, 8, 4, 3
    direction = np.ones(d, np.float32) / 2                      # unit vector
    x = normal(rng, (b, s, d), 0.1)
    x[1] += 3.0 * direction                                      # image 1 lies along `direction`
    w_router = np.zeros((d, e), np.float32)
    w_router[:, 0] = w_router[:, 1] = 4.0 * direction            # experts 0 and 1 like image 1
    grouped = half.routing.group_tokens(x, 2 * s)                        # (1, 16, D): both images in one group
    w1, w2 = normal(rng, (e, d, 4)), normal(rng, (e, 4, d))
    _, routing = half.routing.expert_choice_moe(grouped, w_router, w1, w2, 0.75)   # C = round(16 * 0.75 / 3) = 4
    counts = np.asarray(routing["experts_per_token"]).reshape(b, s)
    assert counts.sum() == e * 4
    assert counts[1].sum() == 8 and counts[0].sum() == 4         # experts 0, 1 -> image 1; expert 2 -> image 0
