"""The training step: loss, masking, caption dropout, schedule, and a few steps that learn."""
import os

import jax
import numpy as np
import optax
import pytest

from ecdit.accelerated.objective import training_loss
from ecdit.core.config import TrainConfig
from ecdit.core.params import init_model, randomize_zero_init
from ecdit.systems import optim, shapes, text
from ecdit.systems import train as T
from tests.helpers import small_config, small_train
from tests.tolerances import (ARITHMETIC, FLOAT32_LOSS, FLOAT32_MEAN, OPTIMIZER_UPDATE, OPTIMIZER_UPDATE_SCALED,
                              assert_close)


@pytest.mark.parametrize("optimizer", ["rmsprop", "adamw"])
def test_a_few_steps_lower_the_loss(optimizer):
    """30 steps on one repeated batch of captioned shapes: the loss must fall clearly, with the
    paper's RMSProp and with AdamW."""
    cfg, tc = small_config(), small_train().replace(optimizer=optimizer)
    state = optim.init_state(init_model(cfg, 0), tc)
    batch = T.make_batch(0, 0, cfg, tc)
    losses = []
    for _ in range(30):
        state, m = T.run_step(state, batch, cfg, tc)
        losses.append(float(m["loss"]))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.8 * losses[0]


def test_adamw_is_optax_adamw_after_the_clip():
    """optimizer="adamw": the update is optax's AdamW (b1, b2, eps, weight decay from the config)
    applied to the globally clipped gradient, at the warmed-up learning rate."""
    tc = TrainConfig(optimizer="adamw", learning_rate=1e-2, warmup_steps=0, grad_clip=1.0, adam_b1=0.8,
                     adam_b2=0.95, weight_decay=0.1)
    params = {"w": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)}
    grads = {"w": np.full((2, 3), 3.0, np.float32)}
    want = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2, b1=0.8, b2=0.95, eps=tc.eps,
                                                                  weight_decay=0.1))
    opt = optim.make_optimizer(tc)
    got_u, _ = opt.update(grads, opt.init(params), params)
    want_u, _ = want.update(grads, want.init(params), params)
    assert_close(got_u["w"], want_u["w"], tol=ARITHMETIC)
    assert float(np.abs(np.asarray(got_u["w"])).max()) > 1e-3        # a real step, not a no-op


def test_learning_rate_warms_up_linearly_then_holds_or_decays_linearly_to_zero():
    sched = optim.learning_rate_schedule(TrainConfig(learning_rate=1e-3, warmup_steps=10))
    assert_close([float(sched(i)) for i in (0, 5, 10, 100)], [0.0, 5e-4, 1e-3, 1e-3], tol=ARITHMETIC)
    decayed = optim.learning_rate_schedule(TrainConfig(learning_rate=1e-3, warmup_steps=10, decay_steps=110))
    assert_close([float(decayed(i)) for i in (5, 10, 60, 110, 200)], [5e-4, 1e-3, 5e-4, 0, 0], tol=ARITHMETIC)


def test_keep_index_is_a_sorted_subset():
    keep = T.sample_keep_index(np.random.default_rng(0), 5, 64, 32)
    assert keep.shape == (5, 32)
    for row in keep:
        assert len(set(row)) == 32 and (np.diff(row) > 0).all() and row.max() < 64
    assert TrainConfig(mask_ratio=0.5).kept_tokens(256) == 128          # the paper's 256 -> 128


def test_batches_depend_only_on_seed_and_step():
    cfg, tc = small_config(), small_train(mask_ratio=0.5)
    a, b = T.make_batch(7, 11, cfg, tc), T.make_batch(7, 11, cfg, tc)
    for k in ("x0", "noise", "z", "keep_index", "text_ids"):
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["noise"], T.make_batch(7, 12, cfg, tc)["noise"])


def test_batches_follow_the_category_weights():
    cfg = small_config()
    tc = small_train(batch_size=32, category_weights=(0, 0, 0, 1, 0, 0))      # colours only
    captions = [text.detokenize(row) for row in T.make_batch(0, 3, cfg, tc)["text_ids"]]
    assert {shapes.parse_prompt(c).category for c in captions} == {"colours"}


def test_category_weights_of_the_wrong_length_are_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="^category_weights"):
        T.train(small_config(), small_train(category_weights=(1, 1)), 2, str(tmp_path), progress=False)
    assert not os.listdir(tmp_path)                                        # nothing written


