"""Gradients: jax.grad of the accelerated code agrees with central finite differences of the NumPy
reference, in float64 (jax.enable_x64), on small sizes.

Top-C selection is piecewise constant: away from ties a small perturbation keeps the same tokens,
so the derivative exists and flows through the gating values (Eq. 6, 8) and the experts. Draws
whose C-th and (C+1)-th affinities nearly tie are skipped."""
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

from ecdit import accelerated, reference
from ecdit.core import params as init
from tests.helpers import block_router_input, fewer_examples, seeds, topc_margin
from tests.tolerances import FLOAT64_GRAD, NEAR_TIE_FINITE_DIFFERENCE, assert_close

STEP = 1e-6


def _finite_difference(f, args, which, coords):
    """Central differences of scalar f(*args) along a few coordinates of args[which]."""
    grads = []
    for coord in coords:
        plus = [a.copy() for a in args]
        minus = [a.copy() for a in args]
        plus[which][coord] += STEP
        minus[which][coord] -= STEP
        grads.append((f(*plus) - f(*minus)) / (2 * STEP))
    return np.array(grads)


def _check(f_ref, f_acc, args, rng, coords_per_arg=4):
    with jax.enable_x64(True):
        grads = jax.grad(f_acc, argnums=tuple(range(len(args))))(*[jnp.asarray(a) for a in args])
        for which, (arg, grad) in enumerate(zip(args, grads)):
            flat = rng.choice(arg.size, size=min(coords_per_arg, arg.size), replace=False)
            coords = [np.unravel_index(i, arg.shape) for i in flat]
            expected = _finite_difference(f_ref, args, which, coords)
            actual = np.array([np.asarray(grad)[c] for c in coords])
            assert_close(actual, expected, tol=FLOAT64_GRAD, err_msg=f"argument {which}")


@fewer_examples(3)
@given(g=st.integers(1, 2), s=st.integers(3, 10), d=st.integers(2, 6), e=st.integers(2, 4),
       f=st.integers(2, 6), seed=seeds)
def test_grad_of_the_expert_choice_layer_matches_finite_differences(g, s, d, e, f, seed):
    rng = np.random.default_rng(seed)
    x, w_router = rng.standard_normal((g, s, d)), rng.standard_normal((d, e))
    w1, w2 = rng.standard_normal((e, d, f)) / np.sqrt(d), rng.standard_normal((e, f, d)) / np.sqrt(f)
    probe = rng.standard_normal((g, s, d))                        # a random linear read-out
    capacity = reference.routing.expert_capacity(s, e, 2.0)
    assume(topc_margin(reference.routing.router_affinity(x, w_router), capacity) > NEAR_TIE_FINITE_DIFFERENCE)

    def f_ref(*a):
        return float(np.sum(reference.routing.expert_choice_moe(*a, 2.0)[0] * probe))

    def f_acc(*a):
        return jnp.sum(accelerated.routing.expert_choice_moe(*a, 2.0)[0] * probe)

    _check(f_ref, f_acc, [x, w_router, w1, w2], rng)


@fewer_examples(2)
@given(seed=seeds, moe=st.booleans())
def test_grad_of_the_flow_loss_through_a_dit_block_matches_finite_differences(seed, moe):
    """The training signal end to end: Eq. 1's loss of a block's output, differentiated with
    respect to the input tokens, the text embeddings and the router / FFN weights."""
    rng = np.random.default_rng(seed)
    b, s, d, n, k, l, dy = 2, 4, 4, 2, 1, 3, 3
    p = init.init_block(rng, d, dy, n, k, 6, num_experts=3 if moe else None, adaln_zero=False)
    p = jax.tree.map(lambda a: a.astype(np.float64), p)
    x, c, y = rng.standard_normal((b, s, d)), rng.standard_normal((b, d)), rng.standard_normal((b, l, dy))
    x0, noise = rng.standard_normal((b, s, d)), rng.standard_normal((b, s, d))
    mask = np.array([[True, True, False], [True, False, False]])
    ffn_key = "expert_choice" if moe else "dense"
    w_first = p[ffn_key]["w_router" if moe else "w1"]
    if moe:
        _, _, x_p = block_router_input(x, c, y, p, n, k, mask)
        assume(topc_margin(reference.routing.router_affinity(x_p, w_first), 3) > NEAR_TIE_FINITE_DIFFERENCE)

    def with_weight(w):
        return dict(p, **{ffn_key: dict(p[ffn_key], **{"w_router" if moe else "w1": w})})

    def f_ref(x_, y_, w_):
        v, _ = reference.blocks.dit_block(x_, c, y_, with_weight(w_), n, k, 2.0, None, mask)
        return float(reference.flow.rectified_flow_loss(v, x0, noise))

    def f_acc(x_, y_, w_):
        v, _ = accelerated.blocks.dit_block(x_, c, y_, with_weight(w_), n, k, 2.0, None, mask)
        return accelerated.flow.rectified_flow_loss(v, x0, noise)

    _check(f_ref, f_acc, [x, y, np.array(w_first)], rng)
