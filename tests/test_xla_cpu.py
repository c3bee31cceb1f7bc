"""The twin's two XLA:CPU speed measures change no numbers: `dots.dot_last` is `x @ w` at every
rank (value and gradient), and `xla_flags.apply_cpu_defaults` adds its flag exactly when the user
has not chosen, and a fresh interpreter that imports ecdit.accelerated runs under it."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from ecdit.accelerated import dots, xla_flags
from tests.helpers import normal, seeds
from tests.tolerances import assert_close

lead_shapes = st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple)


@given(lead=lead_shapes, d=st.integers(1, 7), f=st.integers(1, 7), seed=seeds)
def test_dot_last_is_matmul_over_the_last_axis_at_every_rank(lead, d, f, seed):
    rng = np.random.default_rng(seed)
    x, w = normal(rng, lead + (d,)), normal(rng, (d, f))
    out = jax.jit(dots.dot_last)(x, w)
    assert out.shape == lead + (f,)
    assert_close(out, x.astype(np.float64) @ w)


@given(lead=lead_shapes.filter(len), seed=seeds)
def test_dot_last_has_the_gradient_of_matmul(lead, seed):
    rng = np.random.default_rng(seed)
    x, w, ct = normal(rng, lead + (3,)), normal(rng, (3, 4)), normal(rng, lead + (4,))
    grads = jax.grad(lambda a, b: jnp.sum(dots.dot_last(a, b) * ct), argnums=(0, 1))(x, w)
    expected = jax.grad(lambda a, b: jnp.sum((a @ b) * ct), argnums=(0, 1))(x, w)
    for g, e in zip(grads, expected):
        assert_close(g, e)


def test_the_default_flag_is_added_only_when_the_user_has_not_chosen():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert xla_flags.apply_cpu_defaults(env) is True
    assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8 " + xla_flags.FLAG
    assert xla_flags.apply_cpu_defaults(env) is False              # already there: not added twice
    assert env["XLA_FLAGS"].count("ynn_fusion_type") == 1
    chosen = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}
    assert xla_flags.apply_cpu_defaults(chosen) is False
    assert chosen["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"
    opted_out = {"ECDIT_XLA_DEFAULTS": "0"}
    assert xla_flags.apply_cpu_defaults(opted_out) is False and "XLA_FLAGS" not in opted_out
    empty = {}
    assert xla_flags.apply_cpu_defaults(empty) is True and empty["XLA_FLAGS"] == xla_flags.FLAG


def test_importing_the_twin_sets_the_flag_before_jax_makes_a_backend():
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "ECDIT_XLA_DEFAULTS")}
    code = ("import os, jax._src.xla_bridge as xb; import ecdit.accelerated; "
            "print(xb.backends_are_initialized(), os.environ.get('XLA_FLAGS', ''))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         check=True).stdout.split()
    assert out[0] == "False"
    assert (xla_flags.FLAG in out[1:]) == (xla_flags._jaxlib_version() >= xla_flags.MIN_JAXLIB)
