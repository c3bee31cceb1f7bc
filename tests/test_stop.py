"""Stopping never loses work (docs/checkpoints.md, "Stopping, preemption and recovery").

- SIGINT / SIGTERM during `ecdit train`: the current step finishes and is saved, one line, exit
  130 / 143, and the resumed run equals an unstopped one bit for bit; a second signal during the
  save ends the process at once and keeps the last committed step as it was.
- Two processes (`--distributed`): SIGTERM to one stops both at the same step, which both save
  (JAX's preemption sync point); a process killed with -9 makes the other exit within the
  heartbeat bound with one line from its stderr guard (ecdit/systems/stderr_guard.py).
- Every command that writes a file or folder checks it before any work (ecdit/app/outputs.py).
- A corrupt newest step names the intact older one and `--resume-step` goes on from it.

The end-to-end runs are real processes (marked `system`); they train the small model of
tests/helpers.py with one persistent compilation cache, so only the first compiles.
"""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from ecdit.app.cli import EXIT_BAD_INPUT, main
from ecdit.app.outputs import OutputError, check_output
from ecdit.core.errors import TrainingStopped
from ecdit.systems import checkpoint as C
from ecdit.systems import distributed as D
from ecdit.systems import stderr_guard as G
from ecdit.systems import train as T
from ecdit.systems.stopping import StopSignals
from tests.helpers import ROOT, simulated_devices_env, small_config, small_train
from tests.test_checkpoint import assert_same_tree, step_dirs
from tests.test_cli import SMALL
from tests.test_distributed import free_port

STOPPED = re.compile(r"^ecdit: stopped at step (\d+) \((SIGINT|SIGTERM|preemption notice)\); "
                     r"checkpoint saved: resume with the same command$")
RUN_TIMEOUT_S = 300


# ---------------------------------------------------------------------------------------------
# Outputs checked before work
# ---------------------------------------------------------------------------------------------

def test_writable_outputs_pass_as_given_and_leave_nothing_behind(tmp_path):
    (tmp_path / "old.png").write_bytes(b"x")
    assert check_output(str(tmp_path / "s.png")) == str(tmp_path / "s.png")
    assert check_output(str(tmp_path / "old.png")) == str(tmp_path / "old.png")          # overwritten later
    assert check_output(str(tmp_path), kind="folder") == str(tmp_path)
    assert check_output(str(tmp_path / "new" / "deeper"), kind="folder")                 # made later, with parents
    assert sorted(os.listdir(tmp_path)) == ["old.png"]                                   # no probe, no folder


def unwritable_cases(tmp_path):
    """(path, kind, reason) for every way an output can be refused, portable to any user."""
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    return [(str(tmp_path / "missing" / "s.png"), "file", "no such directory"),
            ("/nonexistent/dir/s.png", "file", "no such directory"),
            (str(a_file / "s.png"), "file", f"{str(a_file)!r} is a file, not a folder"),
            (str(tmp_path), "file", "it is a folder"),
            (str(a_file), "folder", "it is a file, not a folder"),
            (str(a_file / "run" / "x"), "folder", f"{str(a_file)!r} is a file, not a folder"),
            ("", "file", "an empty path")]


def test_an_unwritable_output_is_one_line_naming_the_argument(tmp_path):
    for path, kind, reason in unwritable_cases(tmp_path):
        with pytest.raises(OutputError) as err:
            check_output(path, "--out", kind)
        assert str(err.value) == f"--out: cannot write {path!r} ({reason})"
    assert str(pytest.raises(OutputError, check_output, "/nonexistent/dir/s.png").value) == \
        "--out: cannot write '/nonexistent/dir/s.png' (no such directory)"               # the issue's example


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_folder_without_write_permission_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(OutputError, match="permission denied"):
            check_output(str(locked / "s.png"))
        with pytest.raises(OutputError, match="permission denied"):
            check_output(str(locked / "run"), kind="folder")
    finally:
        locked.chmod(0o700)


