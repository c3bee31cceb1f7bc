"""Sampling: Euler integration of the classifier-free-guided velocity, from noise to an image.

    v_guided(x, t) = v(x, t, null) + s * (v(x, t, y) - v(x, t, null))      on ALL channels
    x_{t - dt} = x_t - dt * v_guided(x_t, t),  t = 1 (noise) -> 0 (data)    `flow.euler_sample`

The null caption "" (<null> then padding, `model.null_caption`) is what caption dropout trains.
Guidance applies to every channel: not the 3-channel shortcut of some public DiT code. The
conditional and null halves run as one batch of 2B images; with an inference group larger than
S one routing group holds tokens of several images and of both halves (Sec. 3.1), so expert
choice then depends on the batch; a group of S (None, the default) keeps each image's routing
to itself. A DiffMoE model (one pool holding the batch) runs the two halves as separate batches
of B, as the official DiffMoE code does (docs/diffmoe.md): two pools of the training pool's size.

Randomness enters as the `noise` argument (the sampling loop of ecdit.systems owns the RNG).

Shapes: B images, I x I x Ch, S tokens, L text tokens, T steps, n sparse layers.
"""
import numpy as np

from ecdit.core import contracts
from ecdit.core.checks import checked
from ecdit.core.config import DEFAULT_GUIDANCE, DEFAULT_SAMPLE_STEPS

from .flow import euler_sample
from .model import forward, null_caption, unpatchify


@checked(contracts.guided_velocity)
def guided_velocity(params, x, t, text_ids, text_mask, config, guidance_scale, group_size=None, dynamic=False):
    """The CFG velocity of the whole image, and how many experts chose each token.

    A DiffMoE model ('diffmoe': one pool holding the batch) runs the conditional and the null
    halves as two batches, two pools, as the official code does: the pool then holds B images at
    inference as in training, and the null predictions never compete with the conditional ones for
    an expert's slots. Every other model runs them as one batch of 2B (routing groups of S keep
    each image to itself either way). `dynamic`: DiffMoE's dynamic capacity (docs/diffmoe.md).

    Returns (v (B, I, I, Ch), experts_per_token (n, B, S) of the conditional half, per sparse layer)."""
    b, l = text_ids.shape
    null_ids, null_mask = null_caption(b, l)                     # (B, L) x2
    if config.ffn_kind == "diffmoe":                             # two pools: the halves apart
        v_cond, routing = forward(params, x, t, text_ids, text_mask, config, None, group_size, dynamic)  # (B, S, P)
        v_null, _ = forward(params, x, t, null_ids, null_mask, config, None, group_size, dynamic)  # (B, S, P)
    else:                                                        # one batch of 2B: [cond; null]
        x2 = np.concatenate([x, x], axis=0)                     # (2B, I, I, Ch)
        t2 = np.concatenate([t, t], axis=0)                     # (2B,)
        ids2 = np.concatenate([text_ids, null_ids], axis=0)     # (2B, L)
        mask2 = np.concatenate([text_mask, null_mask], axis=0)  # (2B, L)
        v, routing = forward(params, x2, t2, ids2, mask2, config, None, group_size, dynamic)  # (2B, S, P)
        v_cond, v_null = v[:b], v[b:]                            # (B, S, P) x2
    guided = v_null + guidance_scale * (v_cond - v_null)         # (B, S, P)  all channels
    experts = [r["experts_per_token"][:b] for r in routing if r is not None]   # n x (B, S)
    experts = np.stack(experts) if experts else np.zeros((0, b, config.num_tokens), np.int32)  # (n, B, S)
    return unpatchify(guided, config.patch_size, config.image_size, config.image_size), experts


@checked(contracts.sample)
def sample(params, noise, text_ids, text_mask, config, num_steps=DEFAULT_SAMPLE_STEPS,
           guidance_scale=DEFAULT_GUIDANCE, group_size=None, dynamic=False):
    """Euler + CFG from `noise` (t = 1) to t = 0 in `num_steps` equal steps.

    Returns (x0 (B, I, I, Ch) in model units, about [-1, 1]; experts_per_token (T, n, B, S):
    how many experts chose each token, per step and sparse layer: the heatmaps of Fig. 6).
    group_size None: config.inference_group_size (None there too: one image per group).
    dynamic: DiffMoE's dynamic capacity in the layers with a capacity predictor (else static top-k)."""
    group_size = config.inference_group_size if group_size is None else group_size

    def velocity_fn(x, t):                                       # (B, I, I, Ch), (B,)
        return guided_velocity(params, x, t, text_ids, text_mask, config, guidance_scale, group_size, dynamic)

    return euler_sample(velocity_fn, noise, num_steps, has_aux=True)  # (B, I, I, Ch), (T, n, B, S)
