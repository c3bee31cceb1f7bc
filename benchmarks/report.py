"""The benchmark report: one sweep, timed on this machine, written as docs/benchmarks.md + plots.

    python -m ecdit.benchmarks             # quick sweep (a few minutes on a 2-core CPU)
    python -m ecdit.benchmarks --full      # every size of the issue (longer)
    python -m ecdit.benchmarks --smoke     # tiny sizes, seconds: proves the code path (the test suite)

`run_report(full=False, out_dir="docs", smoke=False) -> path` is the entry point (`ecdit bench`
runs it through `python -m ecdit.benchmarks`). It writes <out_dir>/benchmarks.md and
<out_dir>/benchmarks/*.png; `report_from_json` redraws both from an earlier run's --json dump.

What it measures (every ratio is the median over rounds of a ratio taken within one round, the
variants of a cell timed back to back in rotating order; see benchmarks/timing.py):
  A  S x D grid: time against tokens per group S for EC (gather/scatter), the one-hot
     Algorithm 1, token-choice top-2 and the FLOP-equal dense FFN; forward and forward+backward
  B  E x f_c sweep: EC / dense against E, and EC time at E relative to E = 8 (all E of one
     (S, D, f_c) timed in the same interleaved rounds)
  C  XLA's compiled memory analysis of each variant against S and E (compile only)
  D  where the EC layer's time goes: each stage of Eq. 5-8 timed alone
  E  the NumPy reference against JAX
  F  the DiT block;  G  the train step and the sampler of the whole model
  H  the allocator (GLIBC_TUNABLES) in fresh processes
and the matmul peak (best square float32 matmul, JAX and NumPy) at the start and the end.

The parts, one job each:
  plans.py     what to measure: the smoke, quick and full plans, and the names of the variants
  sweep.py     running a plan and collecting the samples; the --json dump and its reading back
  derived.py   numbers derived from the samples (ratios, GFLOP/s, flatness, memory growth)
  targets.py   each target of the issue as one function: measured numbers in, met/missed and text out
  plots.py     one function per plot
  markdown.py  the table helper and the page, section by section
"""
from __future__ import annotations

from pathlib import Path

import jax

from . import machine, markdown, plots, targets
from .plans import make_plan
from .sweep import Log, dump_results, load_results, measure


def _command(full: bool, smoke: bool) -> str:
    return "python -m ecdit.benchmarks" + (" --full" if full else "") + (" --smoke" if smoke else "")


def run_report(full: bool = False, out_dir="docs", smoke: bool = False, *, progress: bool = True,
               json_path=None, command: str | None = None) -> str:
    """Run the sweep (`smoke`: tiny sizes, seconds; default: quick, minutes; `full`: every size)
    and write <out_dir>/benchmarks.md with plots in <out_dir>/benchmarks/. Returns the .md path.
    `json_path`: also dump every raw sample there."""
    log = Log(progress)
    plan = make_plan("smoke" if smoke else ("full" if full else "quick"), jax.default_backend())
    results = measure(plan, log)
    results["command"] = command or _command(full, smoke)
    if json_path:
        dump_results(results, json_path)
    out, met = write_report(results, out_dir)
    log(f"wrote {out} ({results['duration_s'] / 60:.1f} min)")
    for t in met:
        log(f"  {'MET   ' if t.met else 'MISSED'} {t.target}: {t.measured}")
    return out


def write_report(results: dict, out_dir="docs") -> tuple[str, list[targets.TargetResult]]:
    """Targets, plots and markdown from measured results (a run's, or a --json dump's).
    Returns the markdown's path and the evaluated targets."""
    plan = make_plan(results["plan"], results["info"]["backend"])
    out_dir = Path(out_dir)
    out_md = out_dir / "benchmarks.md"
    evaluated = targets.evaluate(results)
    info = results["info"]
    paths = plots.make_plots(results, out_dir / "benchmarks",
                             f"ecdit benchmarks ({plan.name}), {machine.describe(info)}, {info['date']}")
    out_dir.mkdir(parents=True, exist_ok=True)
    out_md.write_text(markdown.render(results, plan, evaluated, paths, out_md,
                                      results.get("command", "python -m ecdit.benchmarks")))
    return str(out_md), evaluated


def report_from_json(json_path, out_dir="docs") -> str:
    """Re-draw the report of an earlier run from its --json dump, without measuring again."""
    results = load_results(json_path)
    results["redrawn"] = True
    return write_report(results, out_dir)[0]
