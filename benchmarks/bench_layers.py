"""pytest-benchmark: the FFN / MoE layer, forward and forward+backward.

One group per (mode, size): EC MoE with gather/scatter dispatch, the same layer as the literal
one-hot Algorithm 1, token-choice top-2 and the FLOP-equal dense FFN, in JAX (public API, and
the compiled body without the argument check) and, at small sizes, the NumPy reference, so they
print side by side. Compilation and one warm-up call happen before the timed region; every timed
JAX call ends in block_until_ready (see benchmarks/workloads.py for what each mode times).

    pytest benchmarks/bench_layers.py                      # quick sizes, timed
    pytest benchmarks/bench_layers.py --bench-size=full
"""
import pytest

from . import workloads as W
from .timing import rounds_for, timed


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        cases = W.SUITE_LAYER_CASES[metafunc.config.getoption("--bench-size")]
        metafunc.parametrize("case", cases, ids=[c.key for c in cases], scope="module")


@pytest.fixture(scope="module")
def arrays(case):
    a = W.make_arrays(case)
    yield a
    a.release()


def _bench(benchmark, call, group, case, kind, **info):
    seconds = timed(call)                                        # compile + warm-up, not timed
    benchmark.group = group
    benchmark.extra_info.update(case=case.label, variant=W.LAYER_NAMES[kind],
                                gflop=case.layer_flops(kind) / 1e9, **info)
    benchmark.pedantic(call, rounds=rounds_for(seconds), iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("impl", ["acc", "acc-jitted", "ref"])
@pytest.mark.parametrize("kind", W.LAYER_KINDS)
def test_layer_forward(benchmark, case, arrays, kind, impl, bench_size):
    if impl == "ref" and case.tokens > W.SUITE_REFERENCE_MAX_TOKENS[bench_size]:
        pytest.skip("the NumPy reference is timed at small sizes only")
    if impl == "acc-jitted":
        call = W.make_call(kind, "acc", "jit", case, arrays)
    else:
        call = W.make_call(kind, impl, "fwd", case, arrays)
    _bench(benchmark, call, f"layer forward {case.label}", case, kind, impl=impl)


@pytest.mark.parametrize("kind", W.LAYER_KINDS)
def test_layer_forward_backward(benchmark, case, arrays, kind):
    call = W.make_call(kind, "acc", "fwdbwd", case, arrays)
    _bench(benchmark, call, f"layer forward+backward {case.label}", case, kind, impl="acc")


def test_layer_argument_check(benchmark, case, arrays):
    """What the public API adds to the compiled body: the shared shape + finite-value check."""
    call = W.make_call(W.EXPERT_CHOICE, "acc", "check", case, arrays)
    _bench(benchmark, call, f"layer forward {case.label}", case, W.EXPERT_CHOICE, impl="check only")
