"""Parameter initialisation and counting: plain dicts of float32 NumPy arrays, made once from a seed.

    {"patch_embed": {w (P, D), b (D,)},  "pos_embed": (S, D) only if learned,
     "t_mlp": {w1, b1, w2, b2},          "text": {embed (V, Dy), pos (L, Dy), layers: [...]},
     "text_pool": {w (Dy, D), b} only if pooled_text,
     "blocks": [block_0, ..., block_{depth-1}],  "final": {adaln: {w (D, 2D), b}, linear: {w (D, P), b}},
     "shape_head": {w (D, 7), b (7,)} only if shape_head_layer (zero-initialised; training only)}

A block holds "adaln", "self_attn", "cross_attn" and its FFN under the key of its kind: "dense"
{w1, w2}, or "expert_choice" / "token_choice" / "diffmoe" {w_router, w1, w2} (the same shapes:
only the routing differs). A layer with DiffMoE's capacity predictor (every "diffmoe" layer; an
"expert_choice" one when config.capacity_predictor) also holds "predictor" {w1 (D, D), b1 (D,),
w2 (D, E), b2 (E,)} and "threshold" (E,): the thresholds tau are a buffer, not a parameter: they
start at 0 (as in the official code), the training step overwrites them with their EMA every step
(`objective.update_thresholds`) and the optimiser's update of them is discarded. The same dict feeds `reference/` (as it is) and `accelerated/` (JAX converts
NumPy arrays on the way into jit). Matrices are drawn with LeCun normal scaling (std =
1/sqrt(fan_in)) so activations keep unit scale at any width.

`adaln_zero=True` follows DiT: the AdaLN projection starts at zero, so every gate is 0 and each
block starts as the identity; the final layer starts at zero too, so an untrained model predicts
zero velocity. Tests pass `adaln_zero=False` (or `randomize_zero_init`), otherwise a block's
attention and FFN paths would be multiplied by zero and the equivalence tests could not see them.

`count_params` counts a config analytically (Table 1's total and activated columns); `count`
counts the arrays of a tree, and the two agree exactly (tests/test_model.py).
"""
from __future__ import annotations

import numpy as np

from ecdit.core.config import NUM_SHAPE_LABELS, POOL_KINDS, TEXT_SEGMENT_OFFSET, ModelConfig

DTYPE = np.float32


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------

def _normal(rng: np.random.Generator, shape, fan_in: int) -> np.ndarray:
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(DTYPE)


def init_self_attention(rng, d: int, num_heads: int, num_kv_heads: int) -> dict:
    """wq (D, N H), wk and wv (D, K H), wo (N H, D) with H = D / N."""
    h = d // num_heads
    return {
        "wq": _normal(rng, (d, num_heads * h), d),
        "wk": _normal(rng, (d, num_kv_heads * h), d),
        "wv": _normal(rng, (d, num_kv_heads * h), d),
        "wo": _normal(rng, (num_heads * h, d), num_heads * h),
    }


def init_cross_attention(rng, d: int, d_text: int) -> dict:
    """Eq. 2's projections: wq (D, D), wk and wv (Dy, D), and Wout (D, D)."""
    return {
        "wq": _normal(rng, (d, d), d),
        "wk": _normal(rng, (d_text, d), d_text),
        "wv": _normal(rng, (d_text, d), d_text),
        "wo": _normal(rng, (d, d), d),
    }


def init_ffn(rng, d: int, hidden: int) -> dict:
    """The dense FFN: w1 (D, F), w2 (F, D)."""
    return {"w1": _normal(rng, (d, hidden), d), "w2": _normal(rng, (hidden, d), hidden)}


def init_moe(rng, d: int, hidden: int, num_experts: int) -> dict:
    """Router W_r (D, E) and stacked expert weights w1 (E, D, F), w2 (E, F, D); each expert has
    the shape of the dense FFN it replaces (Sec. 3.1)."""
    return {
        "w_router": _normal(rng, (d, num_experts), d),
        "w1": _normal(rng, (num_experts, d, hidden), d),
        "w2": _normal(rng, (num_experts, hidden, d), hidden),
    }


def init_predictor(rng, d: int, num_experts: int) -> dict:
    """DiffMoE's capacity predictor, an MLP D -> D -> E with biases: w1 (D, D), b1, w2 (D, E), b2."""
    return {"w1": _normal(rng, (d, d), d), "b1": np.zeros((d,), DTYPE),
            "w2": _normal(rng, (d, num_experts), d), "b2": np.zeros((num_experts,), DTYPE)}


