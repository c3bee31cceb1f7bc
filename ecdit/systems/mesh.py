"""A device mesh for training on several devices: named axes, shardings, and a sharded step.

The route is GSPMD plus hand-written MoE layers: this module says where each array lives (a
`NamedSharding` on the inputs and outputs of one `jax.jit`) and XLA's partitioner inserts the
collectives (the gradient all-reduce, the FSDP all-gathers), except in the MoE layers:
`sharded_train_step` traces the step under `jax.set_mesh(mesh)`, and there
`accelerated.blocks.dit_block` runs expert choice, token choice and DiffMoE's pools through their
shard_map twins in `accelerated.expert_parallel` (routing groups or pools over ("data",
"expert"), two fixed-size all_to_alls over `expert`) when the mesh fits the layer
(`expert_parallel.context_mesh`: expert axis >= 2, the groups divide over all devices, the
experts over `expert`); DiffMoE's default pool (the whole batch, one pool) and a mesh that does
not fit stay on GSPMD. Either way the sharded step computes the same function as the one-device
`ecdit.systems.train.train_step`, up to float32 summation order.

    --mesh data=2,expert=4   ->  {"data": 2, "expert": 4}  ->  Mesh (2, 4), axes ("data", "expert")

Axes (both always present in the Mesh; size 1 when not named in the flag):
  data     the batch, and FSDP: every dense 2-D weight is split over `data` along one axis
  expert   the experts: the stacked expert weights w1 (E, D, F) and w2 (E, F, D) are split on E,
           E / expert experts per device; and the batch again
  The batch is split over BOTH axes whenever data x expert divides it (`batch_axes`): every
  device holds B / (data x expert) images, the paper's grouping on the mesh (each device
  regroups its own images' S' tokens into num_group x group_size), and no layer's work repeats.
  Otherwise it is split over `data` alone and the `expert` devices of a data slice hold the same
  images (their dense layers' work repeats); `data` must divide the batch.

What lives where (`param_shardings`):
  MoE w1 (E, D, F), w2 (E, F, D)         P("expert", None, None)
  MoE w_router (D, E), predictor, tau     replicated (small, read by every token)
  other 2-D weights (w (A, B))            P("data", None) or P(None, "data"): the largest axis the
                                          data size divides (axis 0 on a tie); else replicated
  1-D biases, scalars                     replicated
  the batch (B, ...)                      P(("data", "expert")), or P("data") (`batch_axes`)
  optimiser state                         a tree shaped like the params gets the params' shardings

`sharded_train_step` compiles the training step once more with these shardings on its inputs and
outputs; `shard_state` / `shard_batch` place arrays; `check_mesh` refuses a mesh the model, the
batch or the machine cannot take, before anything compiles.

A mesh uses the first prod(sizes) devices of `jax.devices()`: asking for fewer devices than the
machine has is allowed (the rest stay idle), asking for more is an error.

Errors name the flag: ValueError("--mesh: ...") on one line, so the CLI can print it as it is.
"""
from __future__ import annotations

import contextlib
import functools
import math

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from ecdit.core.config import FFN_KINDS, ModelConfig, TrainConfig

# The mesh axes, in mesh order (outer to inner): `expert` innermost, so the devices of one data
# replica (the ones an expert all-to-all talks to) are neighbours.
AXES = ("data", "expert")
# The parameter dicts whose w1 / w2 are expert stacks (E, ...): the MoE FFN kinds (core.params)
MOE_KEYS = tuple(kind for kind in FFN_KINDS if kind != "dense")
FLAG = "--mesh"


# ---------------------------------------------------------------------------------------------
# The flag
# ---------------------------------------------------------------------------------------------

def parse_mesh(text: str | None) -> dict[str, int]:
    """"data=2,expert=4" -> {"data": 2, "expert": 4} (keys in AXES order whatever the order
    written); "" or None -> {} (one device). Spaces around items are ignored. ValueError
    "--mesh: ..." on bad syntax, an unknown or repeated axis, or a size that is not a positive
    integer."""
    if text is None:
        return {}
    if not isinstance(text, str):
        raise ValueError(f"{FLAG}: expected text like 'data=2,expert=4', got {text!r}")
    if not text.strip():
        return {}
    sizes: dict[str, int] = {}
    for item in text.split(","):
        item = item.strip()
        name, eq, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not eq or not name or not value:
            raise ValueError(f"{FLAG}: expected axis=size items separated by commas (e.g. data=2,expert=4), "
                             f"got {item!r} in {text!r}")
        if name not in AXES:
            raise ValueError(f"{FLAG}: unknown axis {name!r} in {text!r}; axes are {', '.join(AXES)}")
        if name in sizes:
            raise ValueError(f"{FLAG}: axis {name!r} given twice in {text!r}")
        if not (value.isascii() and value.isdigit()):
            raise ValueError(f"{FLAG}: size of {name!r} must be a positive integer, got {value!r}")
        size = int(value)
        if size < 1:
            raise ValueError(f"{FLAG}: size of {name!r} must be a positive integer, got {value!r}")
        sizes[name] = size
    return {a: sizes[a] for a in AXES if a in sizes}


