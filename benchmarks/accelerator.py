"""One prepared command for an accelerator: prove the twin equal to the specification on the
device, then measure the paper's efficiency claims there, and write one report.

    python -m ecdit.benchmarks.accelerator [--smoke] [--out DIR] [--budget-minutes M]
    ecdit bench --accelerator [--smoke] [--out DIR]                       (the same)

On JAX's default backend, in this order (each section's figures are written as soon as it ends,
so a run stopped early still leaves a report):
  1. equivalence  the property tests comparing every twin module with the spec, in pytest
                  subprocesses on the device, pass / fail per module (benchmarks/equivalence.py)
  2. device       the device, its memory, JAX / jaxlib / CUDA versions; square matmul peaks in
                  bfloat16 and float32 (default and highest precision) and STREAM bandwidth, each
                  beside the vendor's figure (benchmarks/devices.py)
  3. overhead     the guided sampler of EC-DiT against its dense model at the XL preset's full
                  depth (the paper's Fig. 4), measured against theoretical overhead
  4. layers       the EC layer against the FLOP-equal dense FFN, the one-hot Algorithm 1 and token
                  choice at the paper's widths (D = 1152, 2048), E = 8 ... 64, f_c = 2, in bfloat16
                  and float32: forward at the inference group, forward + backward at the training
                  group; achieved TFLOP/s against the measured peak of the same dtype
  5. train        the train step of XL-8E (or the largest candidate that fits) as model FLOPs
                  utilisation
and writes DIR/benchmarks-<device>.md and .json (default DIR docs/), prints a one-screen summary,
and exits 1 if an equivalence check failed (or did not finish) or a section raised, else 0.

Time: a budget (default 7 minutes, compilation included) is shared by the sections: the layer
grid runs in two passes, the first until 150 s before the budget ends (the train step's reserve),
the second after the train step until the end; the sampler and the train step start only with
enough time left. What was skipped says so.

On a CPU (or with --smoke) every section runs at tiny sizes in well under a minute: the
rehearsal that keeps this command working between accelerator runs (tests/test_accelerator.py).
Its report is named benchmarks-cpu-smoke.md and says it measures nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import gc
import json
import math
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from ecdit.core.params import init_model

from . import accelerator_report, devices, equivalence
from .accelerator_report import SECTIONS
from . import workloads as W
from .plans import DENSE, EC, ONEHOT, TC, key

# Sizes of the device run ---------------------------------------------------------------------
PAPER_WIDTHS = (1152, 2048)          # D of the XL preset and of a 2048-wide model (Table 1 spans 1152-3072)
PAPER_EXPERTS = (8, 16, 32, 64)      # E of Table 1's columns
PAPER_FC = 2.0                       # f_c in training and inference (Sec. 3.1)
LAYER_TOKENS = 16384                 # tokens per layer call: 64 XL images of 256 tokens
SAMPLER_TOKENS = 16384               # tokens per sampler forward (CFG doubles the batch): keeps a GPU busy
SAMPLER_STEPS = 8                    # Euler steps per timed sampler call (overhead does not depend on it)
# Train-step candidates, largest first: (preset, batch); each batch a multiple of 8, so that the
# 128 kept tokens of an XL image fill the 1,024-token training groups
TRAIN_CANDIDATES = (("XL-8E", 64), ("XL-8E", 32), ("XL-8E", 16), ("XL-8E", 8), ("small", 64), ("small", 16))
# Activations of a train step, in float32 values per kept token, layer and unit of width: XLA's
# compiled memory analysis of the XL-8E step at batch 8 on CPU gave 77 MB of temporaries per image,
# 4.7 values per token x layer x D; 16 leaves room for a backend that keeps more.
ACTIVATION_VALUES = 16
MEMORY_SHARE = 0.8                   # share of device memory a chosen size may plan to use


def choose_sampler_batch(memory_bytes: int | None, size: str = "XL", target_tokens: int = SAMPLER_TOKENS,
                         share: float = 0.6) -> int | None:
    """Images per sampler call: enough that one forward (CFG doubles the batch) holds
    `target_tokens`, halved until both models' parameters and their activations (64 float32 values
    per token and unit of width, a generous bound) fit in `share` of the device's memory.
    None when even one image does not fit; unknown memory (None) takes the target."""
    from ecdit.core import params as P
    ec, dn = W.model_config(size, "expert_choice"), W.model_config(size, "dense")
    weights = 4 * sum(P.count_params(c)["total"] + P.count_params(c)["text_encoder"] for c in (ec, dn))
    batch = max(1, math.ceil(target_tokens / (2 * ec.num_tokens)))
    if memory_bytes is None:
        return batch
    while batch >= 1:
        acts = 64 * 4 * 2 * batch * ec.num_tokens * ec.width
        if weights + acts <= share * memory_bytes:
            return batch
        batch //= 2
    return None


def train_memory_estimate(size: str, batch: int) -> float:
    """Bytes one donated train step of preset `size` at `batch` needs: parameters, optimiser state
    (two slots for RMSProp with momentum and for AdamW) and EMA, one set of gradients, and
    ACTIVATION_VALUES float32 values per kept token, layer and unit of width."""
    from ecdit.core import params as P
    cfg, tcfg = W.StepCase(size, batch).configs()
    counts = P.count_params(cfg)
    n = counts["total"] + counts["text_encoder"]
    state = 4 * n * (1 + 2 + (1 if tcfg.ema_decay > 0 else 0))
    acts = ACTIVATION_VALUES * 4 * batch * tcfg.kept_tokens(cfg.num_tokens) * cfg.depth * cfg.width
    return float(state + 4 * n + acts)


def choose_train_candidates(memory_bytes: int | None, candidates=TRAIN_CANDIDATES) -> list[tuple[str, int]]:
    """The candidates whose estimate fits MEMORY_SHARE of the device, largest first (all when the
    memory is unknown); the run compiles the first and falls back to the next if XLA's memory
    analysis says it does not fit."""
    if memory_bytes is None:
        return list(candidates)
    return [c for c in candidates if train_memory_estimate(*c) <= MEMORY_SHARE * memory_bytes]


@dataclass(frozen=True)
class DevicePlan:
    """Every size of one run. 'smoke': the CPU rehearsal; 'device': the paper's shapes."""
    name: str
    budget_s: float
    equivalence_modules: tuple | None        # None: every module of equivalence.EQUIVALENCE_TESTS
    equivalence_examples: int
    equivalence_workers: int
    equivalence_limit_s: float
    peak_sizes: tuple
    peak_repeats: int
    bandwidth_floats: int
    layer_D: tuple
    layer_E: tuple
    layer_S: int                             # tokens per routing group, forward (inference group)
    layer_S_train: int                       # tokens per routing group, forward + backward (training group)
    layer_tokens: int
    layer_dtypes: tuple
    layer_rounds: int
    train_reserve_s: float                   # the grid's first pass stops this long before the budget ends
    overhead: W.OverheadCase | None
    overhead_rounds: int
    overhead_min_s: float                    # start the sampler only with this much budget left
    train: tuple                             # (preset, batch) candidates, largest first
    train_rounds: int
    train_min_s: float
    device_init: bool                        # parameters drawn on the device (W.device_params)
    fast_compile: bool = False               # smoke: XLA optimisations off (nothing is timed for real)
    notes: tuple = field(default_factory=tuple)


