"""DiffMoE's pool size (ModelConfig.pool_images): a batch of B images routed as B / pool_images
pools, each choosing its own top-k, with q_e (the thresholds' target) averaged over the pools.
With pool_images = the images a device holds this is the official code's per-device pool; as a
config field it is a property of the model, so one device computes what a mesh computes
(tests/mesh_checks.py runs it expert-parallel, one pool per device).

The small DiffMoE test model (tests/test_diffmoe_model.BATCH: 16 tokens per image, one sparse
layer of 4 experts, f_c = 1) with pool_images = 2 on batches of 4 images.
"""
import numpy as np
import pytest
from hypothesis import assume, given

from ecdit import accelerated as A
from ecdit import reference as R
from ecdit.systems import optim
from ecdit.systems import train as T
from tests.helpers import seeds, small_config, small_train, topc_margin
from tests.test_diffmoe_model import (BATCH, E, compare_routing, dynamic_margins_hold, inputs, model,
                                      sparse_layer_pools, thresholds_at_ranks, with_thresholds)
from tests.tolerances import EXACT, MEANINGFULLY_DIFFERENT, NEAR_TIE, assert_close

POOLED = BATCH.replace(pool_images=2)


def halves(arrays, lo, hi):
    return [a[lo:hi] for a in arrays]


def pooled_model_and_inputs(seed, dynamic):
    """POOLED's parameters and 4 images; for dynamic capacity each threshold at its expert's median
    predictor score over both pools (about half of each pool passes)."""
    params, x = model(POOLED, seed), inputs(POOLED, 4, seed=seed)
    if dynamic:
        _, scores = sparse_layer_pools(params, *x, POOLED)
        params = with_thresholds(params, [np.median(scores.reshape(-1, E), axis=0).astype(np.float32)])
    return params, x


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_pools_of_two_images_route_each_pair_as_a_batch_of_its_own(dynamic):
    """forward on 4 images with pool_images = 2 equals forward on images 0-1 and on images 2-3
    as separate one-pool batches (velocity and every per-token record); its kth_score is the mean
    of the two batches' (q_e averaged over pools). The routing is compared exactly; the float
    values within FLOAT32, not bit for bit: NumPy's matmul on 4 images and on 2 need not sum in
    the same order (OpenBLAS picks its kernel by size: bit-equal on an Intel Xeon, 1.9e-6 apart
    on an AMD EPYC)."""
    params, x = pooled_model_and_inputs(1, dynamic)
    v, r = R.model.forward(params, *x, POOLED, dynamic=dynamic)
    parts = [R.model.forward(params, *halves(x, lo, lo + 2), BATCH, dynamic=dynamic) for lo in (0, 2)]
    assert_close(v, np.concatenate([p[0] for p in parts]))
    for key in ("experts_per_token", "assignment"):
        assert_close(r[1][key], np.concatenate([p[1][1][key] for p in parts]), tol=EXACT, err_msg=key)
    assert_close(r[1]["predictor_logits"], np.concatenate([p[1][1]["predictor_logits"] for p in parts]))
    if dynamic:
        np.testing.assert_array_equal(r[1]["capacity"], np.concatenate([p[1][1]["capacity"] for p in parts]))
    else:
        assert_close(r[1]["kth_score"], (parts[0][1][1]["kth_score"] + parts[1][1][1]["kth_score"]) / 2)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_an_images_output_depends_on_exactly_the_other_image_of_its_pool(dynamic):
    """Replace image j of 4: image 0's velocity changes for j = 1 (its pool partner) and is bit for
    bit the same for j = 2, 3 (the other pool)."""
    params, x = pooled_model_and_inputs(6, dynamic)
    base, _ = R.model.forward(params, *x, POOLED, dynamic=dynamic)
    other = inputs(POOLED, 4, seed=7)
    for j in (1, 2, 3):
        changed = [a.copy() for a in x]
        for a, b in zip(changed, other):
            a[j] = b[j]
        v, _ = R.model.forward(params, *changed, POOLED, dynamic=dynamic)
        if j == 1:
            assert np.abs(v[0] - base[0]).max() > MEANINGFULLY_DIFFERENT
        else:
            assert_close(v[0], base[0], tol=EXACT, err_msg=str(j))


