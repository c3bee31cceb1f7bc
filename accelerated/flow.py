"""Rectified flow (Sec. 2.1, Eq. 1), JAX twin of reference/flow.py; same convention:

    x_t = (1 - t) * x0 + t * noise         data at t = 0, pure noise at t = 1
    velocity target  v = noise - x0;  sampling integrates from t = 1 down to t = 0.
    t = sigmoid(u), u ~ N(mu, sigma)  (logit-normal).

Shapes: B batch, then any trailing axes "...".
"""
import jax
import jax.numpy as jnp
import numpy as np

from accelerated._jit import checked_jit
from ecdit import validate


@checked_jit(validate.logit_normal_timesteps, static_argnames=("mu", "sigma"))
def logit_normal_timesteps(z, mu=0.0, sigma=1.0):
    """pi(t) of Eq. 1: t = sigmoid(mu + sigma * z) with z ~ N(0, 1) given."""
    u = mu + sigma * z                                           # (B,)
    return jax.nn.sigmoid(u)                                     # (B,)  t in (0, 1)


def _per_sample(t, like):
    return t.reshape(t.shape + (1,) * (like.ndim - 1))           # (B, 1, ..., 1)


@checked_jit(validate.interpolate)
def interpolate(x0, noise, t):
    """The straight path of Eq. 1: x_t = (1 - t) x0 + t noise (data at t = 0)."""
    t_b = _per_sample(t, x0)                                     # (B, 1, ...)
    return (1.0 - t_b) * x0 + t_b * noise                        # (B, ...)


@checked_jit(validate.velocity_target)
def velocity_target(x0, noise):
    """The regression target of Eq. 1: d x_t / dt = noise - x0."""
    return noise - x0                                            # (B, ...)


@checked_jit(validate.rectified_flow_loss)
def rectified_flow_loss(velocity, x0, noise):
    """Eq. 1: mean over samples and elements of ((noise - x0) - v_theta(x_t, t))^2."""
    error = velocity_target(x0, noise) - velocity                # (B, ...)
    return jnp.mean(error ** 2)                                  # ()


@checked_jit(validate.euler_sample, static_argnames=("velocity_fn", "num_steps"))
def euler_sample(velocity_fn, noise, num_steps):
    """Integrate dx/dt = velocity_fn(x, t) from t = 1 to t = 0 in `num_steps` Euler steps.

    JAX: the loop is a lax.fori_loop (one compiled step, not num_steps copies); the time grid
    is built with NumPy at trace time so both halves step through bit-identical times."""
    times = jnp.asarray(np.linspace(1.0, 0.0, num_steps + 1).astype(noise.dtype))  # (num_steps + 1,)
    batch = noise.shape[0]

    def step(i, x):                                              # x (B, ...)
        t = jnp.full((batch,), times[i])                         # (B,)
        v = velocity_fn(x, t)                                    # (B, ...)
        return x + (times[i + 1] - times[i]) * v                 # (B, ...)

    return jax.lax.fori_loop(0, num_steps, step, noise)
