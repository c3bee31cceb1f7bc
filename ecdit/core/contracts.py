"""The argument contract of every public function of `reference/` and `accelerated/`.

One `Contract` per function name, shared by both halves (the reference decorates with
`checked(contracts.name)`, the twin with `checked_jit(contracts.name, ...)`), so a bad argument
raises the same ValueError in the specification and in its fast twin. The language of the
specs is in `ecdit.core.checks`.

Glossary (docs/architecture.md): B batch, S tokens (per image, or per routing group), S' kept
tokens, L text tokens, D width, Dy text width, N heads, K kv-heads, F FFN hidden, Ft timestep
frequencies, E experts, C capacity, G groups, k experts per token, I image side, Ch channels,
p patch side, P = p p Ch patch values.
"""
from __future__ import annotations

import numpy as np

from ecdit.core.checks import (BOOL, CALLABLE, FINITE, POSITIVE, Array, Contract, Float, Instance, Int, OneOf,
                               Params, is_traced, shape_of)
from ecdit.core.config import FFN_KINDS, LOSS_WEIGHTINGS, NUM_SHAPE_LABELS, ModelConfig, TrainConfig, expert_capacity
from ecdit.core.params import predictor_kind

# ---------------------------------------------------------------------------------------------
# Value checks used by several contracts
# ---------------------------------------------------------------------------------------------


def _every_row_has_a_token(name, mask):
    """A text mask (B, L): every caption needs at least one valid token."""
    if not np.asarray(mask).any(axis=1).all():
        raise ValueError(f"{name}: some caption has no valid token (every row needs at least one True)")


def _softmax_rows(name, affinity):
    """Eq. 5's affinity: non-negative, and every token with some positive entry, so the sum of its
    top-k affinities (token choice's renormalising denominator) is positive."""
    a = np.asarray(affinity)
    if (a < 0).any():
        raise ValueError(f"{name}: expected non-negative entries (softmax probabilities, Eq. 5), got a "
                         f"minimum of {a.min()}")
    if not (a.max(axis=-1) > 0).all():
        raise ValueError(f"{name}: some token has no positive affinity, so its top-k gates cannot be "
                         "renormalised (expected softmax probabilities, Eq. 5)")


TEXT_MASK = Array("B L", dtype="bool", values=_every_row_has_a_token)
OPTIONAL_TEXT_MASK = Array("B L", dtype="bool", optional=True, values=_every_row_has_a_token)
CONFIG = Instance(ModelConfig, "a ModelConfig")


# ---------------------------------------------------------------------------------------------
# primitives
# ---------------------------------------------------------------------------------------------

def _axis_of_x(args, dims):
    s = shape_of("x", args["x"])
    axis = args["axis"]
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -len(s) <= axis < len(s):
        raise ValueError(f"axis: {axis!r} is not an axis of x with shape {s}")


softmax = Contract(x="...", where=_axis_of_x)
elementwise = Contract(x="...")
gelu_tanh = silu = sigmoid = elementwise
layer_norm = Contract(x="... D", eps=POSITIVE)
feed_forward = Contract(x="... D", w1="D F", w2="F D")


# ---------------------------------------------------------------------------------------------
# flow (Sec. 2.1, Eq. 1)
# ---------------------------------------------------------------------------------------------

logit_normal_timesteps = Contract(z="B", mu=FINITE, sigma=POSITIVE)
interpolate = Contract(x0="B *rest", noise="B *rest", t="B")
velocity_target = Contract(x0="B *rest", noise="B *rest")
velocity_from_x0 = Contract(x0_hat="B *rest", x_t="B *rest", t="B", min_t=POSITIVE)
rectified_flow_loss = Contract(x0="B *rest", noise="B *rest", velocity="B *rest", weight=Array("B", optional=True))
loss_weights = Contract(t="B", weighting=OneOf(LOSS_WEIGHTINGS), min_t=Float(lo=0.0, lo_open=True))
euler_sample = Contract(velocity_fn=CALLABLE, noise="B ...", num_steps=Int())


