"""Expert parallelism on a device mesh with axes ("data", "expert"): the EC layer (Sec. 2.3,
Eq. 5-8), the token-choice layer and DiffMoE's pooled layers, each as a jax.shard_map twin of the
one-device layer.

    A = softmax_E(x' W_r)  (5);  expert i keeps its top-C tokens (6);  I_i its chosen tokens (7);
    x_out = sum_i (G_{I_i, i})^T E_i(x'_{I_i})  (8);  C = round(S * f_c / E).

Layout. The G routing groups (the paper's outer_batch x num_group; DiffMoE's pools) are split
over the devices of BOTH axes, so each device holds G_l = G / (data * expert) whole groups and
routes them itself (routing never looks across groups). The E experts are split over "expert": a
device holds E_l = E / expert of them, the same ones on every "data" row. The router (and
DiffMoE's predictor and thresholds) are replicated.

The exchange. Expert choice gives every expert exactly C tokens of every group, so the tokens a
device sends each expert-axis peer have a static shape, (E_l, G_l, C, D), whatever the router
decides. GShard's token choice has the same static (E, G, C, D) buffer (C slots per expert and
group; overflow dropped, empty slots weigh 0), and so does a DiffMoE pool (k slots per expert),
so one exchange (`_exchange`) serves all of them:

  `expert_choice_moe_sharded`  jax.shard_map; after dispatch one `jax.lax.all_to_all` over
  `token_choice_moe_sharded`   "expert" (E split, G gathered), the local experts, and one
  `pool_moe_sharded`           all_to_all back. Each device sends 2 (n-1)/n x E G_l C D values
  `pool_moe_dynamic_sharded`   per forward pass (`exchange_bytes`), and nothing else (token
                               choice: plus a pmean of its aux loss; pools: a pmean of q_e, the
                               threshold's target, over every device's pools, as the official
                               DiffMoE code all-reduces it; dynamic: a pmax of the largest k_e,
                               so every device runs the same compiled ceiling).
  `expert_choice_moe_gspmd`    the unsharded EC layer under jax.jit with sharding constraints on
                               the dispatched (E, G, C, D) tensor; XLA's partitioner chooses the
                               collectives (the alternative, measured).

Each returns exactly what its one-device layer returns, with the same global shapes, sharded
over groups. `collective_bytes` counts the collectives of a compiled program from its HLO text,
so the formula can be checked against what XLA actually emits (tests/expert_parallel_checks.py,
benchmarks/exchange.py).

Which one to keep: shard_map. Measured by benchmarks/exchange.py (mesh data 2 x expert 4 of
simulated CPU devices, float32, bytes per device per forward pass): for the EC layer at
G=16 S=64 D=32 E=8 F=64 f_c=2 the shard_map program's only collectives are its two all-to-alls,
49,152 bytes = `exchange_bytes`; the GSPMD program has the same two all-to-alls plus 379,904
bytes of all-gathers and 7,168 of all-reduce (8.9x the traffic); for G=32 S=256 D=128 E=16 F=256
1.57 MB against 1.57 + 11.58 MB. The partitioner cannot see that the flat-row gather of
`dispatch` and the scatter-add of `combine` stay inside a device's own groups, so it all-gathers
the tokens, the affinities, the indices and the weighted expert outputs around them. On one
2-core CPU (a sanity check only) GSPMD's forward is 2.0-2.9x slower than shard_map's. In a whole
train step (tests/mesh_checks.py, and a width-128 step with two MoE layers, batch 64): shard_map
moves 5.92 MB per device against GSPMD's 7.67 MB (expert choice), 6.10 MB (token choice) and
7.39 MB (DiffMoE, one pool per device).

Meshes: axes must be named "data" and "expert"; either axis may have size 1. Axis types Auto
(`jax.sharding.Mesh(devices, names)`) or Explicit (`jax.make_mesh`'s default) both work: the
functions compute on an Auto mesh over the same devices. `expert_choice_moe_sharded` also takes
the `jax.sharding.AbstractMesh` of a traced context (names and sizes, no devices: the enclosing
jit's device assignment places it).

In the model. `blocks.dit_block` keeps reference/'s signature, so it is not handed a mesh: it
asks `context_mesh` for the mesh of the context it is traced in (`jax.set_mesh(mesh)` around the
jit call, as `ecdit.systems.mesh.sharded_train_step` does; read inside the trace with
`jax.sharding.get_abstract_mesh()`, which is part of jit's cache key, so the one-device and the
mesh programs are traced apart). When that mesh has axes ("data", "expert") of Auto type, an
expert axis of at least 2 and it divides the block's groups and experts, the MoE layer runs
through its shard_map twin, called by `in_model` (inputs and outputs pinned to the groups' split
over both axes, where ecdit.systems.mesh puts the batch); otherwise through the plain layer,
which GSPMD partitions. The same function either way: only where it runs changes.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .diffmoe import _dynamic, _predictor_records
from .jit import checked_jit
from .routing import _expert_choice_layer, combine, dispatch, expert_capacity, expert_ffn, expert_choice_gating, \
    experts_per_token, router_affinity
from .token_choice import _token_choice_layer
from ecdit.core import contracts
from ecdit.core.checks import Contract, Instance

DATA, EXPERT = "data", "expert"
GROUPS = (DATA, EXPERT)                                          # the G axis is split over both mesh axes


# ---------------------------------------------------------------------------------------------
# The contract: the layer's own, plus a mesh the shapes divide
# ---------------------------------------------------------------------------------------------

def _mesh_divides(args, dims):
    """Axes named data and expert, G divisible by the number of devices (whole groups per
    device), E divisible by the expert axis (whole experts per device)."""
    mesh = args["mesh"]
    if tuple(mesh.axis_names) != GROUPS:
        raise ValueError(f"mesh: expected axes {GROUPS}, got {tuple(mesh.axis_names)}")
    devices, n_expert = mesh.size, mesh.shape[EXPERT]
    if dims["G"] % devices:
        raise ValueError(f"x: {dims['G']} routing groups do not split over the mesh's {devices} devices "
                         f"(data {mesh.shape[DATA]} x expert {n_expert}); each device routes whole groups")
    if dims["E"] % n_expert:
        raise ValueError(f"w_router: {dims['E']} experts do not split over the expert axis of size {n_expert}")


def _on_mesh(layer):
    """The contract of a sharded layer: the one-device layer's own (ecdit.core.contracts), then
    a mesh the shapes divide."""
    def where(args, dims):
        if layer.where is not None:
            layer.where(args, dims)
        _mesh_divides(args, dims)
    mesh = Instance((Mesh, AbstractMesh), "a jax.sharding.Mesh (or AbstractMesh) with axes ('data', 'expert')")
    return Contract(**layer.specs, mesh=mesh, where=where)


# JAX: no reference twin (the spec has no devices), so the contracts live here, built from the
# layers' own contracts in ecdit.core.contracts plus the mesh.
SHARDED_MOE = _on_mesh(contracts.expert_choice_moe)
SHARDED_TOKEN_CHOICE = _on_mesh(contracts.token_choice_moe)
SHARDED_POOL = _on_mesh(contracts.pool_moe)
SHARDED_POOL_DYNAMIC = _on_mesh(contracts.pool_moe_dynamic)


def _auto(mesh):
    """The same devices and names with Auto axis types: GSPMD constraints and shard_map specs
    mean the same on either kind, and the routing stages need no sharding-in-types rules."""
    if all(t == AxisType.Auto for t in mesh.axis_types):
        return mesh
    auto = (AxisType.Auto,) * len(mesh.axis_names)
    if isinstance(mesh, AbstractMesh):
        return AbstractMesh(mesh.axis_sizes, mesh.axis_names, axis_types=auto)
    return Mesh(mesh.devices, mesh.axis_names, axis_types=auto)


def context_mesh(num_groups, num_experts):
    """The mesh the EC layer of the code being traced should shard over, or None.

    The mesh is the context's (`jax.set_mesh(mesh)` around a jit call; inside the trace
    `jax.sharding.get_abstract_mesh()`). Returned only when `expert_choice_moe_sharded` can take
    it and it moves tokens at all: axes exactly ("data", "expert"), all Auto (an Explicit context
    mesh changes how every op traces; the model is not written for it), an expert axis of size
    2 or more (size 1: nothing to exchange, GSPMD's data parallelism is the same program),
    num_groups divisible by data x expert (whole groups per device) and num_experts by the expert
    axis. Anything else, including no mesh at all: None, and the caller runs the plain layer."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or tuple(mesh.axis_names) != GROUPS or any(t != AxisType.Auto for t in mesh.axis_types):
        return None
    n_expert = mesh.shape[EXPERT]
    if n_expert < 2 or num_groups % mesh.size or num_experts % n_expert:
        return None
    return mesh


def layer_shardings(mesh):
    """NamedShardings of the layer's inputs (x, w_router, w1, w2): groups over both axes, the
    router replicated, experts over "expert"."""
    mesh = _auto(mesh)
    return (NamedSharding(mesh, P(GROUPS)), NamedSharding(mesh, P()),
            NamedSharding(mesh, P(EXPERT)), NamedSharding(mesh, P(EXPERT)))


def shard_layer_inputs(x, w_router, w1, w2, mesh):
    """device_put the layer's inputs in `layer_shardings(mesh)`, so a call moves no input."""
    return tuple(jax.device_put(a, s) for a, s in zip((x, w_router, w1, w2), layer_shardings(mesh)))


# ---------------------------------------------------------------------------------------------
# shard_map with a fixed-size all_to_all (the version to keep)
# ---------------------------------------------------------------------------------------------

def _exchange(x_in, w1, w2):
    """The experts of one device's dispatched tokens x_in (E, G_l, C, D), run where they live:
    one all_to_all over "expert" sends each peer its E_l experts' slots, the local experts run as
    one batched matmul, a second all_to_all brings the results home. (E, G_l, C, D) -> same."""
    # JAX: chunk j of the E axis (expert j's E_l experts) goes to expert-axis peer j; what arrives
    # is stacked along G in peer order: peer i's groups at [i G_l, (i + 1) G_l).
    x_in = jax.lax.all_to_all(x_in, EXPERT, split_axis=0, concat_axis=1, tiled=True)  # (E_l, n G_l, C, D)
    x_e = expert_ffn(x_in, w1, w2)                               # (E_l, n G_l, C, D) this device's experts
    return jax.lax.all_to_all(x_e, EXPERT, split_axis=1, concat_axis=0, tiled=True)  # (E, G_l, C, D)  home


def _local_expert_choice(x, w_router, w1, w2, capacity):
    """One device's part of Eq. 5-8: x (G_l, S, D) its own groups against all E experts, w1 / w2
    (E_l, ...) its own experts, reached through the exchange."""
    return _expert_choice_layer(x, w_router, capacity, lambda x_in: _exchange(x_in, w1, w2))


def _local_token_choice(x, w_router, w1, w2, capacity, num_selected):
    """One device's part of the token-choice layer: top-k per token and C slots per expert in each
    of its G_l groups, the same exchange. The auxiliary loss is a mean over groups: the local
    mean, then pmean over the mesh (every device holds G_l groups)."""
    return _token_choice_layer(x, w_router, capacity, num_selected, lambda x_in: _exchange(x_in, w1, w2),
                               lambda aux: jax.lax.pmean(aux, GROUPS))


def _local_pool(x, w_router, w1, w2, predictor, capacity):
    """One device's part of `diffmoe.pool_moe`: expert choice in each of its G_l pools, the
    predictor's records; q_e averaged over the pools of every device (the official DiffMoE code
    averages tau's target over devices the same way: all_reduce / world size)."""
    out, routing = _local_expert_choice(x, w_router, w1, w2, capacity)  # (G_l, N, D)
    records, kth = _predictor_records(x, predictor, routing["index"])   # (G_l, N, E) x2, (G_l, E)
    return out, dict(routing, **records, kth_score=jax.lax.pmean(jnp.mean(kth, axis=0), GROUPS))  # (E,)


def _local_pool_dynamic(x, w_router, w1, w2, predictor, threshold):
    """One device's part of `diffmoe.pool_moe_dynamic`: k_ge of its own pools; the compiled
    ceiling is chosen from the max k_ge over every device (pmax), so all devices take the same
    branch and the exchange inside it has one static shape on the whole mesh."""
    return _dynamic(x, w_router, predictor, threshold, lambda x_in: _exchange(x_in, w1, w2),
                    lambda m: jax.lax.pmax(m, GROUPS))


# Records that are not split over groups: replicated on every device.
_REPLICATED = ("aux_loss", "kth_score", "slots")


def _shard(local, mesh, x, weights, replicated_in, routing_names):
    """jax.shard_map of local(x, *weights): x split over groups (both axes); weights[i] replicated
    where replicated_in[i] (the router, the predictor, the thresholds), else split over experts
    on "expert" (w1, w2). Returns (out, routing) with every record in routing_names split over
    groups except the `_REPLICATED` ones."""
    in_specs = (P(GROUPS),) + tuple(P() if r else P(EXPERT) for r in replicated_in)
    out_specs = (P(GROUPS), {k: P() if k in _REPLICATED else P(GROUPS) for k in routing_names})
    return jax.shard_map(local, mesh=_auto(mesh), in_specs=in_specs, out_specs=out_specs)(x, *weights)


_EC_RECORDS = ("gating", "index", "experts_per_token")
_TC_RECORDS = _EC_RECORDS + ("experts", "kept", "aux_loss")
_POOL_RECORDS = _EC_RECORDS + ("assignment", "predictor_logits", "kth_score")
_DYNAMIC_RECORDS = ("capacity", "slots", "assignment", "experts_per_token", "predictor_logits")


@checked_jit(SHARDED_MOE, static_argnames=("capacity_factor", "mesh"))
def expert_choice_moe_sharded(x, w_router, w1, w2, capacity_factor, mesh):
    """The EC MoE layer, Eq. 5-8, expert-parallel with `jax.shard_map`.

    x (G, S, D) split over groups on ("data", "expert"), w_router (D, E) replicated, w1 (E, D, F)
    and w2 (E, F, D) split over experts on "expert". Each device routes its G_l groups against all
    E experts (Eq. 5-6), dispatches them to (E, G_l, C, D) (Eq. 7), and one all_to_all over
    "expert" hands every peer the tokens of its E_l experts: (E_l, n G_l, C, D), the same static
    shape whatever the router chose, because expert choice fills every expert's C slots of every
    group. The local experts run as one batched matmul; a second all_to_all brings the results
    home, where Eq. 8 combines them. Returns (out (G, S, D), {gating, index (G, E, C),
    experts_per_token (G, S)}) equal to `routing.expert_choice_moe`'s, sharded over groups.
    `mesh` is a Mesh, or inside a traced function the context's AbstractMesh (`context_mesh`)."""
    capacity = expert_capacity(x.shape[1], w_router.shape[1], capacity_factor)
    return _shard(lambda x_, wr, a, b: _local_expert_choice(x_, wr, a, b, capacity), mesh, x,
                  (w_router, w1, w2), (True, False, False), _EC_RECORDS)


@checked_jit(SHARDED_TOKEN_CHOICE, static_argnames=("capacity_factor", "num_selected", "mesh"))
def token_choice_moe_sharded(x, w_router, w1, w2, capacity_factor, num_selected, mesh):
    """The token-choice layer (`token_choice.token_choice_moe`) expert-parallel, laid out as
    `expert_choice_moe_sharded`. Token choice's loads depend on the router, but GShard's capacity
    gives every expert exactly C slots per group (empty ones hold weight 0), so the dispatched
    (E, G_l, C, D) tensor, and the exchange, are as static as expert choice's. Returns what
    `token_choice_moe` returns, records split over groups, aux_loss replicated."""
    capacity = expert_capacity(x.shape[1], w_router.shape[1], capacity_factor)
    return _shard(lambda x_, wr, a, b: _local_token_choice(x_, wr, a, b, capacity, num_selected), mesh, x,
                  (w_router, w1, w2), (True, False, False), _TC_RECORDS)


@checked_jit(SHARDED_POOL, static_argnames=("capacity_factor", "mesh"))
def pool_moe_sharded(x, w_router, w1, w2, predictor, capacity_factor, mesh):
    """`diffmoe.pool_moe` (expert choice in G pools + the capacity predictor) expert-parallel:
    each device routes its G_l whole pools, the exchange of `expert_choice_moe_sharded`, q_e
    averaged over all G pools (a pmean over the mesh). With one pool per device this is the
    official DiffMoE code's per-device pool with the threshold's target averaged over devices.
    Returns what `pool_moe` returns; kth_score (E,) replicated."""
    capacity = expert_capacity(x.shape[1], w_router.shape[1], capacity_factor)
    return _shard(lambda x_, wr, pr, a, b: _local_pool(x_, wr, a, b, pr, capacity), mesh, x,
                  (w_router, predictor, w1, w2), (True, True, False, False), _POOL_RECORDS)


@checked_jit(SHARDED_POOL_DYNAMIC, static_argnames=("mesh",))
def pool_moe_dynamic_sharded(x, w_router, w1, w2, predictor, threshold, mesh):
    """`diffmoe.pool_moe_dynamic` (k_ge = #{t in pool g : sigmoid(P[t, e]) > tau_e}) expert-
    parallel: each device its G_l pools, one compiled ceiling for the whole mesh (the smallest
    >= the max k_ge over all pools, as on one device), the exchange inside the branch. Returns
    what `pool_moe_dynamic` returns; slots () replicated."""
    return _shard(lambda x_, wr, pr, th, a, b: _local_pool_dynamic(x_, wr, a, b, pr, th), mesh, x,
                  (w_router, predictor, threshold, w1, w2), (True, True, True, False, False), _DYNAMIC_RECORDS)


def in_model(layer, x, *args, mesh):
    """A sharded layer as the model's blocks call it, inside a traced step. x (G, S, D) and the
    outputs split over groups are pinned to P(("data", "expert")), the layer's own layout, which
    is where ecdit.systems.mesh puts the batch whenever data x expert divides it (so nothing
    moves on the way in or out); replicated records (aux_loss, kth_score, slots) to P(). Same
    returns as the one-device layer. (Measured on a width-128 two-MoE-layer train step, batch 64,
    data 2 x expert 4: pinning to P("data") instead, the layout of a batch split over data alone,
    costs one all-gather over "expert" per layer: 6.31 MB against 5.92 MB of collectives per
    device per step.)"""
    mesh = _auto(mesh)
    home, everywhere = NamedSharding(mesh, P(GROUPS)), NamedSharding(mesh, P())
    x = jax.lax.with_sharding_constraint(x, home)                # (G, S, D)
    out, routing = layer(x, *args, mesh=mesh)
    routing = {k: jax.lax.with_sharding_constraint(v, everywhere if k in _REPLICATED else home)
               for k, v in routing.items()}
    return jax.lax.with_sharding_constraint(out, home), routing  # (G, S, D), records


# ---------------------------------------------------------------------------------------------
# GSPMD: the unsharded layer with sharding constraints (the alternative, measured)
# ---------------------------------------------------------------------------------------------

@checked_jit(SHARDED_MOE, static_argnames=("capacity_factor", "mesh"))
def expert_choice_moe_gspmd(x, w_router, w1, w2, capacity_factor, mesh):
    """The EC MoE layer, Eq. 5-8, as `routing.expert_choice_moe` computes it, with sharding
    constraints: inputs as in `expert_choice_moe_sharded`, the dispatched (E, G, C, D) tensor and
    the experts' output split E over "expert" and G over "data", the routing records and the
    output split over groups. XLA's SPMD partitioner inserts whatever exchange that implies.
    Same returns as `routing.expert_choice_moe`."""
    mesh = _auto(mesh)
    groups, experts, tokens = NamedSharding(mesh, P(GROUPS)), NamedSharding(mesh, P(EXPERT, DATA)), \
        NamedSharding(mesh, P(None, GROUPS))
    constrain = jax.lax.with_sharding_constraint
    x = constrain(x, groups)                                     # (G, S, D)
    w_router = constrain(w_router, NamedSharding(mesh, P()))     # (D, E)
    w1 = constrain(w1, NamedSharding(mesh, P(EXPERT)))           # (E, D, F)
    w2 = constrain(w2, NamedSharding(mesh, P(EXPERT)))           # (E, F, D)
    g, s, d = x.shape
    capacity = expert_capacity(s, w_router.shape[1], capacity_factor)
    affinity = constrain(router_affinity(x, w_router), groups)  # (G, S, E)     Eq. 5
    gating, index = expert_choice_gating(affinity, capacity)     # (G, E, C) x2  Eq. 6
    gating, index = constrain(gating, groups), constrain(index, groups)
    x_in = constrain(dispatch(x, index), experts)                # (E, G, C, D)  Eq. 7, E over "expert"
    x_e = constrain(expert_ffn(x_in, w1, w2), experts)           # (E, G, C, D)
    x_e = constrain(x_e, tokens)                                 # (E, G, C, D)  back to the groups' devices
    out = constrain(combine(x_e, gating, index, s), groups)      # (G, S, D)     Eq. 8
    counts = constrain(experts_per_token(index, s), groups)      # (G, S)
    return out, {"gating": gating, "index": index, "experts_per_token": counts}


# ---------------------------------------------------------------------------------------------
# Bytes moved: by formula, and counted in the compiled program
# ---------------------------------------------------------------------------------------------

def exchange_bytes(num_groups, num_experts, capacity, width, expert_axis_size, dtype_bytes=4, data_axis_size=1):
    """Bytes ONE device sends per EC layer per forward pass in `expert_choice_moe_sharded`.

    num_groups is G over the whole mesh (each device routes G_l = G / (data x expert) of them).
    The dispatch all_to_all moves the (E, G_l, C, D) tensor, of which 1/n stays on the device (its
    own experts' chunk, n = expert_axis_size), and the return all_to_all moves the same amount:

        2 * (n - 1) / n * E * G_l * C * D * dtype_bytes.

    A backward pass moves the same again (the transpose of an all_to_all is an all_to_all)."""
    n, devices = expert_axis_size, expert_axis_size * data_axis_size
    if num_groups % devices:
        raise ValueError(f"num_groups: {num_groups} groups do not split over {devices} devices")
    if num_experts % n:
        raise ValueError(f"num_experts: {num_experts} experts do not split over an expert axis of {n}")
    local = num_experts * (num_groups // devices) * capacity * width * dtype_bytes  # (E, G_l, C, D) in bytes
    return 2 * local * (n - 1) // n


# HLO instruction lines: '%name = <shape> <op>(<operands>), ..., replica_groups=...'
_INSTRUCTION = re.compile(r"=\s*(?P<shape>\(.*?\)|[a-z0-9]+\[[0-9,]*\](?:\{[^}]*\})?)\s+"
                          r"(?P<op>all-to-all|all-gather|all-reduce|reduce-scatter|collective-permute)"
                          r"(?P<start>-start)?\(")
_ARRAY = re.compile(r"(?P<dtype>[a-z]+[0-9]*)\[(?P<dims>[0-9,]*)\]")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
                "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}


def _shape_bytes(shape):
    """Bytes of an HLO shape string, an array 'f32[2,3]{1,0}' or a tuple of them."""
    total = 0
    for m in _ARRAY.finditer(shape):
        dims = [int(v) for v in m["dims"].split(",") if v]
        total += int(np.prod(dims, dtype=np.int64)) * _DTYPE_BYTES[m["dtype"]]
    return total


def _group_size(line, devices):
    """Participants of one collective, from its replica_groups in any of XLA's three forms: the
    explicit list {{0,1},{2,3}} (its first group), the iota form [2,4]<=[8] (groups of 4), the
    mesh-axes form mesh['axis_0'=2,'axis_1'=4] {'axis_1'} (the product of the listed axes' sizes);
    every device when it names none."""
    m = re.search(r"replica_groups=\{\{([0-9,]*)\}", line)
    if m:
        return len(m[1].split(","))
    m = re.search(r"replica_groups=\[([0-9]+),([0-9]+)\]", line)
    if m:
        return int(m[2])
    m = re.search(r"replica_groups=mesh\[([^\]]*)\]", line)
    if m:
        sizes = {k: int(v) for k, v in re.findall(r"'([^']+)'=([0-9]+)", m[1])}
        chosen = re.search(r"\{((?:'[^']+',?\s*)+)\}", line[m.end():])
        names = re.findall(r"'([^']+)'", chosen[1]) if chosen else list(sizes)
        return int(np.prod([sizes[k] for k in names]))
    return devices


def collective_bytes(hlo_text, devices):
    """Bytes one device sends, per kind of collective, in a compiled (SPMD-partitioned) program.

    Each instruction's result shape is per device. With n participants: an all-to-all keeps 1/n
    of its buffer and sends the rest, (n - 1)/n x bytes; an all-gather sends its shard to n - 1
    peers, (n - 1)/n x result bytes; a reduce-scatter (n - 1)/n x operand = (n - 1) x result; an
    all-reduce 2 (n - 1)/n x bytes (ring); a collective-permute its whole buffer. Returns
    {kind: bytes} with every kind found (async '-start' counted once, '-done' skipped) and
    'count' {kind: instructions}."""
    sent, count = {}, {}
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.search(line)
        if not m:
            continue
        op, size = m["op"], _shape_bytes(m["shape"])
        if m["start"] and op in ("all-gather", "collective-permute") and m["shape"].startswith("("):
            size //= 2                                           # JAX: async start returns (operand, result)
        n = _group_size(line, devices)
        if op in ("all-to-all", "all-gather"):
            b = size * (n - 1) // n
        elif op == "reduce-scatter":
            b = size * (n - 1)
        elif op == "all-reduce":
            b = 2 * size * (n - 1) // n
        else:
            b = size
        if n > 1:
            sent[op] = sent.get(op, 0) + b
            count[op] = count.get(op, 0) + 1
    return {**sent, "count": count}


def compiled_text(fn, *args, **static):
    """HLO text of `fn` (a jax.jit function, or a checked_jit one through its `.jitted`) compiled
    for these arguments (their shardings included)."""
    jitted = getattr(fn, "jitted", fn)
    return jitted.lower(*args, **static).compile().as_text()