def mesh_shape(axes: dict[str, int]) -> tuple[int, int]:
    """(data, expert): the sizes of both axes, 1 where `axes` does not name one."""
    return tuple(int(axes.get(a, 1)) for a in AXES)


def num_mesh_devices(axes: dict[str, int]) -> int:
    """prod(sizes): the devices the mesh uses (1 for {})."""
    return math.prod(mesh_shape(axes))


def format_mesh(axes: dict[str, int]) -> str:
    """The flag's spelling: {"data": 2, "expert": 4} -> "data=2,expert=4"; {} -> ""."""
    return ",".join(f"{a}={axes[a]}" for a in AXES if a in axes)


def describe_mesh(axes: dict[str, int]) -> str:
    """One line for logs and the metrics header: "mesh data=2,expert=4 (8 devices)", or
    "mesh: 1 device" for the default (no --mesh)."""
    if not axes:
        return "mesh: 1 device"
    n = num_mesh_devices(axes)
    return f"mesh {format_mesh(axes)} ({n} device{'s' if n != 1 else ''})"


# ---------------------------------------------------------------------------------------------
# Checks against the model, the batch and the machine
# ---------------------------------------------------------------------------------------------

def check_mesh(axes: dict[str, int], model_cfg: ModelConfig, train_cfg: TrainConfig | None = None,
               num_devices: int | None = None, *, batch_size: int | None = None) -> dict[str, int]:
    """Refuse a mesh the run cannot use; returns `axes` unchanged. ValueError "--mesh: ..." when

      - prod(sizes) exceeds the devices available (`num_devices`, default jax.device_count());
        fewer is allowed: the mesh takes the first prod(sizes) devices;
      - `expert` does not divide num_experts (MoE kinds; a dense model has no expert weights, so
        its `expert` axis only replicates: allowed, so one flag serves `compare`'s dense rows);
      - `data` does not divide the batch (train_cfg.batch_size, or `batch_size` when given: a
        sampling batch);
      - routing groups would straddle devices: with a group size set (training:
        model_cfg.train_group_size over the (B / data) S' kept tokens of a device; sampling, i.e.
        `batch_size` without train_cfg: inference_group_size over (B / data) S tokens), the
        tokens of one device must be a whole number of groups.

    DiffMoE's default pool is the whole batch (pool_images None), so with data > 1 it spans
    devices; that is the method, not a layout accident, and GSPMD computes the top-k over the
    whole batch exactly (tests/mesh_checks.py), so it is allowed. With pool_images = B / (data x
    expert) every device holds one pool (the official code's per-device pool) and the layer runs
    expert-parallel."""
    if not isinstance(axes, dict) or set(axes) - set(AXES):
        raise ValueError(f"{FLAG}: expected a dict of axis sizes from parse_mesh, got {axes!r}")
    data, expert = mesh_shape(axes)
    spelled = format_mesh(axes) or "(one device)"
    available = jax.device_count() if num_devices is None else int(num_devices)
    needed = data * expert
    if needed > available:
        hint = (" (on CPU, simulate devices with XLA_FLAGS=--xla_force_host_platform_device_count="
                f"{needed})" if num_devices is None and jax.default_backend() == "cpu" else "")
        raise ValueError(f"{FLAG}: {spelled} needs {needed} devices, but {available} "
                         f"{'is' if available == 1 else 'are'} available{hint}")
    if model_cfg.ffn_kind != "dense" and model_cfg.num_experts % expert:
        raise ValueError(f"{FLAG}: expert={expert} does not divide num_experts = {model_cfg.num_experts}")
    b = batch_size if batch_size is not None else (train_cfg.batch_size if train_cfg is not None else None)
    if b is not None and b % data:
        raise ValueError(f"{FLAG}: data={data} does not divide the batch size {b}")
    if b is not None and model_cfg.ffn_kind not in ("dense", "diffmoe"):
        s = model_cfg.num_tokens
        if train_cfg is not None and batch_size is None:             # training: the S' kept tokens
            tokens = train_cfg.kept_tokens(s) if train_cfg.mask_ratio > 0 else s
            group, which = model_cfg.train_group_size, "train_group_size"
        else:                                                        # sampling: all S tokens
            tokens, group, which = s, model_cfg.inference_group_size, "inference_group_size"
        per_device = (b // data) * tokens                        # (B / data) S' tokens on one device
        if group is not None and per_device % group:
            raise ValueError(f"{FLAG}: data={data} puts {b // data} images x {tokens} tokens = {per_device} "
                             f"tokens on a device, not a multiple of {which} = {group}: a routing group "
                             "would straddle devices")
    return axes


# ---------------------------------------------------------------------------------------------
# The mesh and the shardings
# ---------------------------------------------------------------------------------------------

def make_mesh(axes: dict[str, int], devices=None) -> jax.sharding.Mesh:
    """A Mesh of shape (data, expert) over the first prod(sizes) of `devices` (default
    jax.devices()), axis names AXES, both always present. Axis types are Auto (GSPMD propagates
    shardings; JAX's default for make_mesh is Explicit, which would change how the model traces)."""
    shape = mesh_shape(axes)
    devices = list(jax.devices() if devices is None else devices)
    n = math.prod(shape)
    if n > len(devices):
        raise ValueError(f"{FLAG}: {format_mesh(axes)} needs {n} devices, but {len(devices)} are available")
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices[:n])


