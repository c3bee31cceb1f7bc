"""pytest set-up of the benchmark suites: `pytest benchmarks/` collects `benchmarks/bench_*.py`.

The project's default run (`pytest`, testpaths = tests) never loads this file, so the suites are
never collected there; their smoke check is tests/test_benchmarks_smoke.py.

Options:
  --bench-size smoke|quick|full   sizes of the suites (default quick, or $ECDIT_BENCH_SIZE)

Timing: pyproject's addopts pass --benchmark-disable to every run (so that tests/ never times
anything). Here timing is switched back on, unless --benchmark-disable is typed on the command
line itself: `pytest benchmarks/` times, `pytest benchmarks/ --benchmark-disable` only runs each
benchmark once (what the smoke test does).
"""
import os

import pytest

SIZES = ("smoke", "quick", "full")


def pytest_addoption(parser):
    parser.addoption("--bench-size", choices=SIZES, default=os.environ.get("ECDIT_BENCH_SIZE", "quick"),
                     help="sizes of the ecdit benchmark suites (default quick)")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    explicit = any(a == "--benchmark-disable" for a in config.invocation_params.args)
    if not explicit and hasattr(config.option, "benchmark_enable"):
        config.option.benchmark_enable = True


def pytest_collect_file(file_path, parent):
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session")
def bench_size(request):
    return request.config.getoption("--bench-size")

