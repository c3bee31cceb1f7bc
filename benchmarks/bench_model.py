"""pytest-benchmark: the whole model — one training step (forward, backward, the optimiser update) and the
Euler + CFG sampler — for EC-DiT, the dense DiT, the FLOP-equal dense DiT and token-choice
top-2. JAX only (the reference has no optimiser or jit-compiled sampler)."""
import pytest

from . import workloads as W
from .timing import rounds_for, timed


@pytest.fixture(scope="module")
def model_size(bench_size):
    return W.SUITE_MODEL[bench_size]


@pytest.mark.parametrize("kind", W.MODEL_KINDS)
def test_train_step(benchmark, model_size, kind, bench_size):
    if bench_size == "smoke" and kind != "expert_choice":
        pytest.skip("smoke: one train step compile is enough to prove the benchmark runs")
    size, batch, _, _ = model_size
    call = W.make_train_step_call(size, kind, batch)
    seconds = timed(call)                                        # compile + warm-up
    benchmark.group = f"train step {size} batch {batch}"
    benchmark.extra_info.update(model=size, variant=W.MODEL_NAMES[kind], batch=batch)
    benchmark.pedantic(call, rounds=rounds_for(seconds, lo=3, hi=10), iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("kind", W.MODEL_KINDS)
def test_sampler(benchmark, model_size, kind, bench_size):
    if bench_size == "smoke" and kind != "expert_choice":
        pytest.skip("smoke: one sampler compile is enough to prove the benchmark runs")
    size, _, batch, steps = model_size
    call = W.make_sampler_call(size, kind, batch, steps)
    seconds = timed(call)
    benchmark.group = f"sampler {size} batch {batch} x {steps} steps"
    benchmark.extra_info.update(model=size, variant=W.MODEL_NAMES[kind], batch=batch, steps=steps)
    benchmark.pedantic(call, rounds=rounds_for(seconds, lo=3, hi=10), iterations=1, warmup_rounds=1)
