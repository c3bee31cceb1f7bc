"""Checkpoints: one directory per run, written shard by shard by every process (orbax-checkpoint),
committed atomically, fingerprinted, restored onto any mesh; old .npz files still read.

Layout (docs/checkpoints.md):

    RUN/checkpoint/                 DIRNAME: an orbax CheckpointManager directory
        400/                        one committed step; the last KEEP steps are kept
            meta/metadata           JSON: format, model and train configs, step, extra, and per
                                    array its shape, dtype and fingerprint
            state/                  the arrays, by tree path ("params/blocks/1/expert_choice/w1",
                                    "opt/0/nu/...", "ema/..."): orbax's OCDBT/zarr store, each
                                    process writing the shards it holds (ocdbt.process_I/)
        600.orbax-checkpoint-tmp/   a save in progress (or one that crashed): never read

Atomic commit: orbax writes a step into a temporary folder and renames it to its number once
every process has finished (on a local or shared POSIX file system; on GCS a commit file marks
it). A crash mid-save leaves at worst a temporary folder, which is not a step: the last committed
step is untouched, and the next save removes the leftover.

Integrity: tensorstore does not notice flipped bytes inside a compressed chunk (measured: it
decodes them into wrong numbers). Each array's `fingerprint` is recorded at save and recomputed
after restore: with w the array's bits as uint32 words and p a word's position in the (global,
row-major) array, sum_p w_p * m(p) mod 2^32 with m(p) = 2 p K + 1 odd. Integer addition mod 2^32
is exact and order-free, so jax computes it on the sharded global array (partial sums per device,
one all-reduce of a scalar) and gets the same number on any mesh or process count, without
gathering anything; an odd multiplier is invertible mod 2^32, so any change to one word always
changes it, and the position term catches words moved around.

Errors: a missing path, no committed step, garbled metadata, unreadable or corrupt arrays
(tensorstore's errors and fingerprint mismatches) and arrays that do not fit the config raise
CheckpointError (a ValueError) with a one-line message naming the path.

Legacy: RUN/checkpoint.npz files of formats v1 and v2 (one .npz, a SHA-256 in "__meta__") are
read, never written (`load_npz`).
"""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import traceback
import zipfile
from dataclasses import asdict

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh

from ecdit.core.config import ModelConfig, TrainConfig
from ecdit.core.params import init_model
from ecdit.systems import distributed
from ecdit.systems import mesh as mesh_lib
from ecdit.systems.optim import init_state

FORMAT = "ecdit-checkpoint-v3"
DIRNAME = "checkpoint"                                           # RUN/checkpoint/<step>/
LEGACY_NAME = "checkpoint.npz"                                   # RUN/checkpoint.npz (v1, v2: read only)
KEEP = 2                                                         # committed steps kept: the newest and one before
_ITEMS = ("state", "meta")
# The .npz formats. v1 named a block's FFN "ffn" (dense) and "moe" (expert choice); v2 names it by
# its kind, as the config does ("dense", "expert_choice", "token_choice"). v1 is read with the names mapped.
_V2 = "ecdit-checkpoint-v2"
_V1 = "ecdit-checkpoint-v1"
_V1_NAMES = ((re.compile(r"(^|/)blocks/(\d+)/moe/"), r"\1blocks/\2/expert_choice/"),
             (re.compile(r"(^|/)blocks/(\d+)/ffn/"), r"\1blocks/\2/dense/"))
# The fingerprint's multiplier step: 2^32 / golden ratio, odd, so nearby positions get far-apart multipliers.
_K = 0x9E3779B1


class _NoPreemptionNotes(logging.Filter):
    """orbax logs "Reached preemption sync point, step=N" (a WARNING, from inside every save once
    JAX's preemption sync point is reached); the training loop stops at that step itself and says
    so in its one line (systems/stopping.py), so the note is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Reached preemption sync point" not in record.getMessage()


logging.getLogger("absl").addFilter(_NoPreemptionNotes())   # orbax logs through absl's Python logger


def _from_v1(name: str) -> str:
    for pattern, new in _V1_NAMES:
        name = pattern.sub(new, name)
    return name


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not fit the model."""


