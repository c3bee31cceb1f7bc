"""Running a plan: every section's measurements, collected as plain dicts of samples (JSON-ready).

`measure(plan, log)` runs sections A-H of the report (see report.py) and returns the results dict
that the targets, the plots and the markdown read, and that `--json` dumps:

    plan, info, peak_start, peak_end, dtype_skipped, duration_s, command
    grid       [{case, samples, median, spread}]         A: S x D grid, keys plans.key(kind, mode)
    sweep      [{S, D, fc, G, cases {E: case}, base, modes, samples, median, spread}]   B
    memory     {vs_S: [{case, bytes}], vs_E: [...]}      C: compiled memory (compile only)
    profile    [{case, samples, median, spread}]         D: stages of the EC layer
    reference  [...]                                     E: NumPy reference against JAX
    blocks     [{case, label, samples, ...}]             F: the DiT block
    model      {size, ..., config, samples, ...}         G: sampler and train step
    probe      {case, settings, runs}                    H: allocator settings, fresh processes
    bandwidth_start, bandwidth_end                       STREAM copy/triad GB/s (roofline.py)
    utilisation [{label, size, batch, width, flops, median, samples}]   K: train step vs batch, width
    step_settings {size, batch, runs}                    K2: the step under process-level settings
    overhead   [{label, activated, samples, median}]     L: sampler EC-DiT vs dense (Fig. 4)

Every sample is seconds per call; ratios are taken later, within rounds (timing.median_ratio).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

from . import exchange, machine, roofline, step_profile, timing
from . import workloads as W
from .derived import onehot_slowdown_bound
from .plans import DENSE, EC, GRID_VARIANTS, ONEHOT, Plan, expert_choice_at, key


class Log:
    """Progress lines on stderr, each with the seconds since the start (silent if not enabled)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.t0 = time.perf_counter()

    def __call__(self, msg: str):
        if self.enabled:
            sys.stderr.write(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}\n")
            sys.stderr.flush()


def case_dict(case: W.Case) -> dict:
    """A case as JSON: its fields and the derived sizes (C, H, F, FLOPs, label)."""
    d = dataclasses.asdict(case)
    d.update(C=case.C, H=case.H, F=case.hidden, flops=case.flops, dense_flops=case.dense_flops,
             flop_equal=case.flop_equal, label=case.label)
    return d


def summary(samples: dict[str, list[float]]) -> dict:
    return {"samples": samples, "median": {k: timing.median(v) for k, v in samples.items()},
            "spread": {k: timing.spread(v) for k, v in samples.items()}}


def time_variants(entries: dict, rounds: int) -> dict:
    """entries: name -> (case, kind, impl, mode). Builds every call, then times them interleaved."""
    arrays: dict = {}
    calls = {}
    for name, (case, kind, impl, mode) in entries.items():
        if case not in arrays:
            arrays[case] = W.make_arrays(case)
        calls[name] = W.make_call(kind, impl, mode, case, arrays[case])
    samples = timing.time_interleaved(calls, rounds)
    for a in arrays.values():
        a.release()
    return summary(samples)


def measure_grid(plan: Plan, log, skipped: dict) -> list[dict]:
    """A: every variant of GRID_VARIANTS per (dtype, D, S); dtypes the layers refuse go to `skipped`."""
    cells = []
    for dtype in plan.dtypes:
        reason = W.dtype_support(dtype)
        if reason:
            skipped[dtype] = reason
            log(f"A grid: {dtype} skipped: {reason}")
            continue
        for d in plan.grid_D:
            for s in plan.grid_S:
                if s > plan.grid_max_S_by_D.get(d, s):
                    continue
                case = plan.grid_case(s, d, dtype=dtype)
                entries = {}
                for kind, mode in GRID_VARIANTS:
                    if kind == ONEHOT and onehot_slowdown_bound(case.S, case.D) > plan.onehot_max_work:
                        continue
                    entries[key(kind, mode)] = (case, kind, "acc", mode)
                rounds = plan.grid_rounds_by_D.get(d, plan.grid_rounds)
                log(f"A grid {case.label}: {len(entries)} variants x {rounds} rounds")
                cells.append({"case": case_dict(case), **time_variants(entries, rounds)})
        W.clear_weight_cache()
    return cells


