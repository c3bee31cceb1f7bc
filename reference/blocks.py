"""The DiT block of EC-DiT (Sec. 2.3, Fig. 2): timestep MLP, AdaLN, and one block with
self-attention, cross-attention (Eq. 4) and a dense FFN or an expert-choice MoE.

    c = MLP(sinusoid(1000 t))                               two-layer timestep embedding
    (shift, scale, gate) x 2 = Linear(SiLU(c))              AdaLN-Zero modulation (DiT)
    x_s = x + gate_msa * SelfAttn(modulate(LN(x), shift_msa, scale_msa))
    x'  = x_s + MHCA(x_s, Enc(y))                                                          (4)
    x_p = modulate(LN(x'), shift_mlp, scale_mlp)            router *and* expert input
    out = x' + gate_mlp * FFN(x_p)   or   x' + gate_mlp * MoE(x_p)

Eq. 4 leaves open whether the router sees x' or its AdaLN-modulated form; we route x_p, the
tensor the experts process (Algorithm 1 routes and dispatches the same x_p) — docs/errata.md.

Shapes: B batch, S image tokens, L text tokens, D width, Dy text width, F_t timestep-frequency
width, G routing groups of `group_size` tokens.
"""
import numpy as np

from ecdit.core import contracts
from ecdit.core.checks import checked
from .attention import cross_attention, self_attention
from .primitives import feed_forward, layer_norm, silu
from .diffmoe import pool_moe, pool_moe_dynamic
from .routing import expert_choice_moe, group_tokens, ungroup_tokens
from .token_choice import token_choice_moe


# ---------------------------------------------------------------------------------------------
# Conditioning: timestep embedding and AdaLN
# ---------------------------------------------------------------------------------------------

@checked(contracts.sinusoidal_embedding)
def sinusoidal_embedding(t, dim, scale=1000.0, max_period=10000.0):
    """Sinusoidal features of the timestep (Vaswani et al.; DiT's TimestepEmbedder):
        freq_j = max_period^(-j / (dim/2)),  emb = [cos(scale t freq), sin(scale t freq)].

    t lives in [0, 1]; scaling by 1000 first spreads it over the sinusoids' periods (feeding raw
    [0, 1] into 10000-period sinusoids leaves most features nearly constant)."""
    half = dim // 2
    freqs = np.exp(-np.log(max_period) * np.arange(half) / half).astype(t.dtype)  # (dim/2,)
    args = (scale * t)[:, None] * freqs[None, :]                 # (B, dim/2)
    return np.concatenate([np.cos(args), np.sin(args)], axis=-1)  # (B, dim)


@checked(contracts.timestep_mlp)
def timestep_mlp(t_freq, params):
    """The two-layer timestep MLP with width D (Sec. 2.3): c = W2 SiLU(W1 t_freq + b1) + b2."""
    hidden = silu(t_freq @ params["w1"] + params["b1"])          # (B, D)
    return hidden @ params["w2"] + params["b2"]                  # (B, D)


@checked(contracts.adaln_modulation)
def adaln_modulation(c, params):
    """AdaLN: six (B, D) vectors from the conditioning, Linear(SiLU(c)) split in six (DiT).

    With the zero initialisation of DiT (adaLN-Zero) every gate starts at 0, so each block
    starts as the identity."""
    mod = silu(c) @ params["w"] + params["b"]                    # (B, 6 D)
    names = ("shift_msa", "scale_msa", "gate_msa", "shift_mlp", "scale_mlp", "gate_mlp")
    return dict(zip(names, np.split(mod, 6, axis=-1)))           # 6 x (B, D)


@checked(contracts.modulate)
def modulate(x, shift, scale):
    """AdaLN's affine: x * (1 + scale) + shift, per sample and channel."""
    return x * (1.0 + scale[:, None, :]) + shift[:, None, :]     # (B, S, D)


# ---------------------------------------------------------------------------------------------
# The block
# ---------------------------------------------------------------------------------------------

@checked(contracts.dit_block)
def dit_block(x, c, y, params, num_heads, num_kv_heads, capacity_factor=2.0, group_size=None, text_mask=None,
              num_selected=2, dynamic=False):
    """One EC-DiT block (Fig. 2). `params` holds 'adaln', 'self_attn', 'cross_attn' and exactly one
    FFN, under the key of its kind: 'dense' (w1, w2), 'expert_choice' (w_router, w1, w2),
    'token_choice' (the GShard top-`num_selected` baseline, same arrays) or 'diffmoe' (the same
    plus DiffMoE's 'predictor' and 'threshold'). Routing pools: for 'expert_choice' and
    'token_choice' the B * S tokens are regrouped into groups of `group_size` (default S: one image
    per group), so a group may span several images; for 'diffmoe' group_size is the pool (default
    the whole batch; `model.model_block` passes `ModelConfig.pool_tokens`).

    A pool-routed FFN with a capacity predictor ('diffmoe', or 'expert_choice' holding one) runs
    `diffmoe.pool_moe` (static top-k per pool, plus the predictor's logits and k-th scores); with
    `dynamic` it runs `diffmoe.pool_moe_dynamic`, each expert taking as many tokens of each pool as
    the predictor passes over its threshold. `dynamic` needs a predictor (ValueError otherwise).

    Returns (out (B, S, D), routing) where routing is the MoE's record (expert choice:
    `gating`/`index` (G, E, C); token choice: also the scalar `aux_loss`; with a predictor: also
    `assignment` and `predictor_logits` (G, N, E), and `kth_score` (E,) in training or `capacity`
    (G, E) when dynamic) with `experts_per_token` reshaped to (B, S); None for a dense block."""
    b, s, d = x.shape
    mod = adaln_modulation(c, params["adaln"])                   # 6 x (B, D)
    # Self-attention with AdaLN-Zero gating
    h = modulate(layer_norm(x), mod["shift_msa"], mod["scale_msa"])          # (B, S, D)
    x_s = x + mod["gate_msa"][:, None, :] * self_attention(h, params["self_attn"], num_heads, num_kv_heads)  # (B, S, D)
    # Eq. 4: cross-attention to the text, its sum is the input of the FFN / router
    x_prime = x_s + cross_attention(x_s, y, params["cross_attn"], num_heads, text_mask)  # (B, S, D)
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
            out_g, routing = pool_moe_dynamic(grouped, moe["w_router"], moe["w1"], moe["w2"], moe["predictor"],
                                              moe["threshold"])
        elif "predictor" in moe:                                 # expert choice per pool, predictor trained
            out_g, routing = pool_moe(grouped, moe["w_router"], moe["w1"], moe["w2"], moe["predictor"],
                                      capacity_factor)
        elif kind == "expert_choice":                            # expert choice, Eq. 5-8
            out_g, routing = expert_choice_moe(grouped, moe["w_router"], moe["w1"], moe["w2"], capacity_factor)
        else:                                                    # token choice top-k (GShard)
            out_g, routing = token_choice_moe(grouped, moe["w_router"], moe["w1"], moe["w2"], capacity_factor,
                                              num_selected)
        ffn_out = ungroup_tokens(out_g, b)                        # (B, S, D)
        routing = dict(routing, experts_per_token=routing["experts_per_token"].reshape(b, s))  # (B, S)
    return x_prime + mod["gate_mlp"][:, None, :] * ffn_out, routing          # (B, S, D)