def _path_keys(path) -> list:
    return [getattr(k, "key", getattr(k, "idx", None)) for k in path]


def _param_spec(path, leaf, data: int, expert: int) -> P:
    """The PartitionSpec of one parameter, from where it sits in the tree (core.params layout)."""
    keys = _path_keys(path)
    shape = np.shape(leaf)
    in_moe = any(k in MOE_KEYS for k in keys)
    if in_moe and "predictor" not in keys and keys[-1] in ("w1", "w2") and len(shape) == 3:
        if shape[0] % expert == 0:                               # (E, D, F) / (E, F, D): E over expert
            return P("expert", None, None)
        return P()
    if in_moe:                                                   # w_router (D, E), predictor, threshold (E,)
        return P()
    if len(shape) == 2 and data > 1:                             # FSDP: (A, B) split over data on one axis
        fits = [ax for ax in (0, 1) if shape[ax] % data == 0]
        if fits:
            ax = max(fits, key=lambda a: (shape[a], -a))         # the largest; axis 0 on a tie
            return P("data", None) if ax == 0 else P(None, "data")
    return P()                                                   # biases (N,), scalars, indivisible


def param_shardings(params, mesh: jax.sharding.Mesh):
    """A pytree like `params` of NamedSharding (module docstring's table)."""
    data, expert = mesh.shape["data"], mesh.shape["expert"]
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: NamedSharding(mesh, _param_spec(path, leaf, data, expert)), params)


def batch_axes(batch_size: int, mesh: jax.sharding.Mesh) -> tuple[str, ...]:
    """The mesh axes a batch of `batch_size` is split over: both, ("data", "expert"), when their
    product divides it (every device holds B / (data x expert) images: no layer's work repeats),
    else ("data",) alone (the `expert` devices of a data slice then hold the same images and
    repeat the dense layers' work; check_mesh has made sure `data` divides the batch)."""
    return AXES if batch_size % mesh.size == 0 else ("data",)


def batch_shardings(batch: dict, mesh: jax.sharding.Mesh) -> dict:
    """A dict like `batch`: every array split on its leading (batch) axis over `batch_axes`
    (x0 (B, I, J, Ch), ids (B, L), z (B,), keep_index (B, S'), ...); None entries stay None."""
    sizes = {np.shape(v)[0] for v in batch.values() if v is not None}
    if len(sizes) != 1:
        raise ValueError(f"batch: expected arrays with one leading batch size, got sizes {sorted(sizes)}")
    split = NamedSharding(mesh, P(batch_axes(sizes.pop(), mesh)))
    return {k: None if v is None else split for k, v in batch.items()}


def _like_params(tree, params_def, params_shapes) -> bool:
    return (jax.tree.structure(tree) == params_def
            and [np.shape(x) for x in jax.tree.leaves(tree)] == params_shapes)