# ---------------------------------------------------------------------------------------------
# attention (Sec. 2.2, Eq. 2-3; GQA from Table 1)
# ---------------------------------------------------------------------------------------------

self_attention = Contract(
    x="B S D",
    num_heads=Int(binds="N", divides="D"),
    num_kv_heads=Int(binds="K", divides="N", why="each kv head serves num_heads / num_kv_heads query heads"),
    params=Params(wq="D D", wk="D K*D//N", wv="D K*D//N", wo="D D"))
cross_attention = Contract(
    x="B S D", y="B L Dy",
    num_heads=Int(divides="D"),
    params=Params(wq="D D", wk="Dy D", wv="Dy D", wo="D D"),
    text_mask=OPTIONAL_TEXT_MASK)


# ---------------------------------------------------------------------------------------------
# routing (Sec. 2.3, Eq. 5-8, Algorithm 1)
# ---------------------------------------------------------------------------------------------

def _capacity_fits(args, dims):
    """C = round(S f_c / E) must lie in [1, S]; expert_capacity names capacity_factor if not."""
    expert_capacity(dims["S"], dims["E"], args["capacity_factor"])


EXPERT_INDEX = Array("G E C", dtype="int", below="S")
group_tokens = Contract(x="B S D", group_size=Int(divides="B*S"))
ungroup_tokens = Contract(x_grouped="G Sg D", batch_size=Int(divides="G*Sg"))
router_affinity = Contract(x="G S D", w_router="D E")
expert_choice_gating = Contract(affinity="G S E",
                                capacity=Int(at_most="S", why="an expert cannot choose a token twice"))
dispatch = Contract(x="G S D", index=EXPERT_INDEX)
expert_ffn = Contract(x_in="E G C D", w1="E D F", w2="E F D")
combine = Contract(num_tokens=Int(binds="S"), expert_out="E G C D", gating="G E C", index=EXPERT_INDEX)
experts_per_token = Contract(num_tokens=Int(binds="S"), index=EXPERT_INDEX)
expert_choice_moe = expert_choice_moe_onehot = Contract(
    x="G S D", w_router="D E", w1="E D F", w2="E F D", capacity_factor=POSITIVE, where=_capacity_fits)


# ---------------------------------------------------------------------------------------------
# token choice (GShard top-k, the Sec. 3.5 baseline)
# ---------------------------------------------------------------------------------------------

AFFINITY = Array("G S E", values=_softmax_rows)
NUM_SELECTED = Int(at_most="E", why="a token picks k distinct experts")
top_k_experts = Contract(affinity=AFFINITY, num_selected=NUM_SELECTED)
token_choice_gating = Contract(
    affinity=AFFINITY, num_selected=NUM_SELECTED,
    capacity=Int(at_most="S", why="an expert receives each token at most once, so slots past S stay empty"))
load_balancing_loss = Contract(affinity=AFFINITY, top1_expert=Array("G S", dtype="int", below="E"))
token_choice_moe = Contract(
    x="G S D", w_router="D E", w1="E D F", w2="E F D", capacity_factor=POSITIVE, num_selected=NUM_SELECTED,
    where=_capacity_fits)


# ---------------------------------------------------------------------------------------------
# DiffMoE (Shi et al. 2025): the batch-level pool, the capacity predictor, dynamic capacity
# ---------------------------------------------------------------------------------------------

def _pool_capacity_fits(args, dims):
    """k = round(N f_c / E) over the pool of N = B S tokens must lie in [1, N]."""
    expert_capacity(dims["B"] * dims["S"], dims["E"], args["capacity_factor"])


