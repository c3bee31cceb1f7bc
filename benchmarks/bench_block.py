"""pytest-benchmark: one DiT block (Fig. 2) with an EC MoE or the FLOP-equal dense FFN,
JAX against the NumPy reference in the same group; forward and forward+backward (JAX)."""
import pytest

from . import workloads as W
from .timing import rounds_for, timed


def pytest_generate_tests(metafunc):
    if "block_case" in metafunc.fixturenames:
        cases = W.SUITE_BLOCK_CASES[metafunc.config.getoption("--bench-size")]
        metafunc.parametrize("block_case", cases, ids=[c.key for c in cases], scope="module")


@pytest.mark.parametrize("impl", ["acc", "ref"])
@pytest.mark.parametrize("kind", W.BLOCK_KINDS)
def test_block_forward(benchmark, block_case, kind, impl):
    call = W.make_block_call(block_case, kind, impl, "fwd")
    seconds = timed(call)                                        # compile + warm-up
    benchmark.group = f"block forward {block_case.label}"
    benchmark.extra_info.update(case=block_case.label, variant=kind, impl=impl)
    benchmark.pedantic(call, rounds=rounds_for(seconds), iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("kind", W.BLOCK_KINDS)
def test_block_forward_backward(benchmark, block_case, kind):
    call = W.make_block_call(block_case, kind, "acc", "fwdbwd")
    seconds = timed(call)
    benchmark.group = f"block forward+backward {block_case.label}"
    benchmark.extra_info.update(case=block_case.label, variant=kind, impl="acc")
    benchmark.pedantic(call, rounds=rounds_for(seconds), iterations=1, warmup_rounds=1)
