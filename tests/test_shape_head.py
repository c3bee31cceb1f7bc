"""The shape head (a deviation; docs/model.md, "The shape head"): its token labels
(ecdit.systems.shapes.token_labels), its loss (objective.shape_label_loss in both halves), and
what it may not do: change the images or captions a run trains on, or anything the sampler reads."""
import jax
import numpy as np
import pytest
from hypothesis import given, settings

from ecdit.accelerated import model as AM
from ecdit.accelerated import objective as A
from ecdit.core.config import BACKGROUND_LABEL, NUM_SHAPE_LABELS, ModelConfig, preset
from ecdit.core.params import count, count_params, init_model, randomize_zero_init
from ecdit.reference import flow as RF
from ecdit.reference import model as RM
from ecdit.reference import objective as R
from ecdit.systems import shapes as S
from ecdit.systems import text
from ecdit.systems.train import make_batch
from tests.helpers import normal, seeds, small_config, small_train
from tests.tolerances import FLOAT32, FLOAT32_LOSS, assert_close


def _setup(layer=1, weight=0.5, mask_ratio=0.5, step=3):
    cfg = small_config(shape_head_layer=layer, shape_loss_weight=weight)
    tc = small_train(mask_ratio=mask_ratio, caption_dropout=0.5)
    params = randomize_zero_init(init_model(cfg, 1))
    return cfg, tc, params, make_batch(0, step, cfg, tc)


# --- labels ---------------------------------------------------------------------------------

def test_token_labels_mark_the_patches_a_shape_covers_and_nothing_else():
    """An 8 px square centred in a 32 px image covers exactly the four middle 4x4 patches."""
    square = S.SceneObject("square", "red", 0.5, 0.5, 0.25)
    labels = S.token_labels([square], 32, 4).reshape(8, 8)                  # (g, g)
    expected = np.full((8, 8), BACKGROUND_LABEL)
    expected[3:5, 3:5] = S.SHAPES.index("square")
    np.testing.assert_array_equal(labels, expected)


def test_a_patch_less_than_a_quarter_covered_stays_background():
    """An 8 px square spanning pixels 13..21: the corner patch (3, 5) holds 3 x 1 of its 16 pixels
    (3/16 < 1/4: background), the edge patch (4, 5) 4 x 1 (exactly 1/4: the square's)."""
    obj = S.SceneObject("square", "blue", 17 / 32, 17 / 32, 8 / 32)
    labels = S.token_labels([obj], 32, 4).reshape(8, 8)
    cover = S.shape_coverage("square", 17, 17, 8, 32, 32).reshape(8, 4, 8, 4).mean(axis=(1, 3))  # (g, g)
    assert cover[3, 5] == 3 / 16 and labels[3, 5] == BACKGROUND_LABEL
    assert cover[4, 5] == 1 / 4 and labels[4, 5] == S.SHAPES.index("square")
    np.testing.assert_array_equal(labels == S.SHAPES.index("square"), cover >= S.MIN_LABEL_COVERAGE)


@settings(max_examples=10, deadline=None)
@given(seed=seeds)
def test_batch_labels_agree_with_the_pixels_they_label(seed):
    """On white, every palette colour has a zero channel, so a pixel's coverage is 1 - its minimum
    channel: a labelled patch is at least a quarter covered, an untouched patch is background."""
    images, captions, labels = S.sample_batch(np.random.default_rng(seed), 6, 32, label_patch_size=4)
    cover = (1.0 - images.min(axis=-1)).reshape(6, 8, 4, 8, 4).mean(axis=(2, 4)).reshape(6, 64)  # (B, S)
    shaped = labels != BACKGROUND_LABEL
    assert np.all(cover[shaped] >= S.MIN_LABEL_COVERAGE - 1e-5)
    assert np.all(labels[cover == 0] == BACKGROUND_LABEL)
    for caption, row in zip(captions, labels):                                # only shapes the caption names
        named = {S.SHAPES.index(o.shape) for o in S.parse_prompt(caption).objects}
        assert set(row[row != BACKGROUND_LABEL].tolist()) <= named


def test_asking_for_labels_leaves_the_images_and_captions_unchanged():
    plain = S.sample_batch(np.random.default_rng(11), 5, 32)
    with_labels = S.sample_batch(np.random.default_rng(11), 5, 32, label_patch_size=4)
    np.testing.assert_array_equal(plain[0], with_labels[0])
    assert plain[1] == with_labels[1]
    assert with_labels[2].shape == (5, 64) and with_labels[2].dtype == np.int32