def _is_closed_loop_report(report) -> bool:
    """True for the one report `_quiet_abandoned_reads` drops: "RuntimeError: Event loop is closed"
    raised by asyncio's call_soon_threadsafe, with no object attached."""
    if report.object is not None or not isinstance(report.exc_value, RuntimeError):
        return False
    if str(report.exc_value) != "Event loop is closed":
        return False
    frames = traceback.extract_tb(report.exc_traceback) if report.exc_traceback is not None else []
    return any(f.name == "call_soon_threadsafe" and f.filename.endswith(os.path.join("asyncio", "base_events.py"))
               for f in frames)


@contextlib.contextmanager
def _quiet_abandoned_reads():
    """Around an orbax read: when it fails, orbax closes its event loop, but tensorstore still
    finishes the reads orbax gave up on; each completion calls back into the closed loop and Python
    reports "RuntimeError: Event loop is closed" through sys.unraisablehook, from other threads,
    before and after the failure reaches us (measured: up to 128 reports per failed restore, some
    more than a second later on a loaded 2-core machine). So the current hook is wrapped for the
    read, dropping exactly those reports and passing every other one on; after a failed read the
    wrapper stays (and `_silence_stderr_at_shutdown` is registered) so that a corrupt checkpoint
    stays a one-line error whatever the timing. After a good read the previous hook is put back."""
    previous = sys.unraisablehook
    ours = None
    if not getattr(previous, "_ecdit_quiet", False):
        def ours(report, _previous=previous):
            if not _is_closed_loop_report(report):
                _previous(report)
        ours._ecdit_quiet = True
        sys.unraisablehook = ours
    try:
        yield
    except BaseException:
        global _SHUTDOWN_SILENCED
        if not _SHUTDOWN_SILENCED:
            atexit.register(_silence_stderr_at_shutdown)
            _SHUTDOWN_SILENCED = True
        raise
    if ours is not None and sys.unraisablehook is ours:
        sys.unraisablehook = previous


_SHUTDOWN_SILENCED = False


def _silence_stderr_at_shutdown() -> None:
    """Once the interpreter tears down the sys module, Python writes unraisable reports with its
    built-in writer, past any hook (measured: 2 of 20 failed-restore processes printed a dozen
    such lines after their last output). Registered by `_quiet_abandoned_reads`, so only in a
    process where a checkpoint read failed: when the shutdown starts (atexit), stderr is flushed and
    file descriptor 2 points at os.devnull from then on. What the program wrote before it exits is
    kept; what the shutdown itself would print after a failed read is not."""
    try:
        sys.stderr.flush()
    except (AttributeError, ValueError, OSError):
        pass
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().split(" See full TensorStore details")[0]
    text = text.splitlines()[0] if text else ""
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


# ---------------------------------------------------------------------------------------------
# Trees <-> flat dicts of arrays
# ---------------------------------------------------------------------------------------------

