"""The twin equals the specification on this device: the property tests that compare each
`accelerated` module with its `reference` module, run as pytest subprocesses on JAX's default
backend, and their outcome per module.

    run_equivalence(modules=None, examples=4, workers=1, time_limit_s=300) -> dict

What runs: the test files of EQUIVALENCE_TESTS, only the tests whose names say they compare the
two halves (SELECTION), each hypothesis property with `examples` derandomized examples
(equivalence_plugin.py). tests/conftest.py sets `jax_default_matmul_precision = "float32"` for
every test, so float32 products are true float32 on GPUs (not TF32) and the tolerance table of
tests/tolerances.py applies unchanged.

With several `workers`, the selected tests are collected first and dealt out to that many
pytest processes that run at once (compiling is most of the time, and it uses the host's
cores), heaviest first by the measured cost of their file (FILE_SECONDS); each process keeps the
device's memory free until it needs it (XLA_PYTHON_CLIENT_PREALLOCATE=false). At the time limit each worker is interrupted (SIGINT, so
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
# Seconds each file's selection took in one process (4 examples per property; a 2-core CPU shared
# with other work, 2026-12-07; 512 s in all): the weights that spread the tests over workers
FILE_SECONDS = {"tests/test_diffmoe_model.py": 210, "tests/test_model.py": 120, "tests/test_objective.py": 42,
                "tests/test_sample.py": 38, "tests/test_shape_head.py": 28, "tests/test_diffmoe.py": 15,
                "tests/test_blocks.py": 15, "tests/test_diffmoe_pools.py": 13, "tests/test_routing.py": 10,
                "tests/test_token_choice.py": 7, "tests/test_primitives.py": 7, "tests/test_flow.py": 6,
                "tests/test_attention.py": 3}


def assign(tests: list[str], workers: int) -> list[list[str]]:
    """Test node ids ('tests/test_x.py::test_y[p]') over at most `workers` groups: each test weighs
    its file's FILE_SECONDS shared equally among the file's selected tests, and the heaviest goes
    to the least loaded group first (longest-processing-time scheduling). Order within a group
    follows the input, so a module-scoped fixture is built once per group."""
    per_file: dict[str, int] = {}
    for t in tests:
        per_file[t.split("::")[0]] = per_file.get(t.split("::")[0], 0) + 1
    weight = {t: FILE_SECONDS.get(t.split("::")[0], 10) / per_file[t.split("::")[0]] for t in tests}
    n = max(1, min(workers, len(tests)))
    groups: list[list[str]] = [[] for _ in range(n)]
    load = [0.0] * n
    for t in sorted(tests, key=lambda t: -weight[t]):
        i = load.index(min(load))
        groups[i].append(t)
        load[i] += weight[t]
    order = {t: k for k, t in enumerate(tests)}
    return [sorted(g, key=order.get) for g in groups if g]


def collect(files: list[str], env: dict) -> list[str]:
    """The node ids the selection picks in `files` (`pytest --collect-only -q`)."""
    proc = subprocess.run([sys.executable, "-m", "pytest", *files, "-k", SELECTION, "--collect-only", "-q",
                           "-p", "no:cacheprovider"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    tests = [ln.strip() for ln in proc.stdout.splitlines() if "::" in ln and ln.strip().startswith("tests/")]
    if not tests:
        raise RuntimeError(f"collecting the equivalence tests failed: {(proc.stdout + proc.stderr)[-800:]}")
    return tests


def pytest_command(targets: list[str], junit: str, examples_profile: str) -> list[str]:
    """pytest on `targets` (files or node ids), the selection, the device profile, a JUnit report."""
    return [sys.executable, "-m", "pytest", *targets, "-k", SELECTION, "-q", "-p", "no:cacheprovider",
            "-p", "ecdit.benchmarks.equivalence_plugin", f"--hypothesis-profile={examples_profile}",
            f"--junitxml={junit}"]


def module_of_file(target: str) -> str | None:
    """'tests/test_routing.py' or a node id in it -> 'routing' (its twin module in EQUIVALENCE_TESTS)."""
    path = target.split("::")[0]
    for module, files in EQUIVALENCE_TESTS.items():
        if path in files:
            return module
    return None


def module_of(classname: str) -> str | None:
    """'tests.test_routing' (a JUnit classname) -> 'routing'."""
    return module_of_file(classname.replace(".", "/") + ".py")


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
    child_env = dict(os.environ if env is None else env, XLA_PYTHON_CLIENT_PREALLOCATE="false",
                     ECDIT_DEVICE_EXAMPLES=str(examples))
    files = [f for m in chosen for f in EQUIVALENCE_TESTS[m]]
    t0 = time.perf_counter()
    # one worker runs the files; several share the tests, so no file's tests wait behind another's
    groups = [files] if workers <= 1 else assign(collect(files, child_env), workers)
    tmp = tempfile.mkdtemp(prefix="ecdit-equivalence-")
    procs = []
    for i, group in enumerate(groups):
        junit = os.path.join(tmp, f"worker{i}.xml")
        if log:
            log(f"equivalence worker {i}: {len(group)} " + ("files" if workers <= 1 else "tests") + " of "
                + ", ".join(sorted({module_of_file(t) for t in group})))
        procs.append((group, junit, subprocess.Popen(pytest_command(group, junit, PROFILE), cwd=ROOT, env=child_env,
                                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    result["workers"] = len(procs)
    shown = pytest_command(files, "REPORT.xml", PROFILE)
    shown[0] = "python"
    result["command"] = " ".join(f'"{a}"' if " " in a else a for a in shown)
    deadline = t0 + time_limit_s
    cases, tails = [], []
    complete = {m: True for m in chosen}
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
        ok = finished and proc.returncode in (0, 1) and os.path.isfile(junit)
        for m in {module_of_file(t) for t in group}:
            complete[m] = complete.get(m, True) and ok
    left = time_limit_s - (time.perf_counter() - t0)
    if len(procs) > 1 and not cases and not result["timed_out"] and left > 30:
        # no worker reported a single test: the device may admit one process at a time (a GPU in
        # exclusive-process mode); once more in one process, in the time that is left
        if log:
            log("equivalence: no worker reported a test; once more in one process")
        again = run_equivalence(modules, examples, 1, left, log, env)
        again["note"] = "several workers reported nothing (their output is in the JSON); run again in one process"
        again["first_try_output"] = tails
        again["duration_s"] = time.perf_counter() - t0
        return again
    result["duration_s"] = time.perf_counter() - t0
    result["modules"] = summarise(cases, chosen, complete)
    result["output_tail"] = tails
    result["ok"] = bool(chosen) and all(r["status"] == "passed" for r in result["modules"].values())
    return result
