"""The sharded train step (ecdit/systems/mesh.py) on a data=2,expert=4 mesh of 8 simulated CPU
devices against the one-device step, for each MoE kind (expert_choice, token_choice, diffmoe).

Run by tests/test_mesh.py in its own Python, since the device count is fixed when JAX starts:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python -m tests.mesh_checks

For each kind, 5 steps from the same state on the same batches (make_batch(seed, step)):
  (a) after step 1 the sharded state (params, optimiser state, EMA) and metrics equal the
      one-device ones within FLOAT32 (tests/tolerances.py): GSPMD changes only summation order;
  (b) the loss of every step matches with relative difference <= LOSS_CURVE_RTOL (the issue's
      1e-3); the worst is printed;
  (c) the shardings are really applied and kept: expert stacks split on E over `expert`, a dense
      weight split over `data` (FSDP), the optimiser's moments sharded like their parameter, the
      batch split over both axes (B / 8 images per device), each shard of the expected shape, and the step compiles once (`trace_count`).

and for expert_choice, token_choice and diffmoe_per_device (DiffMoE with pool_images = 2: one
pool per device)
  (d) the step runs the expert-parallel layer: `sharded_train_step` traces it under
      `jax.set_mesh`, so the block calls the layer's shard_map twin in accelerated/expert_parallel.py.
      Its compiled HLO against the pure-GSPMD step's (`expert_parallel=False`, no mesh context):
      4 all-to-alls of the dispatched (E, G_l, C, D) tensor per MoE layer (2 forward, 2 backward)
      moving exactly 2 x `exchange_bytes`, and fewer collective bytes in all; both tallies are
      printed.

The model starts from `randomize_zero_init`, so the AdaLN gates are open and the experts get
gradients from the first step (with AdaLN-Zero they would not move, and (a) would prove little).
expert_choice and token_choice use train_group_size = 16 (2 images of 8 kept tokens per routing
group) and a batch of 16, so the paper's grouping runs on the mesh: G = 16 x 8 / 16 = 8 groups, 4
per data shard, one per device once the layer splits them over ("data", "expert") (the shard_map
layer needs G divisible by the 8 devices; otherwise it falls back to GSPMD).
"""
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from ecdit.accelerated import expert_parallel as ep
from ecdit.accelerated.routing import expert_capacity
from ecdit.core.config import DIFFMOE_CAPACITY_FACTOR
from ecdit.core.params import init_model, randomize_zero_init
from ecdit.systems import mesh as M
from ecdit.systems import train as T
from ecdit.systems.optim import init_state
from tests.helpers import small_config, small_train
from tests.tolerances import FLOAT32, LOSS_CURVE_RTOL, assert_close

# The bound on a short loss curve: sharded against one device, relative, at every step.
# (Not in tests/tolerances.py yet: it is a claim of the issue, not a float32 rounding estimate.)
STEPS = 5
MESH = "data=2,expert=4"
TRAIN = small_train(warmup_steps=0, ema_decay=0.9)  # B = 8: 4 images per data shard; lr > 0 from step 1
# name -> (model config, training config). Every MoE kind runs the expert-parallel layer on the
# mesh except "diffmoe" (one pool holding the batch: G = 1, GSPMD's global top-k);
# "diffmoe_per_device" pools 2 images (16 / 8 devices: one pool per device, the official code's).
TRAIN16 = small_train(warmup_steps=0, ema_decay=0.9, batch_size=16)
KINDS = {
    "expert_choice": (small_config("expert_choice", train_group_size=16), TRAIN16),  # G = 8: one per device
    "token_choice": (small_config("token_choice", train_group_size=16), TRAIN16),
    "diffmoe": (small_config("diffmoe", capacity_factor=DIFFMOE_CAPACITY_FACTOR), TRAIN),
    "diffmoe_per_device": (small_config("diffmoe", capacity_factor=DIFFMOE_CAPACITY_FACTOR, pool_images=2), TRAIN16),
}
EXPERT_PARALLEL = ("expert_choice", "token_choice", "diffmoe_per_device")
DEVICES = 8


def shard_shapes(a) -> set:
    return {tuple(s.data.shape) for s in a.addressable_shards}


