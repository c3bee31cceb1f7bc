"""The training objective (Sec. 3.1), JAX twin of reference/objective.py:

    t = sigmoid(mu + sigma z);  x_t = (1 - t) x0 + t noise;  y = null caption where drop;
    loss = mean (patchify(noise - x0)[keep] - v_theta(x_t, t, y)[keep])^2 + aux_weight * sum_l aux_l
           + predictor_weight * sum_l L_pred,l + shape_weight * CE(LN(h_k) W + b, shape_labels);
    tau_l <- d tau_l + (1 - d) q_l  (update_thresholds)

Same functions, arguments and shape comments as the reference; the training step of
ecdit.systems.train differentiates `training_loss`.

Shapes: B batch, I x I x Ch images, S tokens, S' kept tokens, P patch values, L text tokens,
n sparse layers.
"""
import jax
import jax.numpy as jnp

from ecdit.core import contracts
from ecdit.core.params import predictor_kind

from .diffmoe import predictor_loss, update_threshold
from .flow import interpolate, logit_normal_timesteps, loss_weights, rectified_flow_loss
from .jit import checked_jit
from .model import forward, null_caption, patchify
from .primitives import layer_norm


@checked_jit(contracts.caption_dropout)
def caption_dropout(text_ids, text_mask, drop):
    """The null caption where drop is True, the caption elsewhere: (ids (B, L), mask (B, L))."""
    null_ids, null_mask = null_caption(*text_ids.shape)          # (B, L) x2
    keep = ~drop[:, None]                                        # (B, 1)
    return jnp.where(keep, text_ids, null_ids), jnp.where(keep, text_mask, null_mask)


@checked_jit(contracts.flow_matching_loss, static_argnames=("config", "group_size", "dynamic", "hidden_layer"))
def flow_matching_loss(params, x0, noise, t, text_ids, text_mask, config, keep_index=None, group_size=None,
                       dynamic=False, weight=None, hidden_layer=None):
    """Eq. 1 at the given t on the kept tokens: (loss (), routing of `forward`)."""
    x_t = interpolate(x0, noise, t)                              # (B, I, I, Ch)
    v, routing, *hidden = forward(params, x_t, t, text_ids, text_mask, config, keep_index, group_size, dynamic,
                                  hidden_layer)                  # (B, S', P), list, [(B, S', D)] if hidden_layer
    x0_p = patchify(x0, config.patch_size)                       # (B, S, P)
    noise_p = patchify(noise, config.patch_size)                 # (B, S, P)
    if keep_index is not None:                                   # the loss is on kept tokens only
        keep = keep_index[..., None]                             # (B, S', 1)
        x0_p = jnp.take_along_axis(x0_p, keep, axis=1)           # (B, S', P)
        noise_p = jnp.take_along_axis(noise_p, keep, axis=1)     # (B, S', P)
    return (rectified_flow_loss(v, x0_p, noise_p, weight), routing, *hidden)  # (), list[, (B, S', D)]


def _kept_shape_labels(batch):
    """batch["shape_labels"] (B, S) at the kept tokens (B, S'); the contract makes sure they are there."""
    labels = batch["shape_labels"]                               # (B, S)
    if batch["keep_index"] is not None:
        labels = jnp.take_along_axis(labels, batch["keep_index"], axis=1)  # (B, S')
    return labels                                                # (B, S')


@checked_jit(contracts.shape_label_loss)
def shape_label_loss(hidden, labels, params):
    """The shape head's loss (a deviation; docs/model.md, "The shape head"): the mean over tokens
    of -log softmax(LN(h) W + b)[label], where h is the output of block config.shape_head_layer and
    the label the shape covering most of the token's patch (or background; ecdit.systems.shapes.
    token_labels). hidden (B, S', D), labels (B, S') int in [0, K), params {w (D, K), b (K,)}."""
    logits = layer_norm(hidden) @ params["w"] + params["b"]      # (B, S', K)
    log_p = jax.nn.log_softmax(logits, axis=-1)                  # (B, S', K)
    picked = jnp.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]  # (B, S')
    return -jnp.mean(picked)                                     # ()


@checked_jit(contracts.routing_stats)
def routing_stats(routing):
    """Per sparse layer: unrouted share, mean / max / std experts per token, aux loss; each (n,)."""
    layers = [r for r in routing if r is not None]
    if not layers:
        return {}
    ept = jnp.stack([r["experts_per_token"].astype(jnp.float32) for r in layers])  # (n, B, S')
    return {
        "unrouted": jnp.mean(ept == 0, axis=(1, 2)),             # (n,)
        "experts_mean": jnp.mean(ept, axis=(1, 2)),              # (n,)
        "experts_max": jnp.max(ept, axis=(1, 2)),                # (n,)
        "experts_std": jnp.std(ept, axis=(1, 2)),                # (n,)
        "aux": jnp.stack([jnp.asarray(r.get("aux_loss", 0.0), jnp.float32) for r in layers]),  # (n,)
    }


@checked_jit(contracts.training_loss, static_argnames=("model_cfg", "train_cfg", "group_size"))
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
    aux = jnp.sum(stats["aux"]) if stats else jnp.zeros(())  # one balancing loss per layer
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
        metrics.update(predictor_loss=pred, kth_score=jnp.stack([r["kth_score"] for r in predicted]))  # (n, E)
    return loss, {"loss": loss, **metrics}


@checked_jit(contracts.update_thresholds, static_argnames=("config",))
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
