"""The DiT block (Sec. 2.3, Eq. 4, Fig. 2) and its conditioning: accelerated == reference for the
timestep embedding, AdaLN and dense/MoE blocks, and the structure of Eq. 4."""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import ecdit.accelerated.blocks as acc
import ecdit.reference.attention as ref_attention
import ecdit.reference.blocks as ref
import ecdit.reference.routing as ref_routing
import ecdit.reference.token_choice as ref_token_choice
from ecdit.core import params as init
from tests.helpers import HALVES, block_router_input, fewer_examples, normal, seeds, text_mask, topc_margin
from tests.tolerances import NEAR_TIE, SINUSOIDAL, assert_close


@given(b=st.integers(1, 5), half_dim=st.integers(1, 16), seed=seeds)
def test_sinusoidal_embedding_matches_reference_and_scales_t_by_1000(b, half_dim, seed):
    t = np.random.default_rng(seed).random(b).astype(np.float32)
    dim = 2 * half_dim
    expected = ref.sinusoidal_embedding(t, dim)
    assert_close(acc.sinusoidal_embedding(t, dim), expected, tol=SINUSOIDAL)
    assert_close(expected[:, 0], np.cos(1000.0 * t))            # the first frequency is 1
    assert_close(expected[:, half_dim], np.sin(1000.0 * t))


@given(b=st.integers(1, 4), f=st.integers(2, 8), d=st.integers(1, 8), seed=seeds)
def test_timestep_mlp_and_adaln_match_reference(b, f, d, seed):
    rng = np.random.default_rng(seed)
    t_freq, c, x = normal(rng, (b, f)), normal(rng, (b, d)), normal(rng, (b, 3, d))
    p_t = init.init_timestep_mlp(rng, f, d)
    p_t["b1"] = normal(rng, (d,))
    assert_close(acc.timestep_mlp(t_freq, p_t), ref.timestep_mlp(t_freq, p_t))
    p_a = init.init_adaln(rng, d, zero=False)
    mod_r, mod_a = ref.adaln_modulation(c, p_a), acc.adaln_modulation(c, p_a)
    assert sorted(mod_r) == sorted(mod_a) == sorted(
        ["shift_msa", "scale_msa", "gate_msa", "shift_mlp", "scale_mlp", "gate_mlp"])
    for key in mod_r:
        assert_close(mod_a[key], mod_r[key])
    assert_close(acc.modulate(x, mod_r["shift_msa"], mod_r["scale_msa"]),
                 ref.modulate(x, mod_r["shift_msa"], mod_r["scale_msa"]))


@st.composite
def block_shapes(draw):
    k = draw(st.integers(1, 2))
    n = k * draw(st.integers(1, 2))
    d = n * draw(st.integers(1, 4))
    b, s = draw(st.integers(1, 3)), draw(st.integers(2, 8))
    images_per_group = draw(st.sampled_from([1, 2])) if b % 2 == 0 else 1
    return b, s, d, n, k, draw(st.integers(1, 4)), draw(st.integers(1, 6)), images_per_group


def _block_inputs(seed, b, s, d, n, k, l, dy, num_experts):
    rng = np.random.default_rng(seed)
    p = init.init_block(rng, d, dy, n, k, 2 * d, num_experts=num_experts, adaln_zero=False)
    mask = text_mask(rng, b, l)
    return normal(rng, (b, s, d)), normal(rng, (b, d)), normal(rng, (b, l, dy)), p, mask


@fewer_examples()
@given(shape=block_shapes(), seed=seeds)
def test_dense_block_matches_reference(shape, seed):
    b, s, d, n, k, l, dy, _ = shape
    x, c, y, p, mask = _block_inputs(seed, b, s, d, n, k, l, dy, None)
    out_r, routing_r = ref.dit_block(x, c, y, p, n, k, text_mask=mask)
    out_a, routing_a = acc.dit_block(x, c, y, p, n, k, text_mask=mask)
    assert routing_r is None and routing_a is None
    assert_close(out_a, out_r)


