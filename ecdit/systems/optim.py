"""The optimiser and the training state (Sec. 3.1): RMSProp with momentum (or AdamW) after a linear warmup,
an optional EMA of the parameters, and the state dict a checkpoint holds.

    state = {"params", "opt_state", "step"} (+ "ema" when TrainConfig.ema_decay > 0)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ecdit.core.config import TrainConfig


# ---------------------------------------------------------------------------------------------
# Optimiser
# ---------------------------------------------------------------------------------------------

def learning_rate_schedule(train_cfg: TrainConfig):
    """Linear warmup from 0 to learning_rate over warmup_steps, then constant (Sec. 3.1); with
    decay_steps > 0, then linear decay to 0 at step decay_steps (a short-run choice, not the paper's)."""
    lr, warm = train_cfg.learning_rate, train_cfg.warmup_steps
    after = (optax.constant_schedule(lr) if not train_cfg.decay_steps
             else optax.linear_schedule(lr, 0.0, train_cfg.decay_steps - warm))
    if warm == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), after], [warm])


def make_optimizer(train_cfg: TrainConfig) -> optax.GradientTransformation:
    """RMSProp with momentum (Hinton 2012; Sec. 3.1), or AdamW (Loshchilov & Hutter 2019; a
    deviation for short runs, `optimizer="adamw"`), after a linear warmup; optional global-norm clip."""
    lr = learning_rate_schedule(train_cfg)
    if train_cfg.optimizer == "adamw":
        opt = optax.adamw(lr, b1=train_cfg.adam_b1, b2=train_cfg.adam_b2, eps=train_cfg.eps,
                          weight_decay=train_cfg.weight_decay)
    else:
        opt = optax.rmsprop(lr, decay=train_cfg.rmsprop_decay, eps=train_cfg.eps, momentum=train_cfg.momentum)
    if train_cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip), opt)
    return opt


def init_state(params, train_cfg: TrainConfig) -> dict:
    """{'params', 'opt_state', 'step'} (+ 'ema' when train_cfg.ema_decay > 0): the whole
    resumable training state."""
    params = jax.tree.map(jnp.asarray, params)
    state = {"params": params, "opt_state": make_optimizer(train_cfg).init(params),
             "step": jnp.zeros((), jnp.int32)}
    if train_cfg.ema_decay > 0:
        state["ema"] = jax.tree.map(jnp.copy, params)
    return state


def ema_decay_at(step, train_cfg: TrainConfig):
    """The EMA decay used after step `step` (0-based): min(ema_decay, (1 + step) / (10 + step)),
    so the average forgets the random initialisation quickly in a short run."""
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(train_cfg.ema_decay, (1.0 + step) / (10.0 + step))


def update_ema(ema, params, step, train_cfg: TrainConfig):
    """ema <- decay * ema + (1 - decay) * params (optax.incremental_update)."""
    return optax.incremental_update(params, ema, 1.0 - ema_decay_at(step, train_cfg))


def sampling_params(state) -> dict:
    """The parameters to sample with: the EMA when the run keeps one, else the raw parameters."""
    return state.get("ema", state["params"])