def test_train_step_does_not_retrace_for_the_next_batch():
    cfg, tc = small_config(), small_train()
    state = optim.init_state(init_model(cfg, 0), tc)
    state, _ = T.run_step(state, T.make_batch(0, 0, cfg, tc), cfg, tc)
    n = T.train_step.trace_count()
    state, _ = T.run_step(state, T.make_batch(0, 1, cfg, tc), cfg, tc)
    assert T.train_step.trace_count() == n
    assert int(state["step"]) == 2


def test_train_loop_writes_metrics_and_a_checkpoint(tmp_path):
    cfg, tc = small_config(), small_train()
    params, history = T.train(cfg, tc, 4, str(tmp_path), log_every=2, progress=False)
    assert [r["step"] for r in history] == [2, 4]
    assert os.listdir(tmp_path / "checkpoint") == ["4"]          # saved at the end only (checkpoint_every 200)
    assert sum(f.stat().st_size for f in (tmp_path / "checkpoint").rglob("*") if f.is_file()) > 1000
    logged = T.read_metrics(str(tmp_path / "metrics.jsonl"))
    assert len(logged) == 2 and "unrouted" in logged[0] and logged[0]["images_per_s"] > 0
    assert jax.tree.structure(params) == jax.tree.structure(init_model(cfg, 0))


def test_resume_with_another_config_is_refused(tmp_path):
    cfg, tc = small_config(), small_train()
    T.train(cfg, tc, 1, str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="^resume"):
        T.train(cfg, tc.replace(learning_rate=1e-2), 2, str(tmp_path), progress=False)


@pytest.mark.parametrize("scale", [0.0, 0.5])
def test_text_lr_scale_scales_only_the_text_encoder_updates(scale):
    """text_lr_scale multiplies the text encoder's optimiser updates (0 freezes it, as the paper
    freezes T5) and leaves every other parameter's update as it is without the scale."""
    cfg = small_config()
    base, scaled = small_train(warmup_steps=0), small_train(warmup_steps=0, text_lr_scale=scale)
    params = randomize_zero_init(init_model(cfg, 0))             # a zero final layer would block every gradient
    batch = T.make_batch(0, 0, cfg, base)
    new_base, _ = T.run_step(optim.init_state(params, base), batch, cfg, base)
    new_scaled, _ = T.run_step(optim.init_state(params, scaled), batch, cfg, scaled)
    for key in params:
        for p0, pb, ps in zip(jax.tree.leaves(params[key]), jax.tree.leaves(new_base["params"][key]),
                              jax.tree.leaves(new_scaled["params"][key])):
            step_b, step_s = np.asarray(pb) - p0, np.asarray(ps) - p0
            if key == "text":
                assert_close(step_s, scale * step_b, tol=OPTIMIZER_UPDATE_SCALED)
            else:
                assert_close(step_s, step_b, tol=OPTIMIZER_UPDATE)
    moved = [np.abs(np.asarray(a) - b).max() for a, b in zip(jax.tree.leaves(new_base["params"]["text"]),
                                                              jax.tree.leaves(params["text"]))]
    assert max(moved) > 0                                        # the unscaled run does move the encoder


def _heldout_batch(cfg, items, seed):
    """The held-out images, noise and captions that validation_loss builds, rebuilt here."""
    x0 = 2.0 * shapes.render_items(items, cfg.image_size) - 1.0              # (N, H, W, 3)
    noise = np.random.default_rng(seed).standard_normal(x0.shape).astype(np.float32)  # (N, H, W, 3)
    ids, mask = text.tokenize_batch([it.text for it in items], cfg.max_text_len)      # (N, L) x2
    return x0, noise, ids, mask


def test_validation_loss_of_the_untrained_model_is_the_target_energy():
    """The zero-initialised final layer predicts v = 0, so the loss is mean((noise - x0)^2) at every t."""
    cfg, items = small_config(), shapes.heldout_items(2)
    x0, noise, _, _ = _heldout_batch(cfg, items, seed=3)
    res = T.validation_loss(init_model(cfg, 0), cfg, items, seed=3, timesteps=(0.2, 0.8), batch_size=5)
    want = float(np.mean((noise - x0) ** 2))
    assert set(res["per_t"]) == {0.2, 0.8}
    for v in res["per_t"].values():
        assert_close(v, want, tol=FLOAT32_MEAN)


