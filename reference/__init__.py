"""The specification (installed as `ecdit.reference`): every EC-DiT equation in plain NumPy,
written to be read.

Modules, in reading order: `primitives` (softmax, GELU, LayerNorm, dense FFN), `flow` (Sec. 2.1,
Eq. 1 and the Euler sampler), `attention` (Sec. 2.2, Eq. 2-3 and GQA), `routing` (Sec. 2.3,
Eq. 5-8, Algorithm 1), `token_choice` (the GShard top-k baseline), `diffmoe` (DiffMoE's batch-level
pool, capacity predictor and dynamic capacity), `blocks` (timestep MLP, AdaLN,
the DiT block with Eq. 4), `model` (the whole text-to-image DiT), `objective` (the training loss)
and `sample` (Euler with classifier-free guidance). `ecdit.accelerated` holds the jit-compiled
JAX twin of each module with the same function names and signatures.

NumPy in, NumPy out; computation stays in the dtype of the inputs (float64 in, float64 out),
so the reference doubles as the float64 oracle for finite-difference gradient checks. It imports
only NumPy and `ecdit.core` (configs and the argument contracts both halves share): no JAX.
"""
from . import attention, blocks, diffmoe, flow, model, objective, primitives, routing, sample, token_choice  # noqa: F401

MODULES = ("primitives", "flow", "attention", "routing", "token_choice", "diffmoe", "blocks", "model", "objective",
           "sample")