def measure_experts(plan: Plan, log) -> list[dict]:
    """B: for each (S, D, f_c): dense and EC at every E, timed in the same interleaved rounds."""
    cells = []
    for dtype in plan.dtypes[:1]:
        for s, d in plan.sweep_SD:
            for fc in plan.sweep_fc:
                entries, cases = {}, {}
                modes = ["fwd", "jit"] + (["fwdbwd"] if d <= plan.sweep_fwdbwd_max_D else [])
                base = plan.grid_case(s, d, e=plan.sweep_E[0], fc=fc, dtype=dtype)
                for mode in modes:
                    entries[key(DENSE, mode)] = (base, DENSE, "acc", mode)
                for e in plan.sweep_E:
                    case = plan.grid_case(s, d, e=e, fc=fc, dtype=dtype)
                    try:
                        case.C
                    except ValueError:
                        continue
                    cases[e] = case_dict(case)
                    for mode in modes:
                        entries[key(expert_choice_at(e), mode)] = (case, EC, "acc", mode)
                log(f"B sweep S={s} D={d} fc={fc:g} E={list(cases)}: {len(entries)} variants x {plan.sweep_rounds} rounds")
                W.clear_weight_cache()
                res = time_variants(entries, plan.sweep_rounds)
                W.clear_weight_cache()
                cells.append({"S": s, "D": d, "fc": fc, "G": base.G, "cases": cases, "base": case_dict(base),
                              "modes": modes, **res})
    W.clear_weight_cache()
    return cells


def measure_memory(plan: Plan, log) -> dict:
    """C: compiled working memory (outputs + temporaries) against S, and against E (compile only)."""
    out = {"vs_S": [], "vs_E": []}
    for d in plan.memory_D:
        for s in plan.memory_S:
            case = W.Case(S=s, D=d, E=8, fc=2.0, G=plan.memory_G)
            arrays = W.make_arrays(case)
            row = {"case": case_dict(case), "bytes": {}}
            for kind, mode in plan.memory_kinds:
                row["bytes"][key(kind, mode)] = W.compiled_memory(kind, mode, case, arrays)
            arrays.release()
            out["vs_S"].append(row)
            log(f"C memory {case.label}")
    d, s = plan.memory_D[0], plan.memory_S[min(1, len(plan.memory_S) - 1)]
    for e in plan.memory_E:
        case = W.Case(S=s, D=d, E=e, fc=2.0, G=plan.memory_G)
        arrays = W.make_arrays(case)
        out["vs_E"].append({"case": case_dict(case),
                            "bytes": {key(k, m): W.compiled_memory(k, m, case, arrays)
                                      for k, m in ((EC, "fwd"), (ONEHOT, "fwd"), (DENSE, "fwd"))}})
        arrays.release()
    log(f"C memory against E at S={s} D={d}")
    W.clear_weight_cache()
    return out


def measure_profile(plan: Plan, log) -> list[dict]:
    """D: each stage of the EC layer alone, with the whole layer, its check and the dense FFN."""
    rows = []
    for case in plan.profile:
        arrays = W.make_arrays(case)
        calls = W.ec_stage_calls(case, arrays)
        calls["whole EC layer (jit)"] = W.make_call(EC, "acc", "jit", case, arrays)
        calls["argument check (public API)"] = W.make_call(EC, "acc", "check", case, arrays)
        calls["dense FFN, FLOP-equal (jit)"] = W.make_call(DENSE, "acc", "jit", case, arrays)
        log(f"D profile {case.label}")
        rows.append({"case": case_dict(case), **summary(timing.time_interleaved(calls, plan.profile_rounds))})
        arrays.release()
    W.clear_weight_cache()
    return rows


def measure_reference(plan: Plan, log) -> list[dict]:
    """E: every layer kind, NumPy reference ('ref') against JAX ('acc'), public APIs."""
    rows = []
    for case in plan.reference:
        entries = {}
        for kind in W.LAYER_KINDS:
            entries[key(kind, "ref")] = (case, kind, "ref", "fwd")
            entries[key(kind, "acc")] = (case, kind, "acc", "fwd")
        log(f"E reference {case.label}")
        rows.append({"case": case_dict(case), **time_variants(entries, plan.reference_rounds)})
    W.clear_weight_cache()
    return rows


