"""The fast twin of `ecdit.reference` (installed as `ecdit.accelerated`): the same modules,
function names and signatures in JAX, jit-compiled, written for speed (gather/scatter dispatch,
one batched matmul for all experts, fused attention) without changing the maths. Property tests
in tests/ prove each function equal to its reference within the float32 tolerance of
tests/tolerances.py; a `# JAX:` note marks every place that departs from the reference's form.

Every public function goes through `jit.checked_jit`: the contract the reference runs, then the
compiled body. Accepts NumPy or JAX arrays, returns JAX arrays. Arguments that fix shapes
(capacity, heads, group size, number of steps, the config) are static: a new value compiles a new
program once.
"""
from .xla_flags import apply_cpu_defaults

apply_cpu_defaults()                 # before JAX creates a backend: XLA_FLAGS is read once (xla_flags.py)

from . import attention, blocks, diffmoe, flow, model, objective, primitives, routing, sample, token_choice  # noqa: E402,F401

# The twin's modules beyond the mirror: the jit helper, the 2-D matmul helper, the XLA:CPU default,
# and the sharded (device-mesh) forms of the expert-choice layer, whose specification is `routing.expert_choice_moe` itself
HELPERS = ("jit", "dots", "xla_flags", "expert_parallel")
MODULES = ("primitives", "flow", "attention", "routing", "token_choice", "diffmoe", "blocks", "model", "objective",
           "sample")
