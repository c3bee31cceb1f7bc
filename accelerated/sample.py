"""Sampling: Euler integration of the learned velocity with classifier-free guidance (CFG).

    v_guided(x, t) = v(x, t, null) + s * (v(x, t, y) - v(x, t, null))      on ALL channels
    x_{t - dt} = x_t - dt * v_guided(x_t, t),  from t = 1 (noise) to t = 0 (data), equal steps

The null caption is "" (one learned <null> token, trained by caption dropout). Guidance applies
to every channel: not the 3-channel shortcut of some public DiT code. The conditional and
unconditional halves run as one batch of 2B images; with an inference group size larger than S
one routing group holds tokens of several images (Sec. 3.1), so expert choice then depends on the
batch: a group size of S (the default, None) keeps each image's routing to itself.

Randomness enters as the `noise` argument; `sample_noise` owns the RNG at the edge.

Shapes: B images, H x W x Ch, S tokens, T steps, n sparse layers.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from accelerated.model import forward, unpatchify
from ecdit.config import DEFAULT_GUIDANCE, DEFAULT_SAMPLE_STEPS, ModelConfig


def sample_noise(rng: np.random.Generator, batch_size: int, config: ModelConfig) -> np.ndarray:
    """Standard normal starting images at t = 1, (B, H, W, Ch) float32."""
    shape = (batch_size, config.image_size, config.image_size, config.channels)
    return rng.standard_normal(shape).astype(np.float32)


def cfg_velocity(params, x, t, text_ids, text_mask, null_ids, null_mask, config, guidance_scale,
                 group_size=None):
    """Guided velocity (B, H, W, Ch) and the routing of the conditional half (list over layers)."""
    b = x.shape[0]
    x2 = jnp.concatenate([x, x], axis=0)                         # (2B, H, W, Ch)  [cond; null]
    t2 = jnp.concatenate([t, t], axis=0)                         # (2B,)
    ids2 = jnp.concatenate([text_ids, null_ids], axis=0)         # (2B, L)
    mask2 = jnp.concatenate([text_mask, null_mask], axis=0)      # (2B, L)
    v, routing = forward(params, x2, t2, ids2, mask2, config, None, group_size)  # (2B, S, P)
    v_cond, v_null = v[:b], v[b:]                                # (B, S, P) x2
    guided = v_null + guidance_scale * (v_cond - v_null)         # (B, S, P)  all channels
    routing = [None if r is None else r["experts_per_token"][:b] for r in routing]  # (B, S) each
    return unpatchify(guided, config.patch_size, config.image_size, config.image_size), routing


def _sample(params, noise, text_ids, text_mask, config, num_steps, guidance_scale, group_size):
    from ecdit import text as _text
    b = noise.shape[0]
    null_ids, null_mask = _text.tokenize_batch([""] * b, text_ids.shape[1])   # (B, L) x2
    times = jnp.asarray(np.linspace(1.0, 0.0, num_steps + 1).astype(np.float32))  # (T + 1,)

    def step(x, i):                                              # x (B, H, W, Ch)
        t = jnp.full((b,), times[i])                             # (B,)
        v, routing = cfg_velocity(params, x, t, text_ids, text_mask, null_ids, null_mask, config,
                                  guidance_scale, group_size)
        counts = [r for r in routing if r is not None]
        counts = jnp.stack(counts) if counts else jnp.zeros((0, b, config.num_tokens), jnp.int32)  # (n, B, S)
        return x + (times[i + 1] - times[i]) * v, counts         # Euler step of -1/T

    x, counts = jax.lax.scan(step, noise, jnp.arange(num_steps))  # (B, H, W, Ch), (T, n, B, S)
    return x, counts


_sample_jit = jax.jit(_sample, static_argnames=("config", "num_steps", "guidance_scale", "group_size"))


def sample(params, noise, text_ids, text_mask, config, num_steps=DEFAULT_SAMPLE_STEPS,
           guidance_scale=DEFAULT_GUIDANCE, group_size=None):
    """Euler + CFG from `noise` (t = 1) to t = 0.

    Returns (x0 (B, H, W, Ch) in model units, about [-1, 1]; experts_per_token (T, n, B, S) int32:
    how many experts chose each token, per step and sparse layer, for the heatmaps of Fig. 6).
    group_size None: config.inference_group_size (None there too: one image per group)."""
    from ecdit.config import check_forward
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps: expected a positive integer, got {num_steps!r}")
    if not np.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale: expected a finite number, got {guidance_scale!r}")
    group_size = config.inference_group_size if group_size is None else group_size
    b = np.shape(noise)[0]
    check_forward(params, noise, np.zeros((b,), np.float32), text_ids, text_mask, config, None, None)
    if group_size is not None and (2 * b * config.num_tokens) % group_size:
        raise ValueError(f"group_size: {group_size} does not divide the 2B * S = {2 * b * config.num_tokens} "
                         "tokens of a guided batch (conditional and null halves)")
    return _sample_jit(params, noise, text_ids, text_mask, config, int(num_steps), float(guidance_scale), group_size)


def to_images(x) -> np.ndarray:
    """Model units [-1, 1] -> images [0, 1] (clipped), NumPy float32."""
    return np.clip((np.asarray(x, np.float32) + 1.0) / 2.0, 0.0, 1.0)


def generate(params, config: ModelConfig, prompts, seed: int = 0, num_steps: int = DEFAULT_SAMPLE_STEPS,
             guidance_scale: float = DEFAULT_GUIDANCE, batch_size: int = 64, group_size=None, progress=True,
             seeds=None, desc="sample"):
    """Images for a list of prompts: (images (N, H, W, Ch) in [0, 1], experts (T, n, N, S)).

    Prompt k starts from noise drawn with np.random.default_rng([seed, k]) (or [seeds[k]]), so an
    image does not depend on the batch it was drawn in (for the default one-image groups). The
    last batch is padded to `batch_size` with null prompts so the sampler compiles once.
    Unknown words raise ValueError."""
    from tqdm.auto import tqdm

    from ecdit import text
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts: expected at least one prompt")
    ids, mask = text.tokenize_batch(prompts, config.max_text_len)   # (N, L) x2; unknown word -> ValueError
    n = len(prompts)
    noise = np.stack([sample_noise(np.random.default_rng([seed, k] if seeds is None else [int(seeds[k])]), 1, config)[0]
                      for k in range(n)])                           # (N, H, W, Ch)
    bs = min(batch_size, n)
    pad = (-n) % bs
    if pad:
        pid, pmask = text.tokenize_batch([""] * pad, config.max_text_len)
        ids, mask = np.concatenate([ids, pid]), np.concatenate([mask, pmask])
        noise = np.concatenate([noise, np.zeros((pad,) + noise.shape[1:], np.float32)])
    images, experts = [], []
    for start in tqdm(range(0, n + pad, bs), desc=desc, disable=not progress, unit="batch", dynamic_ncols=True):
        sl = slice(start, start + bs)
        x, counts = sample(params, noise[sl], ids[sl], mask[sl], config, num_steps, guidance_scale, group_size)
        images.append(to_images(x))
        experts.append(np.asarray(counts))
    images = np.concatenate(images)[:n]
    experts = np.concatenate(experts, axis=2)[:, :, :n]
    return images, experts
