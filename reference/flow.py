"""Rectified flow (Sec. 2.1, Eq. 1), in the project's convention.

Convention, fixed for the whole project (docs/errata.md says why it differs from Eq. 1's text):

    x_t = (1 - t) * x0 + t * noise         t in [0, 1]: data at t = 0, pure noise at t = 1
    velocity target  v = d x_t / dt = noise - x0
    sampling integrates dx/dt = v from t = 1 down to t = 0 (Euler steps).

Timesteps are logit-normal, t = sigmoid(u) with u ~ N(mu, sigma) (Esser et al. 2024, Sec. 3.1).
Randomness enters as arguments (`z`, `noise`), so both halves can be compared exactly.

Shapes: B batch, then any trailing axes "...", e.g. (B, S, D) tokens or (B, I, J, 3) images.
"""
import numpy as np

from ecdit.core import contracts
from ecdit.core.checks import checked


@checked(contracts.logit_normal_timesteps)
def logit_normal_timesteps(z, mu=0.0, sigma=1.0):
    """pi(t) of Eq. 1: t = sigmoid(mu + sigma * z) with z ~ N(0, 1) given.

    sigmoid(u) = 1 / (1 + exp(-u)) is written as (1 + tanh(u / 2)) / 2, the same function
    without overflow for large |u|."""
    u = mu + sigma * z                                           # (B,)  u ~ N(mu, sigma)
    return 0.5 * (1.0 + np.tanh(0.5 * u))                        # (B,)  t in (0, 1)


def _per_sample(t, like):
    """Broadcast t (B,) against an array (B, ...)."""
    return t.reshape(t.shape + (1,) * (like.ndim - 1))           # (B, 1, ..., 1)


@checked(contracts.interpolate)
def interpolate(x0, noise, t):
    """The straight path of Eq. 1: x_t = (1 - t) x0 + t noise (data at t = 0)."""
    t_b = _per_sample(t, x0)                                     # (B, 1, ...)
    return (1.0 - t_b) * x0 + t_b * noise                        # (B, ...)


@checked(contracts.velocity_target)
def velocity_target(x0, noise):
    """The regression target of Eq. 1: d x_t / dt = noise - x0."""
    return noise - x0                                            # (B, ...)


@checked(contracts.velocity_from_x0)
def velocity_from_x0(x0_hat, x_t, t, min_t):
    """x-prediction (Li & He 2025, "Back to Basics: Let Denoising Generative Models Denoise"): a
    network that predicts the clean image x0_hat gives the velocity the straight path implies.

        x_t = (1 - t) x0 + t noise   =>   noise - x0 = (x_t - x0) / t
        v   = (x_t - x0_hat) / max(t, min_t)

    so Eq. 1's loss and the Euler sampler stay as they are. min_t > 0 bounds the division near the
    data end (Li & He clamp at 0.05); below it v is the path's velocity times t / min_t."""
    t_b = _per_sample(np.maximum(t, min_t), x_t)                 # (B, 1, ...)
    return (x_t - x0_hat) / t_b                                  # (B, ...)


@checked(contracts.rectified_flow_loss)
def rectified_flow_loss(velocity, x0, noise, weight=None):
    """Eq. 1: mean over samples and elements of ((noise - x0) - v_theta(x_t, t))^2.

    The paper writes a squared norm; we average over elements as well, so the loss does not grow
    with image size or width (a constant factor: same minimiser, same gradient direction).
    `weight` (B,), optional (a deviation, `TrainConfig.loss_weighting`): each sample's mean squared
    error is multiplied by its weight before the mean over samples; None is Eq. 1 as written."""
    error = velocity_target(x0, noise) - velocity                # (B, ...)
    if weight is None:
        return np.mean(error ** 2)                               # ()
    per_sample = np.mean((error ** 2).reshape(len(error), -1), axis=1)  # (B,)
    return np.mean(weight * per_sample)                          # ()


@checked(contracts.loss_weights)
def loss_weights(t, weighting, min_t):
    """Per-sample weights of Eq. 1 (`TrainConfig.loss_weighting`): "velocity" is Eq. 1 as written
    (None: no weights); "x0" is max(t, min_t)^2, which makes Eq. 1 on the velocity of an
    x-prediction model, |(x_t - x0_hat) / max(t, min_t) - (noise - x0)|^2 = |x0 - x0_hat|^2 /
    max(t, min_t)^2 for t >= min_t, the plain squared error of the predicted clean image: the
    1 / t^2 weight that the velocity puts on the nearly clean end is taken off."""
    if weighting == "velocity":
        return None
    return np.maximum(t, min_t) ** 2                             # (B,)


@checked(contracts.euler_sample)
def euler_sample(velocity_fn, noise, num_steps, has_aux=False):
    """Integrate dx/dt = velocity_fn(x, t) from t = 1 (noise) to t = 0 (data) in `num_steps`
    equal Euler steps: x_{t - dt} = x_t - dt * v(x_t, t). Returns the sample at t = 0.

    `velocity_fn(x, t)` takes x (B, ...) and t (B,) and returns v (B, ...); with has_aux it
    returns (v, aux) and euler_sample returns (x, aux of every step stacked on a new first axis
    (T, ...)), as jax.value_and_grad does with has_aux (the sampler records routing this way)."""
    times = np.linspace(1.0, 0.0, num_steps + 1).astype(noise.dtype)   # (T + 1,)  1 -> 0
    x = noise                                                    # (B, ...)  x at t = 1
    batch = noise.shape[0]
    auxes = []
    for i in range(num_steps):
        t = np.full((batch,), times[i])                          # (B,)
        v = velocity_fn(x, t)                                    # (B, ...)
        if has_aux:
            v, aux = v
            auxes.append(aux)
        x = x + (times[i + 1] - times[i]) * v                    # (B, ...)  step of -1/T
    if has_aux:
        return x, np.stack(auxes)                                # (B, ...), (T, ...)
    return x
