"""Rectified flow (Sec. 2.1, Eq. 1), JAX twin of reference/flow.py; same convention:

    x_t = (1 - t) * x0 + t * noise         data at t = 0, pure noise at t = 1
    velocity target  v = noise - x0;  sampling integrates from t = 1 down to t = 0.
    t = sigmoid(u), u ~ N(mu, sigma)  (logit-normal).

Shapes: B batch, then any trailing axes "...".
"""
import jax
import jax.numpy as jnp
import numpy as np

from .jit import checked_jit
from ecdit.core import contracts


@checked_jit(contracts.logit_normal_timesteps, static_argnames=("mu", "sigma"))
def logit_normal_timesteps(z, mu=0.0, sigma=1.0):
    """pi(t) of Eq. 1: t = sigmoid(mu + sigma * z) with z ~ N(0, 1) given."""
    u = mu + sigma * z                                           # (B,)
    return jax.nn.sigmoid(u)                                     # (B,)  t in (0, 1)


def _per_sample(t, like):
    return t.reshape(t.shape + (1,) * (like.ndim - 1))           # (B, 1, ..., 1)


@checked_jit(contracts.interpolate)
def interpolate(x0, noise, t):
    """The straight path of Eq. 1: x_t = (1 - t) x0 + t noise (data at t = 0)."""
    t_b = _per_sample(t, x0)                                     # (B, 1, ...)
    return (1.0 - t_b) * x0 + t_b * noise                        # (B, ...)


@checked_jit(contracts.velocity_target)
def velocity_target(x0, noise):
    """The regression target of Eq. 1: d x_t / dt = noise - x0."""
    return noise - x0                                            # (B, ...)


@checked_jit(contracts.velocity_from_x0, static_argnames=("min_t",))
def velocity_from_x0(x0_hat, x_t, t, min_t):
    """x-prediction: v = (x_t - x0_hat) / max(t, min_t), the velocity a predicted clean image implies."""
    t_b = _per_sample(jnp.maximum(t, min_t), x_t)                # (B, 1, ...)
    return (x_t - x0_hat) / t_b                                  # (B, ...)


@checked_jit(contracts.rectified_flow_loss)
def rectified_flow_loss(velocity, x0, noise, weight=None):
    """Eq. 1: mean over samples and elements of ((noise - x0) - v_theta(x_t, t))^2; with `weight`
    (B,), each sample's mean squared error times its weight."""
    error = velocity_target(x0, noise) - velocity                # (B, ...)
    if weight is None:
        return jnp.mean(error ** 2)                              # ()
    per_sample = jnp.mean((error ** 2).reshape(error.shape[0], -1), axis=1)  # (B,)
    return jnp.mean(weight * per_sample)                         # ()


@checked_jit(contracts.loss_weights, static_argnames=("weighting", "min_t"))
def loss_weights(t, weighting, min_t):
    """Per-sample weights of Eq. 1: None for "velocity", max(t, min_t)^2 for "x0"."""
    if weighting == "velocity":
        return None
    return jnp.maximum(t, min_t) ** 2                            # (B,)


@checked_jit(contracts.euler_sample, static_argnames=("velocity_fn", "num_steps", "has_aux"))
def euler_sample(velocity_fn, noise, num_steps, has_aux=False):
    """Integrate dx/dt = velocity_fn(x, t) from t = 1 to t = 0 in `num_steps` Euler steps; with
    has_aux, velocity_fn returns (v, aux) and the result is (x, aux stacked per step (T, ...)).

    JAX: the loop is a lax.scan (one compiled step, not num_steps copies); the time grid is built
    with NumPy at trace time so both halves step through bit-identical times."""
    times = jnp.asarray(np.linspace(1.0, 0.0, num_steps + 1).astype(noise.dtype))  # (T + 1,)
    batch = noise.shape[0]

    def step(x, i):                                              # x (B, ...)
        t = jnp.full((batch,), times[i])                         # (B,)
        v = velocity_fn(x, t)                                    # (B, ...)
        v, aux = v if has_aux else (v, None)
        return x + (times[i + 1] - times[i]) * v, aux            # (B, ...)  step of -1/T

    x, auxes = jax.lax.scan(step, noise, jnp.arange(num_steps))  # (B, ...), (T, ...)
    return (x, auxes) if has_aux else x
