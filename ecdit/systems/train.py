"""Training (Sec. 3.1): the optimiser, one jit-compiled step, the data pipeline and a resumable loop.

One step minimises the objective of `accelerated.objective.training_loss` (its specification:
reference/objective.py; Eq. 1 on the kept tokens, caption dropout, the token-choice aux loss,
DiffMoE's predictor loss) and then moves DiffMoE's thresholds (`update_thresholds`):

    params = RMSProp-with-momentum(grad), lr warmed up linearly (paper: 1e-4, 20K steps)

Randomness enters the step as arguments (z, noise, keep_index, drop); `sample_step_inputs` draws
them from np.random.default_rng([seed, step]), so step i sees the same batch whether or not the
run was stopped and resumed before it: a resumed run equals an unstopped one bit for bit on CPU.

Shapes: B batch, S tokens, S' kept tokens, P patch values, L text tokens.
"""
from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
from dataclasses import asdict

import jax
import numpy as np
import optax
from tqdm.auto import tqdm

from ecdit.accelerated.jit import checked_jit
from ecdit.accelerated.objective import flow_matching_loss, training_loss, update_thresholds
from ecdit.core import contracts
from ecdit.core.checks import Contract, Instance, Int, Params, positive_int
from ecdit.core.config import ModelConfig, TrainConfig
from ecdit.core.errors import TrainingDiverged, TrainingStopped
from ecdit.core.params import init_model
from ecdit.systems import checkpoint, distributed, shapes, text
from ecdit.systems import mesh as mesh_lib
from ecdit.systems.optim import init_state, learning_rate_schedule, make_optimizer, sampling_params, update_ema
from ecdit.systems.sampling import check_thresholds
from ecdit.systems.stopping import StopSignals


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
                       train_cfg: TrainConfig, shape_labels=None) -> dict:
    """Everything random of one step, as NumPy: x0 = 2 images - 1 (B, I, J, Ch), text ids / mask
    (B, L), noise (B, I, J, Ch), z (B,), keep_index (B, S') or None, drop (B,) bool; and
    shape_labels (B, S) when given (a model with a shape head)."""
    b = len(captions)
    ids, mask = text.encode(captions, model_cfg)                            # (B, L) x2
    batch = {
        "x0": (2.0 * np.asarray(images, np.float32) - 1.0),                 # (B, I, J, Ch) in [-1, 1]
        "text_ids": ids, "text_mask": mask,
        "noise": rng.standard_normal(np.shape(images)).astype(np.float32),  # (B, I, J, Ch)
        "z": rng.standard_normal((b,)).astype(np.float32),                  # (B,)
        "drop": rng.random((b,)) < train_cfg.caption_dropout,               # (B,)
        "keep_index": None,
    }
    if shape_labels is not None:
        batch["shape_labels"] = np.asarray(shape_labels, np.int32)          # (B, S)
    if train_cfg.mask_ratio > 0:
        s = model_cfg.num_tokens
        batch["keep_index"] = sample_keep_index(rng, b, s, train_cfg.kept_tokens(s))  # (B, S')
    return batch


def make_batch(seed: int, step: int, model_cfg: ModelConfig, train_cfg: TrainConfig) -> dict:
    """The data and randomness of training step `step` (captioned shapes)."""
    rng = step_rng(seed, step)
    head = model_cfg.shape_head_layer is not None                # the shape head's token labels
    images, captions, *labels = shapes.sample_batch(rng, train_cfg.batch_size, model_cfg.image_size,
                                                    train_cfg.category_weights,
                                                    model_cfg.patch_size if head else None,
                                                    train_cfg.pair_caption_order)
    return sample_step_inputs(rng, images, captions, model_cfg, train_cfg, *labels)


# ---------------------------------------------------------------------------------------------
# Loss and step
# ---------------------------------------------------------------------------------------------

VALIDATION_TIMESTEPS = (0.1, 0.3, 0.5, 0.7, 0.9)


