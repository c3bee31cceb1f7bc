"""The sampler: Euler + classifier-free guidance, specified in reference/sample.py and equal in
the twin; the sampling loop around it (prompts in, images out)."""
import numpy as np
import pytest

from ecdit.accelerated import sample as A
from ecdit.core.params import init_model, randomize_zero_init
from ecdit.reference import flow as RF
from ecdit.reference import model as RM
from ecdit.reference import sample as R
from ecdit.systems import sampling, text
from tests.helpers import small_config
from tests.tolerances import SAMPLER, assert_close


def _inputs(kind="expert_choice", prompts=("a red circle", "two squares"), seed=1, **changes):
    cfg = small_config(kind, **changes)
    params = randomize_zero_init(init_model(cfg, 0), scale=0.2)
    noise = sampling.sample_noise(np.random.default_rng(seed), len(prompts), cfg)
    ids, mask = text.tokenize_batch(list(prompts), cfg.max_text_len)
    return cfg, params, noise, ids, mask


def euler_with_guidance(params, noise, ids, mask, cfg, steps, scale, group_size=None):
    """The spec written out once more from its parts: reference euler_sample over
    v_null + s (v_cond - v_null) of the reference velocity, the null caption from the tokenizer."""
    null_ids, null_mask = text.tokenize_batch([""] * len(noise), cfg.max_text_len)

    def v(x, t):
        vel = RM.velocity(params, np.concatenate([x, x]), np.concatenate([t, t]), np.concatenate([ids, null_ids]),
                          np.concatenate([mask, null_mask]), cfg, group_size)
        v_cond, v_null = np.split(vel, 2)
        return v_null + scale * (v_cond - v_null)
    return RF.euler_sample(v, noise, steps)


@pytest.mark.parametrize("kind", ("dense", "expert_choice", "token_choice"))
def test_reference_sampler_is_euler_over_the_guided_velocity(kind):
    cfg, params, noise, ids, mask = _inputs(kind)
    x, counts = R.sample(params, noise, ids, mask, cfg, 3, 3.0)
    assert_close(x, euler_with_guidance(params, noise, ids, mask, cfg, 3, 3.0))
    assert counts.shape == (3, len(cfg.sparse_layers), 2, cfg.num_tokens)


@pytest.mark.parametrize("kind", ("dense", "expert_choice", "token_choice"))
def test_accelerated_sampler_matches_reference(kind):
    cfg, params, noise, ids, mask = _inputs(kind)
    x_r, counts_r = R.sample(params, noise, ids, mask, cfg, 3, 3.0)
    x_a, counts_a = A.sample(params, noise, ids, mask, cfg, 3, 3.0)
    assert_close(x_a, x_r, SAMPLER)
    np.testing.assert_array_equal(np.asarray(counts_a), counts_r)


def test_guided_velocity_matches_reference_and_records_the_conditional_half():
    cfg, params, noise, ids, mask = _inputs()
    t = np.array([0.9, 0.4], np.float32)
    v_r, e_r = R.guided_velocity(params, noise, t, ids, mask, cfg, 4.0)
    v_a, e_a = A.guided_velocity(params, noise, t, ids, mask, cfg, 4.0)
    assert_close(v_a, v_r)
    np.testing.assert_array_equal(np.asarray(e_a), e_r)
    _, routing = RM.forward(params, noise, t, ids, mask, cfg)    # the conditional half alone, one image per group
    np.testing.assert_array_equal(e_r[0], routing[1]["experts_per_token"])


def test_inference_group_spanning_images_matches_reference():
    """Group of 32 tokens = two 16-token images per routing group at inference (Sec. 3.1)."""
    cfg, params, noise, ids, mask = _inputs(prompts=("a blue ring", "a cross"), seed=2, inference_group_size=32)
    x, counts = A.sample(params, noise, ids, mask, cfg, 2, 2.0)
    x_r, counts_r = R.sample(params, noise, ids, mask, cfg, 2, 2.0)
    assert_close(x, x_r, SAMPLER)
    assert_close(x, euler_with_guidance(params, noise, ids, mask, cfg, 2, 2.0, 32), SAMPLER)
    # conditional images 0 and 1 share one group of 32 tokens: E * C choices between them
    np.testing.assert_array_equal(np.asarray(counts).sum(axis=-1).sum(axis=-1), 4 * cfg.capacity(32))
    for half in (A, R):
        with pytest.raises(ValueError, match="^group_size"):
            half.sample(params, noise, ids, mask, cfg, 2, 2.0, group_size=24)