# Each command that writes, with an output it cannot write: a file under a missing folder, or a
# folder under a file. Where the command also reads a checkpoint, it names one that does not exist:
# the line must be the output's, so the check came first.
def commands_with_bad_outputs(tmp_path):
    (tmp_path / "a-file").write_text("")
    file, folder, ck = "/nonexistent/dir/s.png", str(tmp_path / "a-file" / "out"), str(tmp_path / "no-run")
    return {"sample": ["sample", "a circle", "--checkpoint", ck, "--out", file],
            "eval": ["eval", "--checkpoint", ck, "--out", file],
            "heatmap": ["heatmap", "a circle", "--checkpoint", ck, "--out", file],
            "train": ["train", *SMALL, "--out", folder],
            "compare": ["compare", "--out", folder],
            "bench": ["bench", "--smoke", "--out", folder],
            "demo": ["demo", "--out", folder],
            "walkthrough": ["walkthrough", "--out", folder]}


@pytest.mark.parametrize("command", ["sample", "eval", "heatmap", "train", "compare", "bench", "demo", "walkthrough"])
def test_every_command_that_writes_checks_its_output_before_any_work(command, tmp_path, capsys):
    args = commands_with_bad_outputs(tmp_path)[command]
    t = time.perf_counter()
    assert main(args) == EXIT_BAD_INPUT
    seconds = time.perf_counter() - t
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ecdit: error: --out: cannot write {args[-1]!r} ("), err
    assert seconds < 5, f"{command} took {seconds:.1f} s before refusing its output"


@pytest.mark.system
def test_sample_refuses_an_unwritable_output_in_one_line_before_loading_anything(tmp_path):
    t = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "ecdit", "sample", "a circle", "--checkpoint", str(tmp_path / "no"),
                          "--out", "/nonexistent/dir/s.png"], cwd=ROOT, env=simulated_devices_env(1),
                         capture_output=True, text=True, timeout=120)
    print(f"refused in {time.perf_counter() - t:.1f} s")
    assert run.returncode == 2
    assert run.stderr == "ecdit: error: --out: cannot write '/nonexistent/dir/s.png' (no such directory)\n"


# ---------------------------------------------------------------------------------------------
# The loop: stop at a step, save it, resume
# ---------------------------------------------------------------------------------------------

CFG, TC = small_config(), small_train()


class StopAt:
    """Stands in for StopSignals: a 'signal' once `at` steps are done."""

    def __init__(self, at: int):
        self.at, self.committed, self.name, self.status = at, None, "SIGTERM", 143
        self.requested = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def reached(self, step: int) -> bool:
        self.requested = self.requested or step >= self.at
        return self.requested


def test_a_stop_saves_the_current_step_and_the_resumed_run_equals_an_unstopped_one(tmp_path):
    stop = StopAt(3)
    with pytest.raises(TrainingStopped) as caught:
        T.train(CFG, TC, 6, str(tmp_path / "b"), progress=False, checkpoint_every=2, stop=stop)
    err = caught.value
    assert (err.step, err.signal, err.status, err.saved) == (3, "SIGTERM", 143, True)
    assert str(err) == "stopped at step 3 (SIGTERM); checkpoint saved: resume with the same command"
    assert step_dirs(tmp_path / "b" / C.DIRNAME) == ["2", "3"]
    assert stop.committed == (2, str(tmp_path / "b" / C.DIRNAME))   # what a second signal would report
    resumed, _ = T.train(CFG, TC, 6, str(tmp_path / "b"), progress=False, checkpoint_every=2)
    straight, _ = T.train(CFG, TC, 6, str(tmp_path / "a"), progress=False, checkpoint_every=2)
    assert_same_tree(resumed, straight)


def test_stop_signals_turn_sigint_and_sigterm_into_a_request_and_put_the_handlers_back():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for signum, name, status in ((signal.SIGINT, "SIGINT", 130), (signal.SIGTERM, "SIGTERM", 143)):
        with StopSignals() as stop:
            assert not stop.reached(1)
            os.kill(os.getpid(), signum)
            time.sleep(0.01)                                     # the handler runs in this thread
            assert stop.reached(2) and (stop.name, stop.status) == (name, status)
        assert {s: signal.getsignal(s) for s in before} == before


