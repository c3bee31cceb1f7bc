"""The benchmarks still run: every pytest-benchmark suite and the report's whole code path, at
tiny sizes with timing disabled. Timings themselves never gate CI.

Both run in this process, so the report reuses the functions the suites compiled (same shapes),
and XLA's optimisations are switched off while they compile (nothing here is timed): that keeps
the check to seconds. The smoke shapes (S = 32, D = 16, a two-layer 'micro' model) are used by no
other test, so no other test meets an executable compiled without optimisations.
"""
import re
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def fast_compiles():
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def test_every_benchmark_suite_runs_at_smoke_size():
    rc = pytest.main([str(ROOT / "benchmarks"), "--bench-size=smoke", "--benchmark-disable", "-q",
                      "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestUnraisableExceptionWarning"])
    assert rc == pytest.ExitCode.OK


def test_report_smoke_sweep_writes_markdown_and_plots(tmp_path):
    from ecdit.benchmarks import run_report
    path = Path(run_report(smoke=True, out_dir=tmp_path, progress=False))
    assert path == tmp_path / "benchmarks.md"
    text = path.read_text()
    for heading in ("## Machine", "## What is timed", "## Targets", "## A. Time against tokens per group S",
                    "## B. Against the number of experts E", "## C. Memory", "## D. Where the time goes",
                    "## E. JAX (jit) against the NumPy reference", "## F. The DiT block", "## G. The whole model",
                    "## J. Expert parallelism"):
        assert heading in text, heading
    # J: the compiled shard_map program moves exactly the formula's bytes, and only by all-to-all
    row = next(line for line in text.splitlines() if line.startswith("| shard_map |")).split(" | ")
    formula_fwd = row[1].split(" / ")[0]
    assert formula_fwd == row[2] and row[3] == f"all-to-all {formula_fwd} (2)", row
    # every target row says met or missed, and every plot it links exists
    rows = [line for line in text.split("## Targets", 1)[1].split("\n## ", 1)[0].splitlines() if line.startswith("| ") and "target" not in line]
    assert rows and all(("**met**" in r) or ("**missed**" in r) for r in rows)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    assert len(links) >= 6
    for link in links:
        assert (tmp_path / link).is_file(), link


def test_report_plans_cover_the_issue_sizes():
    """The --full sweep covers S in {256, 1024, 4096, 16384}, d in {256, 512, 1024},
    E in {4, ..., 64} and f_c in {1, 2}; the quick default is a subset."""
    from ecdit.benchmarks.plans import make_plan
    full, quick = make_plan("full"), make_plan("quick")
    assert set(full.grid_S) == {256, 1024, 4096, 16384}
    assert set(full.grid_D) == {256, 512, 1024}
    assert {d for _, d in full.sweep_SD} == {256, 512, 1024} and {s for s, _ in full.sweep_SD} == {1024, 4096}
    assert set(full.sweep_E) == {4, 8, 16, 32, 64} and set(full.sweep_fc) == {1.0, 2.0}
    assert set(quick.grid_S) <= set(full.grid_S) and set(quick.sweep_E) == set(full.sweep_E)
    for plan in (full, quick):
        for d in plan.grid_D:
            for s in plan.grid_S:
                case = plan.grid_case(s, d)
                assert case.flop_equal and case.E * case.C == case.S * case.fc