def _probabilities(name, threshold):
    t = np.asarray(threshold)
    if not np.isfinite(t).all():
        raise ValueError(f"{name}: expected finite values, got {t[~np.isfinite(t)][:3].tolist()}")
    if (t < 0).any() or (t > 1).any():
        raise ValueError(f"{name}: expected thresholds on sigmoid probabilities, in [0, 1], got range "
                         f"[{t.min()}, {t.max()}]")


def _zeros_and_ones(name, assignment):
    a = np.asarray(assignment)
    if not np.isin(a, (0, 1)).all():
        raise ValueError(f"{name}: expected 0/1 entries (expert e chose token t)")


PREDICTOR = Params(w1="D D", b1="D", w2="D E", b2="E")
capacity_predictor = Contract(x="... D", predictor=PREDICTOR)
diffmoe_moe = Contract(x="B S D", w_router="D E", w1="E D F", w2="E F D", predictor=PREDICTOR,
                       capacity_factor=POSITIVE, where=_pool_capacity_fits)
predictor_loss = Contract(predictor_logits="*lead E", assignment=Array("*lead E", values=_zeros_and_ones))
update_threshold = Contract(threshold=Array("E", values=_probabilities), kth_score=Array("E", values=_probabilities),
                            decay=Float(lo=0.0, hi=1.0))
diffmoe_moe_dynamic = Contract(x="B S D", w_router="D E", w1="E D F", w2="E F D", predictor=PREDICTOR,
                               threshold=Array("E", values=_probabilities))
pool_moe = Contract(x="G S D", w_router="D E", w1="E D F", w2="E F D", predictor=PREDICTOR,
                    capacity_factor=POSITIVE, where=_capacity_fits)
pool_moe_dynamic = Contract(x="G S D", w_router="D E", w1="E D F", w2="E F D", predictor=PREDICTOR,
                            threshold=Array("E", values=_probabilities))


# ---------------------------------------------------------------------------------------------
# blocks (Sec. 2.3: timestep MLP, AdaLN, the DiT block with Eq. 4)
# ---------------------------------------------------------------------------------------------

def _one_ffn(args, dims):
    """A block holds exactly one FFN kind; a sparse one must fit the group and the top-k."""
    params = args["params"]
    kinds = [k for k in FFN_KINDS if k in params]
    if len(kinds) != 1:
        raise ValueError(f"params: a block needs exactly one FFN, one of {FFN_KINDS}, got {kinds or 'none'}")
    kind = kinds[0]
    keys = {"dense": ("w1", "w2"), "diffmoe": ("w_router", "w1", "w2", "predictor", "threshold")}.get(
        kind, ("w_router", "w1", "w2"))
    missing = [k for k in keys if not isinstance(params[kind], dict) or k not in params[kind]]
    if missing:
        raise ValueError(f"params['{kind}']: missing parameter(s) {missing}; expected keys {keys}")
    if kind == "token_choice":
        e = shape_of("params['token_choice']['w_router']", params[kind]["w_router"])[-1]
        if args["num_selected"] > e:
            raise ValueError(f"num_selected: {args['num_selected']} exceeds the E = {e} experts "
                             "(a token picks k distinct experts)")
    if args.get("dynamic") and kind != "dense" and not (isinstance(params[kind], dict) and "predictor" in params[kind]):
        raise ValueError(f"dynamic: dynamic capacity needs a capacity predictor, and this block's "
                         f"'{kind}' FFN has none (use ffn_kind='diffmoe' or capacity_predictor=True)")
    if isinstance(params[kind], dict) and "predictor" in params[kind] and "threshold" not in params[kind]:
        raise ValueError(f"params['{kind}']: a capacity predictor needs its 'threshold' (E,) beside it")
    if args.get("dynamic") and kind != "dense":
        _thresholds_are_probabilities([params])


modulate = Contract(x="B S D", shift="B D", scale="B D")
sinusoidal_embedding = Contract(t="B", dim=Int(minimum=2, multiple_of=2, why="cos and sin halves"),
                                scale=POSITIVE, max_period=POSITIVE)
