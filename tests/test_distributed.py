"""Several processes (ecdit/systems/distributed.py): the --distributed flag and the ECDIT_*
variables, and a sharded training run across two local processes against one device.

The two-process run: two Pythons (tests/distributed_worker.py), each with 2 simulated CPU
devices, join a cluster at 127.0.0.1 on a free port (jax.distributed, gloo collectives), so the
mesh data=2,expert=2 spans 4 devices in two processes; each trains the small expert_choice model
for 3 steps and writes its losses and gathered final state. This process then runs the same 3
steps on its one device: the losses must match within relative 1e-3 (the issue's bound, as
tests/mesh_checks.py) and the final state within FLOAT32; the two processes must agree exactly
(they gathered the same global arrays). The workers also save a checkpoint together (each
process its own shards) and restore it onto their mesh; this process loads it on one device.
"""
import shutil
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ecdit.systems import distributed as D
from ecdit.systems import mesh as M
from ecdit.systems import train as T
from tests.distributed_worker import STEPS
from tests.helpers import ROOT, simulated_devices_env
from tests.tolerances import FLOAT32, LOSS_CURVE_RTOL, assert_close

WORKER_TIMEOUT_S = 120


def one_line_error(fn, *args, start: str, match: str = "") -> str:
    with pytest.raises(ValueError, match=match) as err:
        fn(*args)
    message = str(err.value)
    assert message.startswith(start + ": ") and "\n" not in message, message
    return message


# ---------------------------------------------------------------------------------------------
# The flag and the environment
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, want", [
    ("10.0.0.1:1234,2,0", D.DistributedConfig("10.0.0.1:1234", 2, 0)),
    (" node-0.cluster:8476 , 4 , 3 ", D.DistributedConfig("node-0.cluster:8476", 4, 3)),
    ("[::1]:1234,1,0", D.DistributedConfig("[::1]:1234", 1, 0)),
    ("", None), ("  ", None), (None, None),                      # the default: one process
])
def test_parse_flag_reads_coordinator_count_and_id(text, want):
    assert D.parse_flag(text) == want


@pytest.mark.parametrize("text, match", [
    ("10.0.0.1:1234,2", "host:port,N,I"),
    ("10.0.0.1:1234,2,0,1", "host:port,N,I"),
    ("10.0.0.1,2,0", "host:port"),
    (":1234,2,0", "host:port"),
    ("10.0.0.1:,2,0", "host:port"),
    ("10.0.0.1:http,2,0", "port"),
    ("10.0.0.1:70000,2,0", "port"),
    ("10.0.0.1:0,2,0", "port"),
    ("::1:1234,2,0", "IPv6"),
    ("10.0.0.1:1234,0,0", "number of processes"),
    ("10.0.0.1:1234,two,0", "number of processes"),
    ("10.0.0.1:1234,2,-1", "process id"),
    ("10.0.0.1:1234,2,2", r"in 0\.\.1"),
])
def test_bad_distributed_flags_are_one_line_errors_naming_the_flag(text, match):
    one_line_error(D.parse_flag, text, start="--distributed", match=match)


def env(coordinator=None, count=None, index=None) -> dict:
    values = {D.ENV_COORDINATOR: coordinator, D.ENV_NUM_PROCESSES: count, D.ENV_PROCESS_ID: index}
    return {"PATH": "/bin", **{k: v for k, v in values.items() if v is not None}}


def test_from_env_reads_the_three_variables_or_none():
    assert D.from_env(env()) is None
    assert D.from_env(env("", "", "")) is None                  # empty counts as unset
    assert D.from_env(env("10.0.0.1:1234", "2", "1")) == D.DistributedConfig("10.0.0.1:1234", 2, 1)
    assert D.resolve(None, env("10.0.0.1:1234", "2", "1")).process_id == 1
    assert D.resolve("h:1,3,2", env("10.0.0.1:1234", "2", "1")) == D.DistributedConfig("h:1", 3, 2)  # flag wins
    assert D.resolve(None, env()) is None
    assert D.DistributedConfig("h:1", 3, 2).describe() == "process 2 of 3 (coordinator h:1)"