def test_validation_loss_equals_the_training_loss_at_the_same_t():
    """At t = sigmoid(z), no dropout and no masking, the validation loss is Eq. 1 as train_step sees it."""
    cfg, tc = small_config(), small_train(mask_ratio=0.0)
    params = randomize_zero_init(init_model(cfg, 1), 1)
    items = shapes.heldout_items(1)
    x0, noise, ids, mask = _heldout_batch(cfg, items, seed=0)
    t = 0.3
    batch = {"x0": x0, "noise": noise, "text_ids": ids, "text_mask": mask, "keep_index": None,
             "z": np.full((len(items),), np.log(t / (1 - t)), np.float32), "drop": np.zeros(len(items), bool)}
    want, _ = training_loss(params, batch, cfg, tc)
    res = T.validation_loss(params, cfg, items, seed=0, timesteps=(t,))
    assert_close(res["mean"], float(want), tol=FLOAT32_LOSS)


def test_validation_loss_rejects_bad_input():
    cfg = small_config()
    params = init_model(cfg, 0)
    with pytest.raises(ValueError, match="items"):
        T.validation_loss(params, cfg, [])
    with pytest.raises(ValueError, match="timesteps"):
        T.validation_loss(params, cfg, shapes.heldout_items(1), timesteps=(0.5, 1.5))


def test_validation_loss_routes_with_the_inference_group_size():
    """The rule of docs/model.md: an entry point that evaluates uses inference_group_size. With
    groups of two images the held-out loss equals the training loss of the same batch routed in
    groups of two (train_group_size = inference_group_size), and differs from one image per group."""
    items = shapes.heldout_items(1)                              # one item per category: an even count
    assert len(items) % 2 == 0
    group = 2 * small_config().num_tokens
    cfg = small_config(inference_group_size=group, train_group_size=group)
    tc = small_train(mask_ratio=0.0)
    params = randomize_zero_init(init_model(cfg, 1), 1, scale=0.3)
    x0, noise, ids, mask = _heldout_batch(cfg, items, seed=0)
    t = 0.3
    batch = {"x0": x0, "noise": noise, "text_ids": ids, "text_mask": mask, "keep_index": None,
             "z": np.full((len(items),), np.log(t / (1 - t)), np.float32), "drop": np.zeros(len(items), bool)}
    grouped, _ = training_loss(params, batch, cfg, tc)           # None -> train_group_size (the same rule)
    per_image, _ = training_loss(params, batch, cfg, tc, cfg.num_tokens)
    res = T.validation_loss(params, cfg, items, seed=0, timesteps=(t,))
    assert_close(res["mean"], float(grouped), tol=FLOAT32_LOSS)
    assert abs(float(grouped) - float(per_image)) > 1e-5         # the group size really changes the loss
    with pytest.raises(ValueError, match="^group_size: a batch of 3 held-out items"):
        T.validation_loss(params, cfg, items[:3], seed=0, timesteps=(t,))


def test_a_model_with_text_segments_trains_on_the_marked_ids():
    """make_batch tokenizes with the config's segment marks: the same step's ids differ only by
    TEXT_SEGMENT_OFFSET, on two-object captions' second phrases, and nothing else in the batch moves;
    validation_loss reads the marked ids too (equal to the plain model's when the copies' rows equal
    their words' rows)."""
    plain, marked = small_config(), small_config(text_segments=True)
    tc = small_train(batch_size=16)
    a, b = T.make_batch(3, 7, plain, tc), T.make_batch(3, 7, marked, tc)
    shift = b["text_ids"] - a["text_ids"]
    assert set(np.unique(shift).tolist()) == {0, text.TEXT_SEGMENT_OFFSET}
    for key in a:
        if key != "text_ids":
            np.testing.assert_array_equal(a[key], b[key])
    params = randomize_zero_init(init_model(marked, 0), scale=0.2)
    items = shapes.validation_items(2)

    def loss(p, cfg):
        return T.validation_loss(p, cfg, items)["mean"]
    assert abs(loss(params, marked) - loss(params, plain)) > 1e-4      # the copies' rows are read
    k = text.TEXT_SEGMENT_OFFSET
    params["text"]["embed"][k:2 * k] = params["text"]["embed"][:k]
    assert loss(params, marked) == pytest.approx(loss(params, plain), rel=1e-5)
