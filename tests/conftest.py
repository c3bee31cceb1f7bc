"""Shared test set-up: hypothesis profiles and float32 matmul precision.

Profiles (select with HYPOTHESIS_PROFILE=name or --hypothesis-profile=name):
  ci        the default: few examples, derandomized (same examples every run), no deadline —
            keeps the whole suite inside a few minutes on 2 CPU cores;
  thorough  many more examples, for local runs before a release.
"""
import os

import jax
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
