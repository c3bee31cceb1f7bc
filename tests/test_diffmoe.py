"""DiffMoE (reference/diffmoe.py and its twin): the batch-level pool, the capacity predictor, the
predictor loss, the threshold EMA and dynamic capacity, equal in both halves and true to their
formulas; the static form restricted to one group is EC-DiT; a batch-level pool couples images."""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import ecdit.accelerated.diffmoe as acc
import ecdit.reference.diffmoe as ref
from ecdit import accelerated, reference
from ecdit.core.config import expert_capacity
from tests.helpers import HALVES, moe_layer, normal, seeds, topc_margin
from tests.tolerances import ARITHMETIC, EXACT, FLOAT32, NEAR_TIE, assert_close

# Draws whose predictor scores sit within this of a threshold may count k_e differently in the two
# halves (float32 sigmoid against float32 tanh); their k_e is tested on identical inputs instead.
NEAR_THRESHOLD = 1e-5


def predictor(seed, d, e, scale=1.0):
    rng = np.random.default_rng([seed, 1])
    return {"w1": normal(rng, (d, d), 1 / np.sqrt(d)), "b1": normal(rng, (d,), 0.1),
            "w2": normal(rng, (d, e), scale / np.sqrt(d)), "b2": normal(rng, (e,), 0.1)}


@st.composite
def pools(draw, max_batch=3, max_tokens=12, max_width=8, max_experts=6):
    """(B, S, D, E, F, f_c) with a valid pool capacity 1 <= k = round(B S f_c / E) <= B S."""
    b, s = draw(st.integers(1, max_batch)), draw(st.integers(1, max_tokens))
    d, e, f = draw(st.integers(1, max_width)), draw(st.integers(1, max_experts)), draw(st.integers(1, max_width))
    n = b * s
    fc = draw(st.floats(max(0.6 * e / n, 0.05), float(e)).map(lambda v: round(v, 2)))
    assume(1 <= round(n * fc / e + 1e-9) and expert_capacity(n, e, fc) <= n)
    return b, s, d, e, f, fc


def layer(seed, b, s, d, e, f):
    x, w_router, w1, w2 = moe_layer(seed, b, s, d, e, f)        # x (B, S, D): a batch, not groups
    return x, w_router, w1, w2, predictor(seed, d, e)


def pool_affinity(x, w_router):
    return reference.routing.router_affinity(x.reshape(1, -1, x.shape[-1]), w_router)  # (1, N, E)


# ---------------------------------------------------------------------------------------------
# The predictor, its loss, the threshold
# ---------------------------------------------------------------------------------------------

@given(d=st.integers(1, 8), e=st.integers(1, 6), lead=st.lists(st.integers(1, 4), min_size=1, max_size=2), seed=seeds)
def test_capacity_predictor_is_an_mlp_with_silu_and_matches_reference(d, e, lead, seed):
    x = normal(np.random.default_rng(seed), (*lead, d))
    p = predictor(seed, d, e)
    h = x @ p["w1"] + p["b1"]
    expected = (h / (1 + np.exp(-h))) @ p["w2"] + p["b2"]
    got = ref.capacity_predictor(x, p)
    assert got.shape == (*lead, e)
    assert_close(got, expected)
    assert_close(acc.capacity_predictor(x, p), got)


@pytest.mark.parametrize("half", [ref, acc], ids=["reference", "accelerated"])
@given(n=st.integers(1, 20), e=st.integers(1, 6), scale=st.sampled_from([0.1, 1.0, 30.0]), seed=seeds)
def test_predictor_loss_is_the_mean_binary_cross_entropy_with_logits(half, n, e, scale, seed):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((n, e)) * scale).astype(np.float32)
    m = (rng.random((n, e)) < 0.5).astype(np.float32)
    z = logits.astype(np.float64)
    # -M log s(z) - (1 - M) log(1 - s(z)), with -log s(z) = log(1 + e^-z) and -log(1 - s(z)) = log(1 + e^z)
    bce = m * np.logaddexp(0.0, -z) + (1 - m) * np.logaddexp(0.0, z)
    got = half.predictor_loss(logits, m)
    assert_close(got, bce.mean(), tol=FLOAT32)


@pytest.mark.parametrize("half", [ref, acc], ids=["reference", "accelerated"])
@given(e=st.integers(1, 8), decay=st.floats(0.0, 1.0), seed=seeds)
def test_threshold_update_is_the_ema_of_the_kth_scores(half, e, decay, seed):
    rng = np.random.default_rng(seed)
    tau, q = rng.random(e).astype(np.float32), rng.random(e).astype(np.float32)
    assert_close(half.update_threshold(tau, q, decay), decay * tau + (1 - decay) * q, tol=ARITHMETIC)
    assert_close(half.update_threshold(tau, q), 0.95 * tau + 0.05 * q, tol=ARITHMETIC)   # the official decay


