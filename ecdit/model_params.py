"""Initialise the whole model from a config and a seed: a plain dict of float32 NumPy arrays.

    {"patch_embed": {w (P, D), b (D,)},  "pos_embed": (S, D) only if learned,
     "t_mlp": {w1, b1, w2, b2},          "text": {embed (V, Dy), pos (L, Dy), layers: [...]},
     "blocks": [block_0, ..., block_{depth-1}],  "final": {adaln: {w (D, 2D), b}, linear: {w (D, P), b}}}

A block is the foundation's `ecdit.params.init_block` (AdaLN-Zero; 'ffn' dense or 'moe' expert
choice); a token-choice block holds the same router and expert shapes under 'token_choice'.
The final layer starts at zero (DiT), so an untrained model predicts zero velocity.
"""
from __future__ import annotations

import numpy as np

from ecdit import params as P
from ecdit.config import ModelConfig


def init_text_encoder(rng, config: ModelConfig) -> dict:
    """Word embeddings, learned positions and `text_depth` pre-LN transformer layers of width Dy."""
    from ecdit import text
    if config.vocab_size < len(text.VOCAB):
        raise ValueError(f"vocab_size: {config.vocab_size} is smaller than the {len(text.VOCAB)} "
                         "words of ecdit.text.VOCAB")
    if config.max_text_len < text.MAX_LEN:
        raise ValueError(f"max_text_len: {config.max_text_len} is shorter than the longest caption "
                         f"({text.MAX_LEN} words)")
    dy = config.text_width
    return {
        # unit-scale word vectors, smaller positions (word identity matters most; LN follows)
        "embed": rng.standard_normal((config.vocab_size, dy)).astype(P.DTYPE),
        "pos": (rng.standard_normal((config.max_text_len, dy)) * 0.1).astype(P.DTYPE),
        "layers": [{"attn": P.init_cross_attention(rng, dy, dy), "ffn": P.init_ffn(rng, dy, 4 * dy)}
                   for _ in range(config.text_depth)],
    }


def init_model(config: ModelConfig, seed: int = 0) -> dict:
    """All parameters of `config`, drawn in a fixed order from np.random.default_rng(seed)."""
    if not isinstance(config, ModelConfig):
        raise ValueError(f"config: expected a ModelConfig, got {type(config).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    d, pdim = config.width, config.patch_dim
    params = {"patch_embed": {"w": P._normal(rng, (pdim, d), pdim), "b": np.zeros((d,), P.DTYPE)}}
    if config.pos_embedding == "learned":
        params["pos_embed"] = (rng.standard_normal((config.num_tokens, d)) * 0.02).astype(P.DTYPE)
    params["t_mlp"] = P.init_timestep_mlp(rng, config.freq_dim, d)
    params["text"] = init_text_encoder(rng, config)
    if config.pooled_text:
        params["text_pool"] = {"w": P._normal(rng, (config.text_width, d), config.text_width),
                               "b": np.zeros((d,), P.DTYPE)}
    blocks = []
    for layer in range(config.depth):
        sparse = layer in config.sparse_layers
        block = P.init_block(rng, d, config.text_width, config.num_heads, config.num_kv_heads,
                             config.layer_ffn_hidden(layer),
                             num_experts=config.num_experts if sparse else None)
        if sparse and config.ffn_kind == "token_choice":
            block["token_choice"] = block.pop("moe")
        blocks.append(block)
    params["blocks"] = blocks
    params["final"] = {
        "adaln": {"w": np.zeros((d, 2 * d), P.DTYPE), "b": np.zeros((2 * d,), P.DTYPE)},
        "linear": {"w": np.zeros((d, pdim), P.DTYPE), "b": np.zeros((pdim,), P.DTYPE)},
    }
    return params


def randomize_zero_init(params: dict, seed: int = 0, scale: float = 0.05) -> dict:
    """A copy with the zero-initialised AdaLN and final layers filled with small noise: tests use
    it so every path of the model affects the output (with AdaLN-Zero most paths start muted)."""
    rng = np.random.default_rng(seed)

    def fill(node, zero_path):
        if isinstance(node, dict):
            return {k: fill(v, zero_path or k in ("adaln", "final")) for k, v in node.items()}
        if isinstance(node, list):
            return [fill(v, zero_path) for v in node]
        if zero_path and not np.any(node):
            return (rng.standard_normal(node.shape) * scale).astype(node.dtype)
        return node
    return fill(params, False)


num_params = P.count          # scalars in a tree of dicts and lists of arrays
