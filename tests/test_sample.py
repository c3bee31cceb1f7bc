"""The sampler: Euler + classifier-free guidance equals the reference spec; routing traces."""
import numpy as np
import pytest

from ecdit.systems import sampling as S
from ecdit.systems import text
from ecdit.core.config import ModelConfig
from ecdit.core.params import init_model, randomize_zero_init
from ecdit.reference import flow as RF
from ecdit.reference import model as RM
from tests.tolerances import assert_close

# Euler over a few steps compounds the per-call float32 differences (~1e-6) of the model; the
# trajectories stay within 1e-3 absolute (measured ~1e-5) unless a top-C choice flips, which the
# seeds below avoid.
SAMPLE_TOL = dict(rtol=1e-3, atol=1e-3)


def small_config(kind="expert_choice", **changes):
    base = dict(name="test", image_size=16, patch_size=4, depth=2, width=32, num_heads=4, num_kv_heads=2,
                ffn_kind=kind, num_experts=4, text_width=16, text_depth=1, text_heads=2, freq_dim=16)
    base.update(changes)
    return ModelConfig(**base)


def reference_cfg_sample(params, noise, ids, mask, cfg, steps, scale, group_size=None):
    """The spec: reference euler_sample over v_null + s (v_cond - v_null), all channels."""
    null_ids, null_mask = text.tokenize_batch([""] * len(noise), cfg.max_text_len)

    def v(x, t):
        both = np.concatenate([x, x]), np.concatenate([t, t])
        vel = RM.velocity(params, both[0], both[1], np.concatenate([ids, null_ids]),
                          np.concatenate([mask, null_mask]), cfg, group_size)
        v_cond, v_null = np.split(vel, 2)
        return v_null + scale * (v_cond - v_null)
    return RF.euler_sample(v, noise, steps)


@pytest.mark.parametrize("kind", ("dense", "expert_choice", "token_choice"))
def test_sampler_matches_reference_euler_with_guidance(kind):
    cfg = small_config(kind)
    params = randomize_zero_init(init_model(cfg, 0), scale=0.2)
    noise = S.sample_noise(np.random.default_rng(1), 2, cfg)
    ids, mask = text.tokenize_batch(["a red circle", "two squares"], cfg.max_text_len)
    x, counts = S.sample(params, noise, ids, mask, cfg, num_steps=3, guidance_scale=3.0)
    expected = reference_cfg_sample(params, noise, ids, mask, cfg, 3, 3.0)
    assert_close(x, expected, SAMPLE_TOL)
    n_sparse = len(cfg.sparse_layers)
    assert counts.shape == (3, n_sparse, 2, cfg.num_tokens)


def test_inference_group_spanning_images_matches_reference():
    """Group of 32 tokens = two 16-token images per routing group at inference (Sec. 3.1)."""
    cfg = small_config(inference_group_size=32)
    params = randomize_zero_init(init_model(cfg, 0), scale=0.2)
    noise = S.sample_noise(np.random.default_rng(2), 2, cfg)
    ids, mask = text.tokenize_batch(["a blue ring", "a cross"], cfg.max_text_len)
    x, counts = S.sample(params, noise, ids, mask, cfg, num_steps=2, guidance_scale=2.0)
    assert_close(x, reference_cfg_sample(params, noise, ids, mask, cfg, 2, 2.0, 32), SAMPLE_TOL)
    # conditional images 0 and 1 share one group of 32 tokens: E * C choices between them
    np.testing.assert_array_equal(np.asarray(counts).sum(axis=-1).sum(axis=-1), 4 * cfg.capacity(32))
    with pytest.raises(ValueError, match="^group_size"):
        S.sample(params, noise, ids, mask, cfg, 2, 2.0, group_size=24)


def test_guidance_one_is_the_conditional_model():
    cfg = small_config("dense")
    params = randomize_zero_init(init_model(cfg, 0), scale=0.2)
    noise = S.sample_noise(np.random.default_rng(0), 2, cfg)
    ids, mask = text.tokenize_batch(["a red circle", "a cyan diamond"], cfg.max_text_len)
    x, _ = S.sample(params, noise, ids, mask, cfg, 2, 1.0)
    cond = RF.euler_sample(lambda x, t: RM.velocity(params, x, t, ids, mask, cfg), noise, 2)
    assert_close(x, cond, SAMPLE_TOL)


def test_untrained_model_returns_its_noise():
    cfg = small_config()
    noise = S.sample_noise(np.random.default_rng(0), 1, cfg)
    ids, mask = text.tokenize_batch(["a circle"], cfg.max_text_len)
    x, _ = S.sample(init_model(cfg, 0), noise, ids, mask, cfg, 4, 4.0)
    np.testing.assert_array_equal(np.asarray(x), noise)


def test_generate_is_independent_of_the_batch_split():
    cfg = small_config()
    params = randomize_zero_init(init_model(cfg, 0), scale=0.2)
    prompts = ["a circle", "a red square", "two rings"]
    a, ea = S.generate(params, cfg, prompts, seed=5, num_steps=2, batch_size=3, progress=False)
    b, eb = S.generate(params, cfg, prompts, seed=5, num_steps=2, batch_size=2, progress=False)
    assert a.shape == (3, 16, 16, 3) and a.min() >= 0 and a.max() <= 1
    assert_close(a, b, SAMPLE_TOL)
    np.testing.assert_array_equal(ea, eb)
    with pytest.raises(ValueError, match="unknown word 'horse'"):
        S.generate(params, cfg, ["a horse"], progress=False)
