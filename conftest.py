# Root conftest: makes the repository root importable for `pytest` run from a checkout
# (reference/, accelerated/, ecdit/ and benchmarks/ are top-level packages).