def test_make_batch_carries_labels_only_for_a_model_with_a_shape_head():
    tc = small_train()
    plain = make_batch(0, 1, small_config(), tc)
    headed = make_batch(0, 1, small_config(shape_head_layer=1), tc)
    assert "shape_labels" not in plain
    assert headed["shape_labels"].shape == (8, small_config().num_tokens)
    for key in plain:
        np.testing.assert_array_equal(np.asarray(plain[key]), np.asarray(headed[key]), err_msg=key)


# --- the loss -------------------------------------------------------------------------------

@pytest.mark.parametrize("mask_ratio", [0.0, 0.5])
def test_accelerated_training_loss_with_a_shape_head_matches_reference(mask_ratio):
    cfg, tc, params, batch = _setup(mask_ratio=mask_ratio)
    loss_r, m_r = R.training_loss(params, batch, cfg, tc)
    loss_a, m_a = A.training_loss(params, batch, cfg, tc)
    assert_close(loss_a, loss_r, tol=FLOAT32_LOSS)
    assert sorted(m_a) == sorted(m_r) and "shape_loss" in m_r
    for key in m_r:
        assert_close(m_a[key], m_r[key], err_msg=key)


@pytest.mark.parametrize("layer", [1, 2])
def test_training_loss_adds_the_weighted_cross_entropy_of_block_ks_tokens(layer):
    """Written out: block k's output at the kept tokens, LN, the head, -log softmax at the label."""
    cfg, tc, params, batch = _setup(layer=layer)
    loss, metrics = R.training_loss(params, batch, cfg, tc)
    t = RF.logit_normal_timesteps(batch["z"], tc.t_mu, tc.t_sigma)
    x_t = RF.interpolate(batch["x0"], batch["noise"], t)
    null_ids, null_mask = text.tokenize_batch([""] * 8, cfg.max_text_len)
    drop = batch["drop"][:, None]
    ids, mask = np.where(drop, null_ids, batch["text_ids"]), np.where(drop, null_mask, batch["text_mask"])
    keep = batch["keep_index"]
    _, _, hidden = RM.forward(params, x_t, t, ids, mask, cfg, keep, hidden_layer=layer)   # (B, S', D)
    h = hidden - hidden.mean(-1, keepdims=True)
    h = h / np.sqrt((h * h).mean(-1, keepdims=True) + 1e-6)
    logits = h @ params["shape_head"]["w"] + params["shape_head"]["b"]       # (B, S', K)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    labels = np.take_along_axis(batch["shape_labels"], keep, axis=1)        # (B, S')
    expected = -np.mean(np.take_along_axis(log_p, labels[..., None], -1))
    assert_close(metrics["shape_loss"], expected, tol=FLOAT32_LOSS)
    assert_close(loss, metrics["flow_loss"] + 0.5 * expected, tol=FLOAT32_LOSS)


def test_an_untrained_shape_head_scores_log_k_and_weight_zero_leaves_eq1():
    """Zero-initialised, the head gives uniform logits: cross-entropy ln 7 whatever the tokens.
    At weight 0 the loss is Eq. 1 alone, equal to the headless model's."""
    cfg, tc, params, batch = _setup(weight=0.0)
    params = dict(params, shape_head=init_model(cfg, 1)["shape_head"])
    loss, metrics = R.training_loss(params, batch, cfg, tc)
    assert_close(metrics["shape_loss"], np.log(NUM_SHAPE_LABELS), tol=FLOAT32_LOSS)
    plain = small_config()
    headless = {k: v for k, v in params.items() if k != "shape_head"}
    loss_plain, _ = R.training_loss(headless, {k: v for k, v in batch.items() if k != "shape_labels"}, plain, tc)
    assert float(loss) == float(loss_plain)


def test_the_head_trains_the_blocks_up_to_its_layer_and_no_later_one():
    """Gradient of the shape loss alone (flow weight out: differentiate the metric)."""
    cfg, tc, params, batch = _setup(layer=1, mask_ratio=0.0)

    def shape_only(p):
        return A.training_loss(p, batch, cfg, tc)[1]["shape_loss"]
    grads = jax.grad(shape_only)(params)
    norm = lambda tree: float(sum(np.sum(np.asarray(g) ** 2) for g in jax.tree.leaves(tree)))
    assert norm(grads["blocks"][0]) > 0 and norm(grads["patch_embed"]) > 0 and norm(grads["shape_head"]) > 0
    assert norm(grads["blocks"][1]) == 0 and norm(grads["final"]) == 0


