"""Several processes, one program: `jax.distributed.initialize` and global arrays for the mesh.

On a cluster every host runs the same command; each is one JAX process with its own local
devices, and after `initialize` `jax.devices()` lists the devices of all of them (the global
devices), so `ecdit.systems.mesh.make_mesh` builds a mesh across hosts and the sharded step of
`mesh.sharded_train_step` runs on it unchanged: GSPMD inserts the same collectives, now across
processes (on CPU through gloo, on GPU through NCCL).

Which process is which comes from a flag or from the environment (as a cluster scheduler sets it):

    --distributed HOST:PORT,N,I                      the CLI spelling (`parse_flag`)
    ECDIT_COORDINATOR=HOST:PORT                      the same three, from the environment
    ECDIT_NUM_PROCESSES=N                            (`from_env`; all three or none)
    ECDIT_PROCESS_ID=I

HOST:PORT is the coordinator (process 0 listens on PORT; every process connects to it), N the
number of processes, I this process's index in [0, N). Neither given: one process, nothing to
initialize (`resolve` returns None).

Data: nothing is shipped between processes at the start. The batch of step i is a function of
(seed, i) only (`train.make_batch`), and the initial state a function of the seed, so every
process builds the whole batch and the whole state in NumPy and keeps the pieces its own devices
hold (`global_batch`, `global_state`: `jax.make_array_from_callback` with the mesh's shardings).
Unlike `jax.device_put` of a host array onto devices of other processes, this runs no collective
(device_put first checks, by an all-gather per array, that every process passed the same value).

`mesh.sharded_train_step` takes the state from `global_state` (already placed: kept as it is) but
the batch as NumPy: `train_step`'s contract reads the batch's values (every caption has a token),
which a global array does not allow in one process; the step then places the batch itself
(device_put, with the check above: a few small all-gathers per step). Everything else in it is
unchanged across processes.

Results: a sharded array cannot be read in one process (`np.asarray` refuses the pieces held
elsewhere); `gather` brings a whole tree back to NumPy in every process. It is a collective: every
process must call it, with the same tree. Replicated arrays (the step's metrics) read directly.

Errors name where the value came from: ValueError("--distributed: ...") for the flag,
ValueError("ECDIT_PROCESS_ID: ...") for a variable, on one line, so the CLI can print them as they are.

A lost process (docs/checkpoints.md, "Stopping, preemption and recovery"): every process sends
the coordination service a heartbeat; one silent for the heartbeat timeout (HEARTBEAT_TIMEOUT_S,
or ECDIT_HEARTBEAT_TIMEOUT seconds) is declared dead, and the service ends every other process
(from a C++ thread: abort(), exit status 134). `initialize` first starts the process's stderr
guard (`stderr_guard`), which turns that end's log records and stack trace into one line naming
the lost process and the last committed step. A collective that fails in Python first (the
peer's sockets closed) waits for that verdict (`await_lost_process`) instead of printing a
traceback.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from ecdit.systems import mesh as mesh_lib

FLAG = "--distributed"
ENV_COORDINATOR = "ECDIT_COORDINATOR"
ENV_NUM_PROCESSES = "ECDIT_NUM_PROCESSES"
ENV_PROCESS_ID = "ECDIT_PROCESS_ID"
ENV_VARS = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)
# Seconds a process waits for all the others to connect to the coordinator (jax's default is 300).
DEFAULT_TIMEOUT_S = 300
# Seconds without a heartbeat after which the coordination service declares a process dead and ends
# the others (jax's default is 100). Heartbeats come from a C++ thread of each process, not from
# Python or the training step, so only a process that is gone (or frozen, or cut off) stays silent
# this long; the survivors exit within about HEARTBEAT_TIMEOUT_S + LOST_MARGIN_S seconds
# (docs/checkpoints.md: measured). ECDIT_HEARTBEAT_TIMEOUT (seconds) changes it.
HEARTBEAT_TIMEOUT_S = 30
ENV_HEARTBEAT = "ECDIT_HEARTBEAT_TIMEOUT"
LOST_MARGIN_S = 10                                               # the service's check period, the abort, the line


@dataclass(frozen=True)
class DistributedConfig:
    """Where the coordinator listens ("host:port"), how many processes there are, and which one
    this is (0 <= process_id < num_processes). Built by `parse_flag` / `from_env`, which check it."""
    coordinator_address: str
    num_processes: int
    process_id: int

    def describe(self) -> str:
        """One line for logs: "process 0 of 2 (coordinator 10.0.0.1:1234)"."""
        return f"process {self.process_id} of {self.num_processes} (coordinator {self.coordinator_address})"


# ---------------------------------------------------------------------------------------------
# The flag and the environment
# ---------------------------------------------------------------------------------------------

def _address(text: str, name: str) -> str:
    """"host:port" (an IPv6 host in brackets: "[::1]:1234"), port in 1..65535."""
    text = text.strip()
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port or any(c.isspace() for c in text):
        raise ValueError(f"{name}: expected the coordinator as host:port (e.g. 10.0.0.1:1234), got {text!r}")
    if host.startswith("[") != host.endswith("]") or host in ("[]",):
        raise ValueError(f"{name}: bad host {host!r} in {text!r} (write an IPv6 host in brackets: [::1]:1234)")
    if ":" in host and not host.startswith("["):
        raise ValueError(f"{name}: bad host {host!r} in {text!r} (write an IPv6 host in brackets: [::1]:1234)")
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ValueError(f"{name}: the port must be an integer in 1..65535, got {port!r} in {text!r}")
    return f"{host}:{int(port)}"


def _integer(text: str, name: str, what: str, minimum: int) -> int:
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or int(text) < minimum:
        kind = "a positive integer" if minimum == 1 else "a non-negative integer"
        raise ValueError(f"{name}: {what} must be {kind}, got {text!r}")
    return int(text)


def _config(address: str, count: str, index: str, names: tuple[str, str, str]) -> DistributedConfig:
    """The checked config from its three texts; `names` say where each came from (for errors)."""
    address = _address(address, names[0])
    n = _integer(count, names[1], "the number of processes", 1)
    i = _integer(index, names[2], "the process id", 0)
    if i >= n:
        raise ValueError(f"{names[2]}: the process id must be in 0..{n - 1} for {n} process{'es' if n != 1 else ''}, "
                         f"got {i}")
    return DistributedConfig(address, n, i)


def parse_flag(text: str | None) -> DistributedConfig | None:
    """"10.0.0.1:1234,2,0" -> DistributedConfig("10.0.0.1:1234", 2, 0); "" or None -> None (one
    process). Spaces around items are ignored. ValueError "--distributed: ..." on anything else."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"{FLAG}: expected text like 'host:port,N,I', got {text!r}")
    if not text.strip():
        return None
    items = text.split(",")
    if len(items) != 3:
        raise ValueError(f"{FLAG}: expected host:port,N,I (the coordinator, the number of processes, "
                         f"this process's id; e.g. 10.0.0.1:1234,2,0), got {text!r}")
    return _config(*items, names=(FLAG,) * 3)