@pytest.mark.parametrize("values, name, match", [
    (("10.0.0.1:1234", "2", None), D.ENV_PROCESS_ID, "not set"),
    ((None, "2", "0"), D.ENV_COORDINATOR, "not set"),
    (("10.0.0.1:1234", None, None), D.ENV_NUM_PROCESSES, "not set"),
    (("10.0.0.1", "2", "0"), D.ENV_COORDINATOR, "host:port"),
    (("10.0.0.1:1234", "2.0", "0"), D.ENV_NUM_PROCESSES, "positive integer"),
    (("10.0.0.1:1234", "2", "x"), D.ENV_PROCESS_ID, "non-negative integer"),
    (("10.0.0.1:1234", "2", "5"), D.ENV_PROCESS_ID, r"in 0\.\.1"),
])
def test_bad_environments_are_one_line_errors_naming_the_variable(values, name, match):
    one_line_error(D.from_env, env(*values), start=name, match=match)


def test_one_process_needs_no_initialization_and_global_arrays_round_trip():
    """cfg None: nothing joins anything; on a one-device mesh global_state / global_batch place
    NumPy and gather brings it back unchanged."""
    assert D.initialize(None) == (0, 1, jax.device_count())
    assert D.is_main_process()
    assert D.from_main(7) == 7 and D.check_cluster_mesh({}) == {}  # one process: no collective, no check
    from tests.distributed_worker import CONFIG, TRAIN, start_state
    mesh = M.make_mesh({})
    batch = T.make_batch(TRAIN.seed, 0, CONFIG, TRAIN)
    placed = D.global_batch(batch, mesh)
    assert placed["x0"].sharding == M.batch_shardings(batch, mesh)["x0"]
    assert D.global_batch(placed, mesh)["x0"] is placed["x0"]   # already placed: kept
    back = D.gather(placed)
    for k, v in batch.items():
        assert (v is None and back[k] is None) or np.array_equal(back[k], v), k
    state = start_state()
    for x, y in zip(jax.tree.leaves(D.gather(D.global_state(state, mesh))), jax.tree.leaves(state)):
        np.testing.assert_array_equal(x, np.asarray(y))


# ---------------------------------------------------------------------------------------------
# Two processes against one
# ---------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_device_run():
    """The worker's STEPS steps with the one-device train_step: (losses, final state as NumPy)."""
    from tests.distributed_worker import CONFIG, TRAIN, start_state
    state, losses = start_state(), []
    for i in range(STEPS):
        state, metrics = T.run_step(state, T.make_batch(TRAIN.seed, i, CONFIG, TRAIN), CONFIG, TRAIN)
        losses.append(float(metrics["loss"]))
    return np.array(losses), jax.tree.map(np.asarray, state)


def launch_workers(tmp_path, port):
    env = simulated_devices_env(2)
    procs = []
    for i in range(2):
        log = open(tmp_path / f"worker{i}.log", "w")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.distributed_worker", "--port", str(port), "--process-id", str(i),
             "--out", str(tmp_path / f"worker{i}.npz"), "--timeout", "60", "--checkpoint", str(tmp_path / "ckpt")],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        log.close()                                              # the child holds its own copy
    return procs


def wait_all(procs, tmp_path, timeout_s) -> list[int]:
    """The exit codes; kills every worker still running at the deadline, or when one fails (its
    partner would otherwise wait for it until its own timeout)."""
    deadline = time.monotonic() + timeout_s
    try:
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    return [p.returncode for p in procs]


def logs(tmp_path) -> str:
    return "\n".join(f"--- worker {i} ---\n" + (tmp_path / f"worker{i}.log").read_text()[-3000:] for i in range(2))