def _key_name(k) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def named_leaves(tree, prefix: str) -> dict:
    """{"prefix/a/0/b": leaf} for every leaf of a pytree (dicts, lists, optax states), leaves as they are."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join([prefix] + [_key_name(k) for k in path]): leaf for path, leaf in leaves}


def flatten(tree, prefix: str) -> dict[str, np.ndarray]:
    """`named_leaves` as NumPy (the .npz layout)."""
    return {name: np.asarray(leaf) for name, leaf in named_leaves(tree, prefix).items()}


def unflatten_like(template, arrays: dict, prefix: str):
    """Fill `template`'s structure with arrays[name] (the names of `named_leaves`); CheckpointError
    on a missing name or a shape/dtype mismatch."""
    out = []
    for name, leaf in named_leaves(template, prefix).items():   # in the tree's leaf order
        if name not in arrays:
            raise CheckpointError(f"checkpoint: array {name!r} is missing (written for another model?)")
        a = arrays[name]
        if tuple(np.shape(a)) != tuple(np.shape(leaf)) or np.dtype(a.dtype) != np.dtype(leaf.dtype):
            raise CheckpointError(f"checkpoint: array {name!r} has shape {tuple(np.shape(a))} {np.dtype(a.dtype)}, "
                                  f"the model expects {tuple(np.shape(leaf))} {np.dtype(leaf.dtype)}")
        out.append(a)
    return jax.tree_util.tree_unflatten(jax.tree.structure(template), out)


def _state_arrays(state: dict) -> dict:
    """The arrays a checkpoint holds, by name: params/..., opt/..., ema/... (the step is metadata)."""
    arrays = {**named_leaves(state["params"], "params"), **named_leaves(state["opt_state"], "opt")}
    if "ema" in state:
        arrays.update(named_leaves(state["ema"], "ema"))
    return arrays


def abstract_train_state(model_cfg: ModelConfig, train_cfg: TrainConfig) -> dict:
    """The train state's structure, shapes and dtypes (jax.ShapeDtypeStruct leaves), allocating
    nothing on a device: what a restore fills."""
    return jax.eval_shape(lambda p: init_state(p, train_cfg), init_model(model_cfg, 0))


# ---------------------------------------------------------------------------------------------
# The fingerprint
# ---------------------------------------------------------------------------------------------

def _words(x):
    """x's bits as uint32, one word per element (a trailing axis of 2 for 8-byte dtypes)."""
    size = np.dtype(x.dtype).itemsize
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    if size == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    if size in (1, 2):
        return jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16}[size]).astype(jnp.uint32)
    if size == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)      # (..., 2)
    raise TypeError(f"checkpoint: cannot fingerprint dtype {x.dtype}")


def _fingerprint_one(x):
    """sum_p w_p (2 p K + 1) mod 2^32 over the words w of x, p the row-major position (no
    reshape: a position is built from per-axis iotas, so a sharded x stays where it is)."""
    w = _words(x)
    pos = jnp.zeros(w.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(w.ndim)):
        pos = pos + jax.lax.broadcasted_iota(jnp.uint32, w.shape, axis) * jnp.uint32(stride % 2**32)
        stride *= w.shape[axis]
    mult = pos * jnp.uint32((2 * _K) % 2**32) + jnp.uint32(1)    # odd: invertible mod 2^32
    return jnp.sum(w * mult, dtype=jnp.uint32)                   # wraps mod 2^32: exact, order-free


_fingerprint_all = jax.jit(lambda arrays: {k: _fingerprint_one(v) for k, v in arrays.items()})


def fingerprints(arrays: dict) -> dict[str, int]:
    """{name: fingerprint} of jax arrays, sharded over any mesh and processes or on one device:
    one jit, no gathering (a collective when the arrays span processes: every process calls it)."""
    out = _fingerprint_all(arrays)
    return {k: int(np.asarray(v.addressable_data(0))) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# Where a checkpoint is
# ---------------------------------------------------------------------------------------------

def _steps(directory: str) -> list[int]:
    """The committed steps of a checkpoint directory, oldest first (a temporary folder of a save
    in progress or crashed is not one)."""
    if not os.path.isdir(directory):
        return []
    out = []
    for name in os.listdir(directory):
        full = os.path.join(directory, name)
        if name.isdigit() and os.path.isdir(full) and ocp.step.is_checkpoint_finalized(epath.Path(full)):
            out.append(int(name))
    return sorted(out)


def _is_step_dir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "meta")) and os.path.isdir(os.path.join(path, "state"))


def in_run(run_dir) -> str | None:
    """The checkpoint of a run folder: RUN/checkpoint/ when it holds a committed step, else a
    legacy RUN/checkpoint.npz, else None."""
    inner, legacy = os.path.join(run_dir, DIRNAME), os.path.join(run_dir, LEGACY_NAME)
    if _steps(inner):
        return inner
    return legacy if os.path.isfile(legacy) else None


def find(path) -> str | None:
    """The checkpoint at `path`, or None when there is none: a run folder's (`in_run`); a
    checkpoint directory with a committed step, a step folder inside one, or a file is itself."""
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"checkpoint: expected a path, got {type(path).__name__}")
    path = os.fspath(path)
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        return None
    return in_run(path) or (path if _is_step_dir(path) or _steps(path) else None)


