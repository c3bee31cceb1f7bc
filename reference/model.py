"""The whole EC-DiT (Sec. 2, Fig. 2), as readable NumPy: patches in, velocity patches out.

    tokens = patchify(x_t) W_patch + b + pos                      (B, S, D)   Sec. 2.1
    tokens = tokens[keep_index]                                   (B, S', D)  masking (Sec. 3.1)
    c      = MLP(sinusoid(1000 t))                                (B, D)      timestep -> AdaLN
    y      = TextEncoder(ids)                                     (B, L, Dy)  Sec. 2.2
    tokens = block_l(tokens, c, y)  for l = 1..depth              dense / expert choice / token choice
    v      = Linear(modulate(LN(tokens), shift(c), scale(c)))     (B, S', P)  final layer (DiT)
    v      = (x_t - v) / max(t, t_min)   only with prediction "x0": the layer predicted x0 (deviation)

Layers 2, 4, 6, ... (1-based; 1, 3, 5 0-based) are sparse in the MoE models (Sec. 3.1). Routing
groups: the B * S' tokens of a batch are regrouped into groups of `group_size` (None: one image
per group), so an inference group may hold tokens of several images (Sec. 3.1). DiffMoE's layers
('diffmoe', docs/diffmoe.md) pool the whole batch instead, or config.pool_images images.

Deviation (docs/model.md): the paper's frozen 670M T5 encoder cannot be downloaded here; the text
encoder is a small learned word-level transformer over the closed vocabulary of
ecdit.systems.text (ids in, so the model itself knows no words; ids 0 and 1 are <pad> and <null>).

Shapes: B batch, I x I x Ch image, p patch side, S = (I/p)^2 tokens, S' kept tokens,
P = p * p * Ch values per patch, D width, L text tokens, Dy text width.
"""
import numpy as np

from ecdit.core import contracts
from ecdit.core.checks import checked
from ecdit.core.config import NULL_ID, PAD_ID

from .attention import cross_attention
from .blocks import dit_block, modulate, sinusoidal_embedding, timestep_mlp
from .flow import velocity_from_x0
from .primitives import feed_forward, layer_norm, silu


# ---------------------------------------------------------------------------------------------
# Patches and positions
# ---------------------------------------------------------------------------------------------

