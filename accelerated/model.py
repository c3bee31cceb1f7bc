"""The whole EC-DiT (Sec. 2, Fig. 2), jit-compiled JAX twin of reference/model.py:

    tokens = patchify(x_t) W_patch + b + pos       (B, S, D);  masking keeps (B, S', D)
    c = MLP(sinusoid(1000 t)),  y = TextEncoder(ids)
    tokens = block_l(tokens, c, y)                 dense / expert choice / token choice
    v = Linear(modulate(LN(tokens), shift(c), scale(c)))   (B, S', P)

Same functions, argument order and shape comments as the reference; `forward` compiles once per
(config, group_size, input shapes). The sin-cos table is built on the host with the reference's
NumPy function (a constant under jit).

Shapes: B batch, I x I x Ch image, p patch, S tokens, S' kept tokens, P = p p Ch, D width,
L text tokens, Dy text width.
"""
import jax.numpy as jnp

from ecdit.core import contracts
from ecdit.core.config import NULL_ID, PAD_ID
from ecdit.reference import model as _reference

from .attention import cross_attention
from .blocks import dit_block, modulate, sinusoidal_embedding, timestep_mlp
from .flow import velocity_from_x0
from .dots import dot_last
from .jit import checked_jit
from .primitives import feed_forward, layer_norm, silu


# ---------------------------------------------------------------------------------------------
# Patches and positions
# ---------------------------------------------------------------------------------------------

