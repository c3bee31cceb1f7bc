"""Timing that survives a noisy machine: warm-up outside the clock, interleaved variants,
medians of per-round ratios, and the matmul peak of the same run.

A single timing on a shared 2-core machine varies by 10-20 % from run to run, mostly through
other processes and the memory allocator. Comparing two variants timed minutes apart mixes
that drift into the ratio; timing them back to back within each round, rotating the order from
round to round, and taking the median over rounds of the per-round ratio cancels most of it.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def block(out):
    """Wait until every array of a (possibly nested) result is computed; NumPy is synchronous."""
    return jax.block_until_ready(out)


def timed(fn: Callable[[], object], iterations: int = 1) -> float:
    """Seconds per call of `fn` (which must block until its result is ready)."""
    t0 = time.perf_counter()
    for _ in range(iterations):
        fn()
    return (time.perf_counter() - t0) / iterations


def time_interleaved(calls: dict[str, Callable[[], object]], rounds: int, *, warmup: int = 1,
                     min_sample_s: float = 0.02, max_iterations: int = 50) -> dict[str, list[float]]:
    """Seconds per call of each zero-argument callable, `rounds` samples each.

    Each callable is first run `warmup` times outside the clock (this is where jit compiles);
    calls faster than `min_sample_s` are repeated within a sample so that timer resolution and
    Python overhead do not dominate. Round r runs the variants in a rotated order (starting at
    the r-th), so no variant always runs first or always after the same neighbour."""
    names = list(calls)
    iters = {}
    for name in names:
        t = 0.0
        for _ in range(max(1, warmup)):
            t = timed(calls[name])
        iters[name] = int(min(max_iterations, max(1, np.ceil(min_sample_s / max(t, 1e-9)))))
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            samples[name].append(timed(calls[name], iters[name]))
    return samples


def median(values) -> float:
    return float(statistics.median(values))


def median_ratio(num: list[float], den: list[float]) -> float:
    """Median over rounds of num[r] / den[r] (both from the same `time_interleaved` call)."""
    return median([a / b for a, b in zip(num, den)])


def spread(values) -> float:
    """Relative spread (max - min) / median of a list of samples, a noise indicator."""
    m = median(values)
    return float((max(values) - min(values)) / m) if m > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# Matmul peak
# ---------------------------------------------------------------------------------------------

def matmul_peak(sizes=(1024, 2048, 3072), repeats: int = 5, dtype: str = "float32",
                numpy: bool = True, precision: str | None = None) -> dict:
    """Best achieved GFLOP/s of square n x n matmuls, JAX (jit) and NumPy, on this machine now.

    The peak a layer is measured against is the best of a few large square matmuls in the same
    run, not a datasheet number: it already includes the cores' clock, the BLAS and the other
    load on the machine. `precision`: JAX's matmul precision ('highest' = true float32; None =
    the default, which is TF32 for float32 on recent NVIDIA GPUs and bf16 passes on TPU).
    Returns {'jax': best, 'numpy': best, 'per_size': {...}, 'peak': max}."""
    rng = np.random.default_rng(0)
    f = jax.jit(lambda a, b: jnp.matmul(a, b, precision=precision))
    per_size = {}
    best = {"jax": 0.0, "numpy": 0.0}
    for n in sizes:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        ja = jnp.asarray(a, dtype=dtype)
        jb = jnp.asarray(b, dtype=dtype)
        calls = {"jax": lambda ja=ja, jb=jb: f(ja, jb).block_until_ready()}
        if numpy and dtype == "float32":
            calls["numpy"] = lambda: a @ b
        samples = time_interleaved(calls, repeats, min_sample_s=0.0)
        flops = 2.0 * n ** 3
        per_size[n] = {k: flops / min(v) / 1e9 for k, v in samples.items()}
        for k, v in per_size[n].items():
            best[k] = max(best[k], v)
        del ja, jb
    return {"jax": best["jax"], "numpy": best["numpy"] if numpy and dtype == "float32" else None,
            "peak": max(best.values()), "per_size": per_size, "dtype": dtype, "precision": precision or "default"}


def rounds_for(seconds_per_call: float, budget_s: float = 2.0, lo: int = 3, hi: int = 20) -> int:
    """Enough timed rounds to fill about `budget_s`, between `lo` and `hi` (pytest-benchmark)."""
    return int(min(hi, max(lo, budget_s / max(seconds_per_call, 1e-6))))