# ---------------------------------------------------------------------------------------------
# Training: expert choice over the pool
# ---------------------------------------------------------------------------------------------

@given(shape=pools(), seed=seeds)
def test_diffmoe_moe_matches_reference(shape, seed):
    b, s, d, e, f, fc = shape
    args = layer(seed, b, s, d, e, f)
    k = expert_capacity(b * s, e, fc)
    assume(topc_margin(pool_affinity(*args[:2]), k) > NEAR_TIE)
    out_r, r = ref.diffmoe_moe(*args, fc)
    out_a, a = acc.diffmoe_moe(*args, fc)
    assert_close(out_a, out_r)
    for key in ("index", "assignment", "experts_per_token"):
        np.testing.assert_array_equal(np.asarray(a[key]), r[key], err_msg=key)
    for key in ("gating", "predictor_logits", "kth_score"):
        assert_close(a[key], r[key], err_msg=key)


def _capacity_fits(tokens, e, fc):
    """Whether round(tokens f_c / E) is a valid capacity for pools of `tokens`."""
    try:
        expert_capacity(tokens, e, fc)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("half", HALVES)
@given(shape=pools(), seed=seeds, tau=st.lists(st.floats(0.0, 1.0), min_size=6, max_size=6))
def test_g_pools_are_g_independent_one_pool_layers_with_the_kth_scores_averaged(half, shape, seed, tau):
    """`pool_moe` / `pool_moe_dynamic` on G pools (the rows of x) equal G calls of the one-pool
    layer, one per pool: pools never see each other; the k-th scores are the mean over pools, and
    each pool counts its own dynamic capacities k_ge against the shared thresholds."""
    b, s, d, e, f, fc = shape
    x, w_router, w1, w2, p = layer(seed, b, s, d, e, f)        # read as B pools of S tokens
    threshold = np.asarray(tau[:e], np.float32)
    m = half.diffmoe
    assume(_capacity_fits(s, e, fc))
    assume(topc_margin(reference.routing.router_affinity(x, w_router), expert_capacity(s, e, fc)) > NEAR_TIE)
    assume(np.abs(_scores(x, p) - threshold).min() > NEAR_THRESHOLD)   # a batched matmul may differ by an ulp
    out, r = m.pool_moe(x, w_router, w1, w2, p, fc)
    out_dyn, r_dyn = m.pool_moe_dynamic(x, w_router, w1, w2, p, threshold)
    kth = []
    for g in range(b):
        one = x[g:g + 1]                                         # (1, S, D): one pool
        o, rg = m.diffmoe_moe(one, w_router, w1, w2, p, fc)
        assert_close(out[g], np.asarray(o)[0], tol=FLOAT32)
        np.testing.assert_array_equal(np.asarray(r["assignment"][g]), np.asarray(rg["assignment"][0]))
        kth.append(np.asarray(rg["kth_score"]))
        od, rd = m.diffmoe_moe_dynamic(one, w_router, w1, w2, p, threshold)
        assert_close(out_dyn[g], np.asarray(od)[0], tol=FLOAT32)
        np.testing.assert_array_equal(np.asarray(r_dyn["capacity"][g]), np.asarray(rd["capacity"]))
    assert_close(r["kth_score"], np.mean(kth, axis=0), tol=ARITHMETIC)


@given(shape=pools(), seed=seeds)
def test_pool_moe_over_g_pools_matches_reference(shape, seed):
    b, s, d, e, f, fc = shape
    x, w_router, w1, w2, p = layer(seed, b, s, d, e, f)
    assume(_capacity_fits(s, e, fc))
    assume(topc_margin(reference.routing.router_affinity(x, w_router), expert_capacity(s, e, fc)) > NEAR_TIE)
    out_r, r = ref.pool_moe(x, w_router, w1, w2, p, fc)
    out_a, a = acc.pool_moe(x, w_router, w1, w2, p, fc)
    assert_close(out_a, out_r)
    for key in ("index", "assignment", "experts_per_token"):
        np.testing.assert_array_equal(np.asarray(a[key]), r[key], err_msg=key)
    for key in ("gating", "predictor_logits", "kth_score"):
        assert_close(a[key], r[key], err_msg=key)