def _resolve(path) -> tuple[str, str]:
    """("npz", file) or ("dir", step folder) of the checkpoint at `path` (its newest committed
    step); CheckpointError when there is none."""
    found = find(path)
    path = os.fspath(path)
    if found is None:
        if not os.path.exists(path):
            raise CheckpointError(f"checkpoint: no such file or directory {path!r}")
        raise CheckpointError(f"checkpoint: {path!r} holds no committed checkpoint (no step folder: "
                              "none was saved, or the only save did not finish)")
    if os.path.isfile(found):
        return "npz", found
    if _is_step_dir(found):
        return "dir", found
    return "dir", os.path.join(found, str(_steps(found)[-1]))


# ---------------------------------------------------------------------------------------------
# Save
# ---------------------------------------------------------------------------------------------

def _manager(directory: str) -> ocp.CheckpointManager:
    """A manager that writes steps synchronously (a save returns once committed), keeps the
    newest KEEP, and removes a crashed save's temporary folder when it opens."""
    options = ocp.CheckpointManagerOptions(
        create=True, enable_async_checkpointing=False, cleanup_tmp_directories=True,
        preservation_policy=ocp.checkpoint_managers.LatestN(n=KEEP))
    return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=_ITEMS)


def save_train_state(path: str, state: dict, model_cfg: ModelConfig, train_cfg: TrainConfig,
                     extra: dict | None = None, *, fresh: bool = False) -> str:
    """Save {'params', 'opt_state', 'step'} (+ 'ema') with both configs as step state['step'] of
    the checkpoint directory `path` (created if needed; returned). Every process calls it with
    the same (possibly sharded) state and writes the shards it holds; orbax commits the step
    once all have written. The newest KEEP steps are kept.

    Steps only move forward: a step at or before the newest saved one is an error, unless
    `fresh` (a run started afresh in a folder that holds an older run's checkpoint): then the
    old run's steps from this one on are removed first, and the rest once this step commits."""
    if not isinstance(path, (str, os.PathLike)) or os.fspath(path).endswith(".npz"):
        raise CheckpointError(f"checkpoint: expected a directory to save into, got {path!r} "
                              "(.npz checkpoints are read, no longer written)")
    path = os.fspath(path)
    step = int(np.asarray(state["step"].addressable_data(0) if isinstance(state["step"], jax.Array)
                          else state["step"]))
    arrays = {k: v if isinstance(v, jax.Array) else jnp.asarray(v) for k, v in _state_arrays(state).items()}
    prints = fingerprints(arrays)
    meta = {"format": FORMAT, "model": asdict(model_cfg), "train": asdict(train_cfg), "step": step,
            "extra": extra or {},
            "arrays": {k: {"shape": list(v.shape), "dtype": str(np.dtype(v.dtype)), "fingerprint": prints[k]}
                       for k, v in sorted(arrays.items())}}
    mgr = _manager(path)
    try:
        old = list(mgr.all_steps())
        if fresh:
            for s in old:
                if s >= step:
                    mgr.delete(s)
        elif old and step <= max(old):
            raise CheckpointError(f"checkpoint: step {step} is not after the newest saved step {max(old)} "
                                  f"in {path!r} (start afresh to replace an older run)")
        mgr.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(arrays), meta=ocp.args.JsonSave(meta)),
                 force=True)
        mgr.wait_until_finished()
        if fresh:
            for s in old:
                if s < step:
                    mgr.delete(s)
    finally:
        mgr.close()
    return path


def remove(run_dir: str) -> None:
    """Delete a run folder's checkpoints (RUN/checkpoint/ and a legacy RUN/checkpoint.npz), so
    the next run there starts afresh. One process only."""
    shutil.rmtree(os.path.join(run_dir, DIRNAME), ignore_errors=True)
    if os.path.exists(os.path.join(run_dir, LEGACY_NAME)):
        os.remove(os.path.join(run_dir, LEGACY_NAME))


