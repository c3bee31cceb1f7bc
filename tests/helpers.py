"""Test helpers: the two halves, the small model and training configs the model tests share,
hypothesis strategies that draw a configuration first, then arrays from a seeded NumPy generator
(bounded, unit-scale values, no subnormals), shared input builders (text masks, MoE layers, the
block's router input rebuilt by hand) and routing-margin utilities.

Drawing arrays through `np.random.default_rng(seed)` keeps examples cheap while hypothesis still
shrinks the shapes and the seed; values with deliberate ties come from `tied_values`.
"""
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st

from ecdit import accelerated, reference
from ecdit.core.config import ModelConfig, TrainConfig

# The two halves, for tests that run the same property on each: parametrize("half", HALVES).
HALVES = [pytest.param(reference, id="reference"), pytest.param(accelerated, id="accelerated")]


def small_config(kind="expert_choice", **changes) -> ModelConfig:
    """A 16x16, two-layer model (one sparse layer of 4 experts) that compiles in seconds; tests
    share it, so equal configs reuse one compiled program."""
    base = dict(name="test", image_size=16, patch_size=4, depth=2, width=32, num_heads=4, num_kv_heads=2,
                ffn_kind=kind, num_experts=4, text_width=16, text_depth=1, text_heads=2, freq_dim=16)
    base.update(changes)
    return ModelConfig(**base)


def small_train(**changes) -> TrainConfig:
    """Training settings shared by the training, checkpoint and command-line tests."""
    base = dict(batch_size=8, learning_rate=3e-3, warmup_steps=5, mask_ratio=0.5, caption_dropout=0.1,
                grad_clip=1.0)
    base.update(changes)
    return TrainConfig(**base)


def fewer_examples(divisor=3):
    """A third (by default) of the active profile's examples, for tests that compile a whole block
    per drawn shape; still scales up under the 'thorough' profile."""
    return settings(max_examples=max(4, settings.default.max_examples // divisor))


seeds = st.integers(min_value=0, max_value=2**32 - 1)


def normal(rng, shape, scale=1.0, dtype=np.float32):
    return (scale * rng.standard_normal(shape)).astype(dtype)


def tied_values(rng, shape, levels=4, dtype=np.float32):
    """Values from a handful of levels, so top-C must break many exact ties."""
    return (rng.integers(0, levels, size=shape) / levels).astype(dtype)


def text_mask(rng, batch, length):
    """A (B, L) padding mask with at least one real text token per row, real tokens first."""
    lengths = rng.integers(1, length + 1, size=batch)            # (B,)
    return np.arange(length)[None, :] < lengths[:, None]         # (B, L)


def moe_layer(seed, g, s, d, e, f):
    """Inputs of an MoE layer, float32 at unit scale: x (G, S, D), w_router (D, E), w1 (E, D, F),
    w2 (E, F, D), the weights scaled by 1/sqrt(fan-in)."""
    rng = np.random.default_rng(seed)
    return (normal(rng, (g, s, d)), normal(rng, (d, e), 1 / np.sqrt(d)),
            normal(rng, (e, d, f), 1 / np.sqrt(d)), normal(rng, (e, f, d), 1 / np.sqrt(f)))


def block_router_input(x, c, y, p, num_heads, num_kv_heads, text_mask=None):
    """Eq. 4 rebuilt by hand from the reference pieces, as the DiT block computes it (docs/errata.md):
    returns the AdaLN modulation `mod`, x' = x_s + MHCA(x_s) (B, S, D) and the router / expert input
    x_p = modulate(LN(x'), shift_mlp, scale_mlp) (B, S, D)."""
    blocks, attention, primitives = reference.blocks, reference.attention, reference.primitives
    mod = blocks.adaln_modulation(c, p["adaln"])
    h = blocks.modulate(primitives.layer_norm(x), mod["shift_msa"], mod["scale_msa"])
    x_s = x + mod["gate_msa"][:, None] * attention.self_attention(h, p["self_attn"], num_heads, num_kv_heads)
    x_prime = x_s + attention.cross_attention(x_s, y, p["cross_attn"], num_heads, text_mask)
    x_p = blocks.modulate(primitives.layer_norm(x_prime), mod["shift_mlp"], mod["scale_mlp"])
    return mod, x_prime, x_p


@st.composite
def moe_shapes(draw, max_groups=3, max_tokens=24, max_width=16, max_experts=8):
    """(G, S, D, E, F, capacity_factor) with a valid capacity 1 <= C <= S."""
    g = draw(st.integers(1, max_groups))
    s = draw(st.integers(2, max_tokens))
    d = draw(st.integers(1, max_width))
    e = draw(st.integers(1, max_experts))
    f = draw(st.integers(1, max_width))
    low = max(0.6 * e / s, 0.05)                                  # keeps C = round(S f / E) >= 1
    capacity_factor = draw(st.floats(low, float(e), allow_nan=False).map(lambda v: round(v, 2)))
    capacity_factor = min(max(capacity_factor, low), float(e))
    return g, s, d, e, f, capacity_factor


def topc_margin(affinity, capacity):
    """Smallest gap, over groups and experts, between the C-th and (C+1)-th largest affinity.

    When it is tiny, float32 rounding differences between NumPy and XLA may legitimately pick a
    different token; equivalence tests of whole layers skip such draws (ties are tested exactly
    on the gating function itself, with identical inputs)."""
    per_expert = np.sort(np.swapaxes(np.asarray(affinity, np.float64), 1, 2), axis=-1)[..., ::-1]  # (G, E, S)
    if capacity >= per_expert.shape[-1]:
        return np.inf
    return float(np.min(per_expert[..., capacity - 1] - per_expert[..., capacity]))


def dense_gating(gating, index, num_tokens):
    """Eq. 6's dense form (G, S, E) from the compact (gating, index) pair (G, E, C)."""
    gating, index = np.asarray(gating), np.asarray(index)
    g, e, c = index.shape
    dense = np.zeros((g, num_tokens, e), gating.dtype)
    for gi in range(g):
        for ei in range(e):
            dense[gi, index[gi, ei], ei] = gating[gi, ei]
    return dense


# ---------------------------------------------------------------------------------------------
# Simulated devices: multi-device code runs in its own Python, so this one keeps one device
# ---------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def simulated_devices_env(devices: int) -> dict:
    """The environment of a subprocess with `devices` simulated CPU devices and this checkout on
    its path. --xla_backend_optimization_level=0: LLVM's optimisation of the CPU code is half of
    the compile time and changes nothing the SPMD partitioner does."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    for name in ("ECDIT_COORDINATOR", "ECDIT_NUM_PROCESSES", "ECDIT_PROCESS_ID"):
        env.pop(name, None)                                      # a caller's cluster settings never leak in
    return env
