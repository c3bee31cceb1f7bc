"""The twin equals the specification on this device: the property tests that compare each
`accelerated` module with its `reference` module, run as pytest subprocesses on JAX's default
backend, and their outcome per module.

    run_equivalence(modules=None, examples=4, workers=1, time_limit_s=300) -> dict

What runs: the test files of EQUIVALENCE_TESTS, only the tests whose names say they compare the
two halves (SELECTION), each hypothesis property with `examples` derandomized examples
(equivalence_plugin.py). tests/conftest.py sets `jax_default_matmul_precision = "float32"` for
every test, so float32 products are true float32 on GPUs (not TF32) and the tolerance table of
tests/tolerances.py applies unchanged.

The files are split over `workers` processes that run at once (compiling is most of the time,
and it uses the host's cores); each keeps the device's memory free until it needs it
(XLA_PYTHON_CLIENT_PREALLOCATE=false). At the time limit each worker is interrupted (SIGINT, so
pytest still writes its JUnit XML) and then killed; the tests it did not reach count as not run,
and a module with tests not run is "incomplete", not passed.

The tests live in the repository's tests/ folder: the run needs a clone (an installed wheel has
no tests) and the test extra (pytest, hypothesis, pytest-benchmark).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]                     # the repository (editable install)

# Twin module -> the test files comparing it with the specification (the shape head's losses and
# DiffMoE's model-level tests read as the module they exercise most).
EQUIVALENCE_TESTS = {
    "primitives": ("tests/test_primitives.py",),
    "flow": ("tests/test_flow.py",),
    "attention": ("tests/test_attention.py",),
    "routing": ("tests/test_routing.py",),
    "token_choice": ("tests/test_token_choice.py",),
    "diffmoe": ("tests/test_diffmoe.py", "tests/test_diffmoe_pools.py", "tests/test_diffmoe_model.py"),
    "blocks": ("tests/test_blocks.py",),
    "model": ("tests/test_model.py",),
    "objective": ("tests/test_objective.py", "tests/test_shape_head.py"),
    "sample": ("tests/test_sample.py",),
}
# The tests that compare the halves are named so ("..._matches_reference", "..._as_its_reference")
SELECTION = "matches_reference or match_reference or as_its_reference"
PROFILE = "ecdit-device"            # the hypothesis profile equivalence_plugin.py registers
# Relative cost of each module's selection (seconds on a 2-core CPU, 12 examples), to balance workers
WEIGHTS = {"primitives": 10, "flow": 25, "attention": 10, "routing": 25, "token_choice": 25, "diffmoe": 260,
           "blocks": 20, "model": 40, "objective": 45, "sample": 30}


def split(modules: list[str], workers: int) -> list[list[str]]:
    """Modules over at most `workers` groups, heaviest first onto the lightest group (by WEIGHTS)."""
    groups: list[list[str]] = [[] for _ in range(max(1, min(workers, len(modules))))]
    load = [0.0] * len(groups)
    for m in sorted(modules, key=lambda m: -WEIGHTS.get(m, 10)):
        i = load.index(min(load))
        groups[i].append(m)
        load[i] += WEIGHTS.get(m, 10)
    return [g for g in groups if g]


def pytest_command(modules: list[str], junit: str, examples_profile: str) -> list[str]:
    files = [f for m in modules for f in EQUIVALENCE_TESTS[m]]
    return [sys.executable, "-m", "pytest", *files, "-k", SELECTION, "-q", "-p", "no:cacheprovider",
            "-p", "ecdit.benchmarks.equivalence_plugin", f"--hypothesis-profile={examples_profile}",
            f"--junitxml={junit}"]


def module_of(classname: str) -> str | None:
    """'tests.test_routing' (a JUnit classname) -> 'routing' (its twin module in EQUIVALENCE_TESTS)."""
    path = classname.replace(".", "/") + ".py"
    for module, files in EQUIVALENCE_TESTS.items():
        if path in files:
            return module
    return None


def read_junit(path) -> list[dict]:
    """[{module, test, outcome ('passed' | 'failed' | 'error' | 'skipped'), message}] of one JUnit XML."""
    out = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            child = case.find(tag)
            if child is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                lines = (child.get("message") or child.text or "").strip().splitlines()
                message = lines[0][:300] if lines else ""
                break
        out.append({"module": module_of(case.get("classname", "")), "test": case.get("name", ""),
                    "outcome": outcome, "message": message})
    return out


def summarise(cases: list[dict], modules: list[str], complete: dict[str, bool]) -> dict:
    """Per module: counts by outcome, the failures, and a status: 'passed' (every selected test
    passed, at least one ran), 'FAILED' (a failure or error), 'incomplete' (its worker stopped
    before the end) or 'not run'."""
    out = {}
    for m in modules:
        mine = [c for c in cases if c["module"] == m]
        counts = {k: sum(c["outcome"] == k for c in mine) for k in ("passed", "failed", "error", "skipped")}
        bad = [c for c in mine if c["outcome"] in ("failed", "error")]
        if bad:
            status = "FAILED"
        elif not complete.get(m, False):
            status = "incomplete"
        elif counts["passed"]:
            status = "passed"
        else:
            status = "not run"
        out[m] = {**counts, "status": status, "files": list(EQUIVALENCE_TESTS[m]),
                  "failures": [{"test": c["test"], "message": c["message"]} for c in bad]}
    return out


def _stop(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """Interrupt a worker (pytest then writes its JUnit XML), kill it if it does not stop."""
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=grace_s)
    except (subprocess.TimeoutExpired, OSError):
        proc.kill()
        proc.wait()


def run_equivalence(modules=None, examples: int = 4, workers: int = 1, time_limit_s: float = 300.0,
                    log=None, env=None) -> dict:
    """Run the selection for `modules` (default: every module of EQUIVALENCE_TESTS) and return
    {modules: {module: {...}}, ok, examples, workers, duration_s, timed_out, command, note}."""
    all_modules = list(EQUIVALENCE_TESTS)
    chosen = all_modules if modules is None else [m for m in all_modules if m in modules]
    result = {"examples": examples, "workers": 0, "selection": SELECTION, "timed_out": False, "duration_s": 0.0,
              "modules": {}, "not_selected": [m for m in all_modules if m not in chosen], "ok": False, "note": None}
    missing = [f for m in chosen for f in EQUIVALENCE_TESTS[m] if not (ROOT / f).is_file()]
    if missing:
        result["note"] = f"not run: {missing[0]} not found (the tests live in a clone of the repository)"
        return result
    try:
        import hypothesis  # noqa: F401
        import pytest  # noqa: F401
    except ImportError:
        result["note"] = "not run: pytest and hypothesis are not installed (pip install -e \".[test]\")"
        return result
    groups = split(chosen, workers)
    child_env = dict(os.environ if env is None else env, XLA_PYTHON_CLIENT_PREALLOCATE="false",
                     ECDIT_DEVICE_EXAMPLES=str(examples))
    t0 = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="ecdit-equivalence-")
    procs = []
    for i, group in enumerate(groups):
        junit = os.path.join(tmp, f"worker{i}.xml")
        cmd = pytest_command(group, junit, PROFILE)
        if log:
            log(f"equivalence worker {i}: {', '.join(group)}")
        procs.append((group, junit, subprocess.Popen(cmd, cwd=ROOT, env=child_env, stdout=subprocess.PIPE,
                                                     stderr=subprocess.STDOUT, text=True)))
    result["workers"] = len(procs)
    shown = pytest_command(chosen, "REPORT.xml", PROFILE)
    shown[0] = "python"
    result["command"] = " ".join(f'"{a}"' if " " in a else a for a in shown)
    deadline = t0 + time_limit_s
    cases, complete, tails = [], {}, []
    for group, junit, proc in procs:
        try:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.perf_counter()))
            finished = True
        except subprocess.TimeoutExpired:
            _stop(proc)
            out = proc.stdout.read() if proc.stdout else ""
            finished = False
            result["timed_out"] = True
        tails.append((out or "")[-1500:])
        if os.path.isfile(junit):
            cases += read_junit(junit)
        for m in group:
            complete[m] = finished and proc.returncode in (0, 1) and os.path.isfile(junit)
    result["duration_s"] = time.perf_counter() - t0
    result["modules"] = summarise(cases, chosen, complete)
    result["output_tail"] = tails
    result["ok"] = bool(chosen) and all(r["status"] == "passed" for r in result["modules"].values())
    return result
