"""The argument-contract language of ecdit.core.checks: names bind across arguments, the argument
that disagrees is the one named, and both halves run one contract with one message."""
import gc

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecdit.core import contracts
from ecdit.core.checks import FINITE, POSITIVE, Array, Contract, Instance, Int, Params, checked

f32 = np.float32


def zeros(*shape, dtype=f32):
    return np.zeros(shape, dtype)


def message(contract, **args):
    with pytest.raises(ValueError) as info:
        contract.check(args)
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# Binding names across arguments
# ---------------------------------------------------------------------------------------------

def test_a_name_binds_on_first_sight_and_the_disagreeing_argument_is_named():
    c = Contract(x="G S D", w_router="D E")
    assert c.check({"x": zeros(2, 8, 4), "w_router": zeros(4, 3)}) == {"G": 2, "S": 8, "D": 4, "E": 3}
    assert message(c, x=zeros(2, 8, 4), w_router=zeros(5, 3)) == (
        "w_router: shape (5, 3) does not fit (D, E): axis D has length 5, but x set D = 4")


def test_the_checking_order_decides_which_argument_is_blamed():
    a, b = zeros(2, 3), zeros(2, 4)
    assert message(Contract(x0="B *rest", velocity="B *rest"), x0=a, velocity=b).startswith("velocity:")
    assert message(Contract(velocity="B *rest", x0="B *rest"), x0=a, velocity=b).startswith("x0:")


def test_rank_dtype_and_emptiness_are_named_with_the_expected_layout():
    c = Contract(index=Array("G E C", dtype="int"))
    assert message(c, index=zeros(2, 3, dtype=np.int32)) == "index: expected a rank-3 array (G, E, C), got shape (2, 3)"
    assert message(c, index=zeros(2, 3, 1)) == "index: expected integer entries (G, E, C), got dtype float32"
    assert message(c, index=zeros(2, 0, 1, dtype=np.int32)) == (
        "index: expected a non-empty array (G, E, C), got shape (2, 0, 1)")
    assert message(Contract(x="... D"), x=np.array(["a", "b"])).startswith("x: expected a numeric array")


def test_a_star_name_binds_a_run_of_axes_and_dots_match_any():
    c = Contract(x0="B *rest", noise="B *rest", t="B")
    assert c.check({"x0": zeros(2, 3, 4), "noise": zeros(2, 3, 4), "t": zeros(2)})["rest"] == (3, 4)
    assert message(c, x0=zeros(2, 3, 4), noise=zeros(2, 3, 5), t=zeros(2)).startswith(
        "noise: shape (2, 3, 5) does not fit (B, *rest): axis *rest has length (3, 5), but x0 set *rest = (3, 4)")
    assert Contract(x="... D").check({"x": zeros(4)}) == {"D": 4}
    assert message(Contract(x="... D"), x=np.float32(1.0)) == "x: expected an array of rank >= 1 (..., D), got shape ()"


def test_expressions_are_checked_once_every_name_is_bound():
    c = Contract(w="D 6*D", b="6*D", x="B D")                    # D is bound by x, listed last
    c.check({"w": zeros(2, 12), "b": zeros(12), "x": zeros(1, 2)})
    assert message(c, w=zeros(2, 12), b=zeros(11), x=zeros(1, 2)) == (
        "b: shape (11,) does not fit (6*D,): axis 6*D has length 11, expected 12 (D = 2)")


def test_integers_bind_and_bound_each_other():
    c = Contract(x="B S D", num_heads=Int(binds="N", divides="D"), num_kv_heads=Int(divides="N"),
                 capacity=Int(at_most="S", why="an expert cannot choose a token twice"))
    assert c.check({"x": zeros(1, 4, 6), "num_heads": 3, "num_kv_heads": 1, "capacity": 4})["N"] == 3
    assert message(c, x=zeros(1, 4, 6), num_heads=4, num_kv_heads=1, capacity=1) == (
        "num_heads: 4 does not divide D = 6")
    assert message(c, x=zeros(1, 4, 6), num_heads=3, num_kv_heads=2, capacity=1) == (
        "num_kv_heads: 2 does not divide N = 3")
    assert message(c, x=zeros(1, 4, 6), num_heads=3, num_kv_heads=1, capacity=5) == (
        "capacity: 5 exceeds S = 4 (an expert cannot choose a token twice)")
    for bad in (True, 2.0, "3", 0):
        assert message(c, x=zeros(1, 4, 6), num_heads=bad, num_kv_heads=1, capacity=1).startswith("num_heads: expected")


def test_floats_refuse_bools_non_finite_values_and_values_out_of_range():
    c = Contract(mu=FINITE, sigma=POSITIVE)
    c.check({"mu": -2, "sigma": 0.5})
    assert message(c, mu=True, sigma=1.0) == "mu: expected a number, got True"
    assert message(c, mu=float("nan"), sigma=1.0) == "mu: expected a finite number, got nan"
    assert message(c, mu=0.0, sigma=0.0) == "sigma: expected a number > 0.0, got 0.0"


