"""The training objective: specified in reference/objective.py (Eq. 1 on the kept tokens, caption
dropout, the token-choice aux loss) and equal in the twin that the training step differentiates."""
import numpy as np
import pytest

from ecdit.accelerated import model as AM
from ecdit.accelerated import objective as A
from ecdit.core.params import init_model, randomize_zero_init
from ecdit.reference import flow as RF
from ecdit.reference import model as RM
from ecdit.reference import objective as R
from ecdit.systems import text
from ecdit.systems.train import make_batch
from tests.helpers import small_config, small_train
from tests.tolerances import ARITHMETIC, FLOAT32_LOSS, FLOAT32_MEAN, approx, assert_close

KINDS = ("dense", "expert_choice", "token_choice")


def _setup(kind="expert_choice", step=3, **train_changes):
    cfg, tc = small_config(kind), small_train(**{"mask_ratio": 0.5, "caption_dropout": 0.5, **train_changes})
    params = randomize_zero_init(init_model(cfg, 1))
    return cfg, tc, params, make_batch(0, step, cfg, tc)


@pytest.mark.parametrize("kind,weighting", [(k, "velocity") for k in KINDS] + [("expert_choice", "x0")])
def test_accelerated_training_loss_matches_reference(kind, weighting):
    cfg, tc, params, batch = _setup(kind, loss_weighting=weighting)
    loss_r, m_r = R.training_loss(params, batch, cfg, tc)
    loss_a, m_a = A.training_loss(params, batch, cfg, tc)
    assert_close(loss_a, loss_r, tol=FLOAT32_LOSS)
    assert sorted(m_a) == sorted(m_r)
    for key in m_r:
        assert_close(m_a[key], m_r[key], err_msg=key)


def test_reference_loss_is_eq1_on_the_kept_patches_with_the_dropped_captions_nulled():
    """Written out from the flow and model functions: t = sigmoid(z), x_t, the null caption where
    drop, the velocity of the kept tokens against noise - x0 of the same patches."""
    cfg, tc, params, batch = _setup()
    loss, metrics = R.training_loss(params, batch, cfg, tc)
    t = RF.logit_normal_timesteps(batch["z"], tc.t_mu, tc.t_sigma)
    x_t = RF.interpolate(batch["x0"], batch["noise"], t)
    null_ids, null_mask = text.tokenize_batch([""] * 8, cfg.max_text_len)
    drop = batch["drop"][:, None]
    assert drop.any() and not drop.all()
    ids, mask = np.where(drop, null_ids, batch["text_ids"]), np.where(drop, null_mask, batch["text_mask"])
    keep = batch["keep_index"]
    v, _ = RM.forward(params, x_t, t, ids, mask, cfg, keep)
    rows = np.arange(8)[:, None]
    expected = RF.rectified_flow_loss(v, RM.patchify(batch["x0"], 4)[rows, keep], RM.patchify(batch["noise"], 4)[rows, keep])
    assert keep.shape == (8, 8)
    assert_close(loss, expected, tol=FLOAT32_LOSS)
    assert_close(metrics["flow_loss"], expected, tol=FLOAT32_LOSS)
    assert metrics["unrouted"].shape == (1,)


@pytest.mark.parametrize("half", [R, A], ids=["reference", "accelerated"])
def test_token_choice_adds_the_weighted_aux_loss(half):
    cfg = small_config("token_choice", aux_loss_weight=0.5)
    tc = small_train()
    params = randomize_zero_init(init_model(cfg, 0))
    loss, m = half.training_loss(params, make_batch(0, 0, cfg, tc), cfg, tc)
    aux = float(m["aux_loss"])
    assert aux >= 1.0 or aux == approx(1.0, FLOAT32_MEAN)         # E sum f P >= 1, equality when balanced
    assert_close(float(loss), float(m["flow_loss"]) + 0.5 * aux, tol=ARITHMETIC)


@pytest.mark.parametrize("half", [R, A], ids=["reference", "accelerated"])
def test_every_token_choice_layer_adds_its_own_balancing_loss(half):
    """Two sparse layers: aux_loss is the sum of the layers' losses (GShard, Switch and Mesh-TF add
    one per layer, each at the full weight), so it is at least 2 (each layer's is >= 1)."""
    cfg = small_config("token_choice", aux_loss_weight=0.5, depth=4)
    tc = small_train()
    params = randomize_zero_init(init_model(cfg, 0))
    loss, m = half.training_loss(params, make_batch(0, 0, cfg, tc), cfg, tc)
    per_layer = np.asarray(m["aux"])
    assert per_layer.shape == (2,) and (per_layer >= 1.0 - FLOAT32_MEAN["rtol"]).all()
    assert_close(float(m["aux_loss"]), float(per_layer.sum()), tol=ARITHMETIC)
    assert_close(float(loss), float(m["flow_loss"]) + 0.5 * float(per_layer.sum()), tol=ARITHMETIC)


@pytest.mark.parametrize("kind", KINDS)
def test_routing_stats_match_reference_and_count_experts_per_token(kind):
    cfg, tc, params, batch = _setup(kind)
    t = RF.logit_normal_timesteps(batch["z"], tc.t_mu, tc.t_sigma)
    _, routing = R.flow_matching_loss(params, batch["x0"], batch["noise"], t, batch["text_ids"], batch["text_mask"],
                                      cfg, batch["keep_index"])
    stats = R.routing_stats(routing)
    got = A.routing_stats(routing)
    assert sorted(got) == sorted(stats)
    for key, value in stats.items():
        assert_close(got[key], value, err_msg=key)
    layers = [r["experts_per_token"] for r in routing if r is not None]
    if not layers:
        assert stats == {}
        return
    np.testing.assert_array_equal(stats["unrouted"], [np.mean(e == 0) for e in layers])
    np.testing.assert_array_equal(stats["experts_max"], [e.max() for e in layers])