def from_env(environ=None) -> DistributedConfig | None:
    """The config of ECDIT_COORDINATOR (host:port), ECDIT_NUM_PROCESSES and ECDIT_PROCESS_ID;
    None when none of them is set (an empty value counts as unset). ValueError naming the
    variable ("ECDIT_PROCESS_ID: ...") when only some are set or one is malformed."""
    environ = os.environ if environ is None else environ
    values = {name: environ.get(name, "") for name in ENV_VARS}
    present = [name for name in ENV_VARS if values[name].strip()]
    if not present:
        return None
    missing = [name for name in ENV_VARS if name not in present]
    if missing:
        raise ValueError(f"{missing[0]}: not set, but {' and '.join(present)} {'is' if len(present) == 1 else 'are'}; "
                         f"set all of {', '.join(ENV_VARS)} or none")
    return _config(*(values[name] for name in ENV_VARS), names=ENV_VARS)


def resolve(flag: str | None = None, environ=None) -> DistributedConfig | None:
    """The flag when given (it wins over the environment), else the environment, else None."""
    cfg = parse_flag(flag)
    return cfg if cfg is not None else from_env(environ)


# ---------------------------------------------------------------------------------------------
# Start-up
# ---------------------------------------------------------------------------------------------

_started: DistributedConfig | None = None
_heartbeat_s: int = HEARTBEAT_TIMEOUT_S
_guard: subprocess.Popen | None = None


def heartbeat_timeout(environ=None) -> int:
    """ECDIT_HEARTBEAT_TIMEOUT (a positive whole number of seconds), else HEARTBEAT_TIMEOUT_S;
    ValueError naming the variable when it is malformed."""
    environ = os.environ if environ is None else environ
    text = environ.get(ENV_HEARTBEAT, "").strip()
    return _integer(text, ENV_HEARTBEAT, "the heartbeat timeout in seconds", 1) if text else HEARTBEAT_TIMEOUT_S