@pytest.mark.parametrize("half", HALVES)
@given(shape=pools(), seed=seeds)
def test_assignment_is_expert_choice_over_the_pool_with_exactly_k_tokens_per_expert(half, shape, seed):
    b, s, d, e, f, fc = shape
    args = layer(seed, b, s, d, e, f)
    k = expert_capacity(b * s, e, fc)
    _, routing = half.diffmoe.diffmoe_moe(*args, fc)
    m = np.asarray(routing["assignment"]).reshape(b * s, e)     # (N, E)
    _, index = reference.routing.expert_choice_gating(pool_affinity(*args[:2]), k)   # top-k over the pool
    assume(topc_margin(pool_affinity(*args[:2]), k) > NEAR_TIE or half is reference)
    want = np.zeros((b * s, e))
    want[index[0], np.arange(e)[:, None]] = 1
    np.testing.assert_array_equal(m, want)
    np.testing.assert_array_equal(m.sum(axis=0), np.full(e, k))  # every expert: exactly k tokens
    np.testing.assert_array_equal(np.asarray(routing["experts_per_token"]).reshape(-1), m.sum(axis=1))


@given(shape=pools(), seed=seeds)
def test_kth_score_is_the_kth_largest_sigmoid_of_each_experts_predictor_column(shape, seed):
    b, s, d, e, f, fc = shape
    args = layer(seed, b, s, d, e, f)
    k = expert_capacity(b * s, e, fc)
    _, routing = ref.diffmoe_moe(*args, fc)
    scores = 1 / (1 + np.exp(-routing["predictor_logits"].reshape(b * s, e).astype(np.float64)))
    assert_close(routing["kth_score"], -np.sort(-scores, axis=0)[k - 1])


@pytest.mark.parametrize("half", HALVES)
@given(shape=pools(max_batch=1), seed=seeds)
def test_the_static_form_with_one_image_in_the_pool_is_ec_dit(half, shape, seed):
    """DiffMoE's pool restricted to one routing group is expert choice on that group."""
    b, s, d, e, f, fc = shape
    x, w_router, w1, w2, p = layer(seed, b, s, d, e, f)
    out, routing = half.diffmoe.diffmoe_moe(x, w_router, w1, w2, p, fc)
    out_ec, routing_ec = half.routing.expert_choice_moe(x, w_router, w1, w2, fc)  # x (1, S, D): one group
    assert_close(out, out_ec, tol=EXACT)
    np.testing.assert_array_equal(np.asarray(routing["index"]), np.asarray(routing_ec["index"]))


@pytest.mark.parametrize("half", HALVES)
@given(shape=pools(), seed=seeds)
def test_the_batch_pool_is_expert_choice_on_the_batch_regrouped_as_one_group(half, shape, seed):
    b, s, d, e, f, fc = shape
    x, w_router, w1, w2, p = layer(seed, b, s, d, e, f)
    out, _ = half.diffmoe.diffmoe_moe(x, w_router, w1, w2, p, fc)
    pooled, _ = half.routing.expert_choice_moe(x.reshape(1, b * s, d), w_router, w1, w2, fc)
    assert_close(out, np.asarray(pooled).reshape(b, s, d), tol=EXACT)


@pytest.mark.parametrize("half", HALVES)
@given(shape=pools(), seed=seeds, perm_seed=seeds)
def test_permuting_the_pool_permutes_the_output(half, shape, seed, perm_seed):
    b, s, d, e, f, fc = shape
    x, w_router, w1, w2, p = layer(seed, b, s, d, e, f)
    k = expert_capacity(b * s, e, fc)
    affinity = pool_affinity(x, w_router)
    assume(topc_margin(affinity, k) > NEAR_TIE)                  # ties would break by position
    perm = np.random.default_rng(perm_seed).permutation(b * s)
    xp = x.reshape(b * s, d)[perm].reshape(b, s, d)
    out, _ = half.diffmoe.diffmoe_moe(x, w_router, w1, w2, p, fc)
    out_p, _ = half.diffmoe.diffmoe_moe(xp, w_router, w1, w2, p, fc)
    assert_close(np.asarray(out_p).reshape(b * s, d), np.asarray(out).reshape(b * s, d)[perm])


