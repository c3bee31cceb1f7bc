"""Training (Sec. 3.1): one jit-compiled step, the optimiser, and a resumable loop.

One step, for images x0 in [-1, 1] and their captions:

    t      = sigmoid(mu + sigma z)                   logit-normal timesteps, z ~ N(0, 1) given
    x_t    = (1 - t) x0 + t noise                    data at t = 0 (project convention)
    y      = null caption where drop, else caption   caption dropout, for classifier-free guidance
    v      = v_theta(x_t, t, y)[keep]                masked tokens dropped before the blocks
    loss   = mean (patchify(noise - x0)[keep] - v)^2 + aux_weight * mean_l aux_l   (token choice)
    params = RMSProp-with-momentum(grad), lr warmed up linearly (paper: 1e-4, 20K steps)

Randomness enters the step as arguments (z, noise, keep_index, drop); `sample_step_inputs` draws
them from np.random.default_rng([seed, step]), so step i sees the same batch whether or not the
run was stopped and resumed before it: a resumed run equals an unstopped one bit for bit on CPU.

Shapes: B batch, S tokens, S' kept tokens, P patch values, L text tokens.
"""
from __future__ import annotations

import json
import os
import queue
import threading
import time
from dataclasses import asdict

import jax
import jax.numpy as jnp
import numpy as np
import optax

from accelerated.flow import interpolate, logit_normal_timesteps, rectified_flow_loss
from accelerated.model import forward, patchify
from ecdit.config import ModelConfig, TrainConfig


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
    """RMSProp with momentum (Hinton 2012; Sec. 3.1) and linear warmup; optional global-norm clip."""
    rmsprop = optax.rmsprop(learning_rate_schedule(train_cfg), decay=train_cfg.rmsprop_decay,
                            eps=train_cfg.eps, momentum=train_cfg.momentum)
    if train_cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip), rmsprop)
    return rmsprop


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


# ---------------------------------------------------------------------------------------------
# Randomness at the edge
# ---------------------------------------------------------------------------------------------

def step_rng(seed: int, step: int) -> np.random.Generator:
    """The generator of training step `step`: a function of (seed, step) only (resumability)."""
    return np.random.default_rng([int(seed), int(step)])


def sample_keep_index(rng: np.random.Generator, batch_size: int, num_tokens: int, num_kept: int) -> np.ndarray:
    """A uniformly random subset of num_kept token indices per image, sorted. (B, S') int32."""
    scores = rng.random((batch_size, num_tokens))                # (B, S)
    keep = np.argsort(scores, axis=1)[:, :num_kept]              # (B, S')
    return np.sort(keep, axis=1).astype(np.int32)                # (B, S')  token order kept


def sample_step_inputs(rng: np.random.Generator, images, captions, model_cfg: ModelConfig,
                       train_cfg: TrainConfig) -> dict:
    """Everything random of one step, as NumPy: x0 = 2 images - 1 (B, H, W, Ch), text ids / mask
    (B, L), noise (B, H, W, Ch), z (B,), keep_index (B, S') or None, drop (B,) bool."""
    from ecdit import text
    b = len(captions)
    ids, mask = text.tokenize_batch(captions, model_cfg.max_text_len)       # (B, L) x2
    batch = {
        "x0": (2.0 * np.asarray(images, np.float32) - 1.0),                 # (B, H, W, Ch) in [-1, 1]
        "text_ids": ids, "text_mask": mask,
        "noise": rng.standard_normal(np.shape(images)).astype(np.float32),  # (B, H, W, Ch)
        "z": rng.standard_normal((b,)).astype(np.float32),                  # (B,)
        "drop": rng.random((b,)) < train_cfg.caption_dropout,               # (B,)
        "keep_index": None,
    }
    if train_cfg.mask_ratio > 0:
        s = model_cfg.num_tokens
        batch["keep_index"] = sample_keep_index(rng, b, s, train_cfg.kept_tokens(s))  # (B, S')
    return batch


def make_batch(seed: int, step: int, model_cfg: ModelConfig, train_cfg: TrainConfig) -> dict:
    """The data and randomness of training step `step` (captioned shapes)."""
    from ecdit import shapes
    rng = step_rng(seed, step)
    images, captions = shapes.sample_batch(rng, train_cfg.batch_size, model_cfg.image_size)
    return sample_step_inputs(rng, images, captions, model_cfg, train_cfg)


