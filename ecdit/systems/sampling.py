"""The sampling loop: prompts in, images out, around the compiled sampler.

The sampler itself, Euler integration of the classifier-free-guided velocity from t = 1 to 0, is
`accelerated.sample.sample` (its specification: reference/sample.py). This loop tokenizes the
prompts, draws each prompt's starting noise from its own seed (`sample_noise` owns the RNG at
the edge), runs the sampler in fixed-size batches (compiled once) and converts to images.

Shapes: M prompts, B images per batch, I x I x Ch images, S tokens, T steps, n sparse layers.
"""
from __future__ import annotations

import contextlib
import math
import warnings

import jax
import numpy as np
from tqdm.auto import tqdm

from ecdit.accelerated.sample import sample
from ecdit.core.config import DEFAULT_GUIDANCE, DEFAULT_SAMPLE_STEPS, ModelConfig
from ecdit.core.params import predictor_kind
from ecdit.systems import mesh as mesh_lib
from ecdit.systems import text


# ---------------------------------------------------------------------------------------------
# Noise and images
# ---------------------------------------------------------------------------------------------

def sample_noise(rng: np.random.Generator, batch_size: int, config: ModelConfig) -> np.ndarray:
    """Standard normal starting images at t = 1, (B, I, I, Ch) float32."""
    shape = (batch_size, config.image_size, config.image_size, config.channels)
    return rng.standard_normal(shape).astype(np.float32)