def _start_guard(cfg: DistributedConfig, heartbeat_s: int, checkpoint_dir: str | None) -> None:
    """Start the stderr guard and point file descriptor 2 at it (see `stderr_guard`). It inherits
    SIGINT, SIGTERM and SIGHUP ignored (set around the start: a disposition of SIG_IGN survives
    exec), so a signal to every process of a job cannot end it before the process it guards."""
    global _guard
    # Run by its file (it imports only the standard library), so it starts whatever sys.path the
    # process has; -P keeps its own folder (this package's modules) off its sys.path.
    args = [sys.executable, "-P", os.path.join(os.path.dirname(os.path.abspath(__file__)), "stderr_guard.py"),
            "--process-id", str(cfg.process_id), "--processes", str(cfg.num_processes), "--heartbeat", str(heartbeat_s)]
    if checkpoint_dir:
        args += ["--checkpoint-dir", os.path.abspath(checkpoint_dir)]
    quiet = threading.current_thread() is threading.main_thread()
    ignored = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if quiet else ()
    saved = {s: signal.signal(s, signal.SIG_IGN) for s in ignored}
    try:
        _guard = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=2, start_new_session=True)
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    sys.stderr.flush()
    os.dup2(_guard.stdin.fileno(), 2)


# Words of a failed collective whose peer is gone (gloo: "Gloo all-reduce failed: ... Read error
# ...: Connection reset by peer"; NCCL and the coordination service's RPCs alike).
PEER_GONE = ("Gloo", "NCCL", "onnection", "peer", "Socket closed", "UNAVAILABLE", "DEADLINE_EXCEEDED", "arrier")


def await_lost_process(err: BaseException) -> None:
    """After `err` in a run of several processes: when it reads like a collective whose peer is
    gone (PEER_GONE), the coordination service will end this process within the heartbeat timeout
    (its stderr guard then prints the line): wait for that, at most the heartbeat timeout plus
    LOST_MARGIN_S, and return if this process is still alive then (the caller re-raises). Any
    other error (out of memory, say) returns at once."""
    if jax.process_count() > 1 and any(word in str(err) for word in PEER_GONE):
        time.sleep(_heartbeat_s + LOST_MARGIN_S)


def initialize(cfg: DistributedConfig | None, *, timeout_s: int = DEFAULT_TIMEOUT_S,
               heartbeat_s: int | None = None, checkpoint_dir: str | None = None) -> tuple[int, int, int]:
    """Join the cluster `cfg` describes: (process_index, process_count, global device count).

    Must run before JAX computes anything (the backends read the cluster when they start);
    blocks until all num_processes processes have connected to the coordinator. One that is still
    missing after about `timeout_s` makes XLA abort this process (SIGABRT, exit code 134, with
    "DEADLINE_EXCEEDED ... RegisterTask" on stderr): no Python exception, so a launcher should
    start every process within the timeout and treat 134 as "the cluster never formed".
    `heartbeat_s` (None: `heartbeat_timeout()`, from ECDIT_HEARTBEAT_TIMEOUT or 30 s) is the
    coordination service's heartbeat timeout: a process silent that long is declared dead and
    the others end (exit status 134) with one line from their stderr guard, started here first,
    naming it and the newest committed step of `checkpoint_dir`.
    The CPU backend's cross-process collectives are set to gloo first (they would be "none" on
    older jax, and a sharded step across processes would fail to run); this does not touch GPU
    or TPU collectives. Calling it again with the same cfg returns the same numbers (a second
    `jax.distributed.initialize` would raise); with another cfg, RuntimeError. cfg None: one
    process, nothing to do."""
    global _started
    if cfg is None:
        return jax.process_index(), jax.process_count(), jax.device_count()
    if not isinstance(cfg, DistributedConfig):
        raise ValueError(f"{FLAG}: expected a DistributedConfig from parse_flag or from_env, got {cfg!r}")
    if _started is not None or jax.distributed.is_initialized():
        if _started is not None and _started != cfg:
            raise RuntimeError(f"{FLAG}: already initialized as {_started.describe()}; cannot become {cfg.describe()}")
        if _started is None:                                     # someone called jax.distributed.initialize
            if (jax.process_count(), jax.process_index()) != (cfg.num_processes, cfg.process_id):
                raise RuntimeError(f"{FLAG}: JAX is already initialized as process {jax.process_index()} of "
                                   f"{jax.process_count()}; cannot become {cfg.describe()}")
            _started = cfg
        return jax.process_index(), jax.process_count(), jax.device_count()
    global _heartbeat_s
    _heartbeat_s = heartbeat_timeout() if heartbeat_s is None else positive_seconds(heartbeat_s)
    if jax.config.jax_cpu_collectives_implementation in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    _start_guard(cfg, _heartbeat_s, checkpoint_dir)
    try:
        jax.distributed.initialize(coordinator_address=cfg.coordinator_address, num_processes=cfg.num_processes,
                                   process_id=cfg.process_id, initialization_timeout=int(timeout_s),
                                   heartbeat_timeout_seconds=_heartbeat_s)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RuntimeError(f"{FLAG}: {cfg.describe()} could not join the cluster: {first}") from err
    _started = cfg
    return jax.process_index(), jax.process_count(), jax.device_count()


