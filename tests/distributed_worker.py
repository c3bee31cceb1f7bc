"""One of the two processes of tests/test_distributed.py: a sharded training run across processes.

Run by the test, twice, with 2 simulated CPU devices each:

    XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu \\
        python -m tests.distributed_worker --port P --process-id I --out FILE [--processes 2]

Each process joins the cluster at 127.0.0.1:P (`ecdit.systems.distributed.initialize`: 2
processes x 2 devices = 4 global devices), builds the mesh data=2,expert=2 over the global
devices, and trains the small expert_choice model for STEPS steps with `mesh.sharded_train_step`:
the state and every batch are built whole in NumPy in each process (from the seed); the state
becomes global arrays holding only this process's pieces (`global_state`), the batch goes in as
NumPy (the step's contract reads its values; the step places it). It checks that the arrays
really span both processes and that `global_batch` + `gather` give back the batch, then writes to
FILE (npz): the losses, the final state gathered to NumPy (`gather`; keys are the tree paths),
and what it saw (process index and count, device counts, seconds). Both processes write; the
test checks they agree and equal one device.

Checkpoints (ecdit/systems/checkpoint.py) with --checkpoint DIR (one folder both processes see):
both save the final state, each writing only the shards it holds (orbax commits the step once
both have), then both restore it straight into the mesh's shardings (each reading its own
shards): the restored arrays span both processes, gather to the saved state bit for bit, and one
more step from them gives exactly the step from the state in memory (a resumed run goes on as
an unstopped one). The test then loads DIR in its one process.
"""
import argparse
import sys
import time

import jax
import numpy as np

from ecdit.core.params import init_model, randomize_zero_init
from ecdit.systems import checkpoint as C
from ecdit.systems import distributed as D
from ecdit.systems import mesh as M
from ecdit.systems import train as T
from ecdit.systems.optim import init_state
from tests.helpers import small_config, small_train

STEPS = 3
MESH = "data=2,expert=2"
# As tests/mesh_checks.py: 2 images of 8 kept tokens per routing group, so each device's 4 images
# are whole groups; warmup 0 so the first step moves the parameters; an EMA so the state has one.
CONFIG = small_config("expert_choice", train_group_size=16)
TRAIN = small_train(warmup_steps=0, ema_decay=0.9)


def start_state():
    """The initial state, the same in every process and in the one-device run (seed 0)."""
    return init_state(randomize_zero_init(init_model(CONFIG, 0)), TRAIN)


def flat(tree) -> dict:
    """{tree path: leaf} (npz keys)."""
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--process-id", type=int, required=True)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--out", required=True)
    ap.add_argument("--timeout", type=int, default=60, help="seconds to wait for the other processes")
    ap.add_argument("--checkpoint", default=None, help="checkpoint directory to save to and restore from")
    args = ap.parse_args(argv)
    jax.config.update("jax_default_matmul_precision", "float32")  # as tests/conftest.py
    t0 = time.perf_counter()
    cfg = D.parse_flag(f"127.0.0.1:{args.port},{args.processes},{args.process_id}")
    index, count, devices = D.initialize(cfg, timeout_s=args.timeout)
    assert D.initialize(cfg) == (index, count, devices)          # a second call changes nothing
    t_init = time.perf_counter() - t0
    print(f"{cfg.describe()}: process {index} of {count}, {jax.local_device_count()} local of {devices} devices",
          flush=True)
    for partial in ("data=2", ""):                               # a mesh must use both processes' devices
        try:
            D.check_cluster_mesh(M.parse_mesh(partial))
            raise AssertionError(f"check_cluster_mesh accepted {partial!r} on {devices} devices")
        except ValueError as err:
            assert str(err).startswith("--distributed: 2 processes have 4 devices"), err
    assert int(D.from_main(np.int32(10 + index))) == 10          # process 0's value everywhere
    axes = D.check_cluster_mesh(M.check_mesh(M.parse_mesh(MESH), CONFIG, TRAIN))
    mesh = M.make_mesh(axes)                                     # over the global devices
    step = M.sharded_train_step(mesh, CONFIG, TRAIN, T.train_step)
    state = D.global_state(start_state(), mesh)
    w1 = state["params"]["blocks"][CONFIG.sparse_layers[0]]["expert_choice"]["w1"]
    assert not w1.is_fully_addressable and len(w1.addressable_shards) == jax.local_device_count(), w1.sharding
    losses = []
    for i in range(STEPS):
        batch = T.make_batch(TRAIN.seed, i, CONFIG, TRAIN)      # NumPy: the step checks, then places it
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))                    # replicated: readable in every process
        print(f"step {i + 1}: loss {losses[-1]:.6f}", flush=True)
    assert step.trace_count() == 1, step.trace_count()
    # global_batch: each process fills its own half of the batch; gathered, it is the whole batch again
    host = T.make_batch(TRAIN.seed, STEPS, CONFIG, TRAIN)
    placed = D.global_batch(host, mesh)
    assert not placed["x0"].is_fully_addressable and len(placed["x0"].addressable_shards) == jax.local_device_count()
    back = D.gather(placed)
    for k, v in host.items():
        assert (v is None and back[k] is None) or np.array_equal(back[k], v), k
    final = D.gather(state)
    if args.checkpoint:                                          # every process saves, then restores, its shards
        t_ckpt = time.perf_counter()
        C.save_train_state(args.checkpoint, state, CONFIG, TRAIN)
        restored, _, _, meta = C.load_train_state(args.checkpoint, shardings=mesh)
        assert meta["step"] == STEPS and int(restored["step"].addressable_data(0)) == STEPS
        w1 = restored["params"]["blocks"][CONFIG.sparse_layers[0]]["expert_choice"]["w1"]
        assert not w1.is_fully_addressable and w1.sharding == state["params"]["blocks"][
            CONFIG.sparse_layers[0]]["expert_choice"]["w1"].sharding, w1.sharding
        for x, y in zip(jax.tree.leaves(D.gather(restored)), jax.tree.leaves(final)):
            assert np.array_equal(x, y)
        batch = T.make_batch(TRAIN.seed, STEPS, CONFIG, TRAIN)
        (resumed, m_resumed), (going, m_going) = step(restored, batch), step(state, batch)
        assert float(m_resumed["loss"]) == float(m_going["loss"])
        for x, y in zip(jax.tree.leaves(D.gather(resumed)), jax.tree.leaves(D.gather(going))):
            assert np.array_equal(x, y)
        assert step.trace_count() == 1, step.trace_count()       # the restored state fits the compiled step
        print(f"checkpoint saved and restored by both processes in {time.perf_counter() - t_ckpt:.1f} s", flush=True)
    seconds = time.perf_counter() - t0
    np.savez(args.out, losses=np.array(losses), process_index=index, process_count=count, device_count=devices,
             local_device_count=jax.local_device_count(), init_seconds=t_init, seconds=seconds,
             **{"state" + k: v for k, v in flat(final).items()})
    print(f"done in {seconds:.1f} s (initialize {t_init:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
