"""One frozen configuration for the whole model, one for training, and the presets.

`ModelConfig` fixes every array shape of the model, so it is hashable and passed to `jax.jit` as a
static argument. Derived values (`num_tokens`, `head_dim`, `ffn_hidden`, `sparse_layers`,
`capacity`) are validated properties. A bad value raises ValueError naming the field.

Presets (`preset(name)`):
  tiny            trains on 2 CPU cores in minutes (the `ecdit demo` model); sizes measured, see
                  docs/experiments.md
  small           a GPU-sized sibling of tiny (64x64 images, 8 layers, D = 256)
  XL, XXL, 3XL, M the backbones of Table 1 (layers, hidden dim, #heads, #KV), on the paper's
                  latent grid (256x256 images through an 8-channel VAE with stride 8 = 32x32x8,
                  patch 2, Sec. 3.1). Only their shapes are used here: the parameter counter
                  (`ecdit.core.params.count_params`) puts them beside Table 1.

Layer numbering: "starting from the second layer, all even-numbered layers are sparse" (Sec. 3.1)
counts layers from 1, so with 0-based indices the sparse layers are 1, 3, 5, ...

Glossary: B batch, S image tokens, L text tokens, D width, Dy text width, N heads, K kv-heads,
H head dim, F FFN hidden, E experts, C capacity, G groups, P = p * p * channels patch values.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ecdit.core.checks import boolean, one_of, positive_float, positive_int, real_number

# The FFN kinds of the interleaved layers, one name each everywhere (config, CLI, parameter keys,
# docs): the dense FFN, expert-choice MoE (EC-DiT, Sec. 2.3), token-choice top-k (GShard, Sec. 3.5),
# and DiffMoE (Shi et al. 2025: expert choice over one batch-level pool, with a capacity predictor).
FFN_KINDS = ("dense", "expert_choice", "token_choice", "diffmoe")
# The FFN kinds whose routing is expert choice over a token pool (a routing group, or the batch)
POOL_KINDS = ("expert_choice", "diffmoe")
# DiffMoE's capacity factor (its shipped config: activated compute equals the dense model's);
# `preset(..., ffn_kind="diffmoe")` uses it unless capacity_factor is given
DIFFMOE_CAPACITY_FACTOR = 1.0
POS_EMBEDDINGS = ("sincos", "learned")
# What the final layer predicts: the velocity noise - x0 (the paper, Eq. 1), or the clean image x0,
# turned into the velocity it implies before the loss and the sampler (x-prediction, Li & He 2025)
PREDICTIONS = ("velocity", "x0")
# The optimiser: the paper's RMSProp with momentum, or AdamW (a deviation for short CPU runs)
OPTIMIZERS = ("rmsprop", "adamw")
PAIR_CAPTION_ORDERS = ("any", "layout")   # TrainConfig.pair_caption_order (ecdit.systems.shapes)
# Per-sample weights of Eq. 1: none (the paper), or max(t, min_t)^2, which turns Eq. 1 on an
# x-prediction model's velocity into the plain squared error of its clean-image prediction
LOSS_WEIGHTINGS = ("velocity", "x0")

# The model's two reserved text-token ids; the tokenizer (ecdit.systems.text) follows them. The
# null caption "" of classifier-free guidance is <null> then padding, so the model, its training
# objective and its sampler can build it without the tokenizer.
PAD_ID, NULL_ID = 0, 1
# ModelConfig.text_segments: the tokenizer gives each word of a caption's second noun phrase the id
# of the word plus TEXT_SEGMENT_OFFSET, and the embedding row of that id starts as the word's own
# row plus one shared segment vector (BERT's segment embedding, carried in the id). The tokenizer's
# vocabulary must fit below the offset; a model with segments needs vocab_size >= 2 * the offset.
TEXT_SEGMENT_OFFSET = 32
# Which noun phrase of a two-object caption the marks go on (ModelConfig.text_segment_rule): "order",
# the second phrase of every caption; "layout", in a relation caption the phrase of the object that
# lies right of or below the other ("A right of B" marks A, "A left of B" marks B, so a caption and
# its mirrored wording mark the same object), in an "and" caption the second phrase as with "order".
SEGMENT_RULES = ("order", "layout")

# The shape head's classes (ModelConfig.shape_head_layer): the six shapes of ecdit.systems.shapes
# in its SHAPES order, then the background; ecdit.systems.shapes checks that it agrees.
NUM_SHAPE_LABELS = 7
BACKGROUND_LABEL = NUM_SHAPE_LABELS - 1


# ---------------------------------------------------------------------------------------------
# Capacity (Sec. 2.3): a config-derived value, so it lives here; reference.routing re-exports it
# ---------------------------------------------------------------------------------------------

def expert_capacity(tokens_per_group, num_experts, capacity_factor):
    """C = round(S * f_c / E), the number of tokens each expert chooses per group (Sec. 2.3).

    Halves round up (floor(x + 0.5)) so C never depends on banker's rounding. Raises ValueError
    naming capacity_factor when C < 1 (an expert that chooses nothing) or C > S (an expert cannot
    choose a token twice). Host-side integer arithmetic on static shapes: it fixes array shapes,
    so it is never traced, and both halves call this one function."""
    positive_int("tokens_per_group", tokens_per_group)
    positive_int("num_experts", num_experts)
    positive_float("capacity_factor", capacity_factor)
    exact = tokens_per_group * capacity_factor / num_experts
    capacity = math.floor(exact + 0.5)
    if capacity < 1:
        raise ValueError(
            f"capacity_factor: capacity round(S * f_c / E) = round({tokens_per_group} * {capacity_factor} / "
            f"{num_experts}) = {capacity} is below 1; raise capacity_factor or tokens_per_group, or use fewer experts")
    if capacity > tokens_per_group:
        raise ValueError(
            f"capacity_factor: capacity round(S * f_c / E) = round({tokens_per_group} * {capacity_factor} / "
            f"{num_experts}) = {capacity} exceeds the S = {tokens_per_group} tokens of a group; need f_c <= E")
    return capacity


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelConfig:
    """Every architectural choice; frozen (hashable) so it is a valid static argument of jax.jit."""
    name: str = "custom"
    # Images and patches (Sec. 2.1: the image becomes a sequence of S patch tokens)
    image_size: int = 32
    channels: int = 3
    patch_size: int = 4
    pos_embedding: str = "sincos"      # fixed 2-D sin-cos (DiT); "learned" adds an (S, D) table
    # Transformer (Table 1 columns)
    depth: int = 4                     # #Layers
    width: int = 96                    # Hidden dim. D
    num_heads: int = 4                 # #Head
    num_kv_heads: int = 2              # #KV (grouped-query attention)
    ffn_ratio: int = 4                 # F = 4 D, as in DiT; each expert has this shape (Sec. 3.1)
    # FFN kind of the sparse layers (1, 3, 5, ... 0-based); the others stay dense
    ffn_kind: str = "expert_choice"
    num_experts: int = 8
    capacity_factor: float = 2.0       # f_c, Sec. 3.1: 2.0 in training and inference (DiffMoE: 1.0,
                                       # what `preset` gives ffn_kind="diffmoe" unless told otherwise)
    num_selected: int = 2              # token choice: top-2 (GShard), the activation of f_c = 2
    aux_loss_weight: float = 0.01      # token choice: GShard's load-balancing loss weight
    # The capacity predictor (DiffMoE, docs/diffmoe.md): always on for "diffmoe"; on an
    # "expert_choice" model it is trained on each routing group's pool, for dynamic inference with
    # per-group pools (the seed table's "EC-DiT local dynamic" row). It reads a stop-gradient copy of
    # the router input, so it never changes what the rest of the model learns.
    capacity_predictor: bool = False
    predictor_loss_weight: float = 1.0 # weight of sum_l L_pred,l in the loss (DiffMoE's shipped config: 1)
    threshold_decay: float = 0.95      # tau <- d tau + (1 - d) q, every training step (DiffMoE: 0.95)
    # DiffMoE's token pool: images per pool. None (the default): the whole batch is one pool, as on
    # one GPU; a batch of B images otherwise makes B / pool_images pools, each choosing its own
    # top-k, with q_e (the threshold's target) averaged over pools. pool_images = the images one
    # device holds is the official code's per-device pool (docs/diffmoe.md, docs/scaling.md); it is
    # a property of the model, not of the mesh, so the same run gives the same numbers on any mesh.
    # A batch of at most pool_images images (sampling a few prompts) is one pool.
    pool_images: int | None = None
    dense_matched: bool = False        # dense only: widen the would-be-sparse layers' FFN by f_c,
                                       # so activated parameters equal the MoE models' (compare)
    # Routing groups (Sec. 3.1): tokens regrouped into groups of group_size; None = one image
    train_group_size: int | None = None
    inference_group_size: int | None = None
    # Text encoder (deviation: a small learned word-level encoder instead of the frozen T5)
    max_text_len: int = 8              # L >= ecdit.systems.text.MAX_LEN (8: 'a circle to the left of a square')
    text_width: int = 64               # Dy
    text_depth: int = 2
    text_heads: int = 4
    vocab_size: int = 64               # >= len(ecdit.systems.text.VOCAB); checked when training or
                                       # sampling with the tokenizer
    pooled_text: bool = False          # deviation, off for the paper's shapes: also add the masked
                                       # mean of Enc(y), projected to D, to the AdaLN condition c
                                       # (SD3 / DiT class-embedding style); speeds up learning the
                                       # caption at tiny scale (docs/model.md)
    # Output (deviation, off for the paper's shapes): "x0" makes the final layer predict the clean
    # patches and forward return v = (x_t - x0_hat) / max(t, prediction_min_t), so the loss (Eq. 1,
    # on v) and the sampler are unchanged. A narrow token then carries a smooth image, not a patch
    # of noise (docs/model.md)
    prediction: str = "velocity"
    prediction_min_t: float = 0.05
    # Shape head (deviation, off for the paper's shapes; docs/model.md, "The shape head"): a linear
    # head on LN(output of block shape_head_layer) (1-based) predicts each token's shape label (the
    # shape covering most of its patch, or background), trained with weight shape_loss_weight on its
    # cross-entropy beside Eq. 1. It only shapes what the blocks learn: sampling never reads it.
    shape_head_layer: int | None = None
    shape_loss_weight: float = 0.1
    # Segment marks (deviation, on in tiny; docs/experiments.md, "Which noun is which"): the words
    # of the caption's second noun phrase ("a square" in "a circle to the left of a square") get ids
    # shifted by TEXT_SEGMENT_OFFSET, whose embeddings start as the word's plus one shared segment
    # vector, so every caption token says which of the two objects it describes
    text_segments: bool = False
    # which phrase the marks go on: "order" or "layout" (SEGMENT_RULES; docs/experiments.md, "Marks by layout":
    # at 10,000 steps "layout" took held-out position from 4 / 5 / 2 % to 18 / 10 / 18 %, seeds 0-2)
    text_segment_rule: str = "order"
    # Timestep embedding (DiT): sinusoid of 1000 t, F_t features, then a two-layer MLP to D
    freq_dim: int = 256
    timestep_scale: float = 1000.0

    def __post_init__(self):
        if not isinstance(self.name, str):
            raise ValueError(f"name: expected a string, got {self.name!r}")
        for f in ("image_size", "channels", "patch_size", "depth", "width", "num_heads", "num_kv_heads",
                  "ffn_ratio", "num_experts", "num_selected", "max_text_len", "text_width",
                  "text_depth", "text_heads", "vocab_size", "freq_dim"):
            positive_int(f, getattr(self, f))
        one_of("pos_embedding", self.pos_embedding, POS_EMBEDDINGS)
        one_of("ffn_kind", self.ffn_kind, FFN_KINDS)
        one_of("prediction", self.prediction, PREDICTIONS)
        one_of("text_segment_rule", self.text_segment_rule, SEGMENT_RULES)
        real_number("prediction_min_t", self.prediction_min_t, lo=0.0, hi=1.0, lo_open=True)
        real_number("capacity_factor", self.capacity_factor, lo=0.0, lo_open=True)
        real_number("aux_loss_weight", self.aux_loss_weight, lo=0.0)
        real_number("timestep_scale", self.timestep_scale, lo=0.0, lo_open=True)
        real_number("predictor_loss_weight", self.predictor_loss_weight, lo=0.0)
        real_number("threshold_decay", self.threshold_decay, lo=0.0, hi=1.0, hi_open=True)
        real_number("shape_loss_weight", self.shape_loss_weight, lo=0.0)
        if self.shape_head_layer is not None:
            positive_int("shape_head_layer", self.shape_head_layer)
            if self.shape_head_layer > self.depth:
                raise ValueError(f"shape_head_layer: block {self.shape_head_layer} does not exist in a model of "
                                 f"depth {self.depth} (expected 1 to {self.depth}, or None for no shape head)")
        for f in ("dense_matched", "pooled_text", "capacity_predictor", "text_segments"):
            boolean(f, getattr(self, f))
        if self.text_segments and self.vocab_size < 2 * TEXT_SEGMENT_OFFSET:
            raise ValueError(f"vocab_size: text_segments needs {2 * TEXT_SEGMENT_OFFSET} embedding rows (the words "
                             f"and their second-phrase copies at + {TEXT_SEGMENT_OFFSET}), got {self.vocab_size}")
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size: {self.patch_size} does not divide image_size = {self.image_size}")
        if self.width % self.num_heads:
            raise ValueError(f"num_heads: {self.num_heads} does not divide width = {self.width}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads: {self.num_kv_heads} does not divide num_heads = {self.num_heads}")
        if self.text_width % self.text_heads:
            raise ValueError(f"text_heads: {self.text_heads} does not divide text_width = {self.text_width}")
        if self.freq_dim % 2:
            raise ValueError(f"freq_dim: expected an even number (cos and sin halves), got {self.freq_dim}")
        if self.ffn_kind == "token_choice" and self.num_selected > self.num_experts:
            raise ValueError(f"num_selected: top-{self.num_selected} of {self.num_experts} experts is impossible")
        if self.capacity_predictor and self.ffn_kind not in POOL_KINDS:
            raise ValueError(f"capacity_predictor: a capacity predictor needs expert-choice routing over a pool "
                             f"(ffn_kind one of {POOL_KINDS}), got ffn_kind = {self.ffn_kind!r}")
        if self.ffn_kind in POOL_KINDS and self.capacity_factor > self.num_experts:
            raise ValueError(f"capacity_factor: f_c = {self.capacity_factor} > E = {self.num_experts} "
                             "would make an expert choose more tokens than a group holds")
        for f in ("train_group_size", "inference_group_size"):
            v = getattr(self, f)
            if v is not None:
                positive_int(f, v)
        if self.pool_images is not None:
            positive_int("pool_images", self.pool_images)
            if self.ffn_kind != "diffmoe":
                raise ValueError(f"pool_images: only a 'diffmoe' model pools its batch (got ffn_kind = "
                                 f"{self.ffn_kind!r}; expert choice groups tokens with train_group_size)")
        if self.ffn_kind != "dense":
            self.capacity(self.train_group_size or self.num_tokens)  # C >= 1 at the default group

    # --- derived values -----------------------------------------------------------------------
    @property
    def grid_size(self) -> int:
        """Patches per side, image_size / patch_size."""
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """S, image tokens per image (before masking)."""
        return self.grid_size ** 2

    @property
    def patch_dim(self) -> int:
        """P = p * p * channels values per patch."""
        return self.patch_size ** 2 * self.channels

    @property
    def head_dim(self) -> int:
        """H = D / N."""
        return self.width // self.num_heads

    @property
    def ffn_hidden(self) -> int:
        """F = ffn_ratio * D, the hidden width of the dense FFN and of every expert."""
        return self.ffn_ratio * self.width

    @property
    def sparse_layers(self) -> tuple[int, ...]:
        """0-based indices of the layers that are MoE (the paper's even-numbered layers, from the
        second); empty for a dense model."""
        if self.ffn_kind == "dense":
            return ()
        return tuple(range(1, self.depth, 2))

    @property
    def interleaved_layers(self) -> tuple[int, ...]:
        """The even-numbered layers (1, 3, ... 0-based) whatever the FFN kind."""
        return tuple(range(1, self.depth, 2))

    @property
    def has_predictor(self) -> bool:
        """Whether the sparse layers carry DiffMoE's capacity predictor and thresholds (always for
        "diffmoe"; for "expert_choice" when capacity_predictor is set)."""
        return self.ffn_kind == "diffmoe" or self.capacity_predictor

    def pool_tokens(self, batch: int, tokens: int) -> int | None:
        """Tokens per DiffMoE pool for a batch of `batch` images of `tokens` tokens: None (one pool,
        the whole batch) when pool_images is None or the batch holds at most pool_images images,
        else pool_images * tokens; ValueError naming pool_images when it does not divide the batch."""
        if self.pool_images is None or batch <= self.pool_images:
            return None
        if batch % self.pool_images:
            raise ValueError(f"pool_images: {self.pool_images} images per pool do not divide a batch of {batch}")
        return self.pool_images * tokens

    def layer_ffn_hidden(self, layer: int) -> int:
        """FFN hidden width of a dense layer; f_c-times wider in the interleaved layers of an
        activation-matched dense model (dense_matched)."""
        if self.dense_matched and self.ffn_kind == "dense" and layer in self.interleaved_layers:
            return int(round(self.capacity_factor * self.ffn_hidden))
        return self.ffn_hidden

    def capacity(self, tokens_per_group: int) -> int:
        """C = round(S_group * f_c / E) (expert choice); raises ValueError naming capacity_factor
        when C is below 1 or above the group."""
        return expert_capacity(tokens_per_group, self.num_experts, self.capacity_factor)

    def replace(self, **changes) -> "ModelConfig":
        """A copy with some fields changed (and validated again)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"{sorted(unknown)[0]}: not a ModelConfig field")
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------

