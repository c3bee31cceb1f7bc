"""Checkpoints: one .npz per run, written atomically, checked on load.

Layout: every array of the state under its tree path ("params/blocks/1/expert_choice/w1",
"opt/0/nu/...") plus "__meta__", a JSON string with the configs, the step, the array names and a
SHA-256 of all array bytes.

Atomic write: the file is written to a temporary name in the same folder, flushed and fsynced,
then renamed over the old one with os.replace (atomic on POSIX and Windows). A crash mid-write
leaves at worst a stray temporary file; the last good checkpoint is untouched.

Load: a missing file, a truncated or garbled one (zip CRC, SHA-256), or one whose arrays do not
fit the config raise CheckpointError (a ValueError) with a one-line message.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import zipfile
from dataclasses import asdict

import jax
import jax.numpy as jnp
import numpy as np

from ecdit.core.config import ModelConfig, TrainConfig
from ecdit.core.params import init_model
from ecdit.systems.optim import make_optimizer

FORMAT = "ecdit-checkpoint-v2"
# v1 named a block's FFN "ffn" (dense) and "moe" (expert choice); v2 names it by its kind, as the
# config does ("dense", "expert_choice", "token_choice"). A v1 file is read with the names mapped.
_V1 = "ecdit-checkpoint-v1"
_V1_NAMES = ((re.compile(r"(^|/)blocks/(\d+)/moe/"), r"\1blocks/\2/expert_choice/"),
             (re.compile(r"(^|/)blocks/(\d+)/ffn/"), r"\1blocks/\2/dense/"))


def _from_v1(name: str) -> str:
    for pattern, new in _V1_NAMES:
        name = pattern.sub(new, name)
    return name


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not fit the model."""


# ---------------------------------------------------------------------------------------------
# Trees <-> flat dicts of arrays
# ---------------------------------------------------------------------------------------------

def _key_name(k) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def flatten(tree, prefix: str) -> dict[str, np.ndarray]:
    """{"prefix/a/0/b": array} for every leaf of a pytree (dicts, lists, optax states)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join([prefix] + [_key_name(k) for k in path]): np.asarray(leaf) for path, leaf in leaves}


def unflatten_like(template, arrays: dict[str, np.ndarray], prefix: str):
    """Fill `template`'s structure with arrays[name]; CheckpointError on a missing name or a
    shape/dtype mismatch."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    out = []
    for path, leaf in leaves:
        name = "/".join([prefix] + [_key_name(k) for k in path])
        if name not in arrays:
            raise CheckpointError(f"checkpoint: array {name!r} is missing (written for another model?)")
        a = arrays[name]
        ref = np.asarray(leaf)
        if a.shape != ref.shape or a.dtype != ref.dtype:
            raise CheckpointError(f"checkpoint: array {name!r} has shape {a.shape} {a.dtype}, "
                                  f"the model expects {ref.shape} {ref.dtype}")
        out.append(a)
    return jax.tree_util.tree_unflatten(treedef, out)


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Raw save / load
# ---------------------------------------------------------------------------------------------

def save(path: str, arrays: dict[str, np.ndarray], meta: dict) -> str:
    """Write arrays + meta to `path` atomically (temp file, fsync, os.replace)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    meta = dict(meta, format=FORMAT, arrays=sorted(arrays), sha256=_digest(arrays))
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, __meta__=np.array(json.dumps(meta)), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:                                                         # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def load(path: str) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, meta) of a checkpoint; CheckpointError when it is missing or corrupt."""
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"checkpoint: expected a file path, got {type(path).__name__}")
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.npz")
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
    if meta.get("format") not in (FORMAT, _V1):
        raise CheckpointError(f"checkpoint: {path!r} has format {meta.get('format')!r}, expected {FORMAT!r}")
    if sorted(arrays) != meta.get("arrays") or _digest(arrays) != meta.get("sha256"):
        raise CheckpointError(f"checkpoint: {path!r} is corrupt (its contents do not match the recorded SHA-256)")
    if meta["format"] == _V1:
        arrays = {_from_v1(k): v for k, v in arrays.items()}
    return arrays, meta


# ---------------------------------------------------------------------------------------------
# Training state and parameters
# ---------------------------------------------------------------------------------------------

def _configs(meta, path) -> tuple[ModelConfig, TrainConfig | None]:
    try:
        model_cfg = ModelConfig(**meta["model"])
        train_cfg = TrainConfig(**meta["train"]) if meta.get("train") else None
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint: {path!r} holds an unreadable config ({e})") from None
    return model_cfg, train_cfg


def save_train_state(path: str, state: dict, model_cfg: ModelConfig, train_cfg: TrainConfig,
                     extra: dict | None = None) -> str:
    """Save {'params', 'opt_state', 'step'} (and 'ema' when present) with both configs."""
    arrays = {**flatten(state["params"], "params"), **flatten(state["opt_state"], "opt")}
    if "ema" in state:
        arrays.update(flatten(state["ema"], "ema"))
    meta = {"model": asdict(model_cfg), "train": asdict(train_cfg), "step": int(state["step"]),
            "extra": extra or {}}
    return save(path, arrays, meta)


def load_params(path: str) -> tuple[dict, ModelConfig, dict]:
    """(params as NumPy, model config, meta) from a checkpoint: what sampling needs. A training
    checkpoint with an EMA of the parameters gives the EMA (meta["weights"] says which)."""
    arrays, meta = load(path)
    model_cfg, _ = _configs(meta, path)
    which = "ema" if any(k.startswith("ema/") for k in arrays) else "params"
    params = unflatten_like(init_model(model_cfg, 0), arrays, which)
    return params, model_cfg, {**meta, "weights": which}


def load_train_state(path: str) -> tuple[dict, ModelConfig, TrainConfig, dict]:
    """(state, model config, train config, meta) to resume training bit for bit."""
    arrays, meta = load(path)
    model_cfg, train_cfg = _configs(meta, path)
    if train_cfg is None:
        raise CheckpointError(f"checkpoint: {path!r} holds no training state (parameters only)")
    template = init_model(model_cfg, 0)
    params = unflatten_like(template, arrays, "params")
    opt_template = make_optimizer(train_cfg).init(jax.tree.map(jnp.asarray, template))
    opt_state = unflatten_like(opt_template, arrays, "opt")
    state = {"params": jax.tree.map(jnp.asarray, params), "opt_state": jax.tree.map(jnp.asarray, opt_state),
             "step": jnp.asarray(meta["step"], jnp.int32)}
    if train_cfg.ema_decay > 0:
        state["ema"] = jax.tree.map(jnp.asarray, unflatten_like(template, arrays, "ema"))
    return state, model_cfg, train_cfg, meta
