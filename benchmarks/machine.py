"""What the benchmarks ran on: processor or GPU, cores, memory, backend, library versions, date.

Every report starts with this, so a table of timings always names its machine. Nothing here
needs root or network access; fields that cannot be read are reported as "unknown".
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess

import jax
import jaxlib
import numpy as np


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def cpu_model() -> str:
    """The processor's marketing name (/proc/cpuinfo on Linux, sysctl on macOS, else platform)."""
    m = re.search(r"^model name\s*:\s*(.+)$", _read("/proc/cpuinfo"), re.M)
    if m:
        return m.group(1).strip()
    if platform.system() == "Darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, timeout=5).stdout.strip() or "unknown"
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The SIMD extensions that matter for float32/bfloat16 matmuls, as reported by the kernel."""
    m = re.search(r"^flags\s*:\s*(.+)$", _read("/proc/cpuinfo"), re.M)
    flags = set(m.group(1).split()) if m else set()
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return [f for f in wanted if f in flags]


def usable_cores() -> int:
    """Cores this process may run on (affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def memory_gib() -> float | None:
    m = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.M)
    return round(int(m.group(1)) / 2**20, 1) if m else None


def load_average() -> tuple[float, float, float] | None:
    """1, 5 and 15 minute load averages (other processes competing for the cores), if known."""
    try:
        return tuple(round(v, 2) for v in os.getloadavg())
    except (AttributeError, OSError):
        return None


def blas_name() -> str:
    """The BLAS NumPy is linked against (OpenBLAS, MKL, Accelerate, ...)."""
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        name = blas.get("name", "unknown")
        version = blas.get("version", "")
        return f"{name} {version}".strip()
    except Exception:                                              # older NumPy: no dict mode
        return "unknown"


def info() -> dict:
    """Everything the report's header prints, as a flat dict of strings and numbers."""

    devices = jax.devices()
    backend = jax.default_backend()
    accel = sorted({d.device_kind for d in devices})
    out = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cpu_flags": ", ".join(cpu_flags()) or "unknown",
        "cores": usable_cores(),
        "memory_gib": memory_gib(),
        "backend": backend,
        "devices": f"{len(devices)} x {', '.join(accel)}",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas_name(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "(unset)"),
        "xla_flags": os.environ.get("XLA_FLAGS", "(unset)"),
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
        "load_average_start": load_average(),
    }
    if backend == "gpu":
        out["gpu"] = ", ".join(accel)
    return out


def describe(info_: dict) -> str:
    """One line naming the machine, e.g. for plot titles."""
    if info_.get("backend") == "gpu":
        return f"{info_.get('gpu')} ({info_['backend']}, jax {info_['jax']})"
    return f"{info_['cpu']}, {info_['cores']} cores ({info_['backend']}, jax {info_['jax']})"
