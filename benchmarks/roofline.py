"""The roofline of a benchmarked call: the least time this machine can take for it, from the
matmul peak and the memory bandwidth measured in the same run.

    bound(call) = max(FLOPs / peak, bytes / bandwidth)

and every timed cell is reported as time / bound (1.0 = at the machine's limit). A cell far above
its bound loses time to something other than arithmetic or memory traffic (routing overhead,
small-matrix kernels, copies); a cell near its bound cannot go much faster on this machine.

Bandwidth: STREAM-style kernels (McCalpin's copy `a = b` and triad `a = b + s c`) on float32
arrays far larger than the last-level cache, in JAX (jit) and NumPy; the best rate of either is
the run's bandwidth, as the best square matmul is its peak (timing.matmul_peak). Bytes moved are
counted as STREAM counts them: copy 2 x 4 n, triad 3 x 4 n (reads and writes, no write-allocate).

Bytes of a layer (`layer_bytes`, float32 = 4 bytes): the compulsory traffic of one call when
every array that XLA materialises between two matmuls goes through memory once each way:
  weights            read once: 2 E D F (+ D E router) for the MoE layers, 2 D H for dense
  the input x        read once (G S D), the output written once (G S D)
  expert choice      the dispatched rows E G C D (written by the gather, read by the first matmul),
                     the hidden E G C F (written, read by the second matmul), the expert outputs
                     E G C D (written, read by the combine): 2 x (2 E G C D + E G C F) floats
  dense              the hidden G S H written and read: 2 G S H floats
Forward+backward: three times the matmul FLOPs and, as a lower bound, the forward's bytes plus
the weight gradients written (the same count as the weights) and x's gradient (G S D).
At small E this is activation traffic; at large E the experts' weights dominate (2 E D F floats).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import timing

BYTES = 4                                        # float32


def memory_bandwidth(n_floats: int = 1 << 25, repeats: int = 5, numpy: bool = True) -> dict:
    """Best achieved GB/s of STREAM copy and triad on float32 arrays of `n_floats` (default 32 Mi
    floats = 128 MiB per array, 8x a 16 MiB L3), JAX (jit) and NumPy, on this machine now.

    Returns {'jax': {'copy', 'triad'}, 'numpy': {...} or None, 'bandwidth': best GB/s, 'n_floats'}."""
    rng = np.random.default_rng(0)
    b = rng.random(n_floats, dtype=np.float32)
    c = rng.random(n_floats, dtype=np.float32)
    a = np.empty_like(b)
    jb, jc = jnp.asarray(b), jnp.asarray(c)
    s = np.float32(3.0)
    jcopy = jax.jit(lambda x: x + 0.0)          # a fresh output buffer: a real read and write
    jtriad = jax.jit(lambda x, y: x + s * y)
    calls = {
        "jax copy": lambda: jcopy(jb).block_until_ready(),
        "jax triad": lambda: jtriad(jb, jc).block_until_ready(),
    }
    if numpy:
        calls["numpy copy"] = lambda: np.copyto(a, b)
        calls["numpy triad"] = lambda: np.add(b, np.multiply(c, s, out=a), out=a)
    samples = timing.time_interleaved(calls, repeats, min_sample_s=0.0)
    moved = {"copy": 2 * BYTES * n_floats, "triad": 3 * BYTES * n_floats}
    rates = {name: moved[name.split()[1]] / min(v) / 1e9 for name, v in samples.items()}
    out = {"jax": {k: rates[f"jax {k}"] for k in moved},
           "numpy": {k: rates[f"numpy {k}"] for k in moved} if numpy else None,
           "n_floats": n_floats}
    out["bandwidth"] = max(rates.values())
    del jb, jc
    return out


def layer_bytes(case: dict, kind: str, mode: str = "fwd") -> float:
    """Compulsory bytes of one call of a layer variant (see the module docstring). `case` is a
    sweep case dict (G, S, D, E, C, F, H); kind 'dense' or an expert-choice kind; mode 'fwd', 'jit'
    or 'fwdbwd'."""
    g, s, d = case["G"], case["S"], case["D"]
    x_out = 2 * g * s * d
    if kind == "dense":
        weights = 2 * d * case["H"]
        moved = weights + x_out + 2 * g * s * case["H"]
    else:
        e, c, f = case["E"], case["C"], case["F"]
        weights = 2 * e * d * f + d * e
        moved = weights + x_out + 2 * (2 * e * g * c * d + e * g * c * f)
    if mode == "fwdbwd":
        moved += weights + g * s * d
    return float(BYTES * moved)


def bound_seconds(flops: float, nbytes: float, peak_gflops: float, bandwidth_gbs: float) -> float:
    """The roofline bound max(FLOPs / peak, bytes / bandwidth), seconds."""
    return max(flops / (peak_gflops * 1e9), nbytes / (bandwidth_gbs * 1e9))


def limit(flops: float, nbytes: float, peak_gflops: float, bandwidth_gbs: float) -> str:
    """Which roof binds: 'compute' or 'memory'."""
    return "compute" if flops / (peak_gflops * 1e9) >= nbytes / (bandwidth_gbs * 1e9) else "memory"