def validation_loss(params, model_cfg: ModelConfig, items, *, seed: int = 0,
                    timesteps=VALIDATION_TIMESTEPS, batch_size: int = 64, dynamic: bool = False) -> dict:
    """Rectified-flow loss on held-out items at fixed timesteps, with fixed noise.

    Unlike the logged training loss (one batch, random t), this is the same number for the same
    parameters: every item's image is its own seeded scene (`HeldoutItem.seed`), the noise comes
    from np.random.default_rng(seed), and each t in `timesteps` is applied to every image.
    Returns {"mean": mean over timesteps, "per_t": {t: loss}}. Comparable across models only with
    the same items, seed and timesteps. `dynamic`: route with DiffMoE's dynamic capacity
    (`flow_matching_loss(..., dynamic=True)`) instead of the training rule.
    A DiffMoE model's pool is each batch of `batch_size` items. Routing groups: the config's
    inference_group_size, as in sampling (the project's rule: an entry point that trains uses
    train_group_size, one that samples or evaluates inference_group_size; None there: one image
    per group); ValueError naming group_size when a batch's images do not fill whole groups.
    """
    if dynamic:
        check_thresholds(params, model_cfg)
    if not timesteps or not all(0.0 <= float(t) <= 1.0 for t in timesteps):
        raise ValueError(f"timesteps: expected a non-empty sequence of values in [0, 1], got {timesteps!r}")
    group = model_cfg.inference_group_size
    if group is not None:
        tokens = model_cfg.num_tokens
        sizes = {len(items[a:a + batch_size]) for a in range(0, len(items), batch_size)}
        bad = sorted(n for n in sizes if (n * tokens) % group)
        if bad:
            raise ValueError(f"group_size: a batch of {bad[0]} held-out items x {tokens} tokens does not fill whole "
                             f"routing groups of inference_group_size = {group} tokens; use an item count and "
                             "batch_size that are multiples of the images per group")
    x0 = 2.0 * shapes.render_items(items, model_cfg.image_size) - 1.0  # (M, I, J, Ch) in [-1, 1]
    noise = np.random.default_rng(seed).standard_normal(x0.shape).astype(np.float32)  # (M, I, J, Ch)
    ids, mask = text.encode([it.text for it in items], model_cfg)      # (M, L) x2
    per_t = {}
    for t in timesteps:
        total = 0.0
        for a in range(0, len(items), batch_size):
            b = slice(a, a + batch_size)
            tb = np.full((len(x0[b]),), t, np.float32)                       # (B,)  one t for every image
            loss, _ = flow_matching_loss(params, x0[b], noise[b], tb, ids[b], mask[b], model_cfg,  # no masking
                                         None, group, dynamic)
            total += float(loss) * len(x0[b])
        per_t[float(t)] = total / len(items)
    return {"mean": float(np.mean(list(per_t.values()))), "per_t": per_t}


# The state is the loop's own output, so only its structure is checked: reading its values here
# would make every step wait for the one before it (no asynchronous dispatch).
train_step_contract = Contract(
    state=Params(params=Instance(dict), opt_state=Instance(object), step=Instance(object)),
    batch=contracts.BATCH, model_cfg=contracts.CONFIG, train_cfg=Instance(TrainConfig, "a TrainConfig"),
    group_size=Int(optional=True))