def state_shardings(state: dict, mesh: jax.sharding.Mesh) -> dict:
    """A pytree like the train state {params, opt_state, step (+ ema)} of NamedSharding: params
    and ema by `param_shardings`; inside opt_state, every subtree with the params' structure and
    shapes (optax's nu, momentum trace, ...) gets the params' shardings, everything else (step
    counts, empty states) is replicated."""
    params_sh = param_shardings(state["params"], mesh)
    params_def = jax.tree.structure(state["params"])
    params_shapes = [np.shape(x) for x in jax.tree.leaves(state["params"])]
    replicated = NamedSharding(mesh, P())

    is_params = functools.partial(_like_params, params_def=params_def, params_shapes=params_shapes)

    def opt(node):                                               # a params-like subtree, or one leaf
        return params_sh if is_params(node) else replicated

    out = {}
    for key, value in state.items():
        if key in ("params", "ema"):
            out[key] = params_sh
        elif key == "opt_state":
            out[key] = jax.tree.map(opt, value, is_leaf=is_params)
        else:
            out[key] = jax.tree.map(lambda _: replicated, value)
    return out


def shard_state(state: dict, mesh: jax.sharding.Mesh) -> dict:
    """The train state placed on the mesh (jax.device_put with `state_shardings`); NumPy or
    one-device arrays in, sharded jax Arrays out."""
    return jax.device_put(state, state_shardings(state, mesh))


def shard_batch(batch: dict, mesh: jax.sharding.Mesh) -> dict:
    """The batch placed on the mesh, split over `data` (`batch_shardings`); None stays None."""
    shardings = batch_shardings(batch, mesh)
    return {k: None if v is None else jax.device_put(v, shardings[k]) for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------
# The sharded step
# ---------------------------------------------------------------------------------------------

def sharded_train_step(mesh: jax.sharding.Mesh, model_cfg: ModelConfig, train_cfg: TrainConfig, train_step, *,
                       expert_parallel: bool = True):
    """A function (state, batch) -> (state, metrics): `train_step` (ecdit.systems.train.train_step,
    a `checked_jit` function (state, batch, model_cfg, train_cfg, group_size); passed in, so that
    the training loop can import this module without an import circle) with the config's training
    group size, like `run_step`, compiled once more with the state's and the batch's shardings as
    in_shardings and the state's as out_shardings (so a step's output is the next step's input
    without resharding); metrics come back replicated. train_step's contract runs first, as in the
    one-device step. State and batch may be NumPy or jax arrays anywhere: they are placed first.
    One compilation per state / batch structure; `step.trace_count()` says how many so far (as
    `checked_jit`'s), `step.mesh` is the mesh.

    The step is traced and run under `jax.set_mesh(mesh)` (`expert_parallel`, the default), which
    lets the blocks' MoE layers run as their shard_map twins in `accelerated.expert_parallel`
    (module docstring); `expert_parallel=False` traces it without the context: the pure-GSPMD
    step, kept to measure against. `step.lower(state, batch)` is the jit's `Lowered` for these
    inputs, traced in the same context (`.compile().as_text()` for the HLO)."""
    group_size = model_cfg.train_group_size
    traces = 0
    # JAX: jax.set_mesh is a thread-local context, part of jit's cache key and read in the trace
    # by jax.sharding.get_abstract_mesh(); it must be entered outside jit, so around each call.
    context = functools.partial(jax.set_mesh, mesh) if expert_parallel else contextlib.nullcontext

    def body(state, batch):
        nonlocal traces
        traces += 1                                              # once per trace (compilation), not per call
        return train_step.jitted(state, batch, model_cfg, train_cfg, group_size)

    compiled = {}

    def placed(state, batch):
        """The jit for this structure and the inputs placed for it."""
        train_step.contract.check(
            dict(state=state, batch=batch, model_cfg=model_cfg, train_cfg=train_cfg, group_size=group_size))
        key = (jax.tree.structure(state), jax.tree.structure(batch))
        if key not in compiled:
            state_sh = state_shardings(state, mesh)
            fn = jax.jit(body, in_shardings=(state_sh, batch_shardings(batch, mesh)),
                         out_shardings=(state_sh, NamedSharding(mesh, P())))
            compiled[key] = (state_sh, fn)
        state_sh, fn = compiled[key]
        # Place the inputs first (a no-op for the previous step's output): jit's cache tells a
        # committed one-device array from a sharded one, so an unplaced first state would compile twice.
        return fn, jax.device_put(state, state_sh), shard_batch(batch, mesh)

    def step(state, batch):
        fn, state, batch = placed(state, batch)
        with context():
            return fn(state, batch)

    def lower(state, batch):
        fn, state, batch = placed(state, batch)
        with context():
            return fn.lower(state, batch)

    step.mesh = mesh
    step.trace_count = lambda: traces
    step.lower = lower
    return step