def test_two_processes_train_like_one_device(tmp_path):
    t = time.perf_counter()
    procs = launch_workers(tmp_path, free_port())
    want_losses, want_state = one_device_run()                   # meanwhile, here
    codes = wait_all(procs, tmp_path, WORKER_TIMEOUT_S)
    assert codes == [0, 0], f"worker exit codes {codes} (killed after {WORKER_TIMEOUT_S} s: -9)\n{logs(tmp_path)}"
    outs = [dict(np.load(tmp_path / f"worker{i}.npz")) for i in range(2)]
    for i, out in enumerate(outs):
        assert (int(out["process_index"]), int(out["process_count"])) == (i, 2)
        assert (int(out["device_count"]), int(out["local_device_count"])) == (4, 2)
    assert sorted(outs[0]) == sorted(outs[1])
    for key in outs[0]:                                          # both processes hold the same results
        if key.startswith("state") or key == "losses":
            np.testing.assert_array_equal(outs[0][key], outs[1][key], err_msg=key)
    got = outs[0]
    rel = np.abs(got["losses"] / want_losses - 1.0)
    assert np.all(rel <= LOSS_CURVE_RTOL), (got["losses"].tolist(), want_losses.tolist())
    want = {"state" + jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(want_state)}
    assert sorted(want) == sorted(k for k in got if k.startswith("state"))
    for key, value in want.items():
        assert_close(got[key], value, tol=FLOAT32, err_msg=key)
    from ecdit.systems.checkpoint import load_train_state
    saved, _, _, meta = load_train_state(str(tmp_path / "ckpt"))  # what two processes wrote, read by one
    assert meta["step"] == STEPS
    for path, leaf in jax.tree_util.tree_leaves_with_path(saved):
        np.testing.assert_array_equal(np.asarray(leaf), got["state" + jax.tree_util.keystr(path)])
    print(f"two processes x 2 devices: losses {got['losses'].tolist()}, one device {want_losses.tolist()}, "
          f"worst relative {rel.max():.1e}; workers {float(got['seconds']):.1f} s "
          f"(initialize {float(got['init_seconds']):.1f} s); test {time.perf_counter() - t:.1f} s")


def test_ecdit_train_with_two_processes_resumes_and_checkpoints_the_one_device_run(tmp_path):
    """`ecdit train --mesh data=2,expert=2 --distributed 127.0.0.1:PORT,2,I` in two processes of 2
    simulated devices each, one shared run folder that a one-device run left at step 2: both
    processes restore their own shards of that checkpoint, train to step 6, and save steps 4 and
    6 together (each process the shards it holds; no gathering); process 0 alone writes
    metrics.jsonl. All equals a one-device `ecdit train` stopped at the same step (losses within
    LOSS_CURVE_RTOL, parameters within FLOAT32)."""
    from ecdit.app.cli import main
    from ecdit.systems.checkpoint import load_params
    from tests.test_cli import SMALL
    run, one = tmp_path / "run", tmp_path / "one"
    common = ["train", "--quiet", *SMALL, "--checkpoint-every", "2"]
    assert main([*common, "--steps", "2", "--out", str(one)]) == 0
    shutil.copytree(one, run)                                    # the cluster resumes a one-device run
    port = free_port()
    env = simulated_devices_env(2)
    procs = []
    for i in range(2):
        log = open(tmp_path / f"worker{i}.log", "w")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "ecdit", *common, "--steps", "6", "--out", str(run), "--mesh", "data=2,expert=2",
             "--distributed", f"127.0.0.1:{port},2,{i}"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        log.close()
    assert main([*common, "--steps", "6", "--out", str(one)]) == 0   # meanwhile, here
    codes = wait_all(procs, tmp_path, WORKER_TIMEOUT_S)
    assert codes == [0, 0], f"exit codes {codes}\n{logs(tmp_path)}"
    got, want = T.read_metrics(str(run / "metrics.jsonl")), T.read_metrics(str(one / "metrics.jsonl"))
    assert [r["step"] for r in got] == [r["step"] for r in want] == [2, 6]
    assert [r["mesh"] for r in got] == ["1 device", "data=2,expert=2"]
    assert abs(got[1]["loss"] / want[1]["loss"] - 1.0) <= LOSS_CURVE_RTOL
    assert sorted((run / "checkpoint").iterdir()) == [run / "checkpoint" / "4", run / "checkpoint" / "6"]
    p_run, _, meta = load_params(str(run))
    p_one, _, _ = load_params(str(one))
    assert meta["step"] == 6
    for x, y in zip(jax.tree.leaves(p_run), jax.tree.leaves(p_one)):
        assert_close(x, y, tol=FLOAT32)