def category_weights(weights) -> tuple[float, ...]:
    """`weights` as a tuple of finite, non-negative floats with a positive sum, or ValueError naming
    category_weights. (Their number is checked against the categories where batches are drawn.)"""
    if isinstance(weights, (str, bytes, dict)) or not hasattr(weights, "__len__"):
        raise ValueError(f"category_weights: expected a sequence of numbers, got {weights!r}")
    out = tuple(real_number(f"category_weights[{i}]", w, lo=0.0) for i, w in enumerate(weights))
    if not out or sum(out) <= 0:
        raise ValueError(f"category_weights: expected some positive weight, got {weights!r}")
    return out


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, flow and data settings (Sec. 3.1). Frozen, so also a static jit argument."""
    batch_size: int = 64
    learning_rate: float = 1e-4        # paper: 1e-4
    warmup_steps: int = 20_000         # paper: 20K linear warmup
    decay_steps: int = 0               # > 0: decay linearly to 0 at this step (short runs); 0 = the
                                       # paper's constant rate after warmup
    optimizer: str = "rmsprop"         # paper: "rmsprop" (RMSProp with momentum, Sec. 3.1). "adamw"
                                       # (deviation, for short CPU runs): AdamW with adam_b1 / adam_b2,
                                       # bias-corrected, decoupled weight_decay (docs/model.md)
    adam_b1: float = 0.9
    adam_b2: float = 0.99
    weight_decay: float = 0.0          # AdamW only
    rmsprop_decay: float = 0.9         # paper: not given; Hinton's / TensorFlow's default. optax's
                                       # RMSProp has no bias correction: 0.999 makes the first
                                       # hundred updates ~30x too large and diverges (measured)
    momentum: float = 0.9              # paper: "RMSProp with momentum"; value not given
    eps: float = 1e-8
    grad_clip: float = 0.0             # global-norm clip; 0 = off (the paper mentions none)
    text_lr_scale: float = 1.0         # the text encoder's updates are scaled by this; 0 freezes it
                                       # at its random init, as the paper freezes its T5 (Sec. 3.1)
    ema_decay: float = 0.0             # > 0: keep an exponential moving average of the parameters
                                       # (DiT uses 0.9999) and sample with it; 0 = off. The decay
                                       # is warmed up as min(ema_decay, (1 + step) / (10 + step))
    mask_ratio: float = 0.5            # paper: 0.5 (MaskDiT token dropping; docs/model.md)
    caption_dropout: float = 0.1       # probability of the null caption, for CFG
    category_weights: tuple | None = None  # deviation (data mix): relative frequency of each caption
                                       # category in training batches, in ecdit.systems.shapes.CATEGORIES
                                       # order; None = uniform (docs/data.md)
    pair_caption_order: str = "any"    # deviation (data): "any" names an unrelated pair's two objects
                                       # in either order; "layout" in the scene's reading order, left
                                       # to right or top to bottom (shapes.layout_order, docs/data.md)
    loss_weighting: str = "velocity"   # "velocity": Eq. 1 as written; "x0" (deviation): each image's
                                       # error times max(t, prediction_min_t)^2, the clean-image error
                                       # of an x-prediction model (flow.loss_weights, docs/model.md)
    t_mu: float = 0.0                  # logit-normal timesteps, t = sigmoid(N(mu, sigma))
    t_sigma: float = 1.0
    seed: int = 0

    def __post_init__(self):
        for f in ("batch_size",):
            positive_int(f, getattr(self, f))
        positive_int("warmup_steps", self.warmup_steps, minimum=0)
        positive_int("decay_steps", self.decay_steps, minimum=0)
        if self.decay_steps and self.decay_steps <= self.warmup_steps:
            raise ValueError(f"decay_steps: {self.decay_steps} must exceed warmup_steps = {self.warmup_steps}")
        positive_int("seed", self.seed, minimum=0)
        real_number("learning_rate", self.learning_rate, lo=0.0, lo_open=True)
        one_of("optimizer", self.optimizer, OPTIMIZERS)
        one_of("loss_weighting", self.loss_weighting, LOSS_WEIGHTINGS)
        one_of("pair_caption_order", self.pair_caption_order, PAIR_CAPTION_ORDERS)
        real_number("adam_b1", self.adam_b1, lo=0.0, hi=1.0, hi_open=True)
        real_number("adam_b2", self.adam_b2, lo=0.0, hi=1.0, hi_open=True)
        real_number("weight_decay", self.weight_decay, lo=0.0)
        real_number("rmsprop_decay", self.rmsprop_decay, lo=0.0, hi=1.0, hi_open=True)
        real_number("momentum", self.momentum, lo=0.0, hi=1.0, hi_open=True)
        real_number("eps", self.eps, lo=0.0, lo_open=True)
        real_number("grad_clip", self.grad_clip, lo=0.0)
        real_number("ema_decay", self.ema_decay, lo=0.0, hi=1.0, hi_open=True)
        real_number("text_lr_scale", self.text_lr_scale, lo=0.0)
        real_number("mask_ratio", self.mask_ratio, lo=0.0, hi=1.0, hi_open=True)
        real_number("caption_dropout", self.caption_dropout, lo=0.0, hi=1.0)
        if self.category_weights is not None:      # a list read back from a checkpoint's JSON: a tuple
            object.__setattr__(self, "category_weights", category_weights(self.category_weights))
        real_number("t_mu", self.t_mu)
        real_number("t_sigma", self.t_sigma, lo=0.0, lo_open=True)

    def kept_tokens(self, num_tokens: int) -> int:
        """Tokens kept per image after masking: S - round(mask_ratio * S), at least 1."""
        return max(1, num_tokens - int(round(self.mask_ratio * num_tokens)))

    def replace(self, **changes) -> "TrainConfig":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"{sorted(unknown)[0]}: not a TrainConfig field")
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------

def _table1(name, depth, width, heads, kv, experts):
    """A Table 1 backbone on the paper's latent grid: 256x256 -> 32x32x8 (VAE, 8 channels),
    patch 2 (Sec. 3.1), group 1024 in training and 512 at inference (Sec. 3.1).
    text_width 2048: the paper's "670M T5-based" encoder does not state its width (unknown)."""
    return ModelConfig(
        name=name, image_size=32, channels=8, patch_size=2, depth=depth, width=width,
        num_heads=heads, num_kv_heads=kv, ffn_kind="expert_choice", num_experts=experts,
        train_group_size=1024, inference_group_size=512, max_text_len=128, text_width=2048,
        text_depth=1, text_heads=16, vocab_size=64)