@checked_jit(train_step_contract, static_argnames=("model_cfg", "train_cfg", "group_size"))
def train_step(state, batch, model_cfg, train_cfg, group_size=None):
    """One jit-compiled optimisation step: (state, batch) -> (new state, metrics). batch is
    `sample_step_inputs`'s dict; `run_step` passes the config's training group size.

    A model with a capacity predictor (DiffMoE) also moves its thresholds: after the optimiser's
    update, each layer's tau becomes its EMA with this step's k-th scores (`update_thresholds`),
    replacing whatever the optimiser did to it (their gradient is 0: no loss reads them). The EMA
    of the parameters then averages them too: sampling uses an EMA of the EMA, as the official
    code does (docs/diffmoe.md)."""
    (_, metrics), grads = jax.value_and_grad(training_loss, has_aux=True)(
        state["params"], batch, model_cfg, train_cfg, group_size)
    updates, opt_state = make_optimizer(train_cfg).update(grads, state["opt_state"], state["params"])
    if train_cfg.text_lr_scale != 1.0:                           # 0: frozen text encoder (like the paper's T5)
        updates = dict(updates, text=jax.tree.map(lambda u: u * train_cfg.text_lr_scale, updates["text"]))
    params = optax.apply_updates(state["params"], updates)
    if "kth_score" in metrics:                                   # DiffMoE: the thresholds are a buffer,
        params = update_thresholds(params, metrics.pop("kth_score"), model_cfg)  # overwritten, never optimised
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["lr"] = learning_rate_schedule(train_cfg)(state["step"])
    new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
    if "ema" in state:
        new_state["ema"] = update_ema(state["ema"], params, state["step"], train_cfg)
    return new_state, metrics


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


# The quantities whose first non-finite value stops a run: the loss (Eq. 1 plus the auxiliary and
# predictor terms) and the global gradient norm (non-finite when any gradient is).
WATCHED = ("loss", "grad_norm")


def _json_line(record: dict) -> str:
    """A metrics record as strict JSON: non-finite floats become null (json.dumps would write the
    bare tokens NaN / Infinity, which are not JSON)."""
    def clean(v):
        if isinstance(v, float) and not np.isfinite(v):
            return None
        return [clean(x) for x in v] if isinstance(v, list) else v
    return json.dumps({k: clean(v) for k, v in record.items()}, allow_nan=False) + "\n"


def _first_non_finite(pending: list) -> tuple[int, str, dict] | None:
    """(step, quantity, metrics) of the first step in `pending` [(step, metrics)] whose watched
    metrics are not all finite, or None. One device-to-host transfer for the whole window."""
    if not pending:
        return None
    values = np.asarray(jax.device_get([[m[q] for q in WATCHED] for _, m in pending]), np.float64)  # (n, 2)
    bad = ~np.isfinite(values)
    if not bad.any():
        return None
    i = int(np.argmax(bad.any(axis=1)))
    step, metrics = pending[i]
    return step, WATCHED[int(np.argmax(bad[i]))], _to_py(metrics)


