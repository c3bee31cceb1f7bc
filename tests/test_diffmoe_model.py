"""DiffMoE in the model (docs/diffmoe.md): the capacity predictor's layers inside the DiT, its loss
in training, the thresholds as training state and in checkpoints, classifier-free guidance with a
batch pool, dynamic-capacity sampling and its refusals, the three pools (per image, per routing
group spanning images, the whole batch), the counter and the config.

Three pool configurations of the small test model (tests/helpers.small_config: 16 tokens per image,
one sparse layer of 4 experts) run through the file, so equal configs reuse one compiled program:

    PER_IMAGE  expert choice + capacity predictor, one pool per image (train_group_size None)
    PER_GROUP  expert choice + capacity predictor, routing groups of 2 S tokens (two images)
    BATCH      DiffMoE, one pool holding the batch (f_c = 1, DiffMoE's own)

Dynamic-capacity comparisons place each threshold midway between two adjacent predictor scores,
so the experts take chosen numbers of tokens, some fewer and some more than the static k, and skip
draws where a score sits within NEAR_THRESHOLD of a threshold or two affinities within NEAR_TIE of
an expert's capacity line (where float32 rounding could legitimately count differently).
"""
import warnings

import jax
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from ecdit import accelerated as A
from ecdit import reference as R
from ecdit.core.config import DIFFMOE_CAPACITY_FACTOR, preset
from ecdit.core.params import count, count_params, init_model, predictor_kind, randomize_zero_init
from ecdit.systems import checkpoint as C
from ecdit.systems import optim, sampling, text
from ecdit.systems import train as T
from tests.helpers import block_router_input, seeds, small_config, small_train, topc_margin
from tests.test_diffmoe import NEAR_THRESHOLD
from tests.tolerances import (ARITHMETIC, EXACT, FLOAT32, FLOAT32_LOSS, FLOAT32_MEAN, FLOAT32_ULP,
                              MEANINGFULLY_DIFFERENT, NEAR_TIE, SAMPLER, assert_close)

DECAY = 0.5                                 # tau_1 = (1 - d) q: a step's k-th scores show through the EMA
PER_IMAGE = small_config(capacity_predictor=True, threshold_decay=DECAY)
PER_GROUP = small_config(capacity_predictor=True, threshold_decay=DECAY, train_group_size=32, inference_group_size=32)
BATCH = small_config("diffmoe", capacity_factor=DIFFMOE_CAPACITY_FACTOR, threshold_decay=DECAY)
BATCH_DEEP = small_config("diffmoe", capacity_factor=DIFFMOE_CAPACITY_FACTOR, depth=4)  # two predictor layers
NO_PREDICTOR = small_config()
DENSE = small_config("dense")
TC = small_train(ema_decay=0.5)             # masks half the tokens, clips, keeps an EMA: the whole state
E = BATCH.num_experts

POOLS = [pytest.param(PER_IMAGE, id="per_image"), pytest.param(PER_GROUP, id="per_group"),
         pytest.param(BATCH, id="batch")]
PREDICTOR_MODELS = [pytest.param(BATCH, id="diffmoe"), pytest.param(PER_IMAGE, id="expert_choice+predictor")]
PROMPTS = ["a red circle", "two squares"]
SAMPLING = dict(seed=0, num_steps=2, guidance_scale=3.0, batch_size=2, progress=False)


# ---------------------------------------------------------------------------------------------
# Inputs, thresholds, and the reference's view of the sparse layer's pools
# ---------------------------------------------------------------------------------------------

