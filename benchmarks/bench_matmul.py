"""pytest-benchmark: the machine's float32 matmul, NumPy (BLAS) against jit-compiled JAX — the
peak the layers are compared with."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from .timing import rounds_for, timed

SIZES = {"smoke": (64,), "quick": (1024, 2048), "full": (1024, 2048, 4096)}


def pytest_generate_tests(metafunc):
    if "n" in metafunc.fixturenames:
        metafunc.parametrize("n", SIZES[metafunc.config.getoption("--bench-size")])


@pytest.mark.parametrize("impl", ["acc", "ref"])
def test_matmul(benchmark, n, impl):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    if impl == "acc":
        f = jax.jit(lambda p, q: p @ q)
        ja, jb = jnp.asarray(a), jnp.asarray(b)

        def call():
            return f(ja, jb).block_until_ready()
    else:
        def call():
            return a @ b
    seconds = timed(call)
    benchmark.group = f"matmul {n}x{n} float32"
    benchmark.extra_info.update(gflop=2 * n ** 3 / 1e9, impl=impl)
    benchmark.pedantic(call, rounds=rounds_for(seconds), iterations=1, warmup_rounds=1)