@pytest.mark.parametrize("half", [R, A], ids=["reference", "accelerated"])
def test_caption_dropout_replaces_exactly_the_dropped_rows_by_the_null_caption(half):
    ids, mask = text.tokenize_batch(["a red circle", "two squares", "a cross"], 8)
    drop = np.array([True, False, True])
    out_ids, out_mask = half.caption_dropout(ids, mask, drop)
    null_ids, null_mask = text.tokenize_batch([""] * 3, 8)
    np.testing.assert_array_equal(np.asarray(out_ids), np.where(drop[:, None], null_ids, ids))
    np.testing.assert_array_equal(np.asarray(out_mask), np.where(drop[:, None], null_mask, mask))


@pytest.mark.parametrize("model", [RM, AM], ids=["reference", "accelerated"])
def test_null_caption_is_what_the_tokenizer_makes_of_the_empty_string(model):
    """The model builds "" from the core's reserved ids; the tokenizer must agree with it."""
    ids, mask = model.null_caption(4, 8)
    want_ids, want_mask = text.tokenize_batch([""] * 4, 8)
    np.testing.assert_array_equal(np.asarray(ids), want_ids)
    np.testing.assert_array_equal(np.asarray(mask), want_mask)


def test_full_caption_dropout_equals_training_on_the_null_caption():
    cfg, tc, params, batch = _setup(caption_dropout=1.0)
    assert batch["drop"].all()
    nulled = dict(batch, drop=np.zeros(8, bool))
    nulled["text_ids"], nulled["text_mask"] = text.tokenize_batch([""] * 8, cfg.max_text_len)
    for half in (R, A):
        assert float(half.training_loss(params, batch, cfg, tc)[0]) == float(half.training_loss(params, nulled, cfg, tc)[0])


def test_flow_matching_loss_without_masking_matches_reference_at_fixed_t():
    cfg, tc, params, batch = _setup(mask_ratio=0.0)
    t = np.linspace(0.05, 0.95, 8).astype(np.float32)
    args = (params, batch["x0"], batch["noise"], t, batch["text_ids"], batch["text_mask"], cfg)
    loss_r, routing_r = R.flow_matching_loss(*args)
    loss_a, routing_a = A.flow_matching_loss(*args)
    assert_close(loss_a, loss_r, tol=FLOAT32_LOSS)
    for r, a in zip(routing_r, routing_a):
        assert (r is None) == (a is None)
        if r is not None:
            np.testing.assert_array_equal(np.asarray(a["experts_per_token"]), r["experts_per_token"])


def test_x0_weighting_weighs_each_images_eq1_by_its_clamped_t_squared():
    """loss_weighting "x0": the flow loss equals Eq. 1 image by image at the batch's timesteps,
    each times max(t, prediction_min_t)^2, averaged (written out from flow_matching_loss)."""
    cfg, tc, params, batch = _setup(mask_ratio=0.0, caption_dropout=0.0, loss_weighting="x0")
    _, m = R.training_loss(params, batch, cfg, tc)
    t = RF.logit_normal_timesteps(batch["z"], tc.t_mu, tc.t_sigma)
    per_image = [R.flow_matching_loss(params, batch["x0"][i:i + 1], batch["noise"][i:i + 1], t[i:i + 1],
                                      batch["text_ids"][i:i + 1], batch["text_mask"][i:i + 1], cfg)[0]
                 for i in range(len(t))]
    want = np.mean(np.maximum(t, cfg.prediction_min_t) ** 2 * np.array(per_image))
    assert_close(m["flow_loss"], want, tol=FLOAT32_MEAN)


def test_training_loss_rejects_a_batch_that_does_not_fit_the_model():
    cfg, tc, params, batch = _setup()
    for half in (R, A):
        with pytest.raises(ValueError, match=r"^batch\['noise'\]"):
            half.training_loss(params, dict(batch, noise=batch["noise"][:, :8]), cfg, tc)
        with pytest.raises(ValueError, match=r"^batch\['x0'\]: image shape"):
            half.training_loss(params, dict(batch, x0=batch["x0"][:, :8, :8], noise=batch["noise"][:, :8, :8]), cfg, tc)
        with pytest.raises(ValueError, match="^keep_index"):
            half.training_loss(params, dict(batch, keep_index=batch["keep_index"] + 16), cfg, tc)


@pytest.mark.parametrize("half", [R, A], ids=["reference", "accelerated"])
def test_training_loss_without_a_group_size_routes_with_the_configs_train_group_size(half):
    """docs/model.md's rule: None at an entry point that trains means config.train_group_size."""
    cfg = small_config(train_group_size=2 * small_config().num_tokens)
    tc = small_train()
    params = randomize_zero_init(init_model(cfg, 0), 0, scale=0.3)
    batch = make_batch(0, 0, cfg, tc)
    default, _ = half.training_loss(params, batch, cfg, tc)
    explicit, _ = half.training_loss(params, batch, cfg, tc, cfg.train_group_size)
    per_image, _ = half.training_loss(params, batch, cfg, tc, cfg.num_tokens)
    assert float(default) == float(explicit)
    assert abs(float(default) - float(per_image)) > 1e-5
