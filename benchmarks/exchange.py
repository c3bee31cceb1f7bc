"""The expert-parallel exchange of the EC layer on simulated devices: bytes and a sanity timing.

    python -m ecdit.benchmarks.exchange [--data 2 --expert 4] [--json]

For one tiny layer on a ("data", "expert") mesh of simulated CPU devices it compares the
single-device `accelerated.routing.expert_choice_moe` with the two sharded versions of
`accelerated.expert_parallel`: `expert_choice_moe_sharded` (shard_map + one all_to_all each way)
and `expert_choice_moe_gspmd` (sharding constraints, XLA's partitioner picks the collectives).
Per variant: the exchange's bytes per device by formula (`exchange_bytes`), the bytes of every
collective in the compiled forward program and in the forward + backward (training step)
program (`collective_bytes` on the HLO text), and the median forward time.

The timings are a sanity check only: the "devices" are threads of one 2-core CPU, so the
collectives are memory copies and the sharded programs pay their overhead without any extra
compute. The bytes are the measurement; they do not depend on the machine.

The device count is fixed when JAX first uses a device. Run as `python -m ecdit.benchmarks.exchange`
(the __main__ block asks for the devices before any is used, and re-runs itself in a fresh
process if it is too late); from a process that already has its devices, call
`measure_exchange_in_subprocess`, which runs this module with
XLA_FLAGS=--xla_force_host_platform_device_count=N and reads its --json output.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from ecdit.accelerated import expert_parallel as ep
from ecdit.accelerated import routing
from . import timing
from .markdown import exchange_table as markdown_table  # noqa: F401  (the table lives with the report)

# A tiny layer: G groups of S tokens, width D, E experts of hidden F, capacity factor f_c.
TINY = dict(groups=16, tokens=64, width=32, experts=8, hidden=64, capacity_factor=2.0)
VARIANTS = ("single_device", "shard_map", "gspmd")


def _layer(groups, tokens, width, experts, hidden, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((groups, tokens, width)).astype(np.float32),
            (rng.standard_normal((width, experts)) / np.sqrt(width)).astype(np.float32),
            (rng.standard_normal((experts, width, hidden)) / np.sqrt(width)).astype(np.float32),
            (rng.standard_normal((experts, hidden, width)) / np.sqrt(hidden)).astype(np.float32))


def measure_exchange(data: int = 2, expert: int = 4, rounds: int = 15, **shape) -> list[dict]:
    """One dict per variant (single_device, shard_map, gspmd) with: bytes_formula (the exchange
    per device per forward pass, 0 on one device), step_bytes_formula (forward + backward),
    forward_hlo / step_hlo ({collective kind: bytes per device} of the compiled programs),
    all_to_all_hlo (forward all-to-all bytes), median_ms (forward), ratio (median per-round time
    over the single-device layer's). Needs data * expert devices in this process."""
    s = {**TINY, **shape}
    devices = data * expert
    if jax.device_count() < devices:
        raise RuntimeError(f"measure_exchange: needs {devices} devices, this process has {jax.device_count()}; "
                           "use measure_exchange_in_subprocess or run python -m ecdit.benchmarks.exchange")
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:devices]).reshape(data, expert), ep.GROUPS)
    cf = s["capacity_factor"]
    args = _layer(s["groups"], s["tokens"], s["width"], s["experts"], s["hidden"])
    capacity = routing.expert_capacity(s["tokens"], s["experts"], cf)
    formula = ep.exchange_bytes(s["groups"], s["experts"], capacity, s["width"], expert, data_axis_size=data)
    target = jnp.ones((s["groups"], s["tokens"], s["width"]), jnp.float32)

    single = jax.device_put(args, jax.devices()[0])
    sharded = ep.shard_layer_inputs(*args, mesh)
    layers = {"single_device": (lambda *a: routing.expert_choice_moe.jitted(*a, cf), single),
              "shard_map": (lambda *a: ep.expert_choice_moe_sharded.jitted(*a, capacity_factor=cf, mesh=mesh), sharded),
              "gspmd": (lambda *a: ep.expert_choice_moe_gspmd.jitted(*a, capacity_factor=cf, mesh=mesh), sharded)}
    rows, calls = [], {}
    for name, (fn, inputs) in layers.items():
        forward = jax.jit(fn)
        step = jax.jit(jax.grad(lambda *a, fn=fn: jnp.sum(fn(*a)[0] * target), argnums=(0, 1, 2, 3)))
        fwd_hlo = ep.collective_bytes(forward.lower(*inputs).compile().as_text(), devices)
        step_hlo = ep.collective_bytes(step.lower(*inputs).compile().as_text(), devices)
        calls[name] = (lambda forward=forward, inputs=inputs: timing.block(forward(*inputs)))
        rows.append({"variant": name, "mesh": {"data": data, "expert": expert}, "shape": s, "capacity": capacity,
                     "bytes_formula": 0 if name == "single_device" else formula,
                     "step_bytes_formula": 0 if name == "single_device" else 2 * formula,
                     "all_to_all_hlo": fwd_hlo.get("all-to-all", 0),
                     "forward_hlo": fwd_hlo, "step_hlo": step_hlo})
    samples = timing.time_interleaved(calls, rounds)
    for row in rows:
        row["median_ms"] = 1e3 * timing.median(samples[row["variant"]])
        row["ratio"] = timing.median_ratio(samples[row["variant"]], samples["single_device"])
    return rows


def measure_exchange_in_subprocess(data: int = 2, expert: int = 4, rounds: int = 15, timeout: float = 600,
                                   **shape) -> list[dict]:
    """`measure_exchange` in a fresh Python with data * expert simulated CPU devices (for a caller
    such as the benchmark report, whose own process has already fixed its device count)."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={data * expert}",
           "JAX_PLATFORMS": "cpu"}
    argv = [sys.executable, "-m", "ecdit.benchmarks.exchange", "--json", "--data", str(data), "--expert",
            str(expert), "--rounds", str(rounds), "--shape", json.dumps(shape)]
    run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=True)
    return json.loads(run.stdout)


def main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m ecdit.benchmarks.exchange", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=int, default=2)
    p.add_argument("--expert", type=int, default=4)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--shape", default="{}", help="JSON dict overriding the tiny layer's " + ", ".join(TINY))
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    a = p.parse_args(argv)
    shape = json.loads(a.shape)
    if jax.device_count() < a.data * a.expert:                   # too late to ask for devices here
        rows = measure_exchange_in_subprocess(a.data, a.expert, a.rounds, **shape)
    else:
        rows = measure_exchange(a.data, a.expert, a.rounds, **shape)
    print(json.dumps(rows) if a.json else markdown_table(rows))
    return 0


if __name__ == "__main__":
    # Ask for the devices before JAX first uses one (importing jax does not): the flag, and the
    # config option that newer JAX reads instead.
    _devices = max(8, int(os.environ.get("ECDIT_EXCHANGE_DEVICES", "8")))
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={_devices}").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    try:
        jax.config.update("jax_num_cpu_devices", _devices)
    except Exception:                                            # an older JAX, or devices already in use
        pass
    jax.config.update("jax_default_matmul_precision", "float32")
    sys.exit(main())