@settings(max_examples=10, deadline=None)
@given(seed=seeds)
def test_accelerated_shape_label_loss_matches_reference(seed):
    rng = np.random.default_rng(seed)
    b, s, d = int(rng.integers(1, 4)), int(rng.integers(1, 9)), 8
    hidden = normal(rng, (b, s, d))
    labels = rng.integers(0, NUM_SHAPE_LABELS, (b, s)).astype(np.int32)
    params = {"w": normal(rng, (d, NUM_SHAPE_LABELS)), "b": normal(rng, (NUM_SHAPE_LABELS,))}
    assert_close(A.shape_label_loss(hidden, labels, params), R.shape_label_loss(hidden, labels, params), tol=FLOAT32)


# --- what the head may not touch ------------------------------------------------------------

@pytest.mark.parametrize("model", [RM, AM], ids=["reference", "accelerated"])
def test_sampling_never_reads_the_head(model):
    cfg, _, params, batch = _setup()
    t = np.full((8,), 0.7, np.float32)
    with_head = model.velocity(params, batch["x0"], t, batch["text_ids"], batch["text_mask"], cfg)
    other = dict(params, shape_head={k: v + 1.0 for k, v in params["shape_head"].items()})
    np.testing.assert_array_equal(np.asarray(with_head),
                                  np.asarray(model.velocity(other, batch["x0"], t, batch["text_ids"],
                                                            batch["text_mask"], cfg)))
    v, _, hidden = model.forward(params, batch["x0"], t, batch["text_ids"], batch["text_mask"], cfg, hidden_layer=2)
    v_plain, _ = model.forward(params, batch["x0"], t, batch["text_ids"], batch["text_mask"], cfg)
    assert_close(v, v_plain, tol=FLOAT32)
    assert hidden.shape == (8, cfg.num_tokens, cfg.width)


def test_parameter_count_includes_the_head_in_total_only():
    cfg, plain = small_config(shape_head_layer=2), small_config()
    counted, counted_plain = count_params(cfg), count_params(plain)
    assert counted["total"] + counted["text_encoder"] == count(init_model(cfg))
    assert counted["total"] - counted_plain["total"] == (cfg.width + 1) * NUM_SHAPE_LABELS
    assert counted["activated"] == counted_plain["activated"]


# --- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("layer", [0, 3, -1, 1.5, True])
def test_shape_head_layer_outside_the_blocks_is_refused(layer):
    with pytest.raises(ValueError, match="^shape_head_layer"):
        small_config(shape_head_layer=layer)


def test_shape_loss_weight_must_be_a_finite_non_negative_number():
    for bad in (-0.1, float("nan"), "0.1"):
        with pytest.raises(ValueError, match="^shape_loss_weight"):
            small_config(shape_loss_weight=bad)


def test_bad_labels_are_refused_by_name():
    cfg, tc, params, batch = _setup()
    for half in (R, A):
        with pytest.raises(ValueError, match=r"^batch\['shape_labels'\]"):
            half.training_loss(params, dict(batch, shape_labels=batch["shape_labels"] + NUM_SHAPE_LABELS), cfg, tc)
        with pytest.raises(ValueError, match=r"^batch\['shape_labels'\]"):
            half.training_loss(params, dict(batch, shape_labels=batch["shape_labels"][:, :5]), cfg, tc)
        with pytest.raises(ValueError, match="^batch: a model with a shape head"):
            half.training_loss(params, {k: v for k, v in batch.items() if k != "shape_labels"}, cfg, tc)
    for model in (RM, AM):
        with pytest.raises(ValueError, match="^hidden_layer"):
            model.forward(params, batch["x0"], np.full((8,), 0.5, np.float32), batch["text_ids"],
                          batch["text_mask"], cfg, hidden_layer=3)
    with pytest.raises(ValueError, match="^label_patch_size"):
        S.sample_batch(np.random.default_rng(0), 2, 32, label_patch_size=5)
    with pytest.raises(ValueError, match="^patch_size"):
        S.token_labels([], 32, 3)


def test_the_tiny_preset_trains_a_shape_head():
    assert preset("tiny").shape_head_layer is not None
    assert isinstance(preset("tiny"), ModelConfig)