@fewer_examples()
@given(shape=block_shapes(), experts=st.integers(2, 4), seed=seeds)   # f_c = 2 needs E >= 2 (C <= S)
def test_moe_block_matches_reference_with_groups_spanning_images(shape, experts, seed):
    b, s, d, n, k, l, dy, per_group = shape
    x, c, y, p, mask = _block_inputs(seed, b, s, d, n, k, l, dy, experts)
    group_size = per_group * s
    # the router input x_p, rebuilt from the reference pieces, must not sit on a near-tie
    _, _, x_p = block_router_input(x, c, y, p, n, k, mask)
    affinity = ref_routing.router_affinity(ref_routing.group_tokens(x_p, group_size), p["expert_choice"]["w_router"])
    assume(topc_margin(affinity, ref_routing.expert_capacity(group_size, experts, 2.0)) > NEAR_TIE)

    out_r, routing_r = ref.dit_block(x, c, y, p, n, k, 2.0, group_size, mask)
    out_a, routing_a = acc.dit_block(x, c, y, p, n, k, 2.0, group_size, mask)
    assert_close(out_a, out_r)
    np.testing.assert_array_equal(np.asarray(routing_a["experts_per_token"]), routing_r["experts_per_token"])
    assert routing_r["experts_per_token"].shape == (b, s)


@pytest.mark.parametrize("half", HALVES)
def test_block_routes_the_modulated_cross_attention_output(half):
    """Eq. 4 with our reading (docs/errata.md): the router sees x_p = modulate(LN(x_s + MHCA(x_s))),
    the same tensor the experts process. Rebuild it by hand and compare the routing."""
    b, s, d, n, k, l, dy, e = 2, 6, 8, 2, 1, 3, 5, 3
    x, c, y, p, mask = _block_inputs(7, b, s, d, n, k, l, dy, e)
    mod, x_prime, x_p = block_router_input(x, c, y, p, n, k, mask)                        # Eq. 4
    ec = p["expert_choice"]
    moe_out, routing = ref_routing.expert_choice_moe(x_p, ec["w_router"], ec["w1"], ec["w2"], 2.0)
    out, block_routing = half.blocks.dit_block(x, c, y, p, n, k, 2.0, None, mask)
    assert_close(out, x_prime + mod["gate_mlp"][:, None] * moe_out)
    np.testing.assert_array_equal(np.asarray(block_routing["index"]), routing["index"])


@pytest.mark.parametrize("half", HALVES)
def test_token_choice_block_is_the_same_block_with_top_k_routing(half):
    """A block whose params hold 'token_choice' is dit_block with the GShard top-k layer in place
    of expert choice: same attention, Eq. 4 and gating; routing carries the aux loss."""
    b, s, d, n, k, l, dy, e = 2, 6, 8, 2, 1, 3, 5, 3
    x, c, y, p, mask = _block_inputs(11, b, s, d, n, k, l, dy, e)
    p = {key: v for key, v in p.items() if key != "expert_choice"} | {"token_choice": p["expert_choice"]}
    mod, x_prime, x_p = block_router_input(x, c, y, p, n, k, mask)                        # Eq. 4
    tc = p["token_choice"]
    moe_out, routing = ref_token_choice.token_choice_moe(x_p, tc["w_router"], tc["w1"], tc["w2"], 2.0, 1)
    out, block_routing = half.blocks.dit_block(x, c, y, p, n, k, 2.0, None, mask, num_selected=1)
    assert_close(out, x_prime + mod["gate_mlp"][:, None] * moe_out)
    np.testing.assert_array_equal(np.asarray(block_routing["experts_per_token"]),
                                  routing["experts_per_token"].reshape(b, s))
    assert_close(block_routing["aux_loss"], routing["aux_loss"])
    assert int(np.max(block_routing["experts_per_token"])) <= 1


@pytest.mark.parametrize("half", HALVES)
def test_adaln_zero_block_reduces_to_the_ungated_cross_attention_residual(half):
    """With DiT's zero-initialised AdaLN every gate is 0: the block is x + MHCA(x) (Eq. 4 has no gate)."""
    rng = np.random.default_rng(1)
    b, s, d, n, l, dy = 2, 4, 6, 2, 3, 5
    p = init.init_block(rng, d, dy, n, n, 4 * d, num_experts=2, adaln_zero=True)
    x, c, y = normal(rng, (b, s, d)), normal(rng, (b, d)), normal(rng, (b, l, dy))
    out, _ = half.blocks.dit_block(x, c, y, p, n, n)
    assert_close(out, x + ref_attention.cross_attention(x, y, p["cross_attn"], n))