def predictor_kind(block) -> str | None:
    """The key of a block's MoE that holds DiffMoE's capacity predictor and thresholds
    ("expert_choice" or "diffmoe"), or None: the one rule for which layers have thresholds, used by
    the contracts, `objective.update_thresholds` (both halves) and the sampler's checks."""
    for kind in POOL_KINDS:
        moe = block.get(kind) if isinstance(block, dict) else None
        if isinstance(moe, dict) and "threshold" in moe:
            return kind
    return None


def init_timestep_mlp(rng, freq_dim: int, d: int) -> dict:
    return {
        "w1": _normal(rng, (freq_dim, d), freq_dim), "b1": np.zeros((d,), DTYPE),
        "w2": _normal(rng, (d, d), d), "b2": np.zeros((d,), DTYPE),
    }


def init_adaln(rng, d: int, zero: bool = True) -> dict:
    if zero:
        return {"w": np.zeros((d, 6 * d), DTYPE), "b": np.zeros((6 * d,), DTYPE)}
    return {"w": _normal(rng, (d, 6 * d), d), "b": _normal(rng, (6 * d,), 4)}


def init_block(rng, d: int, d_text: int, num_heads: int, num_kv_heads: int, ffn_hidden: int,
               num_experts: int | None = None, adaln_zero: bool = True, ffn_kind: str | None = None,
               capacity_predictor: bool = False) -> dict:
    """One DiT block: its FFN under the key of its kind (FFN_KINDS): "dense" {w1, w2} when
    `num_experts` is None, else "expert_choice" (or `ffn_kind`, e.g. "token_choice") {w_router,
    w1, w2}: the router and expert shapes are the same for every routing method. With
    `capacity_predictor` (always for "diffmoe") the MoE also holds "predictor" and "threshold" (E,) = 0."""
    block = {
        "adaln": init_adaln(rng, d, zero=adaln_zero),
        "self_attn": init_self_attention(rng, d, num_heads, num_kv_heads),
        "cross_attn": init_cross_attention(rng, d, d_text),
    }
    if num_experts is None:
        block[ffn_kind or "dense"] = init_ffn(rng, d, ffn_hidden)
    else:
        kind = ffn_kind or "expert_choice"
        block[kind] = init_moe(rng, d, ffn_hidden, num_experts)
        if capacity_predictor or kind == "diffmoe":
            block[kind]["predictor"] = init_predictor(rng, d, num_experts)
            block[kind]["threshold"] = np.zeros((num_experts,), DTYPE)
    return block


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

