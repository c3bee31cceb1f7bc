"""One EC-vs-dense measurement in a fresh process, for settings that only act at process start
(GLIBC_TUNABLES: the allocator reads them once). The report runs it under several environments
and compares; it prints one JSON line.

    python -m ecdit.benchmarks.probe --S 1024 --D 512 --E 8 --fc 2 --G 8 --rounds 5
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import timing
from . import workloads as W
from .plans import DENSE, EC, key


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ecdit.benchmarks.probe")
    for name, kind, default in (("S", int, 1024), ("D", int, 512), ("E", int, 8), ("fc", float, 2.0),
                                ("G", int, 8), ("rounds", int, 5)):
        p.add_argument(f"--{name}", type=kind, default=default)
    a = p.parse_args(argv)
    case = W.Case(S=a.S, D=a.D, E=a.E, fc=a.fc, G=a.G)
    arrays = W.make_arrays(case)
    calls = {key(kind, mode): W.make_call(kind, "acc", mode, case, arrays)
             for mode in ("jit", "fwd") for kind in (EC, DENSE)}
    samples = timing.time_interleaved(calls, a.rounds)
    out = {"glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), "case": case.label,
           "median_s": {k: timing.median(v) for k, v in samples.items()},
           "ratio_fwd": timing.median_ratio(samples[key(EC, "fwd")], samples[key(DENSE, "fwd")]),
           "ratio_jit": timing.median_ratio(samples[key(EC, "jit")], samples[key(DENSE, "jit")])}
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