@pytest.mark.parametrize("half", HALVES)
@given(seed=seeds)
def test_a_batch_pool_makes_an_image_depend_on_its_batch_and_a_per_image_pool_does_not(half, seed):
    """Image 1 made loud (every token's router logits scaled up toward its favourite expert) takes
    capacity from image 0 in one pool over both, so image 0's output changes; with EC-DiT's pool
    of one image, image 0's output is bit for bit the same."""
    b, s, d, e, f = 2, 8, 6, 4, 8
    x, w_router, w1, w2, p = layer(seed, b, s, d, e, f)
    loud = x.copy()
    loud[1] = 50.0 * x[1]
    k = expert_capacity(b * s, e, 1.0)
    assume(topc_margin(pool_affinity(x, w_router), k) > NEAR_TIE and topc_margin(pool_affinity(loud, w_router), k) > NEAR_TIE)
    quiet_out, quiet = half.diffmoe.diffmoe_moe(x, w_router, w1, w2, p, 1.0)
    loud_out, louder = half.diffmoe.diffmoe_moe(loud, w_router, w1, w2, p, 1.0)
    taken = np.asarray(quiet["assignment"])[0].sum(), np.asarray(louder["assignment"])[0].sum()
    assume(taken[0] != taken[1])                                 # image 1's pull moved some of image 0's slots
    assert np.abs(np.asarray(quiet_out)[0] - np.asarray(loud_out)[0]).max() > 1e-3
    ec_quiet, _ = half.routing.expert_choice_moe(x, w_router, w1, w2, 1.0)     # groups = images
    ec_loud, _ = half.routing.expert_choice_moe(loud, w_router, w1, w2, 1.0)
    assert_close(np.asarray(ec_loud)[0], np.asarray(ec_quiet)[0], tol=EXACT)


# ---------------------------------------------------------------------------------------------
# Inference: dynamic capacity
# ---------------------------------------------------------------------------------------------

def _scores(x, p):
    logits = ref.capacity_predictor(x, p)
    return 1 / (1 + np.exp(-logits.reshape(-1, logits.shape[-1]).astype(np.float64)))  # (N, E)


@given(shape=pools(), seed=seeds, tau=st.lists(st.floats(0.0, 1.0), min_size=6, max_size=6))
def test_dynamic_layer_matches_reference(shape, seed, tau):
    b, s, d, e, f, _ = shape
    x, w_router, w1, w2, p = layer(seed, b, s, d, e, f)
    threshold = np.asarray(tau[:e], np.float32)
    assume(np.abs(_scores(x, p) - threshold).min() > NEAR_THRESHOLD)
    out_r, r = ref.diffmoe_moe_dynamic(x, w_router, w1, w2, p, threshold)
    c = int(r["slots"])
    assume(c == 0 or topc_margin(pool_affinity(x, w_router), c) > NEAR_TIE)
    out_a, a = acc.diffmoe_moe_dynamic(x, w_router, w1, w2, p, threshold)
    assert_close(out_a, out_r)
    for key in ("capacity", "assignment", "experts_per_token"):
        np.testing.assert_array_equal(np.asarray(a[key]), r[key], err_msg=key)
    assert_close(a["predictor_logits"], r["predictor_logits"])


@pytest.mark.parametrize("half", HALVES)
@given(shape=pools(), seed=seeds, tau=st.lists(st.floats(0.0, 1.0), min_size=6, max_size=6))
def test_dynamic_capacity_counts_scores_above_threshold_and_takes_the_top_by_affinity(half, shape, seed, tau):
    """k_e = #{t : sigmoid(P[t, e]) > tau_e}; expert e's tokens are its top-k_e by router affinity."""
    b, s, d, e, f, _ = shape
    x, w_router, w1, w2, p = layer(seed, b, s, d, e, f)
    threshold = np.asarray(tau[:e], np.float32)
    assume(np.abs(_scores(x, p) - threshold).min() > NEAR_THRESHOLD)
    _, routing = half.diffmoe.diffmoe_moe_dynamic(x, w_router, w1, w2, p, threshold)
    k = (_scores(x, p) > threshold).sum(axis=0)                  # (E,)
    np.testing.assert_array_equal(np.asarray(routing["capacity"]), k)
    m = np.asarray(routing["assignment"]).reshape(b * s, e)
    np.testing.assert_array_equal(m.sum(axis=0), k)
    affinity = pool_affinity(x, w_router)[0]                     # (N, E)
    for j in range(e):
        if 0 < k[j] < b * s:
            chosen, rest = affinity[m[:, j] == 1, j], affinity[m[:, j] == 0, j]
            assert chosen.min() >= rest.max()                    # the top k_e by affinity