# tiny: the `ecdit demo` model. Patch 4 keeps S = 64 tokens (patch 8 makes P = 192 > D: with
# velocity prediction it never left pure noise; with x-prediction it draws solid 8x8 blocks,
# measured, docs/experiments.md); D = 64 runs ~2x
# faster than D = 96 at the same loss per image seen (measured); 4 layers, 2 of them sparse.
# pooled_text: the caption also enters AdaLN (docs/model.md, deviations). prediction "x0": the final
# layer predicts clean patches (x-prediction); with t_mu 0.8 below, single object 23 / 23 % against
# 16 / 16 % for velocity prediction at t_mu 0 on the validation items, two seeds at 8,000 steps
# (docs/experiments.md, "x-prediction and the timestep shift"). shape_head_layer 2: a head on block 2's
# output learns each token's shape label, weight 0.1; at 8,000 steps, over seeds 0-2, it took
# validation single object / colours from 36 / 29 % to 44 / 35 % (two objects and position unchanged;
# block 1: no gain; docs/experiments.md, "The shape head"). text_segments with the "layout" rule: the
# object that lies right of / below the other is marked; with an init paired to the unmarked one,
# seeds 0-1 at 10,000 / 12,000 steps gave validation position 13.5 / 21.5 % against 2.5 / 5 %,
# single object 55.5 / 65 against 56 / 68.5 (docs/experiments.md, "Marks by layout, paired").
_TINY = ModelConfig(name="tiny", image_size=32, channels=3, patch_size=4, depth=4, width=64,
                    num_heads=4, num_kv_heads=2, num_experts=8, text_width=32, text_depth=2,
                    text_heads=4, freq_dim=128, pooled_text=True, prediction="x0", shape_head_layer=2,
                    text_segments=True, text_segment_rule="layout")