def train(model_cfg: ModelConfig, train_cfg: TrainConfig, steps: int, run_dir=None, *,
          minutes: float | None = None, resume: bool = True, checkpoint_every: int = 200,
          log_every: int = 10, progress: bool = True, init_seed: int | None = None, desc: str = "train",
          mesh: dict | None = None, stop: StopSignals | None = None, resume_step: int | None = None):
    """Train for `steps` steps in total (counting any resumed ones), or until `minutes` pass.

    With run_dir: resumes from run_dir's checkpoint if present (and resume: the newest committed
    step of run_dir/checkpoint/, else a legacy run_dir/checkpoint.npz), saves a step there every
    `checkpoint_every` steps and at the end (`checkpoint.save_train_state`: committed atomically,
    the last two kept) and appends metrics to run_dir/metrics.jsonl (the CLI and the demo draw
    the loss curve from them). Without resume, the first save removes the checkpoint of the run
    that was there. Returns (params as NumPy, list of metric records); the params are the EMA
    when train_cfg.ema_decay > 0 (what sampling should use).

    `mesh` ({"data": n, "expert": m}, `mesh_lib.parse_mesh` of the --mesh flag; None or {}: one
    device) shards the state and each batch over a device mesh (`mesh_lib.sharded_train_step`:
    batch over data, experts over expert, dense weights FSDP-style over data); every metrics
    record names the mesh. A checkpoint restores straight into the mesh's shardings, whatever
    mesh (or none) wrote it, so a run saved on one mesh resumes on another.

    Several processes (after `distributed.initialize`, the --distributed flag): the mesh must
    cover every global device; each process builds the same batches from (seed, step) and the
    same initial state, or restores its own shards of the checkpoint; every process saves the
    shards it holds (orbax commits the step when all have), process 0 alone writes the metrics,
    and the time limit is process 0's, so every process stops at the same step.

    Divergence: the first step whose loss or gradient norm is not finite (checked for every step,
    in one transfer per logging window and before every save) raises TrainingDiverged naming the
    step and the quantity; nothing past the last good step is saved (the newest checkpoint on disk
    is left as it was), and the log ends with a strict-JSON record of the bad step (non-finite
    values as null, "diverged": the quantity). A time-limited run's progress bar counts seconds
    toward the limit.

    Stopping (`stop`, a `stopping.StopSignals`, entered for the loop and the final save only;
    docs/checkpoints.md): after every step the loop asks `stop.reached(step)`; once true it saves
    that step (unless it is on disk already) and raises TrainingStopped naming it. A signal during
    the last step or the final save lets the run finish and save, then raises TrainingStopped too.
    Under several processes every process stops at the same step (JAX's preemption sync point)
    and saves it together; a collective that fails because a process died is left to the
    coordination service, which ends this process within its heartbeat timeout
    (`distributed.await_lost_process`).

    `resume_step`: resume from that committed step of run_dir/checkpoint/ instead of the newest
    (ValueError naming --resume-step when there is none); the committed steps after it are moved
    aside (`checkpoint.set_aside_after`: renamed, not deleted) once it has loaded. When the newest
    step does not load and an older committed one does, the error names the older one and this
    argument."""
    positive_int("steps", steps, minimum=0)
    text.check_config(model_cfg)
    if train_cfg.category_weights is not None and len(train_cfg.category_weights) != len(shapes.CATEGORIES):
        raise ValueError(f"category_weights: expected {len(shapes.CATEGORIES)} weights, one per category of "
                         f"{shapes.CATEGORIES}, got {len(train_cfg.category_weights)}")
    axes = mesh_lib.check_mesh(mesh or {}, model_cfg, train_cfg)
    model_cfg.pool_tokens(train_cfg.batch_size, 1)               # DiffMoE pools that do not divide the batch: now
    multi = jax.process_count() > 1
    if multi:
        axes = distributed.check_cluster_mesh(axes)
    main = distributed.is_main_process()
    mesh_name = mesh_lib.format_mesh(axes) if axes else "1 device"
    if minutes is not None and not minutes > 0:
        raise ValueError(f"minutes: expected a positive number, got {minutes!r}")
    ckpt_dir = os.path.join(run_dir, checkpoint.DIRNAME) if run_dir else None
    log_path = os.path.join(run_dir, "metrics.jsonl") if run_dir else None
    if run_dir:
        os.makedirs(run_dir, exist_ok=True)
    history: list[dict] = []
    device_mesh = mesh_lib.make_mesh(axes) if axes else None
    found = checkpoint.in_run(run_dir) if run_dir and resume else None
    if resume_step is not None:
        if not (run_dir and resume):
            raise ValueError("--resume-step: needs a run folder to resume (--out), and not --no-resume")
        found = checkpoint.step_folder(ckpt_dir, resume_step, what="--resume-step")
    if found:                                                    # restored straight into the mesh's shardings
        state, meta = _restore(found, run_dir, model_cfg, train_cfg, device_mesh, explicit=resume_step is not None)
        history = read_metrics(log_path, upto=int(meta["step"])) if log_path else []
        if resume_step is not None:                              # the later steps, moved aside by process 0
            if main:
                checkpoint.set_aside_after(ckpt_dir, resume_step)
            if multi:
                distributed.from_main(np.int32(0))               # every process waits for the move
    else:
        seed = train_cfg.seed if init_seed is None else init_seed
        state = init_state(init_model(model_cfg, seed), train_cfg)
    if axes:
        state = (distributed.global_state(state, device_mesh) if multi else mesh_lib.shard_state(state, device_mesh))
        step_fn = mesh_lib.sharded_train_step(device_mesh, model_cfg, train_cfg, train_step)
        desc = f"{desc} [{mesh_lib.describe_mesh(axes)}]"
    else:
        def step_fn(state, batch):
            return run_step(state, batch, model_cfg, train_cfg)
    start = int(np.asarray(state["step"].addressable_data(0)))  # replicated: every process reads its own copy
    if multi:
        if int(distributed.from_main(np.int32(start))) != start:
            raise ValueError(f"resume: this process starts at step {start}, process 0 at another; "
                             "every process must see the same run folder (a shared file system)")
    log_path = log_path if main else None                        # process 0 writes the metrics
    if log_path:                                                 # rewrite: drop records past the checkpoint
        with open(log_path, "w") as f:
            f.writelines(_json_line(r) for r in history)
    fresh = not found                                            # the first save replaces an older run's steps

    def save(state):
        """Every process saves its own shards (checkpoint.save_train_state: orbax commits the step)."""
        nonlocal fresh
        checkpoint.save_train_state(ckpt_dir, state, model_cfg, train_cfg, fresh=fresh)
        fresh = False

    def stopped(at: int) -> TrainingStopped:
        said = ("checkpoint saved: resume with the same command" if ckpt_dir
                else "no run folder: nothing saved")
        return TrainingStopped(f"stopped at step {at} ({stop.name}); {said}", at, stop.name, stop.status,
                               bool(ckpt_dir))

    deadline = None if minutes is None else time.monotonic() + 60.0 * minutes
    fetch = _Prefetch(start, steps, model_cfg, train_cfg)
    bar = _progress_bar(steps, start, minutes, desc, disable=not (progress and main))
    began = time.monotonic()
    window_t, window_n = time.perf_counter(), 0
    step = start
    saved = start if found else None                             # the newest step on disk
    pending = []                                                 # (step, metrics) not yet checked for finiteness

    def check_finite():
        """Stop at the first non-finite loss or gradient norm since the last check: nothing past the
        last good step is saved, the log gets one strict-JSON record of the bad step."""
        bad = _first_non_finite(pending)
        pending.clear()
        if bad is None:
            return
        bad_step, quantity, values = bad
        if log_path:
            with open(log_path, "a") as f:
                f.write(_json_line(dict(values, step=bad_step, diverged=quantity, mesh=mesh_name)))
        kept = (f"the last good checkpoint, step {saved}, is kept in {ckpt_dir}" if saved is not None and ckpt_dir
                else "no checkpoint was written")
        raise TrainingDiverged(f"train: {quantity} is {values[quantity]} at step {bad_step} (training diverged; "
                               f"{kept})", bad_step, quantity, saved)

    signals = contextlib.ExitStack()                              # the stop's handlers, for the loop only
    try:
        if stop is not None:
            signals.enter_context(stop)
            stop.committed = (start, ckpt_dir) if found and ckpt_dir and not os.path.isfile(found) else None
            # JAX's sync point is the largest step any process last passed it, plus one: tell it the
            # start now, so that a notice before the first step (which compiles) stops after that step.
            if stop.reached(start):
                if ckpt_dir and saved != start:
                    save(state)
                raise stopped(start)
        while step < steps:
            i, batch = fetch.get()
            state, metrics = step_fn(state, batch)
            step += 1
            window_n += 1
            pending.append((step, metrics))
            if step % log_every == 0 or step == steps:
                check_finite()
                rec = _to_py(metrics)
                now = time.perf_counter()
                rec.update(step=step, images_per_s=window_n * train_cfg.batch_size / max(now - window_t, 1e-9),
                           time=time.time(), mesh=mesh_name)
                window_t, window_n = now, 0
                history.append(rec)
                if log_path:
                    with open(log_path, "a") as f:
                        f.write(_json_line(rec))
                bar.set_postfix(step=f"{step}/{steps}", loss=f"{rec['loss']:.4f}", img_s=f"{rec['images_per_s']:.0f}")
            _advance(bar, minutes, began)
            if ckpt_dir and step % checkpoint_every == 0 and step < steps:
                check_finite()
                save(state)
                saved = step
                if stop is not None:
                    stop.committed = (saved, ckpt_dir)
            if stop is not None and stop.reached(step):          # a signal (several processes: the same step
                check_finite()                                   # in every one): save this step, then stop
                if ckpt_dir and saved != step:
                    save(state)
                    saved = step
                raise stopped(step)
            if deadline is not None and _past(deadline, multi):
                break
        check_finite()
        if ckpt_dir and saved != step:                           # the final step, unless on disk already: a resumed
            save(state)                                          # run that ran no step, or a time limit reached
            saved = step                                         # right after a periodic save
            if stop is not None:
                stop.committed = (saved, ckpt_dir)
        params = (distributed.gather(sampling_params(state)) if multi
                  else jax.tree.map(np.asarray, sampling_params(state)))
    except jax.errors.JaxRuntimeError as err:
        if multi:                                                # a process died? Then the coordination
            distributed.await_lost_process(err)                  # service says which, in one line
        raise
    finally:
        signals.close()
        fetch.close()
        bar.close()
    if stop is not None and stop.requested:                      # a signal during the last step or the final save
        raise stopped(step)
    return params, history