def to_images(x) -> np.ndarray:
    """Model units [-1, 1] -> images [0, 1] (clipped), NumPy float32."""
    return np.clip((np.asarray(x, np.float32) + 1.0) / 2.0, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# DiffMoE's thresholds: refuse the ones that never warmed up
# ---------------------------------------------------------------------------------------------

def thresholds(params) -> list[np.ndarray]:
    """The thresholds tau (E,) of every layer with a capacity predictor, in layer order."""
    return [np.asarray(b[predictor_kind(b)]["threshold"]) for b in params["blocks"] if predictor_kind(b)]


def threshold_warmup_steps(decay: float) -> int:
    """Training steps after which tau, an EMA from 0, is within 5 % of its running target:
    tau_n = (1 - d^n) q when q holds still, so n = ceil(log 0.05 / log d) (59 for d = 0.95; 1 for
    d = 0, where tau is the last step's q)."""
    if decay <= 0.0:
        return 1
    return max(1, math.ceil(math.log(0.05) / math.log(decay)))


def check_thresholds(params, config: ModelConfig, step: int | None = None) -> None:
    """Before dynamic-capacity sampling: a ValueError when the model has no capacity predictor or a
    layer's thresholds are all still 0 (never trained: every token passes for every expert, E times
    the intended compute, as the official code would silently do), a warning when the checkpoint's
    `step` is below `threshold_warmup_steps` (tau still low, too many tokens pass)."""
    if not config.has_predictor:
        raise ValueError(f"dynamic: dynamic capacity needs a capacity predictor; ffn_kind = {config.ffn_kind!r} "
                         "has none (train with ffn_kind=diffmoe or capacity_predictor=True)")
    taus = thresholds(params)
    for tau in taus:
        if not np.isfinite(tau).all() or (tau < 0).any() or (tau > 1).any():
            raise ValueError(f"thresholds: expected finite values in [0, 1] (sigmoid probabilities), got {tau.tolist()}")
    cold = [i for i, tau in enumerate(taus) if not np.any(tau)]
    if cold:
        raise ValueError(f"thresholds: the capacity predictor's thresholds of sparse layer(s) {cold} are all 0, "
                         "never updated by training; dynamic capacity would give every expert every token "
                         "(E times the compute). Train the model first, or sample with static top-k")
    warm = threshold_warmup_steps(config.threshold_decay)
    if step is not None and step < warm:
        warnings.warn(f"thresholds: the checkpoint has trained {step} steps, fewer than the {warm} its threshold "
                      f"EMA (decay {config.threshold_decay}) needs to reach 95 % of its target; dynamic capacity "
                      "will pass more tokens than in training", stacklevel=2)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------

def generate(params, config: ModelConfig, prompts, seed: int = 0, num_steps: int = DEFAULT_SAMPLE_STEPS,
             guidance_scale: float = DEFAULT_GUIDANCE, batch_size: int = 64, group_size=None, progress=True,
             seeds=None, desc="sample", dynamic: bool = False, step: int | None = None, mesh: dict | None = None):
    """Images for a list of prompts: (images (M, I, I, Ch) in [0, 1], experts (T, n, M, S)).

    Prompt k starts from noise drawn with np.random.default_rng([seed, k]) (or [seeds[k]]), so an
    image does not depend on the batch it was drawn in (for the default one-image groups; a
    DiffMoE model's pool is the whole batch, so its images do depend on their batch, by design).
    The last batch is padded to `batch_size` with null prompts so the sampler compiles once
    (DiffMoE: not padded, so no padding image joins a pool; one more compile).
    `dynamic`: DiffMoE's dynamic capacity, after `check_thresholds(params, config, step)`.
    `mesh` ({"data": n, "expert": m}, the --mesh flag): the parameters are placed as in training
    (`mesh_lib.param_shardings`) and each batch is split over `data`, so the compiled sampler runs
    sharded (GSPMD) and returns what one device returns; `data` must divide the batch (for a DiffMoE
    model also its unpadded last batch). Unknown words raise ValueError."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts: expected at least one prompt")
    text.check_config(config)
    if dynamic:
        check_thresholds(params, config, step)
    ids, mask = text.encode(prompts, config)                        # (M, L) x2; unknown word -> ValueError
    n = len(prompts)
    noise = np.stack([sample_noise(np.random.default_rng([seed, k] if seeds is None else [int(seeds[k])]), 1, config)[0]
                      for k in range(n)])                           # (M, I, I, Ch)
    bs = min(batch_size, n)
    # Padding the last batch keeps one compiled sampler; a batch pool (DiffMoE) would route the
    # padding images with the real ones, so its last batch runs at its own size instead.
    pad = 0 if config.ffn_kind == "diffmoe" else (-n) % bs
    if pad:
        pid, pmask = text.encode([""] * pad, config)
        ids, mask = np.concatenate([ids, pid]), np.concatenate([mask, pmask])
        noise = np.concatenate([noise, np.zeros((pad,) + noise.shape[1:], np.float32)])
    place = _placement(params, config, mesh, bs, n + pad)
    params = place(params)
    images, experts = [], []
    for start in tqdm(range(0, n + pad, bs), desc=desc, disable=not progress, unit="batch", dynamic_ncols=True):
        sl = slice(start, start + bs)
        with place.context():                                    # the mesh, for the expert-parallel layer
            x, counts = sample(params, *place((noise[sl], ids[sl], mask[sl])), config, num_steps, guidance_scale,
                               group_size, bool(dynamic))
        images.append(to_images(x))
        experts.append(np.asarray(counts))
    images = np.concatenate(images)[:n]
    experts = np.concatenate(experts, axis=2)[:, :, :n]
    return images, experts


def _placement(params, config: ModelConfig, mesh: dict | None, batch_size: int, total: int):
    """A function placing the parameters (a dict) or a batch (a tuple of arrays) on the mesh, with
    `.context()` the mesh context to sample under; the identity (and a null context) without one.
    Checks the mesh against the config and the batch sizes first."""
    axes = mesh_lib.check_mesh(mesh or {}, config, batch_size=batch_size)
    if not axes:
        def identity(tree):
            return tree
        identity.context = contextlib.nullcontext
        return identity
    last = total % batch_size
    if last and last % axes.get("data", 1):
        raise ValueError(f"{mesh_lib.FLAG}: data={axes['data']} does not divide the last batch of {last} prompts "
                         "(a DiffMoE model's last batch is not padded); give a multiple of it")
    device_mesh = mesh_lib.make_mesh(axes)
    param_sharding = mesh_lib.param_shardings(params, device_mesh)

    def place(tree):
        if isinstance(tree, dict):
            return jax.device_put(tree, param_sharding)
        return tuple(mesh_lib.shard_batch(dict(enumerate(tree)), device_mesh).values())  # split over data
    # Under the mesh, the model's expert-choice layers exchange tokens with shard_map's all_to_all
    # (accelerated.expert_parallel), as the training step does
    place.context = lambda: jax.set_mesh(device_mesh)
    return place