def test_guidance_one_is_the_conditional_model():
    cfg, params, noise, ids, mask = _inputs("dense", ("a red circle", "a cyan diamond"), seed=0)
    x, _ = A.sample(params, noise, ids, mask, cfg, 2, 1.0)
    cond = RF.euler_sample(lambda x, t: RM.velocity(params, x, t, ids, mask, cfg), noise, 2)
    assert_close(x, cond, SAMPLER)


def test_untrained_model_returns_its_noise():
    cfg = small_config()
    noise = sampling.sample_noise(np.random.default_rng(0), 1, cfg)
    ids, mask = text.tokenize_batch(["a circle"], cfg.max_text_len)
    for half in (A, R):
        x, _ = half.sample(init_model(cfg, 0), noise, ids, mask, cfg, 4, 4.0)
        np.testing.assert_array_equal(np.asarray(x), noise)


def test_sampler_rejects_bad_steps_guidance_and_images_naming_the_argument():
    cfg, params, noise, ids, mask = _inputs()
    for half in (A, R):
        for args, name in (((0, 3.0), "num_steps"), ((2, float("inf")), "guidance_scale"), ((2.5, 3.0), "num_steps")):
            with pytest.raises(ValueError, match=f"^{name}:"):
                half.sample(params, noise, ids, mask, cfg, *args)
        with pytest.raises(ValueError, match="^noise:"):
            half.sample(params, noise[:, :8], ids, mask, cfg, 2, 3.0)


def test_generate_is_independent_of_the_batch_split():
    cfg, params, _, _, _ = _inputs()
    prompts = ["a circle", "a red square", "two rings"]
    a, ea = sampling.generate(params, cfg, prompts, seed=5, num_steps=2, batch_size=3, progress=False)
    b, eb = sampling.generate(params, cfg, prompts, seed=5, num_steps=2, batch_size=2, progress=False)
    assert a.shape == (3, 16, 16, 3) and a.min() >= 0 and a.max() <= 1
    assert_close(a, b, SAMPLER)
    np.testing.assert_array_equal(ea, eb)
    with pytest.raises(ValueError, match="unknown word 'horse'"):
        sampling.generate(params, cfg, ["a horse"], progress=False)


def test_generate_refuses_a_model_whose_vocabulary_is_smaller_than_the_tokenizer():
    cfg = small_config(vocab_size=4)
    with pytest.raises(ValueError, match="^vocab_size"):
        sampling.generate(init_model(cfg, 0), cfg, ["a circle"], progress=False)


def test_generate_reads_the_second_phrase_through_its_segment_rows():
    """With text_segments the loop feeds the marked ids: once the copies' rows are made equal to
    their words' rows, the images are those of the same model without segments; with the rows as
    initialised (word + segment vector) a two-object prompt's image changes."""
    cfg, params, _, _, _ = _inputs(text_segments=True)
    prompts = ["a circle and a red square", "a ring below a cross"]
    k = text.TEXT_SEGMENT_OFFSET
    same = dict(params, text=dict(params["text"], embed=params["text"]["embed"].copy()))
    same["text"]["embed"][k:2 * k] = same["text"]["embed"][:k]
    plain_cfg = small_config("expert_choice")
    off, _ = sampling.generate(same, plain_cfg, prompts, seed=2, num_steps=2, progress=False)
    on, _ = sampling.generate(same, cfg, prompts, seed=2, num_steps=2, progress=False)
    assert_close(on, off, SAMPLER)
    marked, _ = sampling.generate(params, cfg, prompts, seed=2, num_steps=2, progress=False)
    assert np.abs(marked - off).max() > 1e-3
