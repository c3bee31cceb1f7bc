"""Sampling: Euler integration of the classifier-free-guided velocity, JAX twin of
reference/sample.py:

    v_guided(x, t) = v(x, t, null) + s * (v(x, t, y) - v(x, t, null))      on ALL channels
    x_{t - dt} = x_t - dt * v_guided(x_t, t),  t = 1 -> 0                   `flow.euler_sample`

JAX: the whole loop is one compiled program (euler_sample's lax.scan around the model), compiled
once per (config, steps, guidance scale, group size, shapes).

Shapes: B images, I x I x Ch, S tokens, L text tokens, T steps, n sparse layers.
"""
import jax.numpy as jnp

from ecdit.core import contracts
from ecdit.core.config import DEFAULT_GUIDANCE, DEFAULT_SAMPLE_STEPS

from .flow import euler_sample
from .jit import checked_jit
from .model import forward, null_caption, unpatchify


@checked_jit(contracts.guided_velocity, static_argnames=("config", "guidance_scale", "group_size", "dynamic"))
def guided_velocity(params, x, t, text_ids, text_mask, config, guidance_scale, group_size=None, dynamic=False):
    """(v (B, I, I, Ch) guided on all channels, experts_per_token (n, B, S) of the conditional half);
    a DiffMoE model runs the two halves as separate batches (pools), every other one as one."""
    b, l = text_ids.shape
    null_ids, null_mask = null_caption(b, l)                     # (B, L) x2
    if config.ffn_kind == "diffmoe":                             # two pools: the halves apart
        v_cond, routing = forward(params, x, t, text_ids, text_mask, config, None, group_size, dynamic)  # (B, S, P)
        v_null, _ = forward(params, x, t, null_ids, null_mask, config, None, group_size, dynamic)  # (B, S, P)
    else:                                                        # one batch of 2B: [cond; null]
        x2 = jnp.concatenate([x, x], axis=0)                     # (2B, I, I, Ch)
        t2 = jnp.concatenate([t, t], axis=0)                     # (2B,)
        ids2 = jnp.concatenate([text_ids, null_ids], axis=0)     # (2B, L)
        mask2 = jnp.concatenate([text_mask, null_mask], axis=0)  # (2B, L)
        v, routing = forward(params, x2, t2, ids2, mask2, config, None, group_size, dynamic)  # (2B, S, P)
        v_cond, v_null = v[:b], v[b:]                            # (B, S, P) x2
    guided = v_null + guidance_scale * (v_cond - v_null)         # (B, S, P)  all channels
    experts = [r["experts_per_token"][:b] for r in routing if r is not None]   # n x (B, S)
    experts = jnp.stack(experts) if experts else jnp.zeros((0, b, config.num_tokens), jnp.int32)  # (n, B, S)
    return unpatchify(guided, config.patch_size, config.image_size, config.image_size), experts


@checked_jit(contracts.sample, static_argnames=("config", "num_steps", "guidance_scale", "group_size", "dynamic"))
def sample(params, noise, text_ids, text_mask, config, num_steps=DEFAULT_SAMPLE_STEPS,
           guidance_scale=DEFAULT_GUIDANCE, group_size=None, dynamic=False):
    """Euler + CFG from `noise` (t = 1) to t = 0: (x0 (B, I, I, Ch), experts_per_token (T, n, B, S))."""
    group_size = config.inference_group_size if group_size is None else group_size

    def velocity_fn(x, t):                                       # (B, I, I, Ch), (B,)
        return guided_velocity(params, x, t, text_ids, text_mask, config, guidance_scale, group_size, dynamic)

    return euler_sample(velocity_fn, noise, num_steps, has_aux=True)  # (B, I, I, Ch), (T, n, B, S)