_SMALL = ModelConfig(name="small", image_size=64, channels=3, patch_size=4, depth=8, width=256,
                     num_heads=8, num_kv_heads=4, num_experts=16, text_width=256, text_depth=4,
                     text_heads=4, train_group_size=512, inference_group_size=256)

PRESETS: dict[str, ModelConfig] = {
    "tiny": _TINY,
    "small": _SMALL,
    # Table 1: Config. -> (#Layers, Hidden dim., #Head, #KV); experts from the largest column
    "XL": _table1("XL", 28, 1152, 18, 6, 32),
    "XXL": _table1("XXL", 38, 1536, 24, 6, 32),
    "3XL": _table1("3XL", 42, 2304, 36, 6, 32),
    "M": _table1("M", 38, 3072, 48, 12, 64),            # EC-DiT-M has 38 layers; DENSE-M 46 (Table 1 *)
}

TRAIN_PRESETS: dict[str, TrainConfig] = {
    # tiny (docs/experiments.md, "AdamW and the timestep shift"): AdamW lr 2e-3 (b2 0.99), 200 warmup steps;
    # at 8,000 steps it took validation single object / colours from 23 / 15 % (the paper's RMSProp with
    # momentum, lr 5e-4, the best RMSProp setting measured) to 34 / 25 % (lr 1e-3: 30 / 17; 4e-3: 28 / 24).
    # t_mu 1.2: more timesteps at the high-noise end, where the layout of a sample is decided (0.8:
    # 34 / 25 %, 1.2: 38 / 31 %, 1.6: 29 / 22 % at 8,000 steps; at 16,000 steps 0.8: 73 / 66 %, 1.2:
    # 87 / 77 %). Batch 16: images/s is flat in the batch size on a CPU, so more steps per image.
    # No masking: at 64 tokens per image half of them is too little context (docs/model.md).
    # decay_steps stays 0 (a time-limited run does not know its last step). text_lr_scale 0: a learned
    # encoder collapsed (Enc("a red circle") and Enc("a blue circle") 6.1 apart at init, 0.31 after 4K
    # steps; prompt colour followed at chance), so the encoder is frozen at its random init, as the
    # paper freezes T5 (docs/model.md). EMA 0.999 for sampling (its warm-up (1 + s) / (10 + s) binds
    # until step 8,990: 0.999 and 0.9995 gave the same samples at 8,000 steps; the EMA against the raw
    # weights at CFG 7: single object 46 against 25 %). loss_weighting "x0" (the clean-image error) was worse:
    # 27 / 17 % against 38 / 31 %. pair_caption_order "layout": an "and" caption names its objects left to
    # right (or top to bottom), so the layout segment marks mean one side there too; over seeds 0-2 it took
    # validation two objects from 12.0 to 26.7 % at 10,000 steps and from 15.7 to 33.3 % at 12,000
    # (docs/experiments.md, "Pair captions in reading order").
    "tiny": TrainConfig(batch_size=16, optimizer="adamw", learning_rate=2e-3, warmup_steps=200, mask_ratio=0.0,
                        grad_clip=1.0, text_lr_scale=0.0, ema_decay=0.999, t_mu=1.2, pair_caption_order="layout"),
    "small": TrainConfig(batch_size=128, learning_rate=5e-4, warmup_steps=1000, mask_ratio=0.5,
                         grad_clip=1.0),
}
# Sampling defaults of the command line and the reports. CFG 5 was chosen on the validation
# items (seen prompts, fresh seeds: ecdit.systems.shapes.validation_items), never on the held-out ones:
# over seven tiny runs, single object / colours averaged 18 / 13 % at CFG 3 and 21 / 16 % at 5
# (docs/model.md, "Sampling defaults"). 20 Euler steps: 50 and 100 scored within noise of 20.
DEFAULT_GUIDANCE = 5.0
DEFAULT_SAMPLE_STEPS = 20
# Held-out items per category scored by `ecdit demo` and `ecdit eval`: at 100 one item is one
# point and a 10 % score has a binomial standard error of 3 points (docs/data.md).
DEFAULT_EVAL_PER_CATEGORY = 100

