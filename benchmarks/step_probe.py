"""One training-step measurement in a fresh process, for settings that act only at process start
(XLA_FLAGS: read once, when JAX creates its backend; the number of simulated CPU devices). The
report runs it under several environments (section K) and compares; it prints one JSON line.

    python -m ecdit.benchmarks.step_probe --size tiny --batch 16 --rounds 5 [--mesh data=2]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ecdit.benchmarks.step_probe")
    p.add_argument("--size", default="tiny")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps-per-round", type=int, default=10)
    p.add_argument("--mesh", default="", help="data=N: shard the batch over N devices (systems.mesh)")
    a = p.parse_args(argv)

    import jax

    from . import workloads as W
    from ecdit.systems import mesh as M
    from ecdit.systems import train as T
    from ecdit.core.params import init_model
    from ecdit.systems.optim import init_state

    case = W.StepCase(a.size, a.batch)
    cfg, tcfg = case.configs()
    state = init_state(init_model(cfg, 0), tcfg)
    batch = T.make_batch(0, 0, cfg, tcfg)
    if a.mesh:
        axes = M.check_mesh(M.parse_mesh(a.mesh), cfg, tcfg)
        mesh = M.make_mesh(axes)
        state = M.shard_state(state, mesh)
        batch = M.shard_batch(batch, mesh)
        step = M.sharded_train_step(mesh, cfg, tcfg, T.train_step)

        def run():
            return jax.block_until_ready(step(state, batch))
    else:
        def run():
            return jax.block_until_ready(T.run_step(state, batch, cfg, tcfg))
    run()
    run()
    per_step = []
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        for _ in range(a.steps_per_round):
            run()
        per_step.append((time.perf_counter() - t0) / a.steps_per_round)
    per_step.sort()
    out = {"xla_flags": os.environ.get("XLA_FLAGS", ""), "devices": len(jax.devices()), "mesh": a.mesh or "1 device",
           "label": case.label, "median_s": per_step[len(per_step) // 2], "samples": per_step}
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