def test_threshold_zero_lets_every_token_through_and_one_none():
    """tau = 0: every expert takes the whole pool (E times the compute); tau = 1: nothing."""
    b, s, d, e, f = 2, 6, 4, 3, 5
    x, w_router, w1, w2, p = layer(0, b, s, d, e, f)
    for half in (ref, acc):
        out, r = half.diffmoe_moe_dynamic(x, w_router, w1, w2, p, np.zeros(e, np.float32))
        np.testing.assert_array_equal(np.asarray(r["capacity"]), np.full(e, b * s))
        assert int(r["slots"]) == b * s                           # the ceiling is the pool: nothing overflows
        pool = x.reshape(1, b * s, d)
        a = reference.routing.router_affinity(pool, w_router)[0]  # (N, E)
        dense = sum(a[:, [j]] * reference.primitives.feed_forward(pool[0], w1[j], w2[j]) for j in range(e))
        assert_close(np.asarray(out).reshape(b * s, d), dense)
        out, r = half.diffmoe_moe_dynamic(x, w_router, w1, w2, p, np.ones(e, np.float32))
        np.testing.assert_array_equal(np.asarray(r["capacity"]), np.zeros(e))
        np.testing.assert_array_equal(np.asarray(out), np.zeros_like(x))


@given(n=st.integers(1, 300), k=st.integers(0, 300))
def test_the_twin_runs_the_smallest_compiled_ceiling_that_holds_the_largest_capacity(n, k):
    """Ceilings 1, 2, 4, ... below N, then N: within 2x of max k_e, and never below it."""
    k = min(k, n)
    sizes = acc._ceilings(n)
    c = next(size for size in sizes if size >= k)
    assert sizes[-1] == n and all(b == 2 * a for a, b in zip(sizes[:-2], sizes[1:-1]))
    assert c >= k and (c <= max(1, 2 * k) or c == n)


def test_the_twin_computes_only_its_ceiling_of_slots():
    b, s, d, e, f = 4, 16, 8, 4, 16
    x, w_router, w1, w2, p = layer(3, b, s, d, e, f)
    scores = _scores(x, p)
    for quantile in (0.0, 0.5, 0.8, 0.95):
        threshold = np.quantile(scores, quantile, axis=0).astype(np.float32)  # about (1 - q) N tokens each
        _, r = acc.diffmoe_moe_dynamic(x, w_router, w1, w2, p, threshold)
        k = int(np.max(r["capacity"]))
        assert int(r["slots"]) == next(c for c in acc._ceilings(b * s) if c >= k)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------

X, WR, W1, W2, P = layer(0, 2, 4, 6, 3, 5)
TAU = np.full(3, 0.5, np.float32)
BAD = [
    (("diffmoe_moe", (X, WR, W1, W2, dict(P, w2=P["w2"][:, :2]), 1.0)), "predictor['w2']"),
    (("diffmoe_moe", (X, WR, W1, W2, {"w1": P["w1"]}, 1.0)), "predictor"),
    (("diffmoe_moe", (X, WR, W1, W2, P, 0.1)), "capacity_factor"),          # k = round(8 * 0.1 / 3) = 0
    (("diffmoe_moe", (X, WR, W1, W2, P, 4.0)), "capacity_factor"),          # k = 11 > N = 8
    (("diffmoe_moe", (X[0], WR, W1, W2, P, 1.0)), "x"),
    (("diffmoe_moe_dynamic", (X, WR, W1, W2, P, TAU[:2])), "threshold"),
    (("diffmoe_moe_dynamic", (X, WR, W1, W2, P, np.array([0.5, np.nan, 0.5], np.float32))), "threshold"),
    (("diffmoe_moe_dynamic", (X, WR, W1, W2, P, np.array([0.5, 1.5, 0.5], np.float32))), "threshold"),
    (("diffmoe_moe_dynamic", (X, WR, W1, W2, dict(P, b1=P["b1"][:3]), TAU)), "predictor['b1']"),
    (("update_threshold", (TAU, TAU[:2])), "kth_score"),
    (("update_threshold", (TAU, TAU, 1.5)), "decay"),
    (("predictor_loss", (np.zeros((4, 3), np.float32), np.full((4, 3), 0.5, np.float32))), "assignment"),
    (("predictor_loss", (np.zeros((4, 3), np.float32), np.zeros((4, 2), np.float32))), "assignment"),
    (("capacity_predictor", (X[..., :5], P)), "predictor['w1']"),
]


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("case, argument", BAD, ids=[f"{c[0]}-{a}-{i}" for i, (c, a) in enumerate(BAD)])
def test_bad_input_raises_a_value_error_starting_with_the_argument_name(half, case, argument):
    name, args = case
    with pytest.raises(ValueError) as info:
        getattr(half.diffmoe, name)(*args)
    assert str(info.value).startswith(argument + ":"), str(info.value)


def test_the_accelerated_dynamic_layer_compiles_once_per_shape():
    fn = accelerated.diffmoe.diffmoe_moe_dynamic
    fn(X, WR, W1, W2, P, TAU)
    before = fn.trace_count()
    fn(X + 1, WR, W1, W2, P, np.full(3, 0.9, np.float32))       # other values, other k_e: the same program
    assert fn.trace_count() == before
