"""The twin mirrors the specification completely: every module of `reference` has its
`accelerated` twin with the same public functions and signatures; every public accelerated
function is jit-compiled behind the shared contract; jitted equals eager; a second call with the
same shapes does not retrace."""
import inspect

import jax
import numpy as np
import pytest

from ecdit import accelerated, reference
from ecdit.core import params as init
from tests.tolerances import assert_close


def public_functions(module):
    """The module's own public functions (re-exported names, like expert_capacity from the core,
    belong to the module that defines them)."""
    return {name: fn for name, fn in vars(module).items()
            if inspect.isfunction(fn) and not name.startswith("_")
            and getattr(fn, "__module__", None) == module.__name__}


@pytest.mark.parametrize("module", reference.MODULES)
def test_accelerated_mirrors_reference_names_and_signatures(module):
    ref_fns = public_functions(getattr(reference, module))
    acc_fns = public_functions(getattr(accelerated, module))
    assert ref_fns, module
    assert sorted(acc_fns) == sorted(ref_fns)
    for name, fn in ref_fns.items():
        assert inspect.signature(acc_fns[name]) == inspect.signature(fn), name


def test_the_mirror_covers_every_module_of_both_halves():
    def modules(package):
        return {m.name for m in __import__("pkgutil").iter_modules(package.__path__)}
    assert modules(reference) == set(reference.MODULES)
    assert modules(accelerated) == set(reference.MODULES) | set(accelerated.HELPERS)
    assert accelerated.MODULES == reference.MODULES


@pytest.mark.parametrize("module", reference.MODULES)
def test_every_public_accelerated_function_goes_through_checked_jit(module):
    for name, fn in public_functions(getattr(accelerated, module)).items():
        assert hasattr(fn, "jitted") and hasattr(fn.jitted, "lower"), f"accelerated.{module}.{name} is not jit-compiled"
        assert callable(fn.trace_count), name
        ref_fn = getattr(getattr(reference, module), name)
        assert fn.contract is ref_fn.contract, f"{module}.{name}: the halves run different contracts"


def test_capacity_is_one_host_side_function_shared_by_both_halves():
    """C = round(S f_c / E) fixes array shapes, so it is never traced: both halves call the core's."""
    assert reference.routing.expert_capacity is accelerated.routing.expert_capacity


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
    before = fn.trace_count()
    fn(*[a + 1 for a in args], 2.0)                              # new values, same shapes
    assert fn.trace_count() == before
    fn(*args, 1.0)                                               # a new static capacity compiles once more
    assert fn.trace_count() == before + 1