# ---------------------------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------------------------

def _checkpointer() -> ocp.Checkpointer:
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def _read_meta(step_dir: str) -> dict:
    try:
        with _quiet_abandoned_reads():
            meta = _checkpointer().restore(os.path.abspath(step_dir), args=ocp.args.Composite(
                meta=ocp.args.JsonRestore()))["meta"]
    except json.JSONDecodeError:
        raise CheckpointError(f"checkpoint: {step_dir!r} has garbled metadata") from None
    except Exception as e:                                       # noqa: BLE001 (orbax raises many kinds)
        raise CheckpointError(f"checkpoint: {step_dir!r} has unreadable metadata ({_first_line(e)})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("arrays"), dict) or "step" not in meta:
        raise CheckpointError(f"checkpoint: {step_dir!r} has garbled metadata")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint: {step_dir!r} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def read_meta(path) -> dict:
    """The metadata of the checkpoint at `path` (configs, step, extra, ...) without its arrays."""
    kind, where = _resolve(path)
    return load_npz(where)[1] if kind == "npz" else _read_meta(where)


def _check_fit(meta: dict, template: dict, step_dir: str) -> None:
    """Every array the model needs is recorded with the model's shape and dtype."""
    for name, leaf in template.items():
        rec = meta["arrays"].get(name)
        if rec is None:
            raise CheckpointError(f"checkpoint: {step_dir!r}: array {name!r} is missing (written for another model?)")
        if tuple(rec.get("shape", ())) != tuple(leaf.shape) or rec.get("dtype") != str(np.dtype(leaf.dtype)):
            raise CheckpointError(f"checkpoint: {step_dir!r}: array {name!r} has shape {tuple(rec.get('shape', ()))} "
                                  f"{rec.get('dtype')}, the model expects {tuple(leaf.shape)} {np.dtype(leaf.dtype)}")


def _restore_arrays(step_dir: str, meta: dict, targets: dict) -> dict:
    """{name: array} of the names in `targets` ({name: ShapeDtypeStruct}), read straight into
    their shardings (jax arrays), or as NumPy where a target has none; checked against their
    fingerprints."""
    restore_args = {k: ocp.ArrayRestoreArgs(sharding=v.sharding, global_shape=v.shape, dtype=v.dtype)
                    if v.sharding is not None else ocp.RestoreArgs(restore_type=np.ndarray, dtype=v.dtype)
                    for k, v in targets.items()}
    try:
        with _quiet_abandoned_reads():
            arrays = _checkpointer().restore(os.path.abspath(step_dir), args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(item=targets, restore_args=restore_args,
                                             partial_restore=True)))["state"]
    except Exception as e:                                       # noqa: BLE001 (tensorstore / orbax errors)
        raise CheckpointError(f"checkpoint: {step_dir!r} is corrupt or unreadable ({_first_line(e)})") from None
    got = fingerprints(arrays)
    for name in sorted(targets):
        if got[name] != meta["arrays"][name].get("fingerprint"):
            raise CheckpointError(f"checkpoint: {step_dir!r} is corrupt (array {name!r} does not match "
                                  "its recorded fingerprint)")
    return arrays


def _targets(template: dict, shardings: dict | None) -> dict:
    """ShapeDtypeStruct per name, with the sharding of `shardings` (same names) or none (NumPy)."""
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=None if shardings is None else shardings[k])
            for k, v in template.items()}


def _state_shardings(abstract: dict, shardings):
    """The pytree of shardings to restore into: given, from a Mesh (`mesh.state_shardings`), or None."""
    if shardings is None or not isinstance(shardings, Mesh):
        return shardings
    return mesh_lib.state_shardings(abstract, shardings)


def _place(tree, shardings):
    """NumPy leaves onto `shardings` (a matching pytree; None: one device), each process filling
    only its own devices' pieces (`distributed.global_array`: no collective, unlike device_put
    across processes)."""
    if shardings is None:
        return jax.tree.map(jnp.asarray, tree)
    return jax.tree.map(distributed.global_array, tree, shardings)