def positive_seconds(value) -> int:
    """`value` as a positive whole number of seconds; ValueError naming heartbeat_s otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"heartbeat_s: expected a positive whole number of seconds, got {value!r}")
    return int(value)


def is_main_process() -> bool:
    """True in process 0 (the one that writes logs and checkpoints), and in a one-process run."""
    return jax.process_index() == 0


def check_cluster_mesh(axes: dict[str, int]) -> dict[str, int]:
    """With several processes, the mesh must use every global device (a process left out would
    hold nothing, yet run every step's collectives); returns `axes`. ValueError "--distributed: ..."
    otherwise. One process: no check (mesh.check_mesh allows a mesh on fewer devices)."""
    count, devices = jax.process_count(), jax.device_count()
    if count > 1 and mesh_lib.num_mesh_devices(axes) != devices:
        spelled = mesh_lib.format_mesh(axes) or "no --mesh (one device)"
        raise ValueError(f"{FLAG}: {count} processes have {devices} devices together, but {spelled} uses "
                         f"{mesh_lib.num_mesh_devices(axes)}; give a --mesh over all {devices} (e.g. data={devices})")
    return axes


def from_main(value):
    """Process 0's `value` (a NumPy scalar or array of the same shape everywhere) in every process,
    so that all take the same decision (stop at a deadline, resume from a step). A collective when
    there are several processes; `value` itself when there is one."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(value)))


# ---------------------------------------------------------------------------------------------
# Global arrays from NumPy, and back
# ---------------------------------------------------------------------------------------------

def global_array(value, sharding: NamedSharding) -> jax.Array:
    """`value` (the whole array, the same in every process) as one array over the sharding's mesh,
    each process filling only its own devices' pieces. An array already placed so is kept."""
    if isinstance(value, jax.Array) and value.sharding == sharding and value.committed:
        return value
    host = np.asarray(value)                                     # a one-device jax array: fetched once
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def global_batch(batch: dict, mesh: jax.sharding.Mesh) -> dict:
    """The batch (NumPy, the whole global batch, built identically in every process) as global
    arrays split as `mesh.batch_shardings` says (over both axes, or `data`); None entries stay None."""
    shardings = mesh_lib.batch_shardings(batch, mesh)
    return {k: None if v is None else global_array(v, shardings[k]) for k, v in batch.items()}


def global_state(state: dict, mesh: jax.sharding.Mesh) -> dict:
    """The train state (NumPy or one-device arrays, the same in every process: `init_state` of
    one seed, or a checkpoint) as global arrays placed by `mesh.state_shardings`."""
    return jax.tree.map(global_array, state, mesh_lib.state_shardings(state, mesh))


def _replicate(tree):
    return tree


_replicated_copy = {}


def gather(tree):
    """A tree of jax arrays (sharded over any processes) as NumPy in every process. Arrays this
    process holds entirely (fully addressable, or fully replicated) are read directly; the rest
    are copied to every device by one jit with replicated out_shardings (an all-gather).
    A collective: every process must call it with the same tree, in the same order."""
    leaves, treedef = jax.tree.flatten(tree)
    far = [i for i, x in enumerate(leaves)
           if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated]
    out = [np.asarray(x) if i not in far else None for i, x in enumerate(leaves)]
    other = [i for i in far if not isinstance(leaves[i].sharding, NamedSharding)]
    if other:                                                    # not on a mesh: jax's own gather
        from jax.experimental import multihost_utils
        for i in other:
            out[i] = np.asarray(multihost_utils.process_allgather(leaves[i], tiled=True))
        far = [i for i in far if i not in other]
    if far:
        arrays = [leaves[i] for i in far]
        shardings = tuple(NamedSharding(x.sharding.mesh, P()) for x in arrays)
        key = (shardings, tuple((x.shape, x.dtype) for x in arrays))
        if key not in _replicated_copy:                          # one compilation per tree of shapes
            _replicated_copy[key] = jax.jit(_replicate, out_shardings=shardings)
        for i, x in zip(far, _replicated_copy[key](tuple(arrays))):
            out[i] = np.asarray(x.addressable_data(0))
    return jax.tree.unflatten(treedef, out)