PAPER_TRAIN = TrainConfig(batch_size=4096, learning_rate=1e-4, warmup_steps=20_000, mask_ratio=0.5)


def preset(name: str, /, **changes) -> ModelConfig:
    """A preset by name ("tiny", "small", "XL", "XXL", "3XL", "M"), optionally changed.

    Paper variants read as in Sec. 3: "XL-8E" = XL with 8 experts, "DENSE-XL" = dense XL,
    "DENSE-M" = the 46-layer dense M."""
    if not isinstance(name, str):
        raise ValueError(f"preset: expected a name, got {name!r}")
    base = name
    extra = {}
    if base.upper().startswith("DENSE-"):
        base = base[6:]
        extra = {"ffn_kind": "dense"}
        if base == "M":
            extra["depth"] = 46
    elif "-" in base and base.rsplit("-", 1)[1].upper().endswith("E"):
        base, e = base.rsplit("-", 1)
        try:
            extra = {"num_experts": int(e[:-1])}
        except ValueError:
            raise ValueError(f"preset: cannot read the expert count of {name!r}") from None
    if base not in PRESETS:
        raise ValueError(f"preset: unknown preset {name!r}; expected one of {tuple(PRESETS)} "
                         "(paper variants like 'XL-8E' or 'DENSE-XL' also work)")
    cfg = PRESETS[base]
    changes = {"name": name, **extra, **changes}
    if changes.get("ffn_kind") == "diffmoe" and "capacity_factor" not in changes:
        changes["capacity_factor"] = DIFFMOE_CAPACITY_FACTOR     # DiffMoE's own default, f_c = 1
    return cfg.replace(**changes)


def train_preset(name: str, /, **changes) -> TrainConfig:
    """Training settings of a preset; the Table 1 backbones use the paper's (Sec. 3.1)."""
    base = TRAIN_PRESETS.get(name, PAPER_TRAIN)
    return base.replace(**changes)
