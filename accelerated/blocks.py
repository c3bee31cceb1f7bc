"""The DiT block of EC-DiT (Sec. 2.3, Fig. 2), JAX twin of reference/blocks.py:

    x_s = x + gate_msa * SelfAttn(modulate(LN(x)))
    x'  = x_s + MHCA(x_s, Enc(y))                                    (4)
    x_p = modulate(LN(x'))                                           router and expert input
    out = x' + gate_mlp * (FFN(x_p) or MoE(x_p))          MoE: expert choice, or token choice top-k

Shapes: B batch, S image tokens, L text tokens, D width, F_t timestep-frequency width.

On a device mesh (JAX only: the spec has no devices). When the block is traced under a mesh
context with axes ("data", "expert") (`jax.set_mesh`, as `ecdit.systems.mesh.sharded_train_step`
sets it), the MoE layer (expert choice, token choice, DiffMoE's pools static or dynamic) runs
expert-parallel when the mesh fits the layer (`expert_parallel.context_mesh`): its shard_map
twin in accelerated/expert_parallel.py, two fixed-size all_to_alls over "expert", through
`expert_parallel.in_model`. DiffMoE's default pool (the whole batch, G = 1) stays on GSPMD.
"""
import jax.numpy as jnp
import numpy as np

from .jit import checked_jit
from .attention import cross_attention, self_attention
from .primitives import feed_forward, layer_norm, silu
from .diffmoe import pool_moe, pool_moe_dynamic
from .expert_parallel import context_mesh, expert_choice_moe_sharded, in_model, pool_moe_dynamic_sharded, \
    pool_moe_sharded, token_choice_moe_sharded
from .routing import expert_choice_moe, group_tokens, ungroup_tokens
from .token_choice import token_choice_moe
from ecdit.core import contracts


# ---------------------------------------------------------------------------------------------
# Conditioning: timestep embedding and AdaLN
# ---------------------------------------------------------------------------------------------

@checked_jit(contracts.sinusoidal_embedding, static_argnames=("dim", "scale", "max_period"))
def sinusoidal_embedding(t, dim, scale=1000.0, max_period=10000.0):
    """Sinusoidal features of 1000 t: [cos(1000 t freq_j), sin(1000 t freq_j)]."""
    half = dim // 2
    freqs = jnp.asarray(np.exp(-np.log(max_period) * np.arange(half) / half).astype(t.dtype))  # (dim/2,)
    args = (scale * t)[:, None] * freqs[None, :]                 # (B, dim/2)
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)  # (B, dim)


@checked_jit(contracts.timestep_mlp)
def timestep_mlp(t_freq, params):
    """The two-layer timestep MLP: c = W2 SiLU(W1 t_freq + b1) + b2."""
    hidden = silu(t_freq @ params["w1"] + params["b1"])          # (B, D)
    return hidden @ params["w2"] + params["b2"]                  # (B, D)


@checked_jit(contracts.adaln_modulation)
def adaln_modulation(c, params):
    """AdaLN: six (B, D) vectors, Linear(SiLU(c)) split in six (DiT)."""
    mod = silu(c) @ params["w"] + params["b"]                    # (B, 6 D)
    names = ("shift_msa", "scale_msa", "gate_msa", "shift_mlp", "scale_mlp", "gate_mlp")
    return dict(zip(names, jnp.split(mod, 6, axis=-1)))          # 6 x (B, D)


@checked_jit(contracts.modulate)
def modulate(x, shift, scale):
    """AdaLN's affine: x * (1 + scale) + shift."""
    return x * (1.0 + scale[:, None, :]) + shift[:, None, :]     # (B, S, D)


# ---------------------------------------------------------------------------------------------
# The block
# ---------------------------------------------------------------------------------------------

@checked_jit(contracts.dit_block,
             static_argnames=("num_heads", "num_kv_heads", "capacity_factor", "group_size", "num_selected",
                              "dynamic"))
def dit_block(x, c, y, params, num_heads, num_kv_heads, capacity_factor=2.0, group_size=None, text_mask=None,
              num_selected=2, dynamic=False):
    """One EC-DiT block (Fig. 2); the FFN is the one under params' 'dense', 'expert_choice',
    'token_choice' or 'diffmoe' key ('diffmoe': pools of group_size tokens, default the batch; a
    predictor: the pooled form, dynamic capacity with `dynamic`). Returns (out (B, S, D), routing
    or None)."""
    b, s, d = x.shape
    mod = adaln_modulation(c, params["adaln"])                   # 6 x (B, D)
    h = modulate(layer_norm(x), mod["shift_msa"], mod["scale_msa"])          # (B, S, D)
    x_s = x + mod["gate_msa"][:, None, :] * self_attention(h, params["self_attn"], num_heads, num_kv_heads)  # (B, S, D)
    x_prime = x_s + cross_attention(x_s, y, params["cross_attn"], num_heads, text_mask)  # (B, S, D)  Eq. 4
    x_p = modulate(layer_norm(x_prime), mod["shift_mlp"], mod["scale_mlp"])  # (B, S, D)
    if "dense" in params:
        ffn_out = feed_forward(x_p, params["dense"]["w1"], params["dense"]["w2"])  # (B, S, D)
        routing = None
    else:
        kind = next(k for k in ("expert_choice", "token_choice", "diffmoe") if k in params)
        moe = params[kind]
        default = b * s if kind == "diffmoe" else s              # DiffMoE: the batch; else one image
        pool = default if group_size is None else group_size
        grouped = group_tokens(x_p, pool)                        # (G, pool, D)
        if "predictor" in moe and dynamic:                       # DiffMoE inference: k_e from the predictor
            layers, args = (pool_moe_dynamic, pool_moe_dynamic_sharded), (moe["predictor"], moe["threshold"])
        elif "predictor" in moe:                                 # expert choice per pool, predictor trained
            layers, args = (pool_moe, pool_moe_sharded), (moe["predictor"], capacity_factor)
        elif kind == "expert_choice":                            # expert choice, Eq. 5-8
            layers, args = (expert_choice_moe, expert_choice_moe_sharded), (capacity_factor,)
        else:                                                    # token choice top-k (GShard)
            layers, args = (token_choice_moe, token_choice_moe_sharded), (capacity_factor, num_selected)
        # JAX: under a ("data", "expert") mesh context that fits (expert axis >= 2, G divisible by
        # data x expert, E by expert; `context_mesh`), the layer's shard_map twin: groups (pools)
        # over both axes, experts over "expert", two all_to_alls, in and out pinned to that split
        # of the groups (`expert_parallel.in_model`); the same outputs as the plain layer.
        # Otherwise (one device, no context, shapes that do not split; DiffMoE's one pool holding
        # the batch) the plain layer, which a mesh's GSPMD partitioner shards itself.
        mesh = context_mesh(grouped.shape[0], moe["w_router"].shape[1])
        weights = (grouped, moe["w_router"], moe["w1"], moe["w2"])
        if mesh is None:
            out_g, routing = layers[0](*weights, *args)
        else:
            out_g, routing = in_model(layers[1], *weights, *args, mesh=mesh)
        ffn_out = ungroup_tokens(out_g, b)                        # (B, S, D)
        routing = dict(routing, experts_per_token=routing["experts_per_token"].reshape(b, s))  # (B, S)
    return x_prime + mod["gate_mlp"][:, None, :] * ffn_out, routing          # (B, S, D)
