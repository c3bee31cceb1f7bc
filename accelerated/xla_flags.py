"""The XLA:CPU setting the twin runs under by default: no YNNPACK library fusions.

XLA_FLAGS is read once, when JAX creates its first backend, so `apply_cpu_defaults` runs when
`ecdit.accelerated` is imported (before anything of ecdit computes) and changes nothing when:
  - XLA_FLAGS already names `--xla_cpu_experimental_ynn_fusion_type` (the user's choice wins);
  - ECDIT_XLA_DEFAULTS=0 is set (opt out);
  - the installed jaxlib is older than 0.10 (the versions measured; an unknown flag in XLA_FLAGS
    aborts XLA, so the flag is only added where it exists).

Why (measured on the 2-core AMD EPYC CPU machine, jaxlib 0.10.2, 2026-12-04; docs/benchmarks.md
section K re-measures it on every report run, in fresh processes): jaxlib 0.10 hands dots and
their neighbouring elementwise ops to YNNPACK as library fusions by default; with them off XLA's
own dot emitter runs the batched expert matmuls of E = 64 experts x 64 rows, D = 1024, F = 4096
in 0.49 s instead of 1.00 s, and the tiny preset's train step ~10 % faster; no measured case was
slower. The flag changes which kernels run, not the maths: every property test passes under it.
"""
import os

FLAG = "--xla_cpu_experimental_ynn_fusion_type="    # empty list: no YNNPACK library fusions
MIN_JAXLIB = (0, 10)


def _jaxlib_version() -> tuple[int, ...]:
    from importlib import metadata
    try:
        return tuple(int(p) for p in metadata.version("jaxlib").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return (0, 0)


def apply_cpu_defaults(environ=os.environ) -> bool:
    """Append FLAG to environ['XLA_FLAGS'] unless the user chose otherwise (see the module
    docstring). Returns True if it was added. Has no effect on a backend JAX has already created."""
    flags = environ.get("XLA_FLAGS", "")
    if environ.get("ECDIT_XLA_DEFAULTS", "1") == "0" or "xla_cpu_experimental_ynn_fusion_type" in flags:
        return False
    if _jaxlib_version() < MIN_JAXLIB:
        return False
    environ["XLA_FLAGS"] = (flags + " " + FLAG).strip()
    return True
