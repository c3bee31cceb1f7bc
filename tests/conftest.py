"""Shared test set-up: hypothesis profiles and float32 matmul precision.

Profiles (select with HYPOTHESIS_PROFILE=name or --hypothesis-profile=name):
  ci        the default: few examples, derandomized (same examples every run), no deadline —
            keeps the whole suite inside a few minutes on 2 CPU cores;
  thorough  many more examples, for local runs before a release.
"""
import gc
import os

import jax
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=12, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "thorough", max_examples=300, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# GPUs may run float32 matmuls in TF32 unless told otherwise; equivalence tests want true float32.
jax.config.update("jax_default_matmul_precision", "float32")


# Every XLA:CPU executable keeps ~10 memory mappings, and jax.jit keeps every executable it
# compiled. The thorough profile compiles thousands of shapes (1,296 softmax shapes x axes alone
# took a process from 425 to 14,106 mappings, measured); at Linux's default vm.max_map_count of
# 65,530, mmap then fails inside XLA and pytest died with SIGSEGV about half way through the
# suite. So the compiled code is released once the count passes MAX_MAPS; one test adds at most
# ~20,000 (300 examples x 6 axes), which stays under the limit. The ci profile never gets there.
MAX_MAPS = 20_000
_MAPS = "/proc/self/maps"


def memory_map_count() -> int:
    """Number of memory mappings of this process (Linux); 0 where /proc is not available."""
    try:
        with open(_MAPS, "rb") as f:
            return f.read().count(b"\n")
    except OSError:
        return 0


@pytest.fixture(autouse=True)
def _release_compiled_code_before_the_map_limit():
    yield
    if memory_map_count() > MAX_MAPS:
        jax.clear_caches()
        gc.collect()


@pytest.fixture(scope="session")
def walkthrough_pages(tmp_path_factory):
    """The walkthrough built once from this checkout: (output folder, BuildSummary)."""
    from ecdit.app.walkthrough import build
    out = tmp_path_factory.mktemp("walkthrough")
    return out, build(out)