def measure_blocks(plan: Plan, log) -> list[dict]:
    """F: the DiT block with each FFN kind: NumPy, JAX forward and JAX forward+backward."""
    rows = []
    for bc in plan.blocks:
        calls = {}
        for kind in W.BLOCK_KINDS:
            calls[key(kind, "ref")] = W.make_block_call(bc, kind, "ref", "fwd")
            calls[key(kind, "acc")] = W.make_block_call(bc, kind, "acc", "fwd")
            calls[key(kind, "fwdbwd")] = W.make_block_call(bc, kind, "acc", "fwdbwd")
        log(f"F block {bc.label}")
        rows.append({"case": dataclasses.asdict(bc), "label": bc.label,
                     **summary(timing.time_interleaved(calls, plan.block_rounds))})
    return rows


def measure_model(plan: Plan, log) -> dict | None:
    """G: the sampler and the train step of the whole model, per FFN kind."""
    if plan.model is None:
        return None
    size, train_batch, sample_batch, steps = plan.model
    calls = {}
    for kind in plan.model_kinds:
        log(f"G model {size}: sampler {kind} (compiling)")
        calls[f"sample:{kind}"] = W.make_sampler_call(size, kind, sample_batch, steps)
    for kind in plan.model_train_kinds:
        log(f"G model {size}: train step {kind} (compiling)")
        calls[f"train:{kind}"] = W.make_train_step_call(size, kind, train_batch)
    cfg = W.model_config(size, "expert_choice")
    res = summary(timing.time_interleaved(calls, plan.model_rounds))
    return {"size": size, "train_batch": train_batch, "sample_batch": sample_batch, "steps": steps,
            "config": {"depth": cfg.depth, "width": cfg.width, "tokens": cfg.num_tokens,
                       "experts": cfg.num_experts, "fc": cfg.capacity_factor}, **res}


def measure_utilisation(plan: Plan, log) -> list[dict]:
    """K: the training step of a preset (its train config) against batch size and width: time per
    step, XLA's FLOP count of the compiled step, images/s. One interleaved timing per preset size,
    so the rows of one size are comparable."""
    rows = []
    by_size: dict = {}
    for case in plan.utilisation:
        by_size.setdefault(case.size, []).append(case)
    for size, cases in by_size.items():
        calls, info = {}, {}
        for case in cases:
            log(f"K train step {case.label} (compiling)")
            call, flops, images = W.make_step_case_call(case)
            calls[case.label] = call
            info[case.label] = {"size": case.size, "batch": case.batch, "width": case.configs()[0].width,
                                "flops": flops, "images": images}
        res = summary(timing.time_interleaved(calls, plan.utilisation_rounds))
        for label, meta in info.items():
            rows.append({"label": label, **meta, "median": res["median"][label], "samples": res["samples"][label]})
        for case in cases:
            if (case.size, case.batch) == plan.step_probe and case.width is None:
                log(f"K3 profile of the train step {case.label}")
                row = next(r for r in rows if r["label"] == case.label)
                row["profile"] = step_profile.profile_call(calls[case.label], plan.utilisation_profile_steps)
    return rows


def _without_ynn_flag(flags: str) -> str:
    return " ".join(f for f in flags.split() if "xla_cpu_experimental_ynn_fusion_type" not in f)