# ---------------------------------------------------------------------------------------------
# Loss and step
# ---------------------------------------------------------------------------------------------

def null_caption(batch_size: int, max_len: int):
    """The empty caption "" (one <null> token) for every row: (ids (B, L), mask (B, L))."""
    from ecdit import text
    return text.tokenize_batch([""] * batch_size, max_len)


def routing_stats(routing, num_experts: int) -> dict:
    """Per sparse layer: share of tokens no expert processed, mean/max experts per token, and
    the token-choice aux loss (0 for expert choice). Each (n_sparse,)."""
    layers = [r for r in routing if r is not None]
    if not layers:
        return {}
    ept = jnp.stack([r["experts_per_token"].astype(jnp.float32) for r in layers])  # (n, B, S')
    return {
        "unrouted": jnp.mean(ept == 0, axis=(1, 2)),             # (n,)
        "experts_mean": jnp.mean(ept, axis=(1, 2)),              # (n,)
        "experts_max": jnp.max(ept, axis=(1, 2)),                # (n,)
        "experts_std": jnp.std(ept, axis=(1, 2)),                # (n,)
        "aux": jnp.stack([r.get("aux_loss", jnp.zeros(())) for r in layers]),  # (n,)
    }


def loss_fn(params, batch, model_cfg: ModelConfig, train_cfg: TrainConfig, group_size=None):
    """Eq. 1 on the kept tokens (+ the weighted token-choice aux loss). Returns (loss, metrics)."""
    x0, noise = batch["x0"], batch["noise"]
    b = x0.shape[0]
    t = logit_normal_timesteps(batch["z"], train_cfg.t_mu, train_cfg.t_sigma)  # (B,)
    x_t = interpolate(x0, noise, t)                              # (B, H, W, Ch)
    null_ids, null_mask = null_caption(b, batch["text_ids"].shape[1])
    drop = batch["drop"][:, None]                                # (B, 1)
    ids = jnp.where(drop, null_ids, batch["text_ids"])           # (B, L)
    mask = jnp.where(drop, null_mask, batch["text_mask"])        # (B, L)
    v, routing = forward(params, x_t, t, ids, mask, model_cfg, batch["keep_index"], group_size)  # (B, S', P)
    x0_p = patchify(x0, model_cfg.patch_size)                    # (B, S, P)
    noise_p = patchify(noise, model_cfg.patch_size)              # (B, S, P)
    if batch["keep_index"] is not None:                          # the loss is on kept tokens only
        keep = batch["keep_index"][..., None]                    # (B, S', 1)
        x0_p = jnp.take_along_axis(x0_p, keep, axis=1)           # (B, S', P)
        noise_p = jnp.take_along_axis(noise_p, keep, axis=1)     # (B, S', P)
    flow = rectified_flow_loss(v, x0_p, noise_p)                 # mean ((noise - x0) - v)^2
    stats = routing_stats(routing, model_cfg.num_experts)
    aux = jnp.mean(stats["aux"]) if stats else jnp.zeros(())
    loss = flow + (model_cfg.aux_loss_weight * aux if model_cfg.ffn_kind == "token_choice" else 0.0)
    return loss, {"loss": loss, "flow_loss": flow, "aux_loss": aux, **stats}


VALIDATION_TIMESTEPS = (0.1, 0.3, 0.5, 0.7, 0.9)


def _validation_loss(params, x0, noise, t, text_ids, text_mask, model_cfg):
    """Eq. 1 at one fixed t for every image (no masking, no caption dropout): mean over all
    patch values. x0, noise (B, H, W, Ch); t scalar; text (B, L)."""
    tb = jnp.full((x0.shape[0],), t, jnp.float32)               # (B,)
    x_t = interpolate(x0, noise, tb)                             # (B, H, W, Ch)
    v, _ = forward(params, x_t, tb, text_ids, text_mask, model_cfg)  # (B, S, P)
    return rectified_flow_loss(v, patchify(x0, model_cfg.patch_size), patchify(noise, model_cfg.patch_size))


_validation_loss_jit = jax.jit(_validation_loss, static_argnames=("model_cfg",))


