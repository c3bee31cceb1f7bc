"""The specification: every EC-DiT equation in plain NumPy, written to be read.

Modules, in reading order: `primitives` (softmax, GELU, LayerNorm, dense FFN), `flow` (Sec. 2.1,
Eq. 1), `attention` (Sec. 2.2, Eq. 2-3 and GQA), `routing` (Sec. 2.3, Eq. 5-8, Algorithm 1),
`blocks` (timestep MLP, AdaLN, the DiT block with Eq. 4). `accelerated/` holds the jit-compiled
JAX twin of each module with the same function names and signatures.

NumPy in, NumPy out; computation stays in the dtype of the inputs (float64 in, float64 out),
so the reference doubles as the float64 oracle for finite-difference gradient checks.
"""
from reference import attention, blocks, flow, primitives, routing  # noqa: F401