def test_optional_arguments_accept_none_and_params_name_the_missing_key():
    c = Contract(mask=Array("B L", dtype="bool", optional=True),
                 params=Params(w="D D", b=Array("D", optional=True)))
    c.check({"mask": None, "params": {"w": zeros(2, 2)}})
    assert message(c, mask=None, params={"b": zeros(2)}) == (
        "params: missing parameter(s) ['w']; expected keys ('w', 'b')")
    assert message(c, mask=None, params={"w": zeros(2, 3)}).startswith("params['w']: shape (2, 3)")
    assert message(c, mask=None, params=[1]) == "params: expected a dict of arrays with keys ('w', 'b'), got list"


def test_value_checks_name_nan_entries_and_indices_out_of_range():
    c = Contract(x="G S D", index=Array("G E C", dtype="int", below="S"))
    bad = zeros(1, 3, 2)
    bad[0, 1, 1] = np.inf
    assert message(c, x=bad, index=np.zeros((1, 2, 1), np.int32)) == "x: contains NaN or infinity"
    assert message(c, x=zeros(1, 3, 2), index=np.full((1, 2, 1), 3, np.int32)) == (
        "index: entries must lie in [0, S = 3), got range [3, 3]")
    assert message(c, x=jnp.asarray(bad), index=np.zeros((1, 2, 1), np.int32)) == "x: contains NaN or infinity"


def test_a_jax_array_is_scanned_once_and_every_new_array_again(monkeypatch):
    """A JAX array is immutable, so the finiteness scan runs once per array object: the same
    weights on every call cost one scan; a changed copy, a NaN array (never remembered) and an
    array made after the first one was freed are all scanned."""
    from ecdit.core import checks
    scanned = []
    real = checks._jax_all_finite
    monkeypatch.setattr(checks, "_jax_all_finite", lambda a: scanned.append(a.shape) or real(a))
    c = Contract(x="B D")
    good = jnp.ones((2, 3))
    for _ in range(3):
        c.check({"x": good})
    assert len(scanned) == 1
    bad = good.at[0, 1].set(jnp.nan)
    for _ in range(2):
        assert message(c, x=bad) == "x: contains NaN or infinity"
    assert len(scanned) == 3
    key = id(good)
    assert key in checks._KNOWN_FINITE
    del good
    gc.collect()
    assert key not in checks._KNOWN_FINITE                      # freed: its id may be reused by another array
    assert message(c, x=jnp.full((2, 3), jnp.inf)) == "x: contains NaN or infinity"
    assert len(scanned) == 4


def test_value_checks_are_skipped_on_tracers_but_shapes_are_not():
    c = Contract(x="B D")
    seen = []

    @jax.jit
    def f(x):
        seen.append(c.check({"x": x}))                           # NaN inside is unknowable while tracing
        return x

    bad = np.full((2, 3), np.nan, f32)
    f(bad)
    assert seen == [{"B": 2, "D": 3}]
    with pytest.raises(ValueError, match="^x: expected a rank-2 array"):
        jax.jit(lambda x: c.check({"x": x}))(zeros(3))


def test_instance_and_where_hooks_name_their_argument():
    c = Contract(fn=Instance("callable", "a callable"), where=lambda a, d: None)
    assert message(c, fn=3) == "fn: expected a callable, got int"

    def even(args, dims):
        if dims["B"] % 2:
            raise ValueError(f"x: expected an even batch, got {dims['B']}")
    assert message(Contract(x="B", where=even), x=zeros(3)) == "x: expected an even batch, got 3"


# ---------------------------------------------------------------------------------------------
# The decorator, and one contract for both halves
# ---------------------------------------------------------------------------------------------

def test_a_contract_naming_an_argument_the_function_lacks_fails_at_decoration():
    with pytest.raises(TypeError, match=r"names unknown argument\(s\) \['y'\]"):
        @checked(Contract(y="B"))
        def f(x):
            return x


def test_checked_runs_the_contract_with_defaults_and_keywords_bound():
    @checked(Contract(x="B D", eps=POSITIVE))
    def norm(x, eps=1e-6):
        return x

    assert norm(zeros(1, 2)) is not None
    with pytest.raises(ValueError, match="^eps: expected a number > 0.0, got -1.0"):
        norm(zeros(1, 2), eps=-1.0)
    assert norm.contract.specs.keys() == {"x", "eps"}


def test_every_public_function_of_both_halves_runs_the_contract_of_its_name():
    from ecdit import accelerated, reference
    from tests.test_mirror import public_functions
    for module in reference.MODULES:
        for half in (reference, accelerated):
            for name, fn in public_functions(getattr(half, module)).items():
                assert fn.contract is getattr(contracts, name), f"{half.__name__}.{module}.{name}"
