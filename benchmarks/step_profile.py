"""Where a train step's time goes, by XLA op kind: the step run under `jax.profiler.trace` and the
trace's per-op events (XLA:CPU's thunks) summed by kind.

Op names in the compiled program are `<kind>.<n>` (`dot.410`, `ynn_fusion.215`,
`copy_bitcast_fusion.3`, ...): the kind is the name without its number. The table says how many
ops of each kind one step runs and their summed time per step; the sum over kinds against the
step's wall time shows how much of the step is inside ops at all (the rest is dispatch between
them and the host side of the call).
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import re
import shutil
import tempfile
import time

import jax

# Events of the trace that are not ops of the compiled program (Python frames, the executor itself)
_NOT_OPS = ("$", "ThunkExecutor", "PjitFunction", "CommonPjRt", "SlinkyThreadPool", "ParseArguments",
            "AllocateOutputBuffers", "DevicePut")


def op_kind(name: str) -> str:
    """'ynn_fusion.215' -> 'ynn_fusion'; 'dot' -> 'dot'."""
    return re.sub(r"(\.\d+)+$", "", name)


def profile_call(call, repeats: int = 10, top: int = 40) -> dict | None:
    """Run `call` (already compiled) `repeats` times under the profiler; per step: wall seconds,
    number of op events, summed op seconds, and the `top` op kinds by time
    [{kind, ops, seconds}]. None where the profiler wrote no trace (a backend without one)."""
    call()
    tmp = tempfile.mkdtemp(prefix="ecdit-profile-")
    try:
        t0 = time.perf_counter()
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(repeats):
                call()
            wall = (time.perf_counter() - t0) / repeats
        found = glob.glob(f"{tmp}/**/*.trace.json.gz", recursive=True)
        if not found:
            return None
        with gzip.open(found[0]) as f:
            events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ops = [e for e in events if not e["name"].startswith(_NOT_OPS)]
    time_by, count_by = collections.defaultdict(float), collections.Counter()
    for e in ops:
        k = op_kind(e["name"])
        time_by[k] += e["dur"] * 1e-6 / repeats
        count_by[k] += 1
    kinds = sorted(time_by, key=lambda k: -time_by[k])
    return {"wall_s": wall, "ops_per_step": len(ops) / repeats,
            "op_seconds": sum(e["dur"] for e in ops) * 1e-6 / repeats,
            "kinds": [{"kind": k, "ops": count_by[k] / repeats, "seconds": time_by[k]} for k in kinds[:top]]}