def validation_loss(params, model_cfg: ModelConfig, items, *, seed: int = 0,
                    timesteps=VALIDATION_TIMESTEPS, batch_size: int = 64) -> dict:
    """Rectified-flow loss on held-out items at fixed timesteps, with fixed noise.

    Unlike the logged training loss (one batch, random t), this is the same number for the same
    parameters: every item's image is its own seeded scene (`HeldoutItem.seed`), the noise comes
    from np.random.default_rng(seed), and each t in `timesteps` is applied to every image.
    Returns {"mean": mean over timesteps, "per_t": {t: loss}}. Comparable across models only with
    the same items, seed and timesteps.
    """
    from ecdit import shapes, text
    if not timesteps or not all(0.0 <= float(t) <= 1.0 for t in timesteps):
        raise ValueError(f"timesteps: expected a non-empty sequence of values in [0, 1], got {timesteps!r}")
    x0 = 2.0 * shapes.render_items(items, model_cfg.image_size) - 1.0  # (N, H, W, Ch) in [-1, 1]
    noise = np.random.default_rng(seed).standard_normal(x0.shape).astype(np.float32)  # (N, H, W, Ch)
    ids, mask = text.tokenize_batch([it.text for it in items], model_cfg.max_text_len)  # (N, L) x2
    per_t = {}
    for t in timesteps:
        total = 0.0
        for a in range(0, len(items), batch_size):
            b = slice(a, a + batch_size)
            loss = _validation_loss_jit(params, x0[b], noise[b], float(t), ids[b], mask[b], model_cfg)
            total += float(loss) * len(x0[b])
        per_t[float(t)] = total / len(items)
    return {"mean": float(np.mean(list(per_t.values()))), "per_t": per_t}