def test_a_corrupt_newest_step_names_the_intact_older_one_and_resume_step_goes_on_from_it(tmp_path, capsys):
    run = tmp_path / "run"
    T.train(CFG, TC, 4, str(run), progress=False, checkpoint_every=2)
    for target in (run / C.DIRNAME / "4" / "state").glob("ocdbt.process_*/d/*"):   # every array file
        data = bytearray(target.read_bytes())
        for i in range(len(data) // 3, len(data) // 3 + 64):            # flipped bytes: the fingerprint's catch
            data[i] ^= 0xFF
        target.write_bytes(bytes(data))
    args = ["train", *SMALL, "--steps", "6", "--checkpoint-every", "2", "--out", str(run), "--quiet"]
    assert main(args) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is corrupt" in err[0] and str(run / C.DIRNAME / "4") in err[0], err
    assert "the older step 2 is intact: resume from it with --resume-step 2" in err[0], err
    assert step_dirs(run / C.DIRNAME) == ["2", "4"]                     # nothing moved or deleted by the error
    with pytest.raises(C.CheckpointError, match=r"the older step 2 is intact: point --checkpoint at .*/2'"):
        C.load_params(str(run))                                         # sample / eval / heatmap say so too
    with pytest.raises(C.CheckpointError, match=r"--resume-step: .* has no committed step 3 \(committed: 2, 4\)"):
        T.train(CFG, TC, 6, str(run), progress=False, resume_step=3)
    assert main([*args, "--resume-step", "2"]) == 0
    assert sorted(os.listdir(run / C.DIRNAME)) == ["4", "4.set-aside", "6"]   # the bad step kept, renamed
    straight, _ = T.train(CFG, TC, 6, str(tmp_path / "straight"), progress=False)
    assert_same_tree(C.load_params(str(run))[0], straight)


# ---------------------------------------------------------------------------------------------
# The stderr guard of a process of several
# ---------------------------------------------------------------------------------------------

# What the survivor of a two-process run printed, with jax 0.10.2 (abridged stack traces): process 0
# (the coordination service's host) after process 1 was killed; process 1 after process 0 was.
PROCESS_1_LOST = (
    b"E1207 23:05:08.353782    7998 coordination_service.cc:1549] [9475286458676200838] Use error polling to "
    b"propagate the following error to all tasks: UNAVAILABLE: The following tasks are unhealthy (stopped sending "
    b"heartbeats):\n1\nThe tasks have crashed. Check the task logs for an earlier error, or scheduler events (e.g. "
    b"preemption, eviction) to debug further. [type.googleapis.com/tensorflow.CoordinationServiceError='']\n"
    b"E1207 23:05:08.354853    8009 coordination_service_agent.cc:289] Polled an error from coordination service "
    b"(this can be an error from this or another task).\n"
    b"F1207 23:05:08.355079    8009 client.h:80] Terminating process because the JAX distributed service detected "
    b"fatal errors. This most likely indicates that another task died; see the other task logs for more details. "
    b"absl::Status: UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):\n1\nThe tasks have "
    b"crashed. Check the task logs for an earlier error, or scheduler events (e.g. preemption, eviction) to debug "
    b"further.\n*** Check failure stack trace: ***\n    @     0x7fdcc990cd5b  std::_Function_handler<>::_M_invoke()\n"
    b"    @     0x7fdcd4ca71f5  (unknown)\n")
PROCESS_0_LOST = (
    b"W1207 23:06:45.507001    9712 preemption_sync_manager.cc:120] Failed to get preemption notice key: "
    b"UNAVAILABLE\nAdditional GRPC error information from remote target coordination_service while calling "
    b"/xla.coordination.CoordinationService/GetKeyValue:\n:UNKNOWN:Error received from peer  {grpc_message:\"Socket "
    b"closed\", grpc_status:14}.\n"
    b"E1207 23:06:45.507256    9712 coordination_service_agent.cc:289] Polled an error from coordination service "
    b"(this can be an error from this or another task).\n"
    b"F1207 23:06:45.508114    9712 client.h:80] Terminating process because the JAX distributed service detected "
    b"fatal errors. absl::Status: UNAVAILABLE: Failed to send RPC to coordination service. Either the leader task "
    b"was preempted/died/restarted unexpectedly or this task is experiencing network issues.\n"
    b"*** Check failure stack trace: ***\n    @     0x7fa656740634  absl::log_internal::LogMessage::SendToLog()\n")


def guarded(chunks, process_id, checkpoint_dir=None) -> bytes:
    out = []
    guard = G.Guard(out.append, lambda text: G.lost_line(text, process_id, 2, 5, checkpoint_dir))
    for chunk in chunks:
        guard.feed(chunk)
    guard.end()
    return b"".join(out)


def test_the_guard_turns_a_lost_process_into_one_line_naming_it_and_the_last_committed_step(tmp_path):
    ck = tmp_path / "checkpoint"
    for name in ("20", "40", "60.orbax-checkpoint-tmp-7"):              # 60: a save that never committed
        (ck / name).mkdir(parents=True)
    got = guarded([b"train: 12%\r", PROCESS_1_LOST[:300], PROCESS_1_LOST[300:]], 0, str(ck)).decode()
    assert got == ("train: 12%\recdit: error: --distributed: process 1 of 2 stopped answering (no heartbeat for 5 s); "
                   f"this process (0) stopped too. The last committed step is 40 ({ck / '40'}): resume with the "
                   "same command once every process can run\n")
    got = guarded([PROCESS_0_LOST], 1, str(tmp_path / "none")).decode().splitlines()
    assert got == ["ecdit: error: --distributed: process 0 of 2, the coordinator, is gone (the coordination service "
                   "stopped answering); this process (1) stopped too. No step was committed in "
                   f"{tmp_path / 'none'}"]


def test_the_guard_passes_everything_else_and_drops_the_services_notes(monkeypatch):
    note = b"W1207 23:04:33.734929    7529 preemption_notifier.cc:90] SIGTERM caught at 2026-12-07T23:04:33\n"
    other = b"E1207 23:04:33.734929    7529 cpu_client.cc:12] something else\n"
    assert guarded([b"[Gloo] Rank 0 is connected\n", note, b"ecdit: stopped at step 9\n", other], 0) == \
        b"[Gloo] Rank 0 is connected\necdit: stopped at step 9\n" + other
    monkeypatch.setattr(G, "HOLD_S", 0.0)                                # an error with no fatal record after it
    out = []
    guard = G.Guard(out.append, lambda text: "never")
    error = PROCESS_1_LOST.split(b"F1207")[0]
    guard.feed(error)
    time.sleep(0.01)
    guard.tick()
    guard.feed(b"more\n")
    guard.end()
    assert b"".join(out) == error + b"more\n"


def test_the_heartbeat_timeout_comes_from_its_variable_or_is_30_s():
    assert D.heartbeat_timeout({}) == D.HEARTBEAT_TIMEOUT_S == 30
    assert D.heartbeat_timeout({D.ENV_HEARTBEAT: " 5 "}) == 5
    for bad in ("0", "-1", "2.5", "soon"):
        with pytest.raises(ValueError, match=f"^{D.ENV_HEARTBEAT}: the heartbeat timeout in seconds must be"):
            D.heartbeat_timeout({D.ENV_HEARTBEAT: bad})
    t = time.perf_counter()
    D.await_lost_process(RuntimeError("Gloo all-reduce failed: Connection reset by peer"))   # one process
    assert time.perf_counter() - t < 1


# ---------------------------------------------------------------------------------------------
# Real processes: signals and a killed process
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    """One device, and a compilation cache every process of this module shares."""
    return {**simulated_devices_env(1), "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax-cache")),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def start(args, env, log_dir, name):
    out, err = open(log_dir / f"{name}.out", "w"), open(log_dir / f"{name}.err", "w")
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=out, stderr=err)
    out.close()
    err.close()
    return proc


