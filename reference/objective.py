"""The training objective (Sec. 3.1): Eq. 1 on the kept tokens, with caption dropout and the
token-choice auxiliary loss.

    t    = sigmoid(mu + sigma z)                     logit-normal timesteps, z ~ N(0, 1) given
    x_t  = (1 - t) x0 + t noise                      data at t = 0 (project convention)
    y    = null caption where drop, else caption     caption dropout, for classifier-free guidance
    v    = v_theta(x_t, t, y)[keep]                  masked tokens dropped before the blocks (MaskDiT)
    loss = mean (patchify(noise - x0)[keep] - v)^2   Eq. 1, on the kept tokens only (each image's
                                                     error times max(t, min_t)^2 with loss_weighting "x0")
           + aux_loss_weight * sum_l aux_l           token choice only: GShard's balancing loss, per layer
           + predictor_loss_weight * sum_l L_pred,l  a capacity predictor only (DiffMoE, docs/diffmoe.md)
           + shape_loss_weight * CE(LN(h_k) W + b,   a shape head only (deviation, docs/model.md): h_k
                                    shape_labels)    block k's output, the labels from ecdit.systems.shapes
    tau_l <- d tau_l + (1 - d) q_l               after the optimiser's step: `update_thresholds`

Randomness enters as the batch (z, noise, drop, keep_index): the training loop in ecdit.systems
draws it, so the two halves can be compared exactly.

`batch` is a dict: x0 and noise (B, I, I, Ch), z (B,), drop (B,) bool, text_ids (B, L) int,
text_mask (B, L) bool, keep_index (B, S') sorted int or None (no masking), and for a model with a
shape head shape_labels (B, S) int in [0, 7) (`ecdit.systems.shapes.token_labels`).

Shapes: B batch, I x I x Ch images, S tokens, S' kept tokens, P patch values, L text tokens,
n sparse layers.
"""
import numpy as np

from ecdit.core import contracts
from ecdit.core.checks import checked
from ecdit.core.params import predictor_kind

from .diffmoe import predictor_loss, update_threshold
from .flow import interpolate, logit_normal_timesteps, loss_weights, rectified_flow_loss
from .model import forward, null_caption, patchify
from .primitives import layer_norm


@checked(contracts.caption_dropout)
def caption_dropout(text_ids, text_mask, drop):
    """The null caption where drop is True, the caption elsewhere: (ids (B, L), mask (B, L))."""
    null_ids, null_mask = null_caption(*text_ids.shape)          # (B, L) x2
    keep = ~drop[:, None]                                        # (B, 1)
    return np.where(keep, text_ids, null_ids), np.where(keep, text_mask, null_mask)


@checked(contracts.flow_matching_loss)
def flow_matching_loss(params, x0, noise, t, text_ids, text_mask, config, keep_index=None, group_size=None,
                       dynamic=False, weight=None, hidden_layer=None):
    """Eq. 1 at the given t for each image, on the kept tokens: mean ((noise - x0) - v)^2 over
    kept patches and values. Returns (loss (), routing of `forward`). `dynamic`: routed with
    DiffMoE's dynamic capacity, as at inference (evaluation; training uses the static rule).
    `weight` (B,): each image's error times its weight (`loss_weights`); None: Eq. 1 as written."""
    x_t = interpolate(x0, noise, t)                              # (B, I, I, Ch)
    v, routing, *hidden = forward(params, x_t, t, text_ids, text_mask, config, keep_index, group_size, dynamic,
                                  hidden_layer)                  # (B, S', P), list, [(B, S', D)] if hidden_layer
    x0_p = patchify(x0, config.patch_size)                       # (B, S, P)
    noise_p = patchify(noise, config.patch_size)                 # (B, S, P)
    if keep_index is not None:                                   # the loss is on kept tokens only
        keep = keep_index[..., None]                             # (B, S', 1)
        x0_p = np.take_along_axis(x0_p, keep, axis=1)            # (B, S', P)
        noise_p = np.take_along_axis(noise_p, keep, axis=1)      # (B, S', P)
    return (rectified_flow_loss(v, x0_p, noise_p, weight), routing, *hidden)  # (), list[, (B, S', D)]


def _kept_shape_labels(batch):
    """batch["shape_labels"] (B, S) at the kept tokens (B, S'); the contract makes sure they are there."""
    labels = batch["shape_labels"]                               # (B, S)
    if batch["keep_index"] is not None:
        labels = np.take_along_axis(labels, batch["keep_index"], axis=1)  # (B, S')
    return labels                                                # (B, S')