timestep_mlp = Contract(t_freq="B Ft", params=Params(w1="Ft D", b1="D", w2="D D", b2="D"))
adaln_modulation = Contract(c="B D", params=Params(w="D 6*D", b="6*D"))
dit_block = Contract(
    x="B S D", c="B D", y="B L Dy",
    params=Params(adaln=Params(w="D 6*D", b="6*D"), self_attn=Params(), cross_attn=Params()),
    num_heads=Int(divides="D"), num_kv_heads=Int(), capacity_factor=POSITIVE,
    group_size=Int(optional=True, divides="B*S"), text_mask=OPTIONAL_TEXT_MASK, num_selected=Int(),
    dynamic=BOOL, where=_one_ffn)


# ---------------------------------------------------------------------------------------------
# model (Sec. 2, Fig. 2)
# ---------------------------------------------------------------------------------------------

def _fits_config(args, dims, image="x_t", images_per_group_check=1):
    """The forward pass's arrays against the config: image shape, text length, parameter tree,
    kept tokens and routing group (over `images_per_group_check` x B images: 2 for a guided batch)."""
    config, params = args["config"], args["params"]
    want = (config.image_size, config.image_size, config.channels)
    got = tuple(dims[k] for k in ("I", "J", "Ch"))
    if got != want:
        raise ValueError(f"{image}: image shape {got}, expected {want} from the config")
    if dims["L"] > config.max_text_len:
        raise ValueError(f"text_ids: {dims['L']} text tokens exceed max_text_len = {config.max_text_len}")
    if len(params["blocks"]) != config.depth:
        raise ValueError(f"params: {len(params['blocks'])} blocks, expected depth = {config.depth}")
    s = dims.get("Sk", config.num_tokens)
    keep = args.get("keep_index")
    if keep is not None:
        if s > config.num_tokens:
            raise ValueError(f"keep_index: keeps {s} tokens of the S = {config.num_tokens} of an image")
        if not is_traced(keep):
            k = np.asarray(keep)
            if k.min() < 0 or k.max() >= config.num_tokens:
                raise ValueError(f"keep_index: token indices must lie in [0, {config.num_tokens}), got range "
                                 f"[{k.min()}, {k.max()}]")
    if args.get("dynamic") and not config.has_predictor:
        raise ValueError(f"dynamic: dynamic capacity needs a capacity predictor; ffn_kind = {config.ffn_kind!r} "
                         "has none (use ffn_kind='diffmoe' or capacity_predictor=True)")
    if args.get("dynamic"):
        _thresholds_are_probabilities(params["blocks"])
    group_size = args.get("group_size")
    tokens = images_per_group_check * dims["B"] * s
    if group_size is not None and tokens % group_size:
        what = "B * S'" if images_per_group_check == 1 else "2B * S of a guided batch (conditional and null halves)"
        raise ValueError(f"group_size: {group_size} does not divide the {what} = {tokens} tokens")


def _thresholds_are_probabilities(blocks):
    """Dynamic capacity reads the thresholds tau of every predictor layer: finite, in [0, 1].
    Checked where the parameters are concrete (outside jit), so both halves refuse the same values."""
    for block in blocks:
        kind = predictor_kind(block)
        if kind is not None and not is_traced(block[kind]["threshold"]):
            _probabilities("threshold", block[kind]["threshold"])


BLOCKS = Instance((list, tuple), "a list of blocks")
MODEL_PARAMS = Params(patch_embed=Params(w="P D", b="D"), t_mlp=Params(), text=Params(), blocks=BLOCKS, final=Params())
KEEP_INDEX = Array("B Sk", dtype="int", optional=True)
IMAGES = "B I J Ch"


def _fits_config_and_hidden_layer(args, dims):
    """`_fits_config`, and hidden_layer (1-based, or None) naming a block of the model."""
    _fits_config(args, dims)
    k, blocks = args.get("hidden_layer"), len(args["params"]["blocks"])
    if k is not None and not 1 <= k <= blocks:
        raise ValueError(f"hidden_layer: block {k} does not exist (the model has {blocks} blocks, numbered from 1)")