def wait_for(condition, proc, what, timeout_s=RUN_TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended (status {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {what} within {timeout_s} s")
        time.sleep(0.05)


def finish(proc, timeout_s=RUN_TIMEOUT_S) -> int:
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def trained(run) -> bool:
    return (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").stat().st_size > 0


STEPS = 150                                          # the stop comes near step 10; the resumed run goes on to here
TRAIN = ["-m", "ecdit", "train", "--quiet", *SMALL, "--checkpoint-every", "100000"]


@pytest.fixture(scope="module")
def unstopped(cache_env, tmp_path_factory):
    """A run of STEPS steps that nothing stopped: its state on disk."""
    run = tmp_path_factory.mktemp("unstopped") / "run"
    proc = start([*TRAIN, "--steps", str(STEPS), "--out", str(run)], cache_env, run.parent, "log")
    assert finish(proc) == 0, (run.parent / "log.err").read_text()
    return C.load_train_state(str(run))[0]


@pytest.mark.system
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_run_saves_the_step_says_so_and_the_resumed_run_equals_an_unstopped_one(
        signum, cache_env, unstopped, tmp_path):
    run = tmp_path / "run"
    args = [*TRAIN, "--steps", str(STEPS), "--out", str(run)]
    proc = start(args, cache_env, tmp_path, "stopped")
    wait_for(lambda: trained(run), proc, "first metrics record")
    proc.send_signal(signum)
    assert finish(proc) == 128 + signum == {signal.SIGINT: 130, signal.SIGTERM: 143}[signum]
    lines = (tmp_path / "stopped.err").read_text().splitlines()
    assert len(lines) == 1 and STOPPED.match(lines[0]), lines
    step = int(STOPPED.match(lines[0]).group(1))
    assert STOPPED.match(lines[0]).group(2) == signum.name and 10 <= step < STEPS
    assert step_dirs(run / C.DIRNAME) == [str(step)]                     # saved: the stopped step, committed
    assert C.read_meta(str(run))["step"] == step
    proc = start(args, cache_env, tmp_path, "resumed")                  # the same command
    assert finish(proc) == 0, (tmp_path / "resumed.err").read_text()
    assert step_dirs(run / C.DIRNAME) == [str(step), str(STEPS)]
    assert_same_tree(C.load_train_state(str(run))[0], unstopped)         # bit for bit
    print(f"{signum.name}: stopped at step {step}, resumed to {STEPS}: equal to the unstopped run")


@pytest.mark.system
def test_a_second_sigint_during_the_save_ends_at_once_and_keeps_the_last_committed_step(cache_env, tmp_path):
    run, marker = tmp_path / "run", tmp_path / "saving"
    proc = start(["-m", "tests.slow_save", str(marker), "train", "--quiet", *SMALL, "--checkpoint-every", "20",
                  "--steps", str(STEPS), "--out", str(run)], cache_env, tmp_path, "log")
    wait_for(lambda: (run / C.DIRNAME / "20").is_dir(), proc, "committed step 20")
    before = {p: p.read_bytes() for p in (run / C.DIRNAME / "20").rglob("*") if p.is_file()}
    proc.send_signal(signal.SIGINT)                                     # stop: save the current step ...
    wait_for(marker.exists, proc, "a save in progress")
    time.sleep(1.0)                                                     # (two signals at once count as one)
    t = time.perf_counter()
    proc.send_signal(signal.SIGINT)                                     # ... and again, during that save
    assert finish(proc) == 130
    seconds = time.perf_counter() - t
    lines = (tmp_path / "log.err").read_text().splitlines()
    assert lines == [f"ecdit: SIGINT again while stopping: ended at once, without saving; the last committed "
                     f"step, 20, is intact in {run / C.DIRNAME}: resume with the same command"], lines
    assert seconds < 10
    assert [d for d in step_dirs(run / C.DIRNAME) if d.isdigit()] == ["20"]   # the save never committed
    assert {p: p.read_bytes() for p in before} == before                  # step 20 byte for byte
    state, _, _, meta = C.load_train_state(str(run))                      # and it loads (fingerprints checked)
    assert meta["step"] == 20 and int(state["step"]) == 20


# ---------------------------------------------------------------------------------------------
# Two processes
# ---------------------------------------------------------------------------------------------

def two_processes(tmp_path, env, extra=()):
    port = free_port()
    run = tmp_path / "run"
    procs = [start([*TRAIN, "--steps", "100000", "--out", str(run), "--mesh", "data=2,expert=2",
                    "--distributed", f"127.0.0.1:{port},2,{i}", *extra], env, tmp_path, f"p{i}") for i in range(2)]
    return run, procs


def kill_all(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def two_device_env(cache_env, tmp_path_factory):
    """2 simulated devices per process, the heartbeat timeout at 5 s, a compilation cache."""
    return {**simulated_devices_env(2), D.ENV_HEARTBEAT: "5",
            "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax-cache-2")),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


@pytest.mark.system
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step_which_both_save(two_device_env, tmp_path):
    run, procs = two_processes(tmp_path, two_device_env)
    try:
        wait_for(lambda: trained(run), procs[0], "first metrics record")
        procs[1].send_signal(signal.SIGTERM)                            # the scheduler's notice, to one process
        codes = [finish(p) for p in procs]
    finally:
        kill_all(procs)
    errs = [(tmp_path / f"p{i}.err").read_text().splitlines() for i in range(2)]
    assert codes == [143, 143], (codes, errs)
    assert all(len(e) == 1 and STOPPED.match(e[0]) for e in errs), errs
    steps = {int(STOPPED.match(e[0]).group(1)) for e in errs}
    assert len(steps) == 1, errs                                        # the same step in both
    step = steps.pop()
    assert step_dirs(run / C.DIRNAME) == [str(step)]
    state_dir = run / C.DIRNAME / str(step) / "state"
    assert (state_dir / "ocdbt.process_0").is_dir() and (state_dir / "ocdbt.process_1").is_dir()  # both wrote
    state, _, _, meta = C.load_train_state(str(run))                    # and it reads back whole, here
    assert meta["step"] == step and int(state["step"]) == step
    print(f"SIGTERM to process 1: both stopped at step {step}")


@pytest.mark.system
def test_a_process_killed_without_warning_ends_the_other_within_the_bound_with_one_line(two_device_env, tmp_path):
    run, procs = two_processes(tmp_path, two_device_env, ["--checkpoint-every", "20"])
    try:
        wait_for(lambda: (run / C.DIRNAME / "20").is_dir(), procs[0], "committed step 20")
        procs[1].kill()                                                 # kill -9
        t = time.perf_counter()
        code = finish(procs[0], timeout_s=120)
        seconds = time.perf_counter() - t
    finally:
        kill_all(procs)
    lines = (tmp_path / "p0.err").read_text().splitlines()
    bound = int(two_device_env[D.ENV_HEARTBEAT]) + D.LOST_MARGIN_S
    assert code == -signal.SIGABRT and seconds <= bound, (code, seconds, lines)   # the shell shows 134
    committed = [d for d in step_dirs(run / C.DIRNAME) if d.isdigit()]
    assert len(lines) == 1, lines
    assert lines[0] == (f"ecdit: error: --distributed: process 1 of 2 stopped answering (no heartbeat for 5 s); this "
                        f"process (0) stopped too. The last committed step is {committed[-1]} "
                        f"({run / C.DIRNAME / committed[-1]}): resume with the same command once every process can "
                        "run"), lines
    assert C.read_meta(str(run))["step"] == int(committed[-1])           # nothing committed is lost
    C.load_train_state(str(run))
    print(f"process 1 killed: process 0 ended after {seconds:.1f} s (bound {bound} s)")