@checked_jit(contracts.patchify, static_argnames=("patch_size",))
def patchify(images, patch_size):
    """Row-major p x p patches: (B, I, J, Ch) -> (B, S, p p Ch)."""
    b, h, w, ch = images.shape
    p = patch_size
    x = images.reshape(b, h // p, p, w // p, p, ch)               # (B, I/p, p, J/p, p, Ch)
    x = x.transpose(0, 1, 3, 2, 4, 5)                            # (B, I/p, J/p, p, p, Ch)
    return x.reshape(b, (h // p) * (w // p), p * p * ch)         # (B, S, P)


@checked_jit(contracts.unpatchify, static_argnames=("patch_size", "height", "width"))
def unpatchify(patches, patch_size, height, width):
    """Inverse of `patchify`: (B, S, p p Ch) -> (B, I, J, Ch)."""
    b, s, pdim = patches.shape
    p = patch_size
    ch = pdim // (p * p)
    x = patches.reshape(b, height // p, width // p, p, p, ch)    # (B, I/p, J/p, p, p, Ch)
    x = x.transpose(0, 1, 3, 2, 4, 5)                            # (B, I/p, p, J/p, p, Ch)
    return x.reshape(b, height, width, ch)                       # (B, I, J, Ch)


@checked_jit(contracts.sincos_embedding_2d, static_argnames=("grid_size", "dim"))
def sincos_embedding_2d(grid_size, dim):
    """Fixed 2-D sin-cos positions, (S, D). JAX: the reference's host table (a jit constant)."""
    return jnp.asarray(_reference.sincos_embedding_2d(grid_size, dim))


@checked_jit(contracts.positional_embedding, static_argnames=("config",))
def positional_embedding(params, config):
    """(S, D) positions: fixed sin-cos, or learned params['pos_embed']."""
    if config.pos_embedding == "learned":
        return params["pos_embed"]                               # (S, D)
    return sincos_embedding_2d(config.grid_size, config.width)   # (S, D)


@checked_jit(contracts.embed_patches, static_argnames=("config",))
def embed_patches(x_t, params, config):
    """Linear patch embedding plus positions: (B, I, J, Ch) -> (B, S, D)."""
    patches = patchify(x_t, config.patch_size)                   # (B, S, P)
    tokens = dot_last(patches, params["patch_embed"]["w"]) + params["patch_embed"]["b"]  # (B, S, D)
    return tokens + positional_embedding(params, config)[None]   # (B, S, D)


@checked_jit(contracts.keep_tokens)
def keep_tokens(tokens, keep_index):
    """Masking: keep tokens keep_index (B, S'); (B, S, D) -> (B, S', D)."""
    return jnp.take_along_axis(tokens, keep_index[..., None], axis=1)  # (B, S', D)  JAX: one gather


# ---------------------------------------------------------------------------------------------
# Conditioning: text encoder and timestep
# ---------------------------------------------------------------------------------------------

@checked_jit(contracts.null_caption, static_argnames=("batch_size", "max_len"))
def null_caption(batch_size, max_len):
    """The empty caption "" for every row: <null> then padding. (ids (B, L) int32, mask (B, L) bool)."""
    ids = jnp.full((batch_size, max_len), PAD_ID, dtype=jnp.int32).at[:, 0].set(NULL_ID)  # (B, L)
    mask = jnp.broadcast_to(jnp.arange(max_len) == 0, (batch_size, max_len))               # (B, L)
    return ids, mask


@checked_jit(contracts.text_encoder, static_argnames=("num_heads",))
def text_encoder(text_ids, text_mask, params, num_heads):
    """Enc(y): embeddings + positions, pre-LN transformer layers, final LN. (B, L) -> (B, L, Dy)."""
    l = text_ids.shape[1]
    h = params["embed"][text_ids] + params["pos"][None, :l]      # (B, L, Dy)
    for layer in params["layers"]:
        hn = layer_norm(h)                                       # (B, L, Dy)
        h = h + cross_attention(hn, hn, layer["attn"], num_heads, text_mask)  # (B, L, Dy)
        h = h + feed_forward(layer_norm(h), layer["ffn"]["w1"], layer["ffn"]["w2"])  # (B, L, Dy)
    return layer_norm(h)                                         # (B, L, Dy)


@checked_jit(contracts.timestep_condition, static_argnames=("config",))
def timestep_condition(t, params, config):
    """c = MLP(sinusoid(1000 t)). (B,) -> (B, D)."""
    t_freq = sinusoidal_embedding(t, config.freq_dim, scale=config.timestep_scale)  # (B, F_t)
    return timestep_mlp(t_freq, params)                          # (B, D)


@checked_jit(contracts.pooled_text)
def pooled_text(y, text_mask, params):
    """Deviation (config.pooled_text): the masked mean of Enc(y), projected to D, added to c.
    (B, L, Dy) -> (B, D)."""
    w = text_mask[..., None].astype(y.dtype)                     # (B, L, 1)
    pooled = (y * w).sum(axis=1) / w.sum(axis=1)                 # (B, Dy)
    return pooled @ params["w"] + params["b"]                    # (B, D)


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------

@checked_jit(contracts.model_block, static_argnames=("config", "group_size", "dynamic"))
def model_block(x, c, y, params, config, group_size=None, text_mask=None, dynamic=False):
    """One block with the config's heads, capacity factor and top-k: `dit_block` picks the FFN
    ('dense', 'expert_choice', 'token_choice' or 'diffmoe') from the block's params; `dynamic`:
    DiffMoE's dynamic capacity in the layers with a capacity predictor. In a 'diffmoe' model the
    pool (`config.pool_tokens`: the batch, or pool_images images) takes the routing group's place."""
    if config.ffn_kind == "diffmoe":
        group_size = config.pool_tokens(x.shape[0], x.shape[1])   # None: one pool holding the batch
    return dit_block(x, c, y, params, config.num_heads, config.num_kv_heads, config.capacity_factor,
                     group_size, text_mask, config.num_selected, dynamic)


# ---------------------------------------------------------------------------------------------
# Final layer and the model
# ---------------------------------------------------------------------------------------------

@checked_jit(contracts.final_layer)
def final_layer(x, c, params):
    """v = Linear(modulate(LN(x), shift, scale)); (B, S, D) -> (B, S, P)."""
    mod = silu(c) @ params["adaln"]["w"] + params["adaln"]["b"]  # (B, 2 D)
    shift, scale = jnp.split(mod, 2, axis=-1)                    # 2 x (B, D)
    h = modulate(layer_norm(x), shift, scale)                    # (B, S, D)
    return dot_last(h, params["linear"]["w"]) + params["linear"]["b"]     # (B, S, P)


@checked_jit(contracts.forward, static_argnames=("config", "group_size", "dynamic", "hidden_layer"))
def forward(params, x_t, t, text_ids, text_mask, config, keep_index=None, group_size=None, dynamic=False,
            hidden_layer=None):
    """v_theta(x_t, t, y) in patch space: (velocity (B, S', P), per-layer routing list); compiles
    once per (config, group_size, input shapes). hidden_layer k: also return block k's output,
    as (velocity, routing, hidden)."""
    tokens = embed_patches(x_t, params, config)                  # (B, S, D)
    if keep_index is not None:
        tokens = keep_tokens(tokens, keep_index)                 # (B, S', D)
    c = timestep_condition(t, params["t_mlp"], config)           # (B, D)
    y = text_encoder(text_ids, text_mask, params["text"], config.text_heads)  # (B, L, Dy)
    if config.pooled_text:
        c = c + pooled_text(y, text_mask, params["text_pool"])  # (B, D)  deviation: pooled caption in AdaLN
    routing, hidden = [], None
    for i, block in enumerate(params["blocks"]):
        tokens, r = model_block(tokens, c, y, block, config, group_size, text_mask, dynamic)  # (B, S', D)
        routing.append(r)
        if i + 1 == hidden_layer:
            hidden = tokens                                      # (B, S', D)  block k's output
    out = final_layer(tokens, c, params["final"])                # (B, S', P)
    if config.prediction == "x0":                                # deviation: x-prediction (docs/model.md)
        x_t_p = patchify(x_t, config.patch_size)                 # (B, S, P)
        if keep_index is not None:
            x_t_p = keep_tokens(x_t_p, keep_index)               # (B, S', P)
        out = velocity_from_x0(out, x_t_p, t, config.prediction_min_t)  # (B, S', P)
    if hidden_layer is not None:
        return out, routing, hidden                              # (B, S', P), list, (B, S', D)
    return out, routing                                          # (B, S', P)


@checked_jit(contracts.velocity, static_argnames=("config", "group_size", "dynamic"))
def velocity(params, x_t, t, text_ids, text_mask, config, group_size=None, dynamic=False):
    """The full-image velocity (B, I, J, Ch): `forward` without masking, unpatchified."""
    v, _ = forward(params, x_t, t, text_ids, text_mask, config, None, group_size, dynamic)  # (B, S, P)
    return unpatchify(v, config.patch_size, config.image_size, config.image_size)  # (B, I, J, Ch)
