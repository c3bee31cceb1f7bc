"""Bad input: every public function of both halves raises ValueError whose message starts with
the offending argument's name ("x: ...") — never a silent wrong answer."""
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecdit.core import checks as validate
from ecdit.core import params as init
from tests.helpers import HALVES

rng = np.random.default_rng(0)
f32 = np.float32
X = rng.standard_normal((2, 8, 4)).astype(f32)                   # (G or B, S, D)
MOE = init.init_moe(rng, 4, 6, 4)                                # w_router (4, 4), w1 (4, 4, 6), w2 (4, 6, 4)
ATT = init.init_self_attention(rng, 4, 2, 1)
CROSS = init.init_cross_attention(rng, 4, 3)
Y = rng.standard_normal((2, 3, 3)).astype(f32)                   # (B, L, Dy)
C = rng.standard_normal((2, 4)).astype(f32)                      # (B, D)
BLOCK = init.init_block(rng, 4, 3, 2, 1, 6, num_experts=4, adaln_zero=False)
TC_BLOCK = {k: v for k, v in BLOCK.items() if k != "expert_choice"} | {"token_choice": BLOCK["expert_choice"]}
INDEX = np.zeros((2, 4, 3), np.int64)                            # (G, E, C)
NAN_X = X.copy()
NAN_X[0, 0, 0] = np.nan


def moe(x=X, w_router=MOE["w_router"], w1=MOE["w1"], w2=MOE["w2"], capacity_factor=2.0):
    return ("routing", "expert_choice_moe", (x, w_router, w1, w2, capacity_factor))