@checked(contracts.patchify)
def patchify(images, patch_size):
    """Cut (B, I, J, Ch) images into a row-major sequence of p x p patches, (B, S, p p Ch).

    Token s = i * (J/p) + j holds the patch at grid row i, column j; inside a patch the values
    are ordered (row, column, channel)."""
    b, h, w, ch = images.shape
    p = patch_size
    x = images.reshape(b, h // p, p, w // p, p, ch)               # (B, I/p, p, J/p, p, Ch)
    x = x.transpose(0, 1, 3, 2, 4, 5)                            # (B, I/p, J/p, p, p, Ch)
    return x.reshape(b, (h // p) * (w // p), p * p * ch)         # (B, S, P)


@checked(contracts.unpatchify)
def unpatchify(patches, patch_size, height, width):
    """Inverse of `patchify`: (B, S, p p Ch) back to (B, I, J, Ch)."""
    b, s, pdim = patches.shape
    p = patch_size
    ch = pdim // (p * p)
    x = patches.reshape(b, height // p, width // p, p, p, ch)    # (B, I/p, J/p, p, p, Ch)
    x = x.transpose(0, 1, 3, 2, 4, 5)                            # (B, I/p, p, J/p, p, Ch)
    return x.reshape(b, height, width, ch)                       # (B, I, J, Ch)


@checked(contracts.sincos_embedding_2d)
def sincos_embedding_2d(grid_size, dim):
    """Fixed 2-D sin-cos positions (MAE / DiT): half the channels encode the row, half the column,
    each as [sin(pos w_j), cos(pos w_j)] with w_j = 10000^(-j / (dim/4)). Returns (S, D) float32."""
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (np.arange(quarter, dtype=np.float64) / quarter)   # (D/4,)
    rows, cols = np.meshgrid(np.arange(grid_size), np.arange(grid_size), indexing="ij")
    def encode(pos):                                             # (S,) -> (S, D/2)
        angles = pos.reshape(-1)[:, None].astype(np.float64) * omega[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    emb = np.concatenate([encode(rows), encode(cols)], axis=1)   # (S, 4 * D/4)
    out = np.zeros((grid_size * grid_size, dim))                  # D not divisible by 4: pad zeros
    out[:, :emb.shape[1]] = emb
    return out.astype(np.float32)                                # (S, D)


@checked(contracts.positional_embedding)
def positional_embedding(params, config):
    """(S, D) positions: the fixed sin-cos table, or the learned one in params['pos_embed']."""
    if config.pos_embedding == "learned":
        return params["pos_embed"]                               # (S, D)
    return sincos_embedding_2d(config.grid_size, config.width)   # (S, D)


@checked(contracts.embed_patches)
def embed_patches(x_t, params, config):
    """Linear patch embedding plus positions: (B, I, J, Ch) -> (B, S, D)."""
    patches = patchify(x_t, config.patch_size)                   # (B, S, P)
    tokens = patches @ params["patch_embed"]["w"] + params["patch_embed"]["b"]  # (B, S, D)
    return tokens + positional_embedding(params, config)[None]   # (B, S, D)


@checked(contracts.keep_tokens)
def keep_tokens(tokens, keep_index):
    """Masking (MaskDiT, Zheng et al. 2023; Sec. 3.1): keep the tokens listed in keep_index (B, S'),
    drop the rest before the blocks, so masked tokens take no part in attention or routing.
    (B, S, D) -> (B, S', D)."""
    rows = np.arange(tokens.shape[0])[:, None]                   # (B, 1)
    return tokens[rows, keep_index]                              # (B, S', D)


# ---------------------------------------------------------------------------------------------
# Conditioning: text encoder and timestep
# ---------------------------------------------------------------------------------------------

@checked(contracts.null_caption)
def null_caption(batch_size, max_len):
    """The empty caption "" of classifier-free guidance for every row: <null> then padding
    (ecdit.core.config.NULL_ID, PAD_ID; the tokenizer makes the same). (ids (B, L) int32, mask (B, L) bool)."""
    ids = np.full((batch_size, max_len), PAD_ID, dtype=np.int32)  # (B, L)
    ids[:, 0] = NULL_ID
    mask = np.zeros((batch_size, max_len), dtype=bool)           # (B, L)
    mask[:, 0] = True                                            # one valid token: <null>
    return ids, mask


@checked(contracts.text_encoder)
def text_encoder(text_ids, text_mask, params, num_heads):
    """Enc(y) of Sec. 2.2, a small pre-LN transformer over word ids (deviation: not a frozen T5).

        h = Embed[ids] + Pos;   h += MHA(LN h, LN h, mask);   h += FFN(LN h);   Enc(y) = LN h

    Self-attention reuses `cross_attention` with y = x, whose text mask hides padding keys.
    Padding positions get outputs too; every consumer masks them out. (B, L) -> (B, L, Dy)."""
    l = text_ids.shape[1]
    h = params["embed"][text_ids] + params["pos"][None, :l]      # (B, L, Dy)
    for layer in params["layers"]:
        hn = layer_norm(h)                                       # (B, L, Dy)
        h = h + cross_attention(hn, hn, layer["attn"], num_heads, text_mask)  # (B, L, Dy)
        h = h + feed_forward(layer_norm(h), layer["ffn"]["w1"], layer["ffn"]["w2"])  # (B, L, Dy)
    return layer_norm(h)                                         # (B, L, Dy)


@checked(contracts.timestep_condition)
def timestep_condition(t, params, config):
    """c = MLP(sinusoid(1000 t)): t in [0, 1] scaled by `timestep_scale` first. (B,) -> (B, D)."""
    t_freq = sinusoidal_embedding(t, config.freq_dim, scale=config.timestep_scale)  # (B, F_t)
    return timestep_mlp(t_freq, params)                          # (B, D)


@checked(contracts.pooled_text)
def pooled_text(y, text_mask, params):
    """Deviation (config.pooled_text): the masked mean of Enc(y), projected to D, added to c.
    (B, L, Dy) -> (B, D)."""
    w = text_mask[..., None].astype(y.dtype)                     # (B, L, 1)
    pooled = (y * w).sum(axis=1) / w.sum(axis=1)                 # (B, Dy)
    return pooled @ params["w"] + params["b"]                    # (B, D)


# ---------------------------------------------------------------------------------------------
# Blocks: the foundation's DiT block, and its token-choice sibling
# ---------------------------------------------------------------------------------------------

@checked(contracts.model_block)
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

@checked(contracts.final_layer)
def final_layer(x, c, params):
    """DiT's final layer: v = Linear(modulate(LN(x), shift, scale)), (shift, scale) = Linear(SiLU(c)).
    (B, S, D) -> (B, S, P); both linears start at zero (DiT), so an untrained model predicts 0."""
    mod = silu(c) @ params["adaln"]["w"] + params["adaln"]["b"]  # (B, 2 D)
    shift, scale = np.split(mod, 2, axis=-1)                     # 2 x (B, D)
    h = modulate(layer_norm(x), shift, scale)                    # (B, S, D)
    return h @ params["linear"]["w"] + params["linear"]["b"]     # (B, S, P)


@checked(contracts.forward)
def forward(params, x_t, t, text_ids, text_mask, config, keep_index=None, group_size=None, dynamic=False,
            hidden_layer=None):
    """v_theta(x_t, t, y) of Eq. 1 in patch space.

    x_t (B, I, J, Ch) noisy images, t (B,) in [0, 1], text_ids / text_mask (B, L) from
    ecdit.systems.text.tokenize_batch, keep_index (B, S') sorted indices of the kept tokens or None
    (all S), group_size the routing group (None: S' tokens, one image per group; a 'diffmoe'
    model pools config.pool_images images, by default the whole batch), dynamic: DiffMoE's
    dynamic capacity in the layers with a capacity predictor (inference; ValueError for a model
    without one).

    Returns (velocity (B, S', P) for the kept patches in token order, routing) where routing is a
    list over layers of None (dense) or the layer's routing dict (experts_per_token (B, S'),
    aux_loss for token choice, the predictor's records for a layer with one). With
    config.prediction "x0" the final layer predicts the clean patches x0_hat and the velocity is
    the one they imply, (x_t - x0_hat) / max(t, config.prediction_min_t) (`flow.velocity_from_x0`).
    hidden_layer k (1-based, or None): also return block k's output (B, S', D), as (velocity,
    routing, hidden); the shape head reads it (`objective.shape_label_loss`)."""
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


@checked(contracts.velocity)
def velocity(params, x_t, t, text_ids, text_mask, config, group_size=None, dynamic=False):
    """The full-image velocity (B, I, J, Ch): `forward` without masking, unpatchified."""
    v, _ = forward(params, x_t, t, text_ids, text_mask, config, None, group_size, dynamic)  # (B, S, P)
    return unpatchify(v, config.patch_size, config.image_size, config.image_size)  # (B, I, J, Ch)