@checked(contracts.shape_label_loss)
def shape_label_loss(hidden, labels, params):
    """The shape head's loss (a deviation; docs/model.md, "The shape head"): the mean over tokens
    of -log softmax(LN(h) W + b)[label], where h is the output of block config.shape_head_layer and
    the label the shape covering most of the token's patch (or background; ecdit.systems.shapes.
    token_labels). hidden (B, S', D), labels (B, S') int in [0, K), params {w (D, K), b (K,)}."""
    logits = layer_norm(hidden) @ params["w"] + params["b"]      # (B, S', K)
    z = logits - logits.max(axis=-1, keepdims=True)              # (B, S', K)  stable log-softmax
    log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))    # (B, S', K)
    picked = np.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]  # (B, S')
    return -np.mean(picked)                                      # ()


@checked(contracts.routing_stats)
def routing_stats(routing):
    """Per sparse layer: share of tokens no expert processed, mean / max / std experts per token,
    and the token-choice aux loss (0 for expert choice). Each (n,); {} for a dense model."""
    layers = [r for r in routing if r is not None]
    if not layers:
        return {}
    ept = np.stack([r["experts_per_token"].astype(np.float32) for r in layers])  # (n, B, S')
    return {
        "unrouted": np.mean(ept == 0, axis=(1, 2)),              # (n,)
        "experts_mean": np.mean(ept, axis=(1, 2)),               # (n,)
        "experts_max": np.max(ept, axis=(1, 2)),                 # (n,)
        "experts_std": np.std(ept, axis=(1, 2)),                 # (n,)
        "aux": np.stack([np.asarray(r.get("aux_loss", 0.0), np.float32) for r in layers]),  # (n,)
    }


@checked(contracts.training_loss)
def training_loss(params, batch, model_cfg, train_cfg, group_size=None):
    """The loss one training step minimises. Returns (loss, metrics): metrics holds loss,
    flow_loss (Eq. 1), aux_loss (the sum over sparse layers of each layer's balancing loss, as
    GShard, Switch and Mesh-TF add one per layer), predictor_loss (the sum over the layers
    with a capacity predictor of their L_pred, as DiffMoE sums them), the `routing_stats`, and for
    a model with a predictor kth_score (n, E), each layer's q for `update_thresholds`.
    group_size None: model_cfg.train_group_size (None there too: one image per group), the
    project's one rule (docs/model.md, "Routing groups")."""
    group_size = model_cfg.train_group_size if group_size is None else group_size
    t = logit_normal_timesteps(batch["z"], train_cfg.t_mu, train_cfg.t_sigma)  # (B,)
    ids, mask = caption_dropout(batch["text_ids"], batch["text_mask"], batch["drop"])  # (B, L) x2
    weight = loss_weights(t, train_cfg.loss_weighting, model_cfg.prediction_min_t)  # (B,) or None
    layer = model_cfg.shape_head_layer
    flow, routing, *hidden = flow_matching_loss(params, batch["x0"], batch["noise"], t, ids, mask, model_cfg,
                                                batch["keep_index"], group_size, weight=weight, hidden_layer=layer)
    stats = routing_stats(routing)
    aux = np.sum(stats["aux"]) if stats else np.zeros((), np.float32)  # one balancing loss per layer
    loss = flow + (model_cfg.aux_loss_weight * aux if model_cfg.ffn_kind == "token_choice" else 0.0)
    metrics = {"flow_loss": flow, "aux_loss": aux, **stats}
    if layer is not None:                                        # deviation: the shape head's loss
        labels = _kept_shape_labels(batch)                       # (B, S')
        shape = shape_label_loss(hidden[0], labels, params["shape_head"])  # ()
        loss = loss + model_cfg.shape_loss_weight * shape
        metrics["shape_loss"] = shape
    predicted = [r for r in routing if r is not None and "predictor_logits" in r]
    if predicted:                                                # DiffMoE: L_pred, and q for the thresholds
        pred = sum(predictor_loss(r["predictor_logits"], r["assignment"]) for r in predicted)  # ()
        loss = loss + model_cfg.predictor_loss_weight * pred
        metrics.update(predictor_loss=pred, kth_score=np.stack([r["kth_score"] for r in predicted]))  # (n, E)
    return loss, {"loss": loss, **metrics}


@checked(contracts.update_thresholds)
def update_thresholds(params, kth_score, config):
    """tau_l <- d tau_l + (1 - d) q_l for every layer l with a capacity predictor (d =
    config.threshold_decay): `diffmoe.update_threshold` on each, the l-th row of kth_score (n, E)
    in layer order. Returns params with the new thresholds and everything else unchanged: the
    training step calls it after the optimiser's update, so the thresholds are never optimised."""
    blocks, row = [], 0
    for block in params["blocks"]:
        kind = predictor_kind(block)
        if kind is not None:
            tau = update_threshold(block[kind]["threshold"], kth_score[row], config.threshold_decay)  # (E,)
            block = dict(block, **{kind: dict(block[kind], threshold=tau)})
            row += 1
        blocks.append(block)
    return dict(params, blocks=blocks)