def make_plan(name: str, memory_bytes: int | None = None, cores: int = 1, backend: str = "gpu",
              budget_s: float = 420.0) -> DevicePlan:
    """'smoke' (tiny sizes, seconds) or 'device' (the paper's shapes, sized to `memory_bytes`)."""
    if name == "smoke":
        return DevicePlan(
            name="smoke", budget_s=budget_s, equivalence_modules=("primitives",), equivalence_examples=1,
            equivalence_workers=1, equivalence_limit_s=120.0, peak_sizes=(64, 128), peak_repeats=1,
            bandwidth_floats=1 << 16, layer_D=(16,), layer_E=(8,), layer_S=32, layer_S_train=32, layer_tokens=64,
            layer_dtypes=("bfloat16", "float32"), layer_rounds=1, train_reserve_s=0.0,
            overhead=W.OverheadCase("micro", 2, 2), overhead_rounds=1, overhead_min_s=0.0,
            train=(("micro", 4),), train_rounds=1, train_min_s=0.0, device_init=True, fast_compile=True,
            notes=("smoke sizes: every section at tiny shapes with XLA's optimisations off; the times "
                   "measure nothing and only prove that the command runs",))
    if name != "device":
        raise ValueError(f"plan: expected 'smoke' or 'device', got {name!r}")
    from ecdit.core.config import preset
    xl = preset("XL")
    notes = []
    batch = choose_sampler_batch(memory_bytes)
    if batch is None:
        notes.append("the XL sampler does not fit this device's memory: section skipped")
    train = tuple(choose_train_candidates(memory_bytes))
    if not train:
        notes.append("no train-step candidate fits this device's memory: section skipped")
    workers = 1 if backend == "tpu" else max(1, min(6, cores // 3))  # a TPU is one process's at a time
    return DevicePlan(
        name="device", budget_s=budget_s, equivalence_modules=None, equivalence_examples=4,
        equivalence_workers=workers, equivalence_limit_s=min(210.0, 0.4 * budget_s),
        peak_sizes=(4096, 8192), peak_repeats=10, bandwidth_floats=1 << 28,
        layer_D=PAPER_WIDTHS, layer_E=PAPER_EXPERTS, layer_S=xl.inference_group_size,
        layer_S_train=xl.train_group_size, layer_tokens=LAYER_TOKENS, layer_dtypes=("bfloat16", "float32"),
        layer_rounds=5, train_reserve_s=150.0 if train else 0.0,
        overhead=None if batch is None else W.OverheadCase("XL", batch, SAMPLER_STEPS), overhead_rounds=3,
        overhead_min_s=75.0, train=train, train_rounds=5, train_min_s=90.0, device_init=True, notes=tuple(notes))


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------

class Clock:
    """Seconds since the start, against the run's budget."""

    def __init__(self, budget_s: float):
        self.t0 = time.perf_counter()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget_s - self.elapsed()


def log(msg: str, clock: Clock | None = None) -> None:
    stamp = f"[{clock.elapsed():6.1f}s] " if clock else ""
    sys.stderr.write(f"{stamp}{msg}\n")
    sys.stderr.flush()


PROBE = ("import json, jax; d = jax.devices()[0]; s = None\n"
         "try: s = d.memory_stats()\nexcept Exception: pass\n"
         "print(json.dumps({'backend': jax.default_backend(), 'device_kind': d.device_kind, "
         "'memory_bytes': (s or {}).get('bytes_limit')}))")


def without_cpu_defaults(environ) -> dict:
    """`environ` without the XLA:CPU flag `import ecdit.accelerated` adds (accelerated/xla_flags.py)
    and with ECDIT_XLA_DEFAULTS=0, so no process of an accelerator run passes a CPU-only flag to a
    GPU's or TPU's XLA (an XLA that no longer knows a flag aborts)."""
    from .sweep import _without_ynn_flag
    return dict(environ, ECDIT_XLA_DEFAULTS="0", XLA_FLAGS=_without_ynn_flag(environ.get("XLA_FLAGS", "")))


def probe_device() -> dict:
    """Backend, device kind and memory from a short-lived process: the device is free again when it
    returns (a TPU admits one process at a time, and the equivalence workers run next)."""
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300,
                          env=without_cpu_defaults(os.environ))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the device probe failed: {(proc.stderr or proc.stdout)[-500:]}")
    return json.loads(lines[-1])


def _json_default(o):
    try:
        import numpy as np
        if isinstance(o, (np.floating, np.integer)):
            return o.item()
    except ImportError:
        pass
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    return str(o)


def write_outputs(results: dict, out_dir: Path) -> Path:
    """DIR/benchmarks-<device>[-smoke].md and its .json; returns the markdown's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"benchmarks-{results['device'].get('slug', 'unknown')}" + ("-smoke" if results["plan"]["name"] == "smoke" else "")
    (out_dir / f"{stem}.json").write_text(json.dumps(results, default=_json_default, indent=1))
    md = out_dir / f"{stem}.md"
    md.write_text(accelerator_report.render(results))
    return md


def _section(results: dict, name: str, fn, clock: Clock, out_dir: Path):
    """Run one section: its result under results[name], its status and seconds under
    results['sections'][name]; an exception is recorded (the run goes on); the report is rewritten."""
    t0 = time.perf_counter()
    log(f"{name} ...", clock)
    try:
        value = fn()
        status = {"status": "done"}
        if isinstance(value, dict) and value.get("skipped"):
            status = {"status": "skipped", "note": value["skipped"]}
        results[name] = value
    except Exception as exc:                                      # recorded, not raised: the run goes on
        status = {"status": "error", "note": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}",
                  "traceback": traceback.format_exc()[-3000:]}
        log(f"{name}: {status['note']}", clock)
    earlier = results["sections"].get(name, {}).get("seconds", 0.0)   # the layer grid runs in two passes
    results["sections"][name] = {**status, "seconds": earlier + time.perf_counter() - t0}
    results["duration_s"] = clock.elapsed()
    gc.collect()
    if results["device"]["device_kind"] != "unknown":             # --smoke reads the device after section 1
        results["report"] = str(write_outputs(results, out_dir))


def measure_peaks(plan: DevicePlan) -> dict:
    """Square matmul peaks: bfloat16, float32 at JAX's default precision, float32 at 'highest';
    STREAM bandwidth; each with the vendor's figure where the device is in devices.TABLE."""
    import jax
    from . import roofline, timing
    nominal = devices.lookup(jax.devices()[0].device_kind)
    rows = []
    for dtype, precision in (("bfloat16", None), ("float32", None), ("float32", "highest")):
        r = timing.matmul_peak(plan.peak_sizes, plan.peak_repeats, dtype=dtype, numpy=False, precision=precision)
        nom, which = nominal.peak_for(dtype, precision or "default") if nominal else (None, None)
        rows.append({"dtype": dtype, "precision": precision or "default", "gflops": r["jax"],
                     "per_size": r["per_size"], "nominal_tflops": nom, "nominal_figure": which})
    bw = roofline.memory_bandwidth(plan.bandwidth_floats, plan.peak_repeats, numpy=False)
    return {"matmul": rows, "bandwidth_gbs": bw["bandwidth"], "bandwidth": bw,
            "nominal": dataclasses.asdict(nominal) if nominal else None}


def peak_gflops(results: dict, dtype: str, precision: str = "default") -> float | None:
    for r in (results.get("peaks") or {}).get("matmul", []):
        if r["dtype"] == dtype and r["precision"] == precision:
            return r["gflops"]
    return None


def layer_cells(plan: DevicePlan) -> list[tuple[int, int]]:
    """(D, E) in the order they are timed: the XL width first, fewer experts first."""
    return [(d, e) for d in plan.layer_D for e in plan.layer_E]


def measure_layers(plan: DevicePlan, results: dict, clock: Clock, until_s: float) -> dict:
    """Section 4, resumable: times the (D, E) cells not yet in results['layers'] until `until_s`
    seconds of the run have passed (a cell starts only if the slowest one so far fits)."""
    from . import sweep
    done = results.get("layers") or {"cells": [], "skipped": None}
    have = {(c["D"], c["E"], c["dtype"]) for c in done["cells"]}
    slowest = max([c["seconds"] for c in done["cells"]], default=0.0)
    for d, e in layer_cells(plan):
        for dtype in plan.layer_dtypes:
            if (d, e, dtype) in have:
                continue
            if clock.elapsed() + slowest > until_s:
                done["stopped_at"] = f"D={d} E={e} {dtype}"
                return done
            t0 = time.perf_counter()
            infer = W.Case(S=plan.layer_S, D=d, E=e, fc=PAPER_FC if plan.name == "device" else 2.0,
                           G=max(1, plan.layer_tokens // plan.layer_S), dtype=dtype)
            train = W.Case(S=plan.layer_S_train, D=d, E=e, fc=infer.fc,
                           G=max(1, plan.layer_tokens // plan.layer_S_train), dtype=dtype)
            entries = {key(kind, "jit"): (infer, kind, "acc", "jit") for kind in (EC, DENSE, ONEHOT, TC)}
            entries.update({key(kind, "fwdbwd"): (train, kind, "acc", "fwdbwd") for kind in (EC, DENSE)})
            log(f"layers D={d} E={e} {dtype}: {len(entries)} variants x {plan.layer_rounds} rounds", clock)
            res = sweep.time_variants(entries, plan.layer_rounds)
            seconds = time.perf_counter() - t0
            slowest = max(slowest, seconds)
            done["cells"].append({"D": d, "E": e, "dtype": dtype, "inference": sweep.case_dict(infer),
                                  "train": sweep.case_dict(train), "seconds": seconds, **res})
            results["layers"] = done
        W.clear_weight_cache()
    done["stopped_at"] = None
    return done


def measure_overhead(plan: DevicePlan, clock: Clock) -> dict:
    """Section 3: both samplers compiled and run once (timed apart), then timed interleaved."""
    from . import sweep, timing
    case = plan.overhead
    if case is None:
        return {"skipped": "does not fit this device's memory"}
    if clock.left() < plan.overhead_min_s:
        return {"skipped": f"time budget: {clock.left():.0f} s left, {plan.overhead_min_s:.0f} s needed"}
    made = W.make_overhead_calls(case, W.device_params if plan.device_init else None)
    first = {}
    for kind, (call, _) in made.items():
        t0 = time.perf_counter()
        call()
        first[kind] = time.perf_counter() - t0
        log(f"overhead: {kind} sampler compiled and run once in {first[kind]:.1f} s", clock)
    res = sweep.summary(timing.time_interleaved({k: c for k, (c, _) in made.items()}, plan.overhead_rounds))
    row = {"label": case.label, "size": case.size, "batch": case.batch, "steps": case.steps,
           "depth": case.config("expert_choice").depth, "tokens_per_image": case.config("expert_choice").num_tokens,
           "activated": {k: a for k, (_, a) in made.items()}, "first_call_s": first, **res}
    del made
    return {"rows": [row]}


def _numpy_params(cfg):
    """init_model's parameters as JAX arrays (small models: the NumPy draws are quick)."""
    import jax
    import jax.numpy as jnp
    return jax.tree.map(jnp.asarray, init_model(cfg, 0))


def measure_train(plan: DevicePlan, results: dict, clock: Clock, memory_bytes: int | None) -> dict:
    """Section 5: the first candidate whose compiled step fits the device, timed; FLOPs are XLA's."""
    from . import timing
    if not plan.train:
        return {"skipped": "no candidate fits this device's memory"}
    if clock.left() < plan.train_min_s:
        return {"skipped": f"time budget: {clock.left():.0f} s left, {plan.train_min_s:.0f} s needed"}
    tried = []
    for size, batch in plan.train:
        cfg, tcfg = W.StepCase(size, batch).configs()
        try:
            step = W.compile_train_step(cfg, tcfg, W.device_params if plan.device_init else _numpy_params)
        except Exception as exc:                                  # out of memory while building: next
            tried.append({"preset": size, "batch": batch, "error": str(exc).strip().splitlines()[0][:200]})
            gc.collect()
            continue
        mem = step["memory"]
        need = None if mem is None else mem["argument"] + mem["output"] - mem["alias"] + mem["temp"]
        if need is not None and memory_bytes is not None and need > memory_bytes:
            tried.append({"preset": size, "batch": batch, "error": f"needs {need / 2**30:.1f} GiB"})
            del step
            gc.collect()
            continue
        log(f"train: {size} batch {batch} compiled in {step['compile_s']:.1f} s", clock)
        samples = timing.time_interleaved({"step": step["call"]}, plan.train_rounds)["step"]
        t = timing.median(samples)
        peak = peak_gflops(results, "float32")
        nominal = (results.get("peaks") or {}).get("nominal")
        nominal_tf = devices.Nominal(**nominal).peak_for("float32", "default")[0] if nominal else None
        rate = step["flops"] / t / 1e9
        out = {"preset": size, "batch": batch, "kept_tokens": tcfg.kept_tokens(cfg.num_tokens),
               "optimizer": tcfg.optimizer, "depth": cfg.depth, "width": cfg.width, "experts": cfg.num_experts,
               "flops": step["flops"], "memory": mem, "compile_s": step["compile_s"], "samples": samples,
               "median": t, "images_per_s": batch / t, "gflops": rate,
               "mfu_measured": rate / peak if peak else None,
               "mfu_nominal": rate / (1e3 * nominal_tf) if nominal_tf else None, "tried": tried}
        del step
        return out
    return {"skipped": "no candidate compiled within the device's memory", "tried": tried}


def run(smoke: bool = False, out_dir="docs", budget_s: float = 420.0, command: str | None = None,
        sections=SECTIONS) -> tuple[dict, int]:
    """The whole command (`sections`: which of SECTIONS to run; a later try may run fewer): returns
    (results, exit status). The status is 1 when the equivalence run was asked for and did not pass
    every module, or when a section raised; else 0."""
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"sections: unknown {sorted(unknown)}; expected some of {', '.join(SECTIONS)}")
    clock = Clock(budget_s)
    out_dir = Path(out_dir)
    # --smoke needs no sizes from the device: its report reads the device after the equivalence run
    probe = {"backend": "unknown", "device_kind": "unknown", "memory_bytes": None} if smoke else probe_device()
    name = "smoke" if smoke or probe["backend"] == "cpu" else "device"
    if probe["backend"] not in ("cpu", "unknown"):                # read when this process creates its backend
        os.environ.update(without_cpu_defaults(os.environ))
    cores = os.cpu_count() or 1
    plan = make_plan(name, probe.get("memory_bytes"), cores, probe["backend"], budget_s)
    results = {"command": command or "python -m ecdit.benchmarks.accelerator" + (" --smoke" if smoke else ""),
               "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "plan": dataclasses.asdict(plan), "probe": probe, "sections": {},
               "device": {"slug": devices.slug(probe["device_kind"], probe["backend"]),
                          "device_kind": probe["device_kind"], "backend": probe["backend"]}}
    if name == "smoke" and not smoke:
        results["plan"]["notes"] = list(plan.notes) + ["the backend is the CPU: smoke sizes chosen automatically"]
    log(f"{plan.name} plan on {probe['device_kind']} ({probe['backend']}), budget {budget_s:.0f} s", clock)

    def wanted(name, fn):
        if name in sections:
            return fn
        return lambda: {"skipped": "not asked for (--sections)"}

    _section(results, "equivalence", wanted("equivalence", lambda: equivalence.run_equivalence(
        plan.equivalence_modules, plan.equivalence_examples, plan.equivalence_workers,
        plan.equivalence_limit_s, log=lambda m: log(m, clock))), clock, out_dir)

    import jax                                                    # the device is this process's from here
    if plan.fast_compile:
        jax.config.update("jax_disable_most_optimizations", True)
    elif probe["backend"] != "cpu":
        cache = os.environ.get("ECDIT_COMPILE_CACHE", os.path.expanduser("~/.cache/ecdit/jax-compile"))
        try:                                                      # a second try reuses the compiled programs
            jax.config.update("jax_compilation_cache_dir", cache)
        except Exception:
            pass
    from . import machine
    results["device"] = {**devices.device_info(), "host": machine.info()}
    _section(results, "peaks", wanted("peaks", lambda: measure_peaks(plan)), clock, out_dir)
    _section(results, "overhead", wanted("overhead", lambda: measure_overhead(plan, clock)), clock, out_dir)
    reserve = plan.train_reserve_s if "train" in sections else 0.0
    _section(results, "layers", wanted("layers", lambda: measure_layers(plan, results, clock, budget_s - reserve)),
             clock, out_dir)
    _section(results, "train", wanted("train", lambda: measure_train(plan, results, clock, probe.get("memory_bytes"))),
             clock, out_dir)
    if (results.get("layers") or {}).get("stopped_at"):
        _section(results, "layers", lambda: measure_layers(plan, results, clock, budget_s), clock, out_dir)
    results["duration_s"] = clock.elapsed()
    eq = results.get("equivalence") or {}
    errors = [n for n, s in results["sections"].items() if s["status"] == "error"]
    status = 0 if (eq.get("ok") or "equivalence" not in sections) and not errors else 1
    results["exit_status"] = status
    results["report"] = str(write_outputs(results, out_dir))
    return results, status


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ecdit.benchmarks.accelerator", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, under a minute (automatic on a CPU)")
    p.add_argument("--out", default="docs", help="folder of benchmarks-<device>.md and .json (default docs)")
    p.add_argument("--budget-minutes", type=float, default=7.0, help="time for every section, compiling included "
                   "(default 7)")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated, some of {','.join(SECTIONS)} (default all; a second try may skip some)")
    a = p.parse_args(argv)
    sections = tuple(x.strip() for x in a.sections.split(",") if x.strip())
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        p.error(f"--sections: unknown {', '.join(sorted(unknown))}; expected some of {', '.join(SECTIONS)}")
    cmd = "python -m ecdit.benchmarks.accelerator" + (" --smoke" if a.smoke else "") + \
        (f" --out {a.out}" if a.out != "docs" else "") + (f" --budget-minutes {a.budget_minutes:g}" if a.budget_minutes != 7.0 else "") \
        + (f" --sections {','.join(sections)}" if sections != SECTIONS else "")
    results, status = run(a.smoke, a.out, 60.0 * a.budget_minutes, cmd, sections)
    print(accelerator_report.summary(results))
    return status


if __name__ == "__main__":
    sys.exit(main())