@given(seed=seeds)
def test_forward_with_pools_of_images_matches_reference_static_and_dynamic(seed):
    params = model(POOLED, seed % 2**16)
    x = inputs(POOLED, 4, seed)
    affinity, scores = sparse_layer_pools(params, *x, POOLED)
    g, n, _ = affinity.shape
    assert g == 2
    k = POOLED.capacity(n)
    assume(topc_margin(affinity, k) > NEAR_TIE)
    v_r, r_r = R.model.forward(params, *x, POOLED)
    v_a, r_a = A.model.forward(params, *x, POOLED)
    assert_close(v_a, v_r)
    compare_routing(r_a[1], r_r[1], ("index", "assignment", "experts_per_token"),
                    ("gating", "predictor_logits", "kth_score"))
    tau = thresholds_at_ranks(scores, g * np.array([k // 2, k + k // 2, k - 1, k + 1]))
    assume(dynamic_margins_hold(affinity, scores, tau))
    params = with_thresholds(params, [tau])
    v_r, r_r = R.model.forward(params, *x, POOLED, dynamic=True)
    v_a, r_a = A.model.forward(params, *x, POOLED, dynamic=True)
    assert_close(v_a, v_r)
    compare_routing(r_a[1], r_r[1], ("capacity", "assignment", "experts_per_token"), ("predictor_logits",))


@pytest.mark.parametrize("half", [R, A], ids=["reference", "accelerated"])
def test_a_batch_no_larger_than_a_pool_is_one_pool(half):
    """Sampling two prompts with pool_images = 4: the batch is the pool, as without the field."""
    params = model(BATCH, 2)
    x = inputs(BATCH, 2, seed=2)
    v, _ = half.model.forward(params, *x, BATCH.replace(pool_images=4))
    assert_close(v, half.model.forward(params, *x, BATCH)[0], tol=EXACT)


@pytest.mark.parametrize("half", [R, A], ids=["reference", "accelerated"])
def test_pools_that_do_not_divide_the_batch_are_a_value_error_naming_pool_images(half):
    params = model(POOLED, 0)
    with pytest.raises(ValueError, match="^pool_images"):
        half.model.forward(params, *inputs(POOLED, 3), POOLED)


@pytest.mark.parametrize("kind, value", [("diffmoe", 0), ("diffmoe", 1.5), ("diffmoe", True),
                                         ("expert_choice", 2), ("token_choice", 2), ("dense", 2)])
def test_a_bad_pool_size_is_a_value_error_naming_pool_images(kind, value):
    with pytest.raises(ValueError, match="^pool_images"):
        small_config(kind, capacity_factor=1.0, pool_images=value)


def test_a_train_step_with_pools_moves_the_thresholds_toward_the_mean_of_the_pools_kth_scores():
    """One step from tau = 0 with decay d = 0.5: tau = (1 - d) q, q the reference training loss's
    k-th scores, which the first test shows are the mean over the batch's pools."""
    tc = small_train(batch_size=4, mask_ratio=0.0)
    cfg = POOLED.replace(threshold_decay=0.5)
    params = model(cfg, 3)
    batch = T.make_batch(0, 0, cfg, tc)
    state, _ = T.train_step(optim.init_state(params, tc), batch, cfg, tc, None)
    _, aux = R.objective.training_loss(params, batch, cfg, tc)
    tau = np.asarray(state["params"]["blocks"][1]["diffmoe"]["threshold"])
    assert_close(tau, 0.5 * np.asarray(aux["kth_score"][0]))


def test_training_with_pools_that_do_not_divide_the_batch_stops_before_the_first_step(tmp_path):
    with pytest.raises(ValueError, match="^pool_images: 3 images per pool do not divide a batch of 4"):
        T.train(BATCH.replace(pool_images=3), small_train(batch_size=4), 1, str(tmp_path), progress=False)
    assert not (tmp_path / "metrics.jsonl").exists()
