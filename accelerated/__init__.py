"""The fast twin of `reference/`: the same modules, function names and signatures in JAX,
jit-compiled, written for speed (gather/scatter dispatch, one batched matmul for all experts,
fused attention) without changing the maths. Property tests in tests/ prove each function equal
to its reference within the float32 tolerance of tests/tolerances.py.

Accepts NumPy or JAX arrays, returns JAX arrays. Arguments that fix shapes (capacity, heads,
group size, number of steps) are static: a new value compiles a new program once.
"""
from accelerated import attention, blocks, flow, primitives, routing  # noqa: F401