def inputs(cfg, b=3, seed=0):
    """Noisy images (B, I, I, Ch), timesteps (B,), captions (B, L) x2."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, cfg.image_size, cfg.image_size, cfg.channels)).astype(np.float32)
    t = rng.uniform(0.05, 0.95, size=b).astype(np.float32)
    captions = ["a red circle", "", "two squares", "a cross above a ring", "a blue ring", "a cyan diamond"]
    ids, mask = text.tokenize_batch([captions[i] for i in rng.permutation(len(captions))[:b]], cfg.max_text_len)
    return x, t, ids, mask


def model(cfg, seed=0):
    """Parameters with the zero-initialised AdaLN and final layers filled (at 0.3, so the MoE path
    moves the velocity by more than rounding), so no path is muted."""
    return randomize_zero_init(init_model(cfg, seed), seed, scale=0.3)


def with_thresholds(params, taus):
    """A copy of params whose layers with a capacity predictor hold taus[l] (E,), in layer order."""
    blocks, row = [], 0
    for block in params["blocks"]:
        kind = predictor_kind(block)
        if kind is not None:
            block = dict(block, **{kind: dict(block[kind], threshold=np.asarray(taus[row], np.float32))})
            row += 1
        blocks.append(block)
    assert row == len(taus)
    return dict(params, blocks=blocks)


def thresholds_of(params):
    return [np.asarray(tau) for tau in sampling.thresholds(params)]


def sparse_layer_pools(params, x, t, ids, mask, cfg, group_size=None):
    """The reference's view of the one sparse layer (block 1) of a two-block model, rebuilt from its
    parts: router affinities and predictor scores sigmoid(P), each (G, N, E) over the layer's pools
    (an image, a routing group of group_size tokens, or DiffMoE's pools: the batch or pool_images)."""
    assert cfg.sparse_layers == (1,) and not cfg.pooled_text
    tokens = R.model.embed_patches(x, params, cfg)                               # (B, S, D)
    c = R.model.timestep_condition(t, params["t_mlp"], cfg)                      # (B, D)
    y = R.model.text_encoder(ids, mask, params["text"], cfg.text_heads)          # (B, L, Dy)
    tokens, _ = R.model.model_block(tokens, c, y, params["blocks"][0], cfg, group_size, mask)
    _, _, x_p = block_router_input(tokens, c, y, params["blocks"][1], cfg.num_heads, cfg.num_kv_heads, mask)
    moe = params["blocks"][1][cfg.ffn_kind]
    b, s, _ = x_p.shape
    pool = (cfg.pool_tokens(b, s) or b * s) if cfg.ffn_kind == "diffmoe" else (group_size or s)
    grouped = R.routing.group_tokens(x_p, pool)                                  # (G, N, D)
    logits = R.diffmoe.capacity_predictor(grouped, moe["predictor"]).astype(np.float64)
    return R.routing.router_affinity(grouped, moe["w_router"]), 1.0 / (1.0 + np.exp(-logits))


def thresholds_at_ranks(scores, ranks):
    """(E,) thresholds passing exactly ranks[e] of expert e's scores over all pools: midway between
    its ranks[e]-th and (ranks[e] + 1)-th largest (1 above the largest, 0 below the smallest)."""
    s = -np.sort(-scores.reshape(-1, scores.shape[-1]), axis=0)                 # (G N, E) descending
    m, cols = s.shape[0], np.arange(s.shape[1])
    ranks = np.asarray(ranks)
    upper = np.where(ranks > 0, s[np.clip(ranks - 1, 0, m - 1), cols], 1.0)
    lower = np.where(ranks < m, s[np.clip(ranks, 0, m - 1), cols], 0.0)
    return ((upper + lower) / 2).astype(np.float32)


def capacity_margin(affinity, capacity):
    """Smallest gap, over pools g and experts e, between the k_ge-th and (k_ge + 1)-th largest
    affinity of expert e in pool g (only where 0 < k_ge < pool size; inf if there is none)."""
    a = -np.sort(-np.swapaxes(np.asarray(affinity, np.float64), 1, 2), axis=-1)  # (G, E, N) descending
    n = a.shape[-1]
    gaps = [a[g, e, k - 1] - a[g, e, k] for (g, e), k in np.ndenumerate(capacity) if 0 < k < n]
    return min(gaps, default=np.inf)


def dynamic_margins_hold(affinity, scores, tau):
    """True when no score sits near a threshold and no affinity pair near a capacity line."""
    capacity = (scores > tau).sum(axis=1)                                        # (G, E)
    return np.abs(scores - tau).min() > NEAR_THRESHOLD and capacity_margin(affinity, capacity) > NEAR_TIE


def compare_routing(acc, ref, exact, close):
    for key in exact:
        np.testing.assert_array_equal(np.asarray(acc[key]), ref[key], err_msg=key)
    for key in close:
        assert_close(acc[key], ref[key], err_msg=key)


# ---------------------------------------------------------------------------------------------
# 1. reference == accelerated
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", PREDICTOR_MODELS)
@given(seed=seeds)
def test_forward_with_a_capacity_predictor_matches_reference_static_and_dynamic(cfg, seed):
    """Static: expert choice per pool plus the predictor's logits and k-th scores. Dynamic: the
    thresholds placed so the experts take about k/2, 3k/2, k - 1 and k + 1 tokens per pool; the
    same capacities, assignments and velocity in both halves."""
    params = model(cfg, seed % 2**16)
    x, t, ids, mask = inputs(cfg, 3, seed)
    affinity, scores = sparse_layer_pools(params, x, t, ids, mask, cfg)
    g, n, _ = affinity.shape
    k = cfg.capacity(n)
    assume(topc_margin(affinity, k) > NEAR_TIE)
    v_r, r_r = R.model.forward(params, x, t, ids, mask, cfg)
    v_a, r_a = A.model.forward(params, x, t, ids, mask, cfg)
    assert_close(v_a, v_r)
    compare_routing(r_a[1], r_r[1], ("index", "assignment", "experts_per_token"),
                    ("gating", "predictor_logits", "kth_score"))

    tau = thresholds_at_ranks(scores, g * np.array([k // 2, k + k // 2, k - 1, k + 1]))
    assume(dynamic_margins_hold(affinity, scores, tau))
    capacity = (scores > tau).sum(axis=1)                                        # (G, E)
    assert capacity.min() < k < capacity.max()                                  # fewer and more than k
    params = with_thresholds(params, [tau])
    v_r, r_r = R.model.forward(params, x, t, ids, mask, cfg, dynamic=True)
    v_a, r_a = A.model.forward(params, x, t, ids, mask, cfg, dynamic=True)
    np.testing.assert_array_equal(r_r[1]["capacity"], capacity)
    assert_close(v_a, v_r)
    compare_routing(r_a[1], r_r[1], ("capacity", "assignment", "experts_per_token"), ("predictor_logits",))


@pytest.fixture(scope="module")
def diffmoe_gradients():
    """value_and_grad of the twin's training_loss at predictor_loss_weight 0 and 1, one batch; both
    in one compiled program (jax.jit around jax.grad compiles once, where jax.grad around the
    jitted loss compiles its forward and backward halves apart, at twice the time)."""
    params, batch = model(BATCH, 4), T.make_batch(0, 4, BATCH, TC)
    configs = {w: BATCH.replace(predictor_loss_weight=w) for w in (0.0, 1.0)}

    def both(p):
        return {w: jax.value_and_grad(lambda q, c=cfg: A.objective.training_loss(q, batch, c, TC), has_aux=True)(p)
                for w, cfg in configs.items()}
    return params, batch, configs, jax.jit(both)(params)


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_training_loss_of_a_diffmoe_model_matches_reference(diffmoe_gradients, weight):
    """The twin's training_loss as the training step differentiates it: loss, flow and predictor
    losses, the routing statistics and each predictor layer's k-th scores (n, E)."""
    params, batch, configs, results = diffmoe_gradients
    (loss_a, m_a), _ = results[weight]
    loss_r, m_r = R.objective.training_loss(params, batch, configs[weight], TC)
    assert sorted(m_a) == sorted(m_r)
    assert m_r["kth_score"].shape == (len(BATCH.sparse_layers), E)
    assert_close(loss_a, loss_r, tol=FLOAT32_LOSS)
    assert_close(m_a["predictor_loss"], m_r["predictor_loss"], tol=FLOAT32_LOSS)
    for key in m_r:
        assert_close(m_a[key], m_r[key], err_msg=key)


@given(seed=seeds, decay=st.sampled_from([0.0, 0.5, 0.95]))
def test_update_thresholds_matches_reference_and_moves_only_the_thresholds(seed, decay):
    """Row l of kth_score (n, E) moves the l-th predictor layer's tau to its EMA; every other array
    of params is passed through untouched."""
    cfg = BATCH_DEEP.replace(threshold_decay=decay)
    rng = np.random.default_rng(seed)
    old = rng.random((2, E)).astype(np.float32)
    q = rng.random((2, E)).astype(np.float32)
    params = with_thresholds(init_model(cfg, 0), old)
    new_r = R.objective.update_thresholds(params, q, cfg)
    new_a = A.objective.update_thresholds(params, q, cfg)
    for layer, tau_r, tau_a in zip((0, 1), thresholds_of(new_r), thresholds_of(new_a)):
        assert_close(tau_r, decay * old[layer] + (1 - decay) * q[layer], tol=FLOAT32_ULP)
        assert_close(tau_a, tau_r, tol=FLOAT32_ULP)
    moved = {id(tau) for tau in sampling.thresholds(params)}
    for before, after in zip(jax.tree.leaves(params), jax.tree.leaves(new_r)):
        if id(before) not in moved:
            assert after is before


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_guided_velocity_of_a_diffmoe_model_matches_reference(dynamic):
    """CFG with the halves as two pools, static top-k or dynamic capacity (thresholds placed as
    above, checked clear of both pools' scores and capacity lines): the same v and expert counts."""
    params = model(BATCH, 2)
    x, t, ids, mask = inputs(BATCH, 3, seed=2)
    null_ids, null_mask = R.model.null_caption(*ids.shape)
    cond = sparse_layer_pools(params, x, t, ids, mask, BATCH)                    # the two pools CFG runs
    null = sparse_layer_pools(params, x, t, null_ids, null_mask, BATCH)
    k = BATCH.capacity(3 * BATCH.num_tokens)
    if dynamic:
        tau = thresholds_at_ranks(cond[1], [k // 2, 2 * k, k - 1, k + 3])
        assert dynamic_margins_hold(*cond, tau) and dynamic_margins_hold(*null, tau), "pick another seed"
        params = with_thresholds(params, [tau])
    else:
        assert min(topc_margin(cond[0], k), topc_margin(null[0], k)) > NEAR_TIE, "pick another seed"
    v_r, e_r = R.sample.guided_velocity(params, x, t, ids, mask, BATCH, 4.0, None, dynamic)
    v_a, e_a = A.sample.guided_velocity(params, x, t, ids, mask, BATCH, 4.0, None, dynamic)
    assert_close(v_a, v_r)
    np.testing.assert_array_equal(np.asarray(e_a), e_r)


# ---------------------------------------------------------------------------------------------
# 2. The predictor loss in training: weighted in, and no gradient outside the predictor
# ---------------------------------------------------------------------------------------------

@given(seed=seeds, weight=st.floats(0.0, 10.0))
def test_training_loss_is_flow_plus_weighted_sum_of_each_layers_predictor_loss(seed, weight):
    """loss = Eq. 1 + w sum_l BCE(P_l, M_l) with P_l, M_l the logits and assignment of forward's
    routing in layer l (two predictor layers); no aux term for expert choice; w = 0: Eq. 1 alone."""
    cfg = BATCH_DEEP.replace(predictor_loss_weight=weight)
    params = model(cfg, seed % 2**16)
    batch = T.make_batch(seed, 0, cfg, TC)
    t = R.flow.logit_normal_timesteps(batch["z"], TC.t_mu, TC.t_sigma)
    ids, mask = R.objective.caption_dropout(batch["text_ids"], batch["text_mask"], batch["drop"])
    x_t = R.flow.interpolate(batch["x0"], batch["noise"], t)
    v, routing = R.model.forward(params, x_t, t, ids, mask, cfg, batch["keep_index"])
    target = R.model.patchify(batch["noise"] - batch["x0"], cfg.patch_size)
    target = np.take_along_axis(target, batch["keep_index"][..., None], axis=1)  # kept tokens only
    flow = np.mean((target - v) ** 2)
    layers = [routing[layer] for layer in cfg.sparse_layers]
    assert len(layers) == 2
    pred = sum(R.diffmoe.predictor_loss(r["predictor_logits"], r["assignment"]) for r in layers)

    loss, metrics = R.objective.training_loss(params, batch, cfg, TC)
    assert_close(metrics["flow_loss"], flow, tol=FLOAT32_MEAN)
    assert_close(metrics["predictor_loss"], pred, tol=EXACT)
    assert_close(metrics["aux_loss"], 0.0, tol=EXACT)
    assert_close(loss, metrics["flow_loss"] + weight * pred, tol=ARITHMETIC)
    np.testing.assert_array_equal(metrics["kth_score"], np.stack([r["kth_score"] for r in layers]))
    loss0, metrics0 = R.objective.training_loss(params, batch, cfg.replace(predictor_loss_weight=0.0), TC)
    assert_close(loss0, metrics0["flow_loss"], tol=EXACT)
    assert_close(metrics0["flow_loss"], metrics["flow_loss"], tol=EXACT)


def _is_predictor(path):
    return any(getattr(k, "key", None) == "predictor" for k in path)


def _is_threshold(path):
    return any(getattr(k, "key", None) == "threshold" for k in path)


def test_the_predictor_loss_weight_changes_no_gradient_outside_the_predictor(diffmoe_gradients):
    """The predictor reads a stop-gradient copy of the router input: jax.grad of the twin's
    training_loss at weight 0 and 1 is bit for bit the same for every non-predictor array, the
    predictor's arrays get a gradient only at weight 1, and the thresholds never get one."""
    _, _, _, results = diffmoe_gradients
    leaves0 = jax.tree_util.tree_flatten_with_path(results[0.0][1])[0]
    leaves1 = jax.tree.leaves(results[1.0][1])
    assert sum(_is_predictor(path) for path, _ in leaves0) == 4               # w1, b1, w2, b2
    for (path, g0), g1 in zip(leaves0, leaves1):
        name = jax.tree_util.keystr(path)
        g0, g1 = np.asarray(g0), np.asarray(g1)
        if _is_predictor(path):
            assert not g0.any() and np.abs(g1).max() > 0, name
        elif _is_threshold(path):
            assert not g0.any() and not g1.any(), name
        else:
            np.testing.assert_array_equal(g1, g0, err_msg=name)
    some_flow_gradient = max(np.abs(np.asarray(g)).max() for (path, g) in leaves0 if not _is_predictor(path))
    assert some_flow_gradient > 0


# ---------------------------------------------------------------------------------------------
# 3. Thresholds are training state: an EMA of each step's k-th scores, never optimised
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=POOLS)
def two_steps(request):
    """Two training steps (`train_step`, the config's group size) from thresholds of 0, with the
    batches they saw and the state before each."""
    cfg = request.param
    states = [optim.init_state(model(cfg, 0), TC)]
    batches = [T.make_batch(TC.seed, i, cfg, TC) for i in range(2)]
    metrics = []
    for batch in batches:
        state, m = T.run_step(states[-1], batch, cfg, TC)
        states.append(state)
        metrics.append(m)
    return cfg, states, batches, metrics


def test_train_step_moves_each_threshold_to_the_ema_of_its_batchs_kth_score(two_steps):
    """After each step, tau = d tau_old + (1 - d) q, q the k-th scores of the reference training_loss
    on the step's params and batch; the step's loss is that loss; the optimiser saw no gradient for
    tau (its RMS accumulator stays 0). From tau = 0 the first step moves tau off zero."""
    cfg, states, batches, metrics = two_steps
    assert not any(tau.any() for tau in thresholds_of(states[0]["params"]))
    for before, after, batch, m in zip(states, states[1:], batches, metrics):
        params = jax.tree.map(np.asarray, before["params"])
        loss, ref = R.objective.training_loss(params, batch, cfg, TC, cfg.train_group_size)
        assert "kth_score" not in m                                              # state, not a metric
        assert_close(m["loss"], loss, tol=FLOAT32_LOSS)
        assert_close(m["predictor_loss"], ref["predictor_loss"], tol=FLOAT32_LOSS)
        for old, new, q in zip(thresholds_of(before["params"]), thresholds_of(after["params"]), ref["kth_score"]):
            assert_close(new, R.diffmoe.update_threshold(old, q, cfg.threshold_decay))
    assert all(tau.min() > 0 for tau in thresholds_of(states[1]["params"]))
    rms = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(states[2]["opt_state"])[0] if _is_threshold(path)]
    assert rms and not any(np.asarray(leaf).any() for leaf in rms)


# ---------------------------------------------------------------------------------------------
# 4. Checkpoints: thresholds and predictor round trip; a resumed run equals an unstopped one
# ---------------------------------------------------------------------------------------------

def test_a_diffmoe_checkpoint_round_trips_the_predictor_and_thresholds_bit_for_bit(tmp_path):
    params = with_thresholds(model(BATCH, 5), [np.array([0.1, 0.25, 0.5, 0.75], np.float32)])
    state = optim.init_state(params, TC)
    path = C.save_train_state(str(tmp_path / "c"), state, BATCH, TC)
    assert {"params/blocks/1/diffmoe/threshold", "params/blocks/1/diffmoe/predictor/w1",
            "ema/blocks/1/diffmoe/threshold"} <= set(C.read_meta(path)["arrays"])
    restored, cfg, _, _ = C.load_train_state(path)
    loaded, _, meta = C.load_params(path)
    assert cfg == BATCH and meta["weights"] == "ema"
    for x, y, z in zip(jax.tree.leaves(params), jax.tree.leaves(restored["params"]), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(np.asarray(y), x)
        np.testing.assert_array_equal(z, x)


def test_a_stopped_and_resumed_diffmoe_run_equals_an_unstopped_run(tmp_path):
    """4 steps straight == 2 steps, checkpoint, reload, 2 more: params, thresholds, EMA and
    optimiser state bit for bit (thresholds are in the state, so the resumed EMA continues)."""
    straight, _ = T.train(BATCH, TC, 4, str(tmp_path / "a"), progress=False)
    T.train(BATCH, TC, 2, str(tmp_path / "b"), progress=False)
    resumed, _ = T.train(BATCH, TC, 4, str(tmp_path / "b"), progress=False)
    a, _, _, meta_a = C.load_train_state(str(tmp_path / "a"))
    b, _, _, meta_b = C.load_train_state(str(tmp_path / "b"))
    assert meta_a["step"] == meta_b["step"] == 4
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    for x, y, z in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), jax.tree.leaves(a["ema"])):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, np.asarray(z))
    for tau, tau_ema in zip(thresholds_of(a["params"]), thresholds_of(straight)):
        assert tau.min() > 0 and tau_ema.min() > 0                               # trained, and averaged
        assert not np.array_equal(tau, tau_ema)


# ---------------------------------------------------------------------------------------------
# 5. Dynamic sampling refuses what it cannot do right
# ---------------------------------------------------------------------------------------------

def test_dynamic_sampling_refuses_untrained_thresholds_and_warns_before_their_warm_up():
    fresh = model(BATCH, 0)                                                      # thresholds 0: every token passes
    with pytest.raises(ValueError, match="^thresholds"):
        sampling.generate(fresh, BATCH, PROMPTS, dynamic=True, **SAMPLING)
    images, _ = sampling.generate(fresh, BATCH, PROMPTS, **SAMPLING)            # static top-k never reads tau
    assert images.shape == (2, 16, 16, 3)
    warm = with_thresholds(fresh, [np.full(E, 0.5, np.float32)])
    steps = sampling.threshold_warmup_steps(BATCH.threshold_decay)
    assert steps == 5 and sampling.threshold_warmup_steps(0.95) == 59           # 0.5^5 < 0.05 <= 0.5^4
    with pytest.warns(UserWarning, match="^thresholds"):
        images, experts = sampling.generate(warm, BATCH, PROMPTS, dynamic=True, step=steps - 1, **SAMPLING)
    assert np.isfinite(images).all() and experts.shape == (2, 1, 2, BATCH.num_tokens)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sampling.check_thresholds(warm, BATCH, step=steps)
        sampling.check_thresholds(warm, BATCH)                                  # no step: nothing to judge


@pytest.mark.parametrize("cfg", [pytest.param(NO_PREDICTOR, id="expert_choice"), pytest.param(DENSE, id="dense")])
def test_dynamic_capacity_without_a_capacity_predictor_is_refused(cfg):
    params = model(cfg, 0)
    with pytest.raises(ValueError, match="^dynamic"):
        sampling.generate(params, cfg, PROMPTS, dynamic=True, step=1000, **SAMPLING)
    x, t, ids, mask = inputs(cfg, 2)
    for half in (R, A):
        with pytest.raises(ValueError, match="^dynamic"):
            half.model.forward(params, x, t, ids, mask, cfg, dynamic=True)
        with pytest.raises(ValueError, match="^dynamic"):
            half.sample.guided_velocity(params, x, t, ids, mask, cfg, 3.0, None, True)


@given(decay=st.sampled_from([0.0, 0.5, 0.95, 0.999]))
def test_threshold_warm_up_is_the_first_step_within_5_percent_for_every_allowed_decay(decay):
    """The smallest n with 1 - d^n >= 0.95, for every decay ModelConfig accepts ([0, 1))."""
    n = sampling.threshold_warmup_steps(decay)
    assert n >= 1 and 1 - decay ** n >= 0.95 and (n == 1 or 1 - decay ** (n - 1) < 0.95)


# ---------------------------------------------------------------------------------------------
# 6. Classifier-free guidance with a batch pool: two pools, the halves apart
# ---------------------------------------------------------------------------------------------

def _halves(params, x, t, ids, mask, cfg, dynamic):
    """(v_cond, v_null) from two separate forward calls, and v_cond from one joint batch of 2B."""
    null_ids, null_mask = R.model.null_caption(*ids.shape)
    v_cond = R.model.velocity(params, x, t, ids, mask, cfg, None, dynamic)
    v_null = R.model.velocity(params, x, t, null_ids, null_mask, cfg, None, dynamic)
    joint = R.model.velocity(params, np.concatenate([x, x]), np.concatenate([t, t]), np.concatenate([ids, null_ids]),
                             np.concatenate([mask, null_mask]), cfg, None, dynamic)
    return v_cond, v_null, joint[:len(x)]


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("half", [R, A], ids=["reference", "accelerated"])
def test_guidance_of_a_diffmoe_model_runs_the_conditional_and_null_halves_as_separate_pools(half, dynamic):
    """v = v_null + s (v_cond - v_null) with each half its own forward call of B images; one joint
    pool of 2B would change v_cond (the null predictions would compete for the experts' slots)."""
    params = with_thresholds(model(BATCH, 3), [np.full(E, 0.5, np.float32)])
    x, t, ids, mask = inputs(BATCH, 3, seed=3)
    if half is A:                                                               # the twin against the formula
        null_ids, null_mask = R.model.null_caption(*ids.shape)
        for pool in (sparse_layer_pools(params, x, t, ids, mask, BATCH),
                     sparse_layer_pools(params, x, t, null_ids, null_mask, BATCH)):
            k = BATCH.capacity(pool[0].shape[1])
            assert (dynamic_margins_hold(pool[0], pool[1], np.full(E, 0.5)) if dynamic
                    else topc_margin(pool[0], k) > NEAR_TIE), "pick another seed"
    v_cond, v_null, v_joint = _halves(params, x, t, ids, mask, BATCH, dynamic)
    v, _ = half.sample.guided_velocity(params, x, t, ids, mask, BATCH, 4.0, None, dynamic)
    assert_close(v, v_null + 4.0 * (v_cond - v_null), tol=EXACT if half is R else FLOAT32)
    assert np.abs(v_joint - v_cond).max() > MEANINGFULLY_DIFFERENT


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_guidance_with_per_image_pools_is_the_same_joint_or_separate(dynamic):
    """Expert choice with one pool per image: the joint batch of 2B and the two batches of B route
    every image alike, so both ways of running CFG give the same v."""
    params = with_thresholds(model(PER_IMAGE, 3), [np.full(E, 0.5, np.float32)])
    x, t, ids, mask = inputs(PER_IMAGE, 3, seed=3)
    v_cond, v_null, v_joint = _halves(params, x, t, ids, mask, PER_IMAGE, dynamic)
    v, _ = R.sample.guided_velocity(params, x, t, ids, mask, PER_IMAGE, 4.0, None, dynamic)
    assert_close(v_joint, v_cond)
    assert_close(v, v_null + 4.0 * (v_cond - v_null))


# ---------------------------------------------------------------------------------------------
# 7. The grid of pools: per image, per routing group spanning images, the whole batch
# ---------------------------------------------------------------------------------------------

def test_every_pool_trains_and_samples_static_and_dynamic_as_its_reference(two_steps):
    """After its training steps each configuration samples with static top-k and, its thresholds
    now off zero (still warming up: a warning), with dynamic capacity; generate's images are the
    reference sampler's from the same noise."""
    cfg, states, _, metrics = two_steps
    assert all(np.isfinite(float(m["loss"])) for m in metrics)
    params = jax.tree.map(np.asarray, states[-1]["params"])
    ids, mask = text.tokenize_batch(PROMPTS, cfg.max_text_len)
    noise = np.stack([sampling.sample_noise(np.random.default_rng([0, k]), 1, cfg)[0] for k in range(2)])
    for dynamic in (False, True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            images, experts = sampling.generate(params, cfg, PROMPTS, dynamic=dynamic, step=2, **SAMPLING)
        warned = [w for w in caught if str(w.message).startswith("thresholds:")]
        assert len(warned) == (1 if dynamic else 0)
        x, counts = R.sample.sample(params, noise, ids, mask, cfg, 2, 3.0, None, dynamic)
        assert_close(images, sampling.to_images(x), tol=SAMPLER)
        np.testing.assert_array_equal(experts, counts)


POOL_GRID = [pytest.param(PER_IMAGE, None, set(), id="per_image"),
             pytest.param(PER_GROUP, 2 * PER_GROUP.num_tokens, {1}, id="group_of_two_images"),
             pytest.param(BATCH, None, {1, 2, 3}, id="batch")]


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("cfg, group_size, partners", POOL_GRID)
def test_an_images_output_depends_on_exactly_the_images_of_its_pool(cfg, group_size, partners, dynamic):
    """Replace image j of a batch of 4 (its noise, timestep and caption): image 0's velocity
    changes iff j shares image 0's pool; otherwise it is bit for bit the same. Dynamic capacity
    with each threshold at its expert's median score (about half the pool passes)."""
    params = model(cfg, 6)
    x, t, ids, mask = inputs(cfg, 4, seed=6)
    if dynamic:
        _, scores = sparse_layer_pools(params, x, t, ids, mask, cfg, group_size)
        params = with_thresholds(params, [np.median(scores.reshape(-1, E), axis=0).astype(np.float32)])
    base, _ = R.model.forward(params, x, t, ids, mask, cfg, None, group_size, dynamic)
    other = inputs(cfg, 4, seed=7)
    for j in (1, 2, 3):
        changed = [a.copy() for a in (x, t, ids, mask)]
        for a, b in zip(changed, other):
            a[j] = b[j]
        v, _ = R.model.forward(params, *changed, cfg, None, group_size, dynamic)
        if j in partners:
            assert np.abs(v[0] - base[0]).max() > MEANINGFULLY_DIFFERENT, j
        else:
            assert_close(v[0], base[0], tol=EXACT, err_msg=str(j))


# ---------------------------------------------------------------------------------------------
# 8. The parameter counter
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [pytest.param(BATCH, id="diffmoe"), pytest.param(PER_IMAGE, id="expert_choice+predictor"),
                                 pytest.param(BATCH_DEEP.replace(pos_embedding="learned", pooled_text=True),
                                              id="diffmoe_deep")])
def test_the_counter_counts_every_initialised_array_predictor_and_thresholds_included(cfg):
    c, params = count_params(cfg), init_model(cfg, 0)
    assert c["total"] + c["text_encoder"] == count(params)
    assert c["text_encoder"] == count(params["text"])
    d = cfg.width
    predictor = d * d + d + d * E + E
    without = count_params(cfg.replace(ffn_kind="expert_choice", capacity_predictor=False))["total"]
    assert c["total"] == without + len(cfg.sparse_layers) * (predictor + E)


@pytest.mark.parametrize("changes", [dict(kind="diffmoe"), dict(capacity_predictor=True)], ids=["diffmoe", "expert_choice+predictor"])
def test_static_activated_parameters_at_capacity_factor_one_are_the_dense_models_plus_the_routers(changes):
    cfg = small_config(**changes, capacity_factor=1.0, depth=4)
    dense = small_config("dense", depth=4)
    assert count_params(cfg)["activated"] == count_params(dense)["activated"] + 2 * cfg.width * cfg.num_experts


@given(x=st.floats(0.0, 4.0), y=st.floats(0.0, 4.0))
def test_activated_parameters_grow_linearly_in_the_measured_experts_per_token(x, y):
    """Each measured expert per token adds one expert FFN (2 D F) per sparse layer; a measurement
    also counts the predictor (dynamic inference runs it for every token)."""
    cfg = BATCH_DEEP
    def activated(v):
        return count_params(cfg, experts_per_token=v)["activated"]
    expert = 2 * cfg.width * cfg.ffn_hidden
    assert abs(activated(x) - activated(0.0) - 2 * x * expert) <= 1             # int(round(.)) of each
    assert abs(activated([x, y]) - activated(0.0) - (x + y) * expert) <= 1
    for n in range(5):
        assert activated(n) - activated(0) == 2 * n * expert
    predictor = cfg.width ** 2 + cfg.width + cfg.width * E + E
    assert activated(cfg.capacity_factor) == count_params(cfg)["activated"] + 2 * predictor


# ---------------------------------------------------------------------------------------------
# 9. Config
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, field, value", [
    ("token_choice", "capacity_predictor", True), ("dense", "capacity_predictor", True),
    ("diffmoe", "threshold_decay", 1.0), ("diffmoe", "threshold_decay", -0.1), ("diffmoe", "threshold_decay", 1.5),
    ("diffmoe", "threshold_decay", float("nan")), ("diffmoe", "predictor_loss_weight", -1.0),
    ("expert_choice", "predictor_loss_weight", float("inf")), ("diffmoe", "capacity_predictor", 1),
])
def test_a_bad_predictor_setting_is_a_value_error_naming_the_field(kind, field, value):
    with pytest.raises(ValueError, match=f"^{field}"):
        small_config(kind, capacity_factor=1.0, **{field: value})


