"""The accelerated half is really compiled: every public function is jit-wrapped, jitted equals
eager (jax.disable_jit), and a second call with the same shapes does not retrace."""
import inspect

import jax
import numpy as np
import pytest

from ecdit import accelerated
from ecdit import reference
from ecdit.core import params as init
from tests.tolerances import assert_close

MODULES = ["primitives", "flow", "attention", "routing", "blocks"]
HOST_SIDE = {("routing", "expert_capacity")}      # integer arithmetic on static shapes (docs/equations.md)


def _public_functions(module):
    return {name: fn for name, fn in vars(module).items()
            if inspect.isfunction(fn) and not name.startswith("_") and fn.__module__ == module.__name__}


@pytest.mark.parametrize("module", MODULES)
def test_accelerated_mirrors_reference_names_and_signatures(module):
    ref_fns = _public_functions(getattr(reference, module))
    acc_fns = _public_functions(getattr(accelerated, module))
    assert sorted(ref_fns) == sorted(set(acc_fns) | {n for m, n in HOST_SIDE if m == module and n in ref_fns})
    for name, fn in ref_fns.items():
        assert inspect.signature(acc_fns[name]) == inspect.signature(fn), name


@pytest.mark.parametrize("module", MODULES)
def test_every_public_accelerated_function_is_jit_compiled(module):
    for name, fn in _public_functions(getattr(accelerated, module)).items():
        if (module, name) in HOST_SIDE:
            continue
        assert hasattr(fn, "jitted") and hasattr(fn.jitted, "lower"), f"accelerated.{module}.{name} is not jit-compiled"


def _moe_args():
    rng = np.random.default_rng(0)
    p = init.init_moe(rng, 8, 12, 4)
    return rng.standard_normal((2, 16, 8)).astype(np.float32), p["w_router"], p["w1"], p["w2"]


def test_jitted_moe_equals_eager_moe():
    args = _moe_args()
    out, routing = accelerated.routing.expert_choice_moe(*args, 2.0)
    with jax.disable_jit():
        out_eager, routing_eager = accelerated.routing.expert_choice_moe(*args, 2.0)
    assert_close(out, out_eager)
    np.testing.assert_array_equal(np.asarray(routing["index"]), np.asarray(routing_eager["index"]))


def test_second_call_with_the_same_shapes_does_not_retrace():
    args = _moe_args()
    fn = accelerated.routing.expert_choice_moe
    fn(*args, 2.0)
    before = fn.jitted._cache_size()
    fn(*[a + 1 for a in args], 2.0)                              # new values, same shapes
    assert fn.jitted._cache_size() == before
    fn(*args, 1.0)                                               # a new static capacity compiles once more
    assert fn.jitted._cache_size() == before + 1
