"""The sampling loop: prompts in, images out, around the compiled sampler.

The sampler itself, Euler integration of the classifier-free-guided velocity from t = 1 to 0, is
`accelerated.sample.sample` (its specification: reference/sample.py). This loop tokenizes the
prompts, draws each prompt's starting noise from its own seed (`sample_noise` owns the RNG at
the edge), runs the sampler in fixed-size batches (compiled once) and converts to images.

Shapes: M prompts, B images per batch, I x I x Ch images, S tokens, T steps, n sparse layers.
"""
from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from ecdit.accelerated.sample import sample
from ecdit.core.config import DEFAULT_GUIDANCE, DEFAULT_SAMPLE_STEPS, ModelConfig
from ecdit.systems import text


def sample_noise(rng: np.random.Generator, batch_size: int, config: ModelConfig) -> np.ndarray:
    """Standard normal starting images at t = 1, (B, I, I, Ch) float32."""
    shape = (batch_size, config.image_size, config.image_size, config.channels)
    return rng.standard_normal(shape).astype(np.float32)


def to_images(x) -> np.ndarray:
    """Model units [-1, 1] -> images [0, 1] (clipped), NumPy float32."""
    return np.clip((np.asarray(x, np.float32) + 1.0) / 2.0, 0.0, 1.0)


def generate(params, config: ModelConfig, prompts, seed: int = 0, num_steps: int = DEFAULT_SAMPLE_STEPS,
             guidance_scale: float = DEFAULT_GUIDANCE, batch_size: int = 64, group_size=None, progress=True,
             seeds=None, desc="sample"):
    """Images for a list of prompts: (images (M, I, I, Ch) in [0, 1], experts (T, n, M, S)).

    Prompt k starts from noise drawn with np.random.default_rng([seed, k]) (or [seeds[k]]), so an
    image does not depend on the batch it was drawn in (for the default one-image groups). The
    last batch is padded to `batch_size` with null prompts so the sampler compiles once.
    Unknown words raise ValueError."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts: expected at least one prompt")
    text.check_config(config)
    ids, mask = text.tokenize_batch(prompts, config.max_text_len)   # (M, L) x2; unknown word -> ValueError
    n = len(prompts)
    noise = np.stack([sample_noise(np.random.default_rng([seed, k] if seeds is None else [int(seeds[k])]), 1, config)[0]
                      for k in range(n)])                           # (M, I, I, Ch)
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