def init_text_encoder(rng, config: ModelConfig, segment_rng) -> dict:
    """Word embeddings, learned positions and `text_depth` pre-LN transformer layers of width Dy.
    With `config.text_segments`, rows TEXT_SEGMENT_OFFSET + w (word w in the second noun phrase) start
    as row w plus one segment vector, drawn from `segment_rng`, not `rng`, so that turning the marks
    on leaves every other parameter of a seed as it was (a paired comparison)."""
    dy = config.text_width
    # unit-scale word vectors, smaller positions (word identity matters most; LN follows)
    embed = rng.standard_normal((config.vocab_size, dy)).astype(DTYPE)          # (V, Dy)
    if config.text_segments:                     # a second-phrase word: its word's row + one segment vector
        k = TEXT_SEGMENT_OFFSET
        segment = segment_rng.standard_normal((dy,)).astype(DTYPE)              # (Dy,)
        embed[k:2 * k] = embed[:k] + segment                                    # (k, Dy)
    return {
        "embed": embed,
        "pos": (rng.standard_normal((config.max_text_len, dy)) * 0.1).astype(DTYPE),
        "layers": [{"attn": init_cross_attention(rng, dy, dy), "ffn": init_ffn(rng, dy, 4 * dy)}
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
    params = {"patch_embed": {"w": _normal(rng, (pdim, d), pdim), "b": np.zeros((d,), DTYPE)}}
    if config.pos_embedding == "learned":
        params["pos_embed"] = (rng.standard_normal((config.num_tokens, d)) * 0.02).astype(DTYPE)
    params["t_mlp"] = init_timestep_mlp(rng, config.freq_dim, d)
    params["text"] = init_text_encoder(rng, config, segment_rng=np.random.default_rng([int(seed), 1]))
    if config.pooled_text:
        params["text_pool"] = {"w": _normal(rng, (config.text_width, d), config.text_width),
                               "b": np.zeros((d,), DTYPE)}
    blocks = []
    for layer in range(config.depth):
        sparse = layer in config.sparse_layers
        blocks.append(init_block(rng, d, config.text_width, config.num_heads, config.num_kv_heads,
                                 config.layer_ffn_hidden(layer), num_experts=config.num_experts if sparse else None,
                                 ffn_kind=config.ffn_kind if sparse else "dense",
                                 capacity_predictor=sparse and config.has_predictor))
    params["blocks"] = blocks
    params["final"] = {
        "adaln": {"w": np.zeros((d, 2 * d), DTYPE), "b": np.zeros((2 * d,), DTYPE)},
        "linear": {"w": np.zeros((d, pdim), DTYPE), "b": np.zeros((pdim,), DTYPE)},
    }
    if config.shape_head_layer is not None:                      # deviation: the shape head (training only)
        params["shape_head"] = {"w": np.zeros((d, NUM_SHAPE_LABELS), DTYPE),
                                "b": np.zeros((NUM_SHAPE_LABELS,), DTYPE)}
    return params


def randomize_zero_init(params: dict, seed: int = 0, scale: float = 0.05) -> dict:
    """A copy with the zero-initialised AdaLN and final layers filled with small noise: tests use
    it so every path of the model affects the output (with AdaLN-Zero most paths start muted)."""
    rng = np.random.default_rng(seed)

    def fill(node, zero_path):
        if isinstance(node, dict):
            return {k: fill(v, zero_path or k in ("adaln", "final", "shape_head")) for k, v in node.items()}
        if isinstance(node, list):
            return [fill(v, zero_path) for v in node]
        if zero_path and not np.any(node):
            return (rng.standard_normal(node.shape) * scale).astype(node.dtype)
        return node
    return fill(params, False)


# ---------------------------------------------------------------------------------------------
# Counting (Table 1)
# ---------------------------------------------------------------------------------------------

def count(params) -> int:
    """Number of scalars in a parameter tree of dicts and lists of arrays (the model keeps its
    blocks in a list)."""
    if isinstance(params, dict):
        return sum(count(v) for v in params.values())
    if isinstance(params, (list, tuple)):
        return sum(count(v) for v in params)
    return int(np.size(params))


def count_params(config: ModelConfig, experts_per_token=None) -> dict[str, int]:
    """Total and activated parameters of the DiT (the text encoder counted apart).

    Activated = what one token's forward pass uses at inference: a dense layer's FFN once; an
    expert-choice (or DiffMoE, static top-k) layer f_c experts on average (C * E = f_c * S choices
    per pool) plus the router; a token-choice layer its top-k experts plus the router.
    `experts_per_token` (a number, or one per sparse layer) replaces f_c by a measured average, and
    then the capacity predictor counts as activated too: dynamic-capacity inference runs it for
    every token. Total counts every stored number of `init_model(config)`, the predictor and its E
    thresholds (a buffer) included, and matches `count(init_model(config))` exactly (tests/test_model.py);
    the shape head (config.shape_head_layer) counts in total, never as activated: sampling skips it."""
    d, f, n, k = config.width, config.ffn_hidden, config.num_heads, config.num_kv_heads
    h = config.head_dim
    dy = config.text_width
    self_attn = d * n * h + 2 * d * k * h + n * h * d
    cross_attn = d * d + 2 * dy * d + d * d
    adaln = d * 6 * d + 6 * d
    shared = self_attn + cross_attn + adaln
    e = config.num_experts
    measured = None
    if experts_per_token is not None:
        measured = np.broadcast_to(np.asarray(experts_per_token, np.float64), (len(config.sparse_layers),))
    predictor = (d * d + d + d * e + e) if config.has_predictor else 0
    total = activated = 0
    for layer in range(config.depth):
        if layer in config.sparse_layers:
            expert = 2 * d * f
            router = d * e
            total += shared + router + e * expert + predictor + (e if config.has_predictor else 0)
            if measured is not None:
                per_token = float(measured[config.sparse_layers.index(layer)])
                activated += shared + router + per_token * expert + predictor
            else:
                per_token = config.num_selected if config.ffn_kind == "token_choice" else config.capacity_factor
                activated += shared + router + per_token * expert
        else:
            dense = 2 * d * config.layer_ffn_hidden(layer)
            total += shared + dense
            activated += shared + dense
    embed = config.patch_dim * d + d + (config.num_tokens * d if config.pos_embedding == "learned" else 0)
    t_mlp = config.freq_dim * d + d + d * d + d + ((dy * d + d) if config.pooled_text else 0)
    final = d * 2 * d + 2 * d + d * config.patch_dim + config.patch_dim
    rest = embed + t_mlp + final
    if config.shape_head_layer is not None:                      # trained, never run at inference
        total += (d + 1) * NUM_SHAPE_LABELS
    dy_ffn = 4 * dy
    text = (config.vocab_size * dy + config.max_text_len * dy
            + config.text_depth * (4 * dy * dy + 2 * dy * dy_ffn))
    return {"total": int(total + rest), "activated": int(round(activated + rest)), "text_encoder": int(text)}