def configs(meta, path) -> tuple[ModelConfig, TrainConfig | None]:
    """(model config, train config or None) of a checkpoint's metadata; CheckpointError naming
    `path` when they do not read."""
    try:
        model_cfg = ModelConfig(**meta["model"])
        train_cfg = TrainConfig(**meta["train"]) if meta.get("train") else None
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint: {path!r} holds an unreadable config ({e})") from None
    return model_cfg, train_cfg


def load_params(path) -> tuple[dict, ModelConfig, dict]:
    """(params as NumPy, model config, meta) from a checkpoint (a run folder, a checkpoint
    directory or step folder, or a legacy .npz): what sampling needs. A training checkpoint with
    an EMA of the parameters gives the EMA (meta["weights"] says which); only those arrays are read.
    When the newest step of a directory does not load and an older committed one does
    (`intact_before`), the error names that step's folder."""
    try:
        return _load_params(path)
    except CheckpointError as err:
        older = intact_before(path)
        if older is None:
            raise
        raise CheckpointError(f"{err}; the older step {older} is intact: point --checkpoint at "
                              f"{os.path.join(find(path), str(older))!r} to use it") from None


def _load_params(path) -> tuple[dict, ModelConfig, dict]:
    kind, where = _resolve(path)
    if kind == "npz":
        arrays, meta = load_npz(where)
        model_cfg, _ = configs(meta, where)
        which = "ema" if any(k.startswith("ema/") for k in arrays) else "params"
        return unflatten_like(init_model(model_cfg, 0), arrays, which), model_cfg, {**meta, "weights": which}
    meta = _read_meta(where)
    model_cfg, _ = configs(meta, where)
    which = "ema" if any(k.startswith("ema/") for k in meta["arrays"]) else "params"
    like = init_model(model_cfg, 0)                              # the tree, its shapes and dtypes
    template = named_leaves(like, which)
    _check_fit(meta, template, where)
    arrays = _restore_arrays(where, meta, _targets(template, None))
    params = unflatten_like(like, {k: np.asarray(v) for k, v in arrays.items()}, which)
    return params, model_cfg, {**meta, "weights": which}


def load_train_state(path, shardings=None) -> tuple[dict, ModelConfig, TrainConfig, dict]:
    """(state, model config, train config, meta) to resume training bit for bit.

    `shardings`: None puts every array on the default device (uncommitted, as `optim.init_state`
    does: the jitted step then compiles once for both); a `jax.sharding.Mesh` restores each
    array straight into its `mesh.state_shardings` placement; a pytree like the state of
    shardings uses those. A checkpoint saved on any mesh (or process count) restores onto any
    other: the arrays are stored whole, in pieces each reader picks from."""
    kind, where = _resolve(path)
    if kind == "npz":
        arrays, meta = load_npz(where)
    else:
        meta = _read_meta(where)
    model_cfg, train_cfg = configs(meta, where)
    if train_cfg is None:
        raise CheckpointError(f"checkpoint: {where!r} holds no training state (parameters only)")
    abstract = abstract_train_state(model_cfg, train_cfg)
    tree_shardings = _state_shardings(abstract, shardings)
    if kind == "npz":
        state = {"params": unflatten_like(abstract["params"], arrays, "params"),
                 "opt_state": unflatten_like(abstract["opt_state"], arrays, "opt"),
                 "step": np.asarray(meta["step"], np.int32)}
        if "ema" in abstract:
            state["ema"] = unflatten_like(abstract["ema"], arrays, "ema")
        return _place(state, tree_shardings), model_cfg, train_cfg, meta
    names = _state_arrays(abstract)
    _check_fit(meta, names, where)
    flat_shardings = None if tree_shardings is None else _state_arrays(tree_shardings)
    restored = _restore_arrays(where, meta, _targets(names, flat_shardings))
    if tree_shardings is None:                                   # NumPy -> uncommitted, as a fresh state is
        restored = {k: jnp.asarray(v) for k, v in restored.items()}
    state = {"params": unflatten_like(abstract["params"], restored, "params"),
             "opt_state": unflatten_like(abstract["opt_state"], restored, "opt"),
             "step": _place(np.asarray(meta["step"], np.int32),
                            None if tree_shardings is None else tree_shardings["step"])}
    if "ema" in abstract:
        state["ema"] = unflatten_like(abstract["ema"], restored, "ema")
    return state, model_cfg, train_cfg, meta