def _restore(found: str, run_dir: str, model_cfg: ModelConfig, train_cfg: TrainConfig, device_mesh,
             explicit: bool) -> tuple[dict, dict]:
    """(state, meta) of the checkpoint `found` of `run_dir`, restored into the mesh's shardings;
    ValueError when it was written with other configs. When the newest step of the run's
    checkpoint directory does not load (`explicit` False) and an older committed step does, the
    CheckpointError names the older step and --resume-step."""
    try:
        meta = checkpoint.read_meta(found)
        if checkpoint.configs(meta, found) != (model_cfg, train_cfg):
            raise ValueError(f"resume: the checkpoint in {run_dir} was written with a different config; "
                             "use another --out folder or --no-resume")
        state, _, _, _ = checkpoint.load_train_state(found, shardings=device_mesh)
    except checkpoint.CheckpointError as err:
        older = None if explicit or os.path.isfile(found) else checkpoint.intact_before(found)
        if older is None:
            raise
        raise checkpoint.CheckpointError(
            f"{err}; the older step {older} is intact: resume from it with --resume-step {older} (the steps "
            f"after it are then moved aside in {found}, not deleted)") from None
    return state, meta


def _progress_bar(steps: int, start: int, minutes: float | None, desc: str, disable: bool):
    """The loop's tqdm bar: steps done of `steps`, or, for a time-limited run, seconds elapsed of
    the limit (a step count would show a total the run never reaches and an ETA past the limit;
    the postfix then says the step)."""
    if minutes is None:
        return tqdm(total=steps, initial=start, desc=desc, disable=disable, unit="step", dynamic_ncols=True)
    return tqdm(total=round(60.0 * minutes), desc=f"{desc} (time limit {minutes:g} min)", disable=disable,
                unit="s", dynamic_ncols=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]")


def _advance(bar, minutes: float | None, began: float) -> None:
    """One step done: +1 step, or the seconds since `began` (capped at the limit)."""
    if minutes is None:
        bar.update(1)
    else:
        bar.update(max(0.0, min(time.monotonic() - began, bar.total) - bar.n))


def _past(deadline, multi) -> bool:
    """Whether the time limit has passed: process 0's clock decides for every process."""
    late = time.monotonic() > deadline
    return bool(distributed.from_main(np.bool_(late))) if multi else late


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


def config_dict(model_cfg: ModelConfig, train_cfg: TrainConfig) -> dict:
    return {"model": asdict(model_cfg), "train": asdict(train_cfg)}