def step_settings(plan: Plan) -> list[tuple[str, dict, list[str]]]:
    """K2: (name, environment, extra probe arguments) of each process-level setting of the step probe."""
    base = dict(os.environ)
    jaxlib_default = dict(base, ECDIT_XLA_DEFAULTS="0", XLA_FLAGS=_without_ynn_flag(base.get("XLA_FLAGS", "")))
    two = dict(base, XLA_FLAGS=(base.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip())
    return [("ecdit default (YNNPACK fusions off)", base, []),
            ("jaxlib default (YNNPACK fusions on)", jaxlib_default, []),
            ("2 CPU devices, mesh data=2", two, ["--mesh", "data=2"])][:plan.step_settings]


def measure_step_settings(plan: Plan, log) -> dict | None:
    """K2: the step of `plan.step_probe` (size, batch) in fresh processes under each setting (A B C, A B C)."""
    if plan.step_probe is None or plan.step_settings == 0:
        return None
    size, batch = plan.step_probe
    args = [sys.executable, "-m", "ecdit.benchmarks.step_probe", "--size", size, "--batch", str(batch),
            "--rounds", str(plan.step_probe_rounds)]
    settings = step_settings(plan)
    runs: dict[str, list] = {name: [] for name, _, _ in settings}
    for rep in range(plan.step_probe_reps):
        for name, env, extra in settings:
            log(f"K2 train step {size} batch {batch}: {name} (fresh process, rep {rep + 1}/{plan.step_probe_reps})")
            try:
                proc = subprocess.run(args + extra, env=env, capture_output=True, text=True, timeout=900)
                line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                runs[name].append(json.loads(line[-1]) if proc.returncode == 0 and line
                                  else {"error": (proc.stderr or proc.stdout)[-500:]})
            except (OSError, subprocess.SubprocessError) as exc:
                runs[name].append({"error": str(exc)})
    return {"size": size, "batch": batch, "runs": runs}


def measure_overhead(plan: Plan, log) -> list[dict]:
    """L: the guided sampler of EC-DiT against its dense base model (Fig. 4), per model shape;
    the two kinds of one shape timed in the same interleaved rounds."""
    rows = []
    for case in plan.overhead:
        log(f"L sampler overhead {case.label} (compiling EC-DiT and dense)")
        made = W.make_overhead_calls(case)
        res = summary(timing.time_interleaved({k: c for k, (c, _) in made.items()}, plan.overhead_rounds))
        log(f"L profile of both samplers {case.label}")
        profiles = {k: step_profile.profile_call(c, plan.overhead_profile_calls) for k, (c, _) in made.items()}
        rows.append({"label": case.label, "size": case.size, "batch": case.batch, "steps": case.steps,
                     "depth": case.config("expert_choice").depth, "profile": profiles,
                     "activated": {k: a for k, (_, a) in made.items()}, **res})
    return rows


def measure_dynamic(plan: Plan, log) -> list[dict]:
    """I: DiffMoE's dynamic layer (compiled body) with thresholds set so each expert takes a given
    share of the pool, beside the static training form: does the time follow the tokens?"""
    rows = []
    for case in plan.dynamic:
        log(f"I DiffMoE dynamic {case.label} (compiling {len(case.fractions)} thresholds)")
        made = W.make_dynamic_calls(case)
        calls = {name: call for name, (call, _, _) in made.items()}
        res = summary(timing.time_interleaved(calls, plan.dynamic_rounds))
        rows.append({"case": {"B": case.B, "S": case.S, "N": case.N, "D": case.D, "E": case.E,
                              "label": case.label},
                     "capacity": {name: [int(v) for v in cap] for name, (_, cap, _) in made.items()},
                     "slots": {name: slots for name, (_, _, slots) in made.items()}, **res})
    return rows


def measure_allocator(plan: Plan, log) -> dict | None:
    """H: the EC/dense cell in fresh processes (benchmarks/probe.py) under each allocator setting
    (A B C, A B C, ...). The child runs the same interpreter and finds ecdit the way this process did."""
    if plan.probe is None or not sys.platform.startswith("linux"):
        return None
    c = plan.probe
    args = [sys.executable, "-m", "ecdit.benchmarks.probe", "--S", str(c.S), "--D", str(c.D), "--E", str(c.E),
            "--fc", str(c.fc), "--G", str(c.G), "--rounds", str(plan.probe_rounds)]
    runs: dict[str, list] = {name: [] for name, _ in plan.probe_settings}
    for rep in range(plan.probe_reps):
        for name, tunables in plan.probe_settings:
            env = dict(os.environ)
            env.pop("GLIBC_TUNABLES", None)
            if tunables:
                env["GLIBC_TUNABLES"] = tunables
            log(f"H allocator probe {name} (rep {rep + 1}/{plan.probe_reps})")
            try:
                proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
                line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                if proc.returncode == 0 and line:
                    runs[name].append(json.loads(line[-1]))
                else:
                    runs[name].append({"error": (proc.stderr or proc.stdout)[-500:]})
            except (OSError, subprocess.SubprocessError) as exc:
                runs[name].append({"error": str(exc)})
    return {"case": case_dict(c), "settings": dict(plan.probe_settings), "runs": runs}


def measure(plan: Plan, log) -> dict:
    """Every section of the plan, between two measurements of the matmul peak."""
    t0 = time.perf_counter()
    results: dict = {"plan": plan.name}
    results["info"] = machine.info()
    log(f"{plan.name} sweep on {machine.describe(results['info'])}")
    results["peak_start"] = timing.matmul_peak(plan.peak_sizes, plan.peak_repeats)
    results["bandwidth_start"] = roofline.memory_bandwidth(plan.bandwidth_floats, plan.peak_repeats)
    log(f"memory bandwidth (STREAM copy/triad): {results['bandwidth_start']['bandwidth']:.1f} GB/s")
    log(f"matmul peak: JAX {results['peak_start']['jax']:.0f}, NumPy {results['peak_start']['numpy'] or 0:.0f} GFLOP/s")
    results["dtype_skipped"] = {}
    results["grid"] = measure_grid(plan, log, results["dtype_skipped"])
    results["sweep"] = measure_experts(plan, log)
    results["memory"] = measure_memory(plan, log)
    results["profile"] = measure_profile(plan, log)
    results["reference"] = measure_reference(plan, log)
    results["blocks"] = measure_blocks(plan, log)
    results["model"] = measure_model(plan, log)
    results["dynamic"] = measure_dynamic(plan, log)
    results["utilisation"] = measure_utilisation(plan, log)
    results["step_settings"] = measure_step_settings(plan, log)
    results["overhead"] = measure_overhead(plan, log)
    log("J expert-parallel exchange, mesh data=2 x expert=4 of simulated devices (subprocess)")
    results["exchange"] = exchange.measure_exchange_in_subprocess(2, 4, rounds=3 if plan.name == "smoke" else 15)
    results["probe"] = measure_allocator(plan, log)
    results["peak_end"] = timing.matmul_peak(plan.peak_sizes, plan.peak_repeats)
    results["bandwidth_end"] = roofline.memory_bandwidth(plan.bandwidth_floats, plan.peak_repeats)
    results["info"]["load_average_end"] = machine.load_average()
    results["duration_s"] = time.perf_counter() - t0
    return results


# ---------------------------------------------------------------------------------------------
# Results as JSON
# ---------------------------------------------------------------------------------------------

_OLD_KEY = re.compile(r"^(ec|onehot|tc)(\d*):([a-z]+)$")


def _renamed(k):
    """A variant key of a dump written before the kinds had one name each ('ec:fwd', 'ec16:jit',
    'onehot:fwd', 'tc:ref') in today's names; any other key unchanged."""
    m = _OLD_KEY.match(k) if isinstance(k, str) else None
    if not m:
        return k
    kind, e, mode = m.groups()
    if kind == "ec" and e:
        return key(expert_choice_at(int(e)), mode)
    return key({"ec": EC, "onehot": ONEHOT, "tc": W.TOKEN_CHOICE}[kind], mode)


def upgrade_names(obj):
    """A loaded dump with the variant keys of older dumps renamed (see _renamed)."""
    if isinstance(obj, dict):
        return {_renamed(k): upgrade_names(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [upgrade_names(v) for v in obj]
    return obj


def load_results(json_path) -> dict:
    """The results of an earlier run from its --json dump, as `measure` returned them."""
    with open(json_path) as f:
        results = upgrade_names(json.load(f))
    for cell in results.get("sweep", []):                     # JSON turned the E keys into strings
        cell["cases"] = {int(k): v for k, v in cell["cases"].items()}
    for name in ("load_average_start", "load_average_end"):
        if isinstance(results["info"].get(name), list):
            results["info"][name] = tuple(results["info"][name])
    return results


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def dump_results(results: dict, json_path) -> None:
    """Every raw sample of a run, as JSON (read back by load_results)."""
    path = os.fspath(json_path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(json.dumps(results, default=_json_default, indent=1))