def check_shardings(state, batch, cfg, kind, mesh):
    """(c): where the arrays of a sharded state and batch live."""
    kind = cfg.ffn_kind
    data, expert = mesh.shape["data"], mesh.shape["expert"]
    sparse = cfg.sparse_layers[0]
    moe = state["params"]["blocks"][sparse][kind]
    e, d, f = moe["w1"].shape                                    # (E, D, F)
    for name in ("w1", "w2"):
        assert moe[name].sharding.spec == P("expert", None, None), (kind, name, moe[name].sharding.spec)
        assert len(moe[name].addressable_shards) == data * expert
    assert shard_shapes(moe["w1"]) == {(e // expert, d, f)}, shard_shapes(moe["w1"])
    assert shard_shapes(moe["w2"]) == {(e // expert, f, d)}, shard_shapes(moe["w2"])
    assert moe["w_router"].sharding.is_fully_replicated
    if "threshold" in moe:
        assert moe["threshold"].sharding.is_fully_replicated and moe["predictor"]["w1"].sharding.is_fully_replicated
    wq = state["params"]["blocks"][0]["self_attn"]["wq"]         # (D, N H): FSDP over data on axis 0
    assert wq.sharding.spec == P("data", None), wq.sharding.spec
    assert shard_shapes(wq) == {(wq.shape[0] // data, wq.shape[1])}
    assert state["params"]["patch_embed"]["b"].sharding.is_fully_replicated
    # optax's moments: the same placement as their parameter (rmsprop: nu; momentum: trace)
    params_def = jax.tree.structure(state["params"])
    mirrors = [x for x in jax.tree.leaves(state["opt_state"], is_leaf=lambda n: jax.tree.structure(n) == params_def)
               if jax.tree.structure(x) == params_def]
    assert len(mirrors) >= 2, "expected the RMSProp nu and the momentum trace in the optimiser state"
    for tree in mirrors + [state["ema"]]:
        m1 = tree["blocks"][sparse][kind]["w1"]
        assert m1.sharding.spec == P("expert", None, None) and shard_shapes(m1) == {(e // expert, d, f)}
    x0 = batch["x0"]                                             # (B, I, J, Ch) over data
    assert x0.sharding.spec == P(("data", "expert")), x0.sharding.spec   # B divisible by all 8 devices
    assert shard_shapes(x0) == {(x0.shape[0] // (data * expert), *x0.shape[1:])}


def start_state(cfg, tc):
    return init_state(randomize_zero_init(init_model(cfg, 0)), tc)


def batches_of(cfg, tc):
    return [T.make_batch(tc.seed, i, cfg, tc) for i in range(STEPS)]


def run_one_device(cfg, tc):
    """STEPS one-device steps: (state and metrics after step 1 as NumPy, losses, seconds)."""
    t = time.perf_counter()
    state, losses, first = start_state(cfg, tc), [], None
    for batch in batches_of(cfg, tc):
        state, metrics = T.run_step(state, batch, cfg, tc)
        losses.append(float(metrics["loss"]))
        if first is None:
            first = (jax.tree.map(np.asarray, state), jax.tree.map(np.asarray, metrics))
    return first, losses, time.perf_counter() - t


def run_sharded(kind, cfg, tc, mesh):
    """The same steps on the mesh, with (c) before and after the first step; for the expert-
    parallel kinds also the compiled step's HLO text (`step.lower`: the program just run)."""
    t = time.perf_counter()
    M.check_mesh(M.parse_mesh(MESH), cfg, tc)
    step = M.sharded_train_step(mesh, cfg, tc, T.train_step)
    state, losses, first = M.shard_state(start_state(cfg, tc), mesh), [], None
    batches = batches_of(cfg, tc)
    check_shardings(state, M.shard_batch(batches[0], mesh), cfg, kind, mesh)
    for batch in batches:
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
        if first is None:
            check_shardings(state, M.shard_batch(batch, mesh), cfg, kind, mesh)  # out_shardings kept
            first = (jax.tree.map(np.asarray, state), jax.tree.map(np.asarray, metrics))
    assert step.trace_count() == 1, f"{kind}: the sharded step compiled {step.trace_count()} times"
    elapsed = time.perf_counter() - t
    hlo = step.lower(state, batches[0]).compile().as_text() if kind in EXPERT_PARALLEL else None
    return first, losses, elapsed, hlo


def gspmd_hlo(cfg, tc, mesh):
    """(d)'s baseline: the HLO of the same step compiled without the mesh context (pure GSPMD:
    the blocks call the plain layers and the partitioner shards them)."""
    step = M.sharded_train_step(mesh, cfg, tc, T.train_step, expert_parallel=False)
    return step.lower(M.shard_state(start_state(cfg, tc), mesh), batches_of(cfg, tc)[0]).compile().as_text()


def exchange_all_to_alls(hlo: str, local_bytes: int) -> tuple[int, int]:
    """(count, bytes one device sends) of the all-to-alls in a compiled program whose buffer is
    the dispatched (E, G_l, C, D) tensor of `local_bytes` (the layer's exchange: other all-to-alls
    GSPMD may insert elsewhere in the step have other sizes)."""
    count = sent = 0
    for line in hlo.splitlines():
        m = ep._INSTRUCTION.search(line)
        if m and m["op"] == "all-to-all" and ep._shape_bytes(m["shape"]) == local_bytes:
            count += 1
            sent += ep.collective_bytes(line, DEVICES)["all-to-all"]
    return count, sent


def check_expert_parallel_step(kind, cfg, tc, mesh, shard_map_hlo, gspmd_text):
    """(d): the step runs the shard_map layer (4 all-to-alls of the dispatched tensor per MoE
    layer, 2 x `exchange_bytes`), and moves fewer bytes in all than pure GSPMD."""
    after, before = ep.collective_bytes(shard_map_hlo, DEVICES), ep.collective_bytes(gspmd_text, DEVICES)
    layers = len(cfg.sparse_layers)
    kept = tc.kept_tokens(cfg.num_tokens) if tc.mask_ratio > 0 else cfg.num_tokens
    group = cfg.pool_tokens(tc.batch_size, kept) if cfg.ffn_kind == "diffmoe" else cfg.train_group_size
    groups = tc.batch_size * kept // group                       # G, the step's routing groups (pools)
    capacity = expert_capacity(group, cfg.num_experts, cfg.capacity_factor)
    exchange = ep.exchange_bytes(groups, cfg.num_experts, capacity, cfg.width, mesh.shape["expert"],
                                 data_axis_size=mesh.shape["data"])  # one layer, forward
    local = cfg.num_experts * (groups // DEVICES) * capacity * cfg.width * 4   # (E, G_l, C, D) float32
    kinds = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
    total = {name: sum(t.get(k, 0) for k in kinds) for name, t in (("gspmd", before), ("shard_map", after))}
    for name, tally in (("pure GSPMD", before), ("shard_map", after)):
        print(f"{'':14s} {name:10s} step, bytes per device: total {sum(tally.get(k, 0) for k in kinds):,}; "
              + ", ".join(f"{k} {tally[k]:,} ({tally['count'][k]})" for k in kinds if k in tally))
    count, moved = exchange_all_to_alls(shard_map_hlo, local)
    assert count == 4 * layers, f"{kind}: expected {4 * layers} exchange all-to-alls (2 forward, 2 backward per " \
                                f"layer), got {count}"
    assert moved == 2 * exchange * layers, f"{kind}: the exchange moves {moved} bytes, not 2 x {exchange} x {layers}"
    assert total["shard_map"] < total["gspmd"], (kind, total)


def compare(kind, one, sharded) -> float:
    """(a) and (b) for one FFN kind; returns the worst relative loss difference."""
    (want_state, want_metrics), one_losses, t_one = one
    (got_state, got_metrics), sharded_losses, t_sharded, _ = sharded
    assert jax.tree.structure(got_state) == jax.tree.structure(want_state)
    assert sorted(got_metrics) == sorted(want_metrics), (sorted(got_metrics), sorted(want_metrics))
    worst = 0.0
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(got_state), jax.tree.leaves(want_state)):
        assert_close(got, want, tol=FLOAT32, err_msg=f"{kind}: state{jax.tree_util.keystr(path)} after step 1")
        worst = max(worst, float(np.max(np.abs(np.float64(got) - np.float64(want)), initial=0.0)))
    for name in want_metrics:
        assert_close(got_metrics[name], want_metrics[name], tol=FLOAT32, err_msg=f"{kind}: metrics[{name!r}] of step 1")
    rel = np.abs(np.array(sharded_losses) / np.array(one_losses) - 1.0)  # (STEPS,)
    print(f"{kind:14s} losses one device       {np.round(one_losses, 5).tolist()}")
    print(f"{'':14s} losses {MESH} {np.round(sharded_losses, 5).tolist()}")
    print(f"{'':14s} step 1: max |state difference| {worst:.2e}; worst relative loss difference "
          f"{rel.max():.2e} (step {int(rel.argmax()) + 1}); {t_one:.1f} s one device, {t_sharded:.1f} s sharded")
    assert np.all(rel <= LOSS_CURVE_RTOL), f"{kind}: relative loss differences {rel.tolist()} exceed {LOSS_CURVE_RTOL}"
    return float(rel.max())


def main() -> int:
    if jax.device_count() < 8:
        print(f"needs 8 devices, got {jax.device_count()}: run with "
              "XLA_FLAGS=--xla_force_host_platform_device_count=8", file=sys.stderr)
        return 2
    jax.config.update("jax_default_matmul_precision", "float32")  # as tests/conftest.py
    mesh = M.make_mesh(M.parse_mesh(MESH))
    print(M.describe_mesh(M.parse_mesh(MESH)), mesh)
    # The one-device runs go on a second thread: XLA compiles without the GIL, so the two
    # programs of each kind compile on both cores at once (the check's time is mostly compiling).
    with ThreadPoolExecutor(max_workers=1) as pool:
        one = {kind: pool.submit(run_one_device, *configs) for kind, configs in KINDS.items()}
        baseline = {kind: pool.submit(gspmd_hlo, *KINDS[kind], mesh) for kind in EXPERT_PARALLEL}
        sharded = {kind: run_sharded(kind, *configs, mesh) for kind, configs in KINDS.items()}
        worst = max(compare(kind, one[kind].result(), sharded[kind]) for kind in KINDS)
        for kind in EXPERT_PARALLEL:
            check_expert_parallel_step(kind, *KINDS[kind], mesh, sharded[kind][3], baseline[kind].result())
    print(f"mesh checks passed; worst relative loss difference over {len(KINDS)} kinds x {STEPS} steps: {worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