# ---------------------------------------------------------------------------------------------
# Older steps: going on past a corrupt newest one (docs/checkpoints.md, "Stopping, preemption
# and recovery")
# ---------------------------------------------------------------------------------------------

SET_ASIDE = ".set-aside"                                         # STEP.set-aside: a step moved out of the way


def step_folder(directory: str, step: int, what: str = "step") -> str:
    """The folder of the committed step `step` of a checkpoint directory; CheckpointError naming
    `what` (e.g. "--resume-step") and the committed steps when there is no such step."""
    steps = _steps(directory)
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or int(step) not in steps:
        have = ", ".join(map(str, steps)) or "none"
        raise CheckpointError(f"{what}: {directory!r} has no committed step {step!r} (committed: {have})")
    return os.path.join(directory, str(int(step)))


def intact_before(path) -> int | None:
    """The newest committed step older than the newest one of the checkpoint directory at `path`
    (a run folder or a checkpoint directory) that loads in full: the metadata, and every array read
    and checked against its fingerprint (`load_train_state` onto this host's default device, so no
    collective; `load_params` for a checkpoint of parameters only). None when no older step
    loads, or `path` is a step folder or a file (it names one checkpoint, not a choice)."""
    found = find(path) if isinstance(path, (str, os.PathLike)) else None
    if found is None or os.path.isfile(found) or _is_step_dir(found):
        return None
    for step in reversed(_steps(found)[:-1]):
        where = os.path.join(found, str(step))
        try:
            _, train_cfg = configs(_read_meta(where), where)
            if train_cfg is None:
                _load_params(where)
            else:
                load_train_state(where)
        except CheckpointError:
            continue
        return step
    return None


def set_aside_after(directory: str, step: int) -> list[str]:
    """Rename every committed step after `step` of a checkpoint directory to STEP.set-aside
    (STEP.set-aside-2, ... when that name is taken): no longer a step (loading, resuming and orbax
    pass over it), and nothing deleted. Returns the new paths, oldest step first. One process only."""
    moved = []
    for s in _steps(directory):
        if s <= step:
            continue
        target, n = os.path.join(directory, f"{s}{SET_ASIDE}"), 1
        while os.path.exists(target):
            n += 1
            target = os.path.join(directory, f"{s}{SET_ASIDE}-{n}")
        os.rename(os.path.join(directory, str(s)), target)
        moved.append(target)
    return moved


# ---------------------------------------------------------------------------------------------
# Legacy: one .npz per run (formats v1, v2), read only
# ---------------------------------------------------------------------------------------------

def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def load_npz(path: str) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, meta) of a legacy .npz checkpoint; CheckpointError when it is missing or corrupt
    (zip CRC, SHA-256 of all arrays)."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint: no such file {path!r}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise CheckpointError(f"checkpoint: {path!r} is corrupt or not a checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'unreadable'})") from None
    if "__meta__" not in arrays:
        raise CheckpointError(f"checkpoint: {path!r} has no metadata (not an ecdit checkpoint)")
    try:
        meta = json.loads(str(arrays.pop("__meta__")))
    except json.JSONDecodeError:
        raise CheckpointError(f"checkpoint: {path!r} has garbled metadata") from None
    if meta.get("format") not in (_V2, _V1):
        raise CheckpointError(f"checkpoint: {path!r} has format {meta.get('format')!r}, expected {_V2!r}")
    if sorted(arrays) != meta.get("arrays") or _digest(arrays) != meta.get("sha256"):
        raise CheckpointError(f"checkpoint: {path!r} is corrupt (its contents do not match the recorded SHA-256)")
    if meta["format"] == _V1:
        arrays = {_from_v1(k): v for k, v in arrays.items()}
    return arrays, meta