CASES = [
    # routing: shapes, ranks, capacities, non-finite values
    (moe(x=X[0]), "x"),
    (moe(w_router=MOE["w_router"][:3]), "w_router"),
    (moe(w1=MOE["w1"][:3]), "w1"),
    (moe(w2=MOE["w2"][:, :5]), "w2"),
    (moe(capacity_factor=0.0), "capacity_factor"),
    (moe(capacity_factor=-1.0), "capacity_factor"),
    (moe(capacity_factor=float("nan")), "capacity_factor"),
    (moe(capacity_factor=0.1), "capacity_factor"),                  # C = round(8 * 0.1 / 4) = 0 < 1
    (moe(capacity_factor=5.0), "capacity_factor"),                  # C = 10 > S = 8
    (moe(x=NAN_X), "x"),
    (moe(x=jnp.asarray(NAN_X)), "x"),                               # a JAX array is checked too
    (moe(w1=np.full_like(MOE["w1"], np.inf)), "w1"),
    (("routing", "expert_choice_moe_onehot", (X, MOE["w_router"], MOE["w1"], MOE["w2"], 0.1)), "capacity_factor"),
    (("routing", "expert_capacity", (0, 4, 2.0)), "tokens_per_group"),
    (("routing", "expert_capacity", (8, 0, 2.0)), "num_experts"),
    (("routing", "expert_capacity", (8, 4, True)), "capacity_factor"),
    (("routing", "router_affinity", (X, MOE["w_router"][:2])), "w_router"),
    (("routing", "expert_choice_gating", (X, 0)), "capacity"),
    (("routing", "expert_choice_gating", (X, 9)), "capacity"),
    (("routing", "expert_choice_gating", (X, 2.5)), "capacity"),
    (("routing", "dispatch", (X, INDEX + 8)), "index"),              # token 8 of 8 does not exist
    (("routing", "dispatch", (X, INDEX.astype(f32))), "index"),
    (("routing", "expert_ffn", (X[:, None].repeat(4, 1)[..., :3, :], MOE["w1"][:, :3], MOE["w2"])), "w1"),
    (("routing", "combine", (np.zeros((2, 4, 3, 4), f32), np.zeros((2, 4, 2), f32), INDEX, 8)), "gating"),
    (("routing", "experts_per_token", (INDEX, 0)), "num_tokens"),
    (("routing", "group_tokens", (X, 5)), "group_size"),
    (("routing", "ungroup_tokens", (X, 3)), "batch_size"),
    # flow
    (("flow", "logit_normal_timesteps", (np.zeros(3, f32), 0.0, 0.0)), "sigma"),
    (("flow", "logit_normal_timesteps", (np.zeros((3, 1), f32), 0.0, 1.0)), "z"),
    (("flow", "interpolate", (X, X, np.zeros(3, f32))), "t"),
    (("flow", "interpolate", (X, X[:, :4], np.zeros(2, f32))), "noise"),
    (("flow", "interpolate", (NAN_X, X, np.zeros(2, f32))), "x0"),
    (("flow", "rectified_flow_loss", (X[:, :4], X, X)), "velocity"),
    (("flow", "euler_sample", (lambda x, t: x, X, 0)), "num_steps"),
    (("flow", "euler_sample", ("not a function", X, 2)), "velocity_fn"),
    (("flow", "euler_sample", (lambda x, t: x, NAN_X, 2)), "noise"),
    # attention
    (("attention", "self_attention", (X, ATT, 3, 1)), "num_heads"),
    (("attention", "self_attention", (X, ATT, 2, 3)), "num_kv_heads"),
    (("attention", "self_attention", (X, {"wq": ATT["wq"]}, 2, 1)), "params"),
    (("attention", "self_attention", (X, dict(ATT, wk=ATT["wq"]), 2, 1)), "params['wk']"),
    (("attention", "cross_attention", (X, Y[:1], CROSS, 2, None)), "y"),
    (("attention", "cross_attention", (X, Y, CROSS, 2, np.zeros((2, 3), bool))), "text_mask"),
    (("attention", "cross_attention", (X, Y, CROSS, 2, np.ones((2, 4), bool))), "text_mask"),
    (("attention", "cross_attention", (X, Y, dict(CROSS, wk=CROSS["wq"]), 2, None)), "params['wk']"),
    # blocks
    (("blocks", "sinusoidal_embedding", (np.zeros(2, f32), 7)), "dim"),
    (("blocks", "sinusoidal_embedding", (np.full(2, np.inf, f32), 8)), "t"),
    (("blocks", "modulate", (X, C[:1], C)), "shift"),
    (("blocks", "dit_block", (X, C[:, :3], Y, BLOCK, 2, 1)), "c"),
    (("blocks", "dit_block", (X, C, Y, dict(BLOCK, dense=init.init_ffn(rng, 4, 6)), 2, 1)), "params"),
    (("blocks", "dit_block", (X, C, Y, BLOCK, 2, 1, 2.0, 5)), "group_size"),
    (("blocks", "dit_block", (X, C, Y, BLOCK, 2, 1, 0.0)), "capacity_factor"),
    (("blocks", "dit_block", (X, C, Y, dict(BLOCK, token_choice=BLOCK["expert_choice"]), 2, 1)), "params"),
    (("blocks", "dit_block", (X, C, Y, TC_BLOCK, 2, 1, 2.0, None, None, 0)), "num_selected"),
    (("blocks", "dit_block", (X, C, Y, TC_BLOCK, 2, 1, 2.0, None, None, 5)), "num_selected"),  # top-5 of E = 4
    # primitives
    (("primitives", "softmax", (X, 3)), "axis"),
    (("primitives", "layer_norm", (X, -1.0)), "eps"),
    (("primitives", "feed_forward", (X, MOE["w1"][0][:3], MOE["w2"][0])), "w1"),
    (("primitives", "gelu_tanh", (NAN_X,)), "x"),
]


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("case, argument", CASES, ids=[f"{c[1]}-{a}-{i}" for i, (c, a) in enumerate(CASES)])
def test_bad_input_raises_a_value_error_starting_with_the_argument_name(half, case, argument):
    module, name, args = case
    fn = getattr(getattr(half, module), name)
    with pytest.raises(ValueError) as info:
        fn(*args)
    message = str(info.value)
    assert message.startswith(argument + ":"), message


@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
       bad=st.sampled_from([np.nan, np.inf, -np.inf, None]),
       dtype=st.sampled_from(["float32", "float16", "bfloat16"]),
       scale=st.sampled_from([1.0, 1e30, 1e-30]),
       where=st.integers(0, 10**6))
def test_finite_check_on_jax_arrays_flags_exactly_the_non_finite_ones(shape, bad, dtype, scale, where):
    """validate.finite on a JAX array (the fused sum(x * 0) scan) rejects one NaN/inf anywhere
    and accepts every finite array, however large or tiny its entries."""
    values = (np.random.default_rng(where).standard_normal(shape) * scale).astype(np.float32)
    values = np.clip(values, -6e4, 6e4) if dtype == "float16" else values
    if bad is not None:
        values.reshape(-1)[where % values.size] = bad
    a = jnp.asarray(values, dtype=dtype)
    if bad is None and bool(jnp.all(jnp.isfinite(a))):
        validate.finite("w1", a)
    elif bad is not None:
        with pytest.raises(ValueError, match="^w1: contains NaN or infinity"):
            validate.finite("w1", a)