def _train_step(state, batch, model_cfg, train_cfg, group_size=None):
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], batch, model_cfg, train_cfg, group_size)
    updates, opt_state = make_optimizer(train_cfg).update(grads, state["opt_state"], state["params"])
    if train_cfg.text_lr_scale != 1.0:                           # 0: frozen text encoder (like the paper's T5)
        updates = dict(updates, text=jax.tree.map(lambda u: u * train_cfg.text_lr_scale, updates["text"]))
    params = optax.apply_updates(state["params"], updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["lr"] = learning_rate_schedule(train_cfg)(state["step"])
    new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
    if "ema" in state:
        new_state["ema"] = update_ema(state["ema"], params, state["step"], train_cfg)
    return new_state, metrics


train_step = jax.jit(_train_step, static_argnames=("model_cfg", "train_cfg", "group_size"))
train_step.__doc__ = """One jit-compiled optimisation step: (state, batch) -> (new state, metrics).
batch is `sample_step_inputs`'s dict; group_size None uses model_cfg.train_group_size."""


def run_step(state, batch, model_cfg, train_cfg):
    """`train_step` with the config's training group size."""
    return train_step(state, batch, model_cfg, train_cfg, model_cfg.train_group_size)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------

class _Prefetch:
    """Builds batches step+1, step+2, ... on a thread while the device runs the current step
    (the batch of a step depends only on (seed, step), so this changes nothing but speed)."""

    def __init__(self, start, stop, model_cfg, train_cfg, depth=2):
        self.q = queue.Queue(maxsize=depth)
        self.stopped = False

        def work():
            for i in range(start, stop):
                if self.stopped:
                    return
                self.q.put((i, make_batch(train_cfg.seed, i, model_cfg, train_cfg)))
        self.thread = threading.Thread(target=work, daemon=True)
        self.thread.start()

    def get(self):
        return self.q.get()

    def close(self):
        self.stopped = True
        while not self.q.empty():
            self.q.get_nowait()


def _to_py(metrics) -> dict:
    out = {}
    for k, v in metrics.items():
        a = np.asarray(v)
        out[k] = float(a) if a.ndim == 0 else [float(x) for x in a.ravel()]
    return out


def train(model_cfg: ModelConfig, train_cfg: TrainConfig, steps: int, run_dir=None, *,
          minutes: float | None = None, resume: bool = True, checkpoint_every: int = 200,
          log_every: int = 10, progress: bool = True, init_seed: int | None = None, desc: str = "train"):
    """Train for `steps` steps in total (counting any resumed ones), or until `minutes` pass.

    With run_dir: resumes from run_dir/checkpoint.npz if present (and resume), writes it every
    `checkpoint_every` steps and at the end (atomically), appends metrics to run_dir/metrics.jsonl
    and draws run_dir/loss.png. Returns (params as NumPy, list of metric records); the params are
    the EMA when train_cfg.ema_decay > 0 (what sampling should use)."""
    from tqdm.auto import tqdm

    from ecdit import checkpoint
    from ecdit.model_params import init_model

    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps: expected a non-negative integer, got {steps!r}")
    if minutes is not None and not minutes > 0:
        raise ValueError(f"minutes: expected a positive number, got {minutes!r}")
    ckpt_path = os.path.join(run_dir, "checkpoint.npz") if run_dir else None
    log_path = os.path.join(run_dir, "metrics.jsonl") if run_dir else None
    if run_dir:
        os.makedirs(run_dir, exist_ok=True)
    history: list[dict] = []
    if ckpt_path and resume and os.path.exists(ckpt_path):
        state, saved_model, saved_train, _ = checkpoint.load_train_state(ckpt_path)
        if saved_model != model_cfg or saved_train != train_cfg:
            raise ValueError(f"resume: the checkpoint in {run_dir} was written with a different config; "
                             "use another --out folder or --no-resume")
        history = read_metrics(log_path, upto=int(state["step"])) if log_path else []
    else:
        seed = train_cfg.seed if init_seed is None else init_seed
        state = init_state(init_model(model_cfg, seed), train_cfg)
    start = int(state["step"])
    if log_path:                                                 # rewrite: drop records past the checkpoint
        with open(log_path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in history)
    deadline = None if minutes is None else time.monotonic() + 60.0 * minutes
    fetch = _Prefetch(start, steps, model_cfg, train_cfg)
    if minutes is not None:                                      # the bar's total is steps; say when it really stops
        desc = f"{desc} (at most {minutes:g} min)"
    bar = tqdm(total=steps, initial=start, desc=desc, disable=not progress, unit="step", dynamic_ncols=True)
    window_t, window_n = time.perf_counter(), 0
    step = start
    try:
        while step < steps:
            i, batch = fetch.get()
            state, metrics = run_step(state, batch, model_cfg, train_cfg)
            step += 1
            window_n += 1
            if step % log_every == 0 or step == steps:
                rec = _to_py(metrics)
                now = time.perf_counter()
                rec.update(step=step, images_per_s=window_n * train_cfg.batch_size / max(now - window_t, 1e-9),
                           time=time.time())
                window_t, window_n = now, 0
                history.append(rec)
                if log_path:
                    with open(log_path, "a") as f:
                        f.write(json.dumps(rec) + "\n")
                bar.set_postfix(loss=f"{rec['loss']:.4f}", img_s=f"{rec['images_per_s']:.0f}")
            bar.update(1)
            if ckpt_path and step % checkpoint_every == 0 and step < steps:
                checkpoint.save_train_state(ckpt_path, state, model_cfg, train_cfg)
            if deadline is not None and time.monotonic() > deadline:
                break
    finally:
        fetch.close()
        bar.close()
    if ckpt_path:
        checkpoint.save_train_state(ckpt_path, state, model_cfg, train_cfg)
        if history:
            plot_loss(history, os.path.join(run_dir, "loss.png"))
    return jax.tree.map(np.asarray, sampling_params(state)), history


def read_metrics(path, upto: int | None = None) -> list[dict]:
    """The records of a metrics.jsonl (those with step <= upto); [] when there is none."""
    if not path or not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue                                         # a torn last line of a crashed run
            if upto is None or rec.get("step", 0) <= upto:
                out.append(rec)
    return out


def plot_loss(history, path, title="training loss"):
    """Loss curve (raw and a running mean) as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = np.array([r["step"] for r in history])
    loss = np.array([r["loss"] for r in history])
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, loss, lw=0.8, alpha=0.5, label="loss")
    if len(loss) >= 5:
        k = max(2, len(loss) // 20)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, lw=1.8, label=f"running mean ({k} logs)")
    ax.set_xlabel("step")
    ax.set_ylabel("rectified-flow loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def config_dict(model_cfg: ModelConfig, train_cfg: TrainConfig) -> dict:
    return {"model": asdict(model_cfg), "train": asdict(train_cfg)}