def test_the_diffmoe_preset_defaults_to_capacity_factor_one_and_keeps_an_explicit_one():
    assert preset("tiny", ffn_kind="diffmoe").capacity_factor == DIFFMOE_CAPACITY_FACTOR == 1.0
    assert preset("tiny", ffn_kind="diffmoe", capacity_factor=2.0).capacity_factor == 2.0
    assert preset("tiny").capacity_factor == 2.0                                # expert choice keeps the paper's
    assert preset("tiny", ffn_kind="diffmoe").has_predictor
    assert preset("tiny", capacity_predictor=True).has_predictor and not preset("tiny").has_predictor


# ---------------------------------------------------------------------------------------------
# 10. Bad thresholds at the model level
# ---------------------------------------------------------------------------------------------

BAD_THRESHOLDS = [
    pytest.param(np.full(E - 1, 0.5, np.float32), id="too_short"),
    pytest.param(np.full(E + 1, 0.5, np.float32), id="too_long"),
    pytest.param(np.array([0.5, np.nan, 0.5, 0.5], np.float32), id="nan"),
    pytest.param(np.array([0.5, np.inf, 0.5, 0.5], np.float32), id="inf"),
    pytest.param(np.array([0.5, 1.5, 0.5, 0.5], np.float32), id="above_one"),
]


def _block_inputs(seed=0, b=3):
    rng = np.random.default_rng(seed)
    d, dy = BATCH.width, BATCH.text_width
    x = rng.standard_normal((b, BATCH.num_tokens, d)).astype(np.float32)
    c = rng.standard_normal((b, d)).astype(np.float32)
    y = rng.standard_normal((b, BATCH.max_text_len, dy)).astype(np.float32)
    return x, c, y


@pytest.mark.parametrize("call", ["dit_block", "forward"])
@pytest.mark.parametrize("half", [R, A], ids=["reference", "accelerated"])
@pytest.mark.parametrize("tau", BAD_THRESHOLDS)
def test_bad_thresholds_in_params_are_a_value_error_naming_threshold(tau, half, call):
    params = with_thresholds(model(BATCH, 0), [tau])
    x, t, ids, mask = inputs(BATCH, 3)
    with pytest.raises(ValueError, match="^threshold:"):
        if call == "dit_block":
            half.blocks.dit_block(*_block_inputs(), params["blocks"][1], BATCH.num_heads, BATCH.num_kv_heads,
                                  BATCH.capacity_factor, None, mask, BATCH.num_selected, True)
        else:
            half.model.forward(params, x, t, ids, mask, BATCH, dynamic=True)