forward = Contract(params=MODEL_PARAMS, x_t=IMAGES, t="B", text_ids=Array("B L", dtype="int"), text_mask=TEXT_MASK,
                   config=CONFIG, keep_index=KEEP_INDEX,
                   group_size=Int(optional=True), dynamic=BOOL, hidden_layer=Int(optional=True),
                   where=_fits_config_and_hidden_layer)
velocity = Contract(params=MODEL_PARAMS, x_t=IMAGES, t="B", text_ids=Array("B L", dtype="int"), text_mask=TEXT_MASK,
                    config=CONFIG, group_size=Int(optional=True), dynamic=BOOL, where=_fits_config)


def _divides_image(args, dims):
    p = args["patch_size"]
    for axis, n in (("I", dims["I"]), ("J", dims["J"])):
        if n % p:
            raise ValueError(f"patch_size: {p} does not divide the image side {axis} = {n}")


def _unpatchify_fits(args, dims):
    p, h, w = args["patch_size"], args["height"], args["width"]
    if h % p or w % p:
        raise ValueError(f"patch_size: {p} does not divide the image {h} x {w}")
    if (h // p) * (w // p) != dims["S"]:
        raise ValueError(f"patches: {dims['S']} patches, expected (height/p) (width/p) = {(h // p) * (w // p)}")
    if dims["P"] % (p * p):
        raise ValueError(f"patches: {dims['P']} values per patch is not a whole number of p x p = {p * p} pixels")


patchify = Contract(images=IMAGES, patch_size=Int(), where=_divides_image)
unpatchify = Contract(patches="B S P", patch_size=Int(), height=Int(), width=Int(), where=_unpatchify_fits)
null_caption = Contract(batch_size=Int(), max_len=Int())
sincos_embedding_2d = Contract(grid_size=Int(), dim=Int())
positional_embedding = Contract(params=Params(), config=CONFIG)
embed_patches = Contract(x_t=IMAGES, params=Params(patch_embed=Params(w="P D", b="D")), config=CONFIG)
keep_tokens = Contract(tokens="B S D", keep_index=Array("B Sk", dtype="int", below="S"))
text_encoder = Contract(text_ids=Array("B L", dtype="int"), text_mask=TEXT_MASK,
                        params=Params(embed="V Dy", pos="Lmax Dy", layers=BLOCKS),
                        num_heads=Int(divides="Dy"))
timestep_condition = Contract(t="B", params=Params(w1="Ft D", b1="D", w2="D D", b2="D"), config=CONFIG)
pooled_text = Contract(y="B L Dy", text_mask=TEXT_MASK, params=Params(w="Dy D", b="D"))
model_block = Contract(x="B S D", c="B D", y="B L Dy", params=Params(), config=CONFIG,
                       group_size=Int(optional=True, divides="B*S"), text_mask=OPTIONAL_TEXT_MASK, dynamic=BOOL)
final_layer = Contract(x="B S D", c="B D", params=Params(adaln=Params(w="D 2*D", b="2*D"), linear=Params(w="D P", b="P")))


# ---------------------------------------------------------------------------------------------
# objective (Eq. 1 as trained: kept tokens, caption dropout, the aux loss)
# ---------------------------------------------------------------------------------------------

def _batch_fits_config(args, dims):
    _fits_config({"config": args["model_cfg"], "params": args["params"], "group_size": args.get("group_size"),
                  "keep_index": args["batch"].get("keep_index")}, dims, image="batch['x0']")
    labels, layer = args["batch"].get("shape_labels"), args["model_cfg"].shape_head_layer
    if labels is None and layer is not None:
        raise ValueError(f"batch: a model with a shape head (shape_head_layer = {layer}) needs "
                         "batch['shape_labels'] (B, S), the token labels of ecdit.systems.shapes")
    if labels is not None and shape_of("batch['shape_labels']", labels)[1] != args["model_cfg"].num_tokens:
        raise ValueError(f"batch['shape_labels']: expected one label per image token ({args['model_cfg'].num_tokens}"
                         f" per image), got shape {shape_of('batch', labels)}")


def _shape_labels(name, labels):
    """Shape-head labels: class indices 0 .. NUM_SHAPE_LABELS - 1 (the last one the background)."""
    a = np.asarray(labels)
    if a.size and (a.min() < 0 or a.max() >= NUM_SHAPE_LABELS):
        raise ValueError(f"{name}: expected labels in 0 .. {NUM_SHAPE_LABELS - 1} (six shapes, then the "
                         f"background), got values from {a.min()} to {a.max()}")


BATCH = Params(x0=IMAGES, noise=IMAGES, z="B", drop=Array("B", dtype="bool"), text_ids=Array("B L", dtype="int"),
               text_mask=TEXT_MASK, keep_index=KEEP_INDEX,
               shape_labels=Array("B S", dtype="int", optional=True, values=_shape_labels))
shape_label_loss = Contract(hidden="B Sk D", labels=Array("B Sk", dtype="int", values=_shape_labels),
                            params=Params(w=f"D {NUM_SHAPE_LABELS}", b=f"{NUM_SHAPE_LABELS}"))
caption_dropout = Contract(text_ids=Array("B L", dtype="int"), text_mask=TEXT_MASK, drop=Array("B", dtype="bool"))
flow_matching_loss = Contract(params=MODEL_PARAMS, x0=IMAGES, noise=IMAGES, t="B", text_ids=Array("B L", dtype="int"),
                              text_mask=TEXT_MASK, config=CONFIG,
                              keep_index=KEEP_INDEX, weight=Array("B", optional=True),
                              group_size=Int(optional=True), dynamic=BOOL, hidden_layer=Int(optional=True),
                              where=_fits_config_and_hidden_layer)
training_loss = Contract(params=MODEL_PARAMS, batch=BATCH, model_cfg=CONFIG,
                         train_cfg=Instance(TrainConfig, "a TrainConfig"), group_size=Int(optional=True),
                         where=_batch_fits_config)


def _one_row_per_predictor(args, dims):
    blocks = args["params"]["blocks"]
    n = sum(predictor_kind(b) is not None for b in blocks)
    if dims["n"] != n:
        raise ValueError(f"kth_score: {dims['n']} rows, expected one per layer with a capacity predictor ({n})")


update_thresholds = Contract(params=MODEL_PARAMS, kth_score=Array("n E", values=_probabilities), config=CONFIG,
                             where=_one_row_per_predictor)


def _routing_list(args, dims):
    if not isinstance(args["routing"], (list, tuple)):
        raise ValueError(f"routing: expected the per-layer list of forward, got {type(args['routing']).__name__}")


routing_stats = Contract(where=_routing_list)


# ---------------------------------------------------------------------------------------------
# sample (Euler + classifier-free guidance)
# ---------------------------------------------------------------------------------------------

def _guided_batch_fits(args, dims):
    _fits_config(args, dims, image="x" if "x" in args else "noise", images_per_group_check=2)


guided_velocity = Contract(params=MODEL_PARAMS, x=IMAGES, t="B", text_ids=Array("B L", dtype="int"),
                           text_mask=TEXT_MASK, config=CONFIG, guidance_scale=FINITE,
                           group_size=Int(optional=True), dynamic=BOOL, where=_guided_batch_fits)
sample = Contract(params=MODEL_PARAMS, noise=IMAGES, text_ids=Array("B L", dtype="int"), text_mask=TEXT_MASK,
                  config=CONFIG, num_steps=Int(), guidance_scale=FINITE, group_size=Int(optional=True),
                  dynamic=BOOL, where=_guided_batch_fits)
