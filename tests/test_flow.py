"""Rectified flow (Eq. 1, project convention): accelerated == reference, and the invariants of the
straight path: endpoints, d x_t / dt = target, zero loss at the target, Euler lands on a point mass."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ecdit.accelerated.flow as acc
import ecdit.reference.flow as ref
from tests.helpers import HALVES, normal, seeds
from tests.tolerances import (EXACT, FLOAT32_MEAN, FLOAT64_LINEAR_DERIVATIVE, LOGIT_OF_SIGMOID, MEDIAN_OF_20001,
                              assert_close)

shapes = st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(1, 5))


@given(b=st.integers(1, 16), mu=st.floats(-2, 2), sigma=st.floats(0.1, 3), seed=seeds)
def test_logit_normal_timesteps_match_reference_and_lie_in_0_1(b, mu, sigma, seed):
    z = normal(np.random.default_rng(seed), (b,))
    t = ref.logit_normal_timesteps(z, mu, sigma)
    assert_close(acc.logit_normal_timesteps(z, mu, sigma), t)
    assert ((t > 0) & (t < 1)).all()
    assert_close(np.log(t / (1 - t)), mu + sigma * z, tol=LOGIT_OF_SIGMOID)   # logit(t) ~ N(mu, sigma)


def test_logit_normal_median_is_sigmoid_of_mu():
    z = np.random.default_rng(0).standard_normal(20001).astype(np.float32)
    t = ref.logit_normal_timesteps(z, 0.5, 1.0)
    assert_close(np.median(t), 1 / (1 + np.exp(-0.5)), tol=MEDIAN_OF_20001)


@given(shape=shapes, seed=seeds)
def test_interpolate_velocity_and_loss_match_reference(shape, seed):
    rng = np.random.default_rng(seed)
    x0, noise, v = normal(rng, shape), normal(rng, shape), normal(rng, shape)
    t = rng.random(shape[0]).astype(np.float32)
    assert_close(acc.interpolate(x0, noise, t), ref.interpolate(x0, noise, t))
    assert_close(acc.velocity_target(x0, noise), ref.velocity_target(x0, noise))
    assert_close(acc.rectified_flow_loss(v, x0, noise), ref.rectified_flow_loss(v, x0, noise))


@pytest.mark.parametrize("half", HALVES)
@given(shape=shapes, seed=seeds)
def test_path_runs_from_data_at_t0_to_noise_at_t1(half, shape, seed):
    rng = np.random.default_rng(seed)
    x0, noise = normal(rng, shape), normal(rng, shape)
    b = shape[0]
    assert_close(half.flow.interpolate(x0, noise, np.zeros(b, np.float32)), x0)
    assert_close(half.flow.interpolate(x0, noise, np.ones(b, np.float32)), noise)


@given(shape=shapes, seed=seeds)
def test_velocity_target_is_the_time_derivative_of_the_path(shape, seed):
    rng = np.random.default_rng(seed)
    x0, noise = rng.standard_normal(shape), rng.standard_normal(shape)   # float64
    t = rng.uniform(0.1, 0.9, shape[0])
    h = 1e-6
    derivative = (ref.interpolate(x0, noise, t + h) - ref.interpolate(x0, noise, t - h)) / (2 * h)
    assert_close(derivative, ref.velocity_target(x0, noise), tol=FLOAT64_LINEAR_DERIVATIVE)


@pytest.mark.parametrize("half", HALVES)
@given(shape=shapes, seed=seeds)
def test_flow_loss_is_zero_at_the_target_and_positive_elsewhere(half, shape, seed):
    rng = np.random.default_rng(seed)
    x0, noise = normal(rng, shape), normal(rng, shape)
    target = noise - x0
    assert float(half.flow.rectified_flow_loss(target, x0, noise)) == 0.0
    assert_close(float(half.flow.rectified_flow_loss(target + 0.5, x0, noise)), 0.25, tol=FLOAT32_MEAN)


@pytest.mark.parametrize("half", HALVES)
@given(shape=shapes, steps=st.integers(1, 12), seed=seeds)
def test_euler_with_the_exact_velocity_of_a_point_mass_lands_on_it(half, shape, steps, seed):
    """For data = a point p, x_t = (1 - t) p + t n, so the exact velocity is v(x, t) = (x - p) / t
    and each Euler step x <- x - dt (x - p) / t scales x - p by (1 - dt / t): the last step (t = dt)
    lands exactly on p."""
    rng = np.random.default_rng(seed)
    point, noise = normal(rng, shape), normal(rng, shape)

    def exact_velocity(x, t):
        return (x - point) / t.reshape((-1,) + (1,) * (x.ndim - 1))

    assert_close(half.flow.euler_sample(exact_velocity, noise, steps), point)


@given(shape=shapes, steps=st.integers(1, 8), seed=seeds)
def test_euler_sample_matches_reference_step_for_step(shape, steps, seed):
    rng = np.random.default_rng(seed)
    noise, a = normal(rng, shape), normal(rng, shape)

    def velocity(x, t):                                           # a smooth field depending on x and t
        return a * t.reshape((-1,) + (1,) * (x.ndim - 1)) - 0.5 * x

    assert_close(acc.euler_sample(velocity, noise, steps), ref.euler_sample(velocity, noise, steps))


@pytest.mark.parametrize("half", HALVES)
def test_euler_integrates_from_t1_down_to_t0(half):
    """Four steps of dt = 1/4 evaluate the velocity at t = 1, 0.75, 0.5, 0.25 in that order, and
    each step moves x by -dt v: with v = t the sample is noise - (1 + 0.75 + 0.5 + 0.25) / 4."""
    calls = []

    def t_as_velocity(x, t):                                       # v(x, t) = t; aux: the t seen
        calls.append(t)
        return x * 0 + t.reshape(-1, 1), t

    noise = np.arange(6, dtype=np.float32).reshape(2, 3)
    x, seen = half.flow.euler_sample(t_as_velocity, noise, 4, has_aux=True)
    assert_close(seen, np.tile([[1.0], [0.75], [0.5], [0.25]], (1, 2)), tol=EXACT)   # (T, B)
    assert_close(x, noise - 0.625, tol=EXACT)                     # not + 0.375 (integrating 0 -> 1)
    assert len(calls) == (4 if half.flow is ref else 1)          # the twin traces one step of its scan


@given(shape=shapes, seed=seeds)
def test_weighted_loss_matches_reference_and_weighs_each_samples_mean_error(shape, seed):
    """With per-sample weights the loss is mean_b w_b mean(error_b^2): reference == accelerated,
    unit weights give Eq. 1 as written, and a weight of 0 removes a sample."""
    rng = np.random.default_rng(seed)
    x0, noise, v = normal(rng, shape), normal(rng, shape), normal(rng, shape)
    w = rng.random(shape[0]).astype(np.float32)
    assert_close(acc.rectified_flow_loss(v, x0, noise, w), ref.rectified_flow_loss(v, x0, noise, w))
    assert_close(ref.rectified_flow_loss(v, x0, noise, np.ones(shape[0], np.float32)),
                 ref.rectified_flow_loss(v, x0, noise), tol=FLOAT32_MEAN)
    per_sample = [ref.rectified_flow_loss(v[i:i + 1], x0[i:i + 1], noise[i:i + 1]) for i in range(shape[0])]
    assert_close(ref.rectified_flow_loss(v, x0, noise, w), np.mean(w * np.array(per_sample)), tol=FLOAT32_MEAN)


@given(shape=shapes, min_t=st.floats(0.01, 0.2), seed=seeds)
def test_x0_weighting_makes_the_velocity_loss_of_x_prediction_the_clean_image_error(shape, min_t, seed):
    """loss_weights "x0" = max(t, min_t)^2: for t >= min_t, Eq. 1 on the velocity that x0_hat
    implies, so weighted, is the mean squared error of x0_hat itself; "velocity" gives no weights."""
    rng = np.random.default_rng(seed)
    x0, noise, x0_hat = (rng.standard_normal(shape) for _ in range(3))       # float64
    t = rng.uniform(min_t, 1.0, shape[0])
    v = ref.velocity_from_x0(x0_hat, ref.interpolate(x0, noise, t), t, min_t)
    w = ref.loss_weights(t, "x0", min_t)
    assert_close(ref.rectified_flow_loss(v, x0, noise, w), np.mean((x0_hat - x0) ** 2), tol=FLOAT64_LINEAR_DERIVATIVE)
    assert_close(acc.loss_weights(t.astype(np.float32), "x0", min_t), w.astype(np.float32))
    assert ref.loss_weights(t, "velocity", min_t) is None and acc.loss_weights(t, "velocity", min_t) is None
    with pytest.raises(ValueError, match="^weighting"):
        ref.loss_weights(t, "epsilon", min_t)


# ---------------------------------------------------------------------------------------------
# x-prediction: the velocity a predicted clean image implies
# ---------------------------------------------------------------------------------------------

@given(shape=shapes, min_t=st.floats(0.01, 0.2), seed=seeds)
def test_velocity_from_x0_matches_reference(shape, min_t, seed):
    rng = np.random.default_rng(seed)
    x0_hat, x_t = normal(rng, shape), normal(rng, shape)
    t = rng.random(shape[0]).astype(np.float32)
    assert_close(acc.velocity_from_x0(x0_hat, x_t, t, min_t), ref.velocity_from_x0(x0_hat, x_t, t, min_t))


@given(shape=shapes, seed=seeds)
def test_the_true_x0_gives_the_velocity_target_above_min_t(shape, seed):
    """x_t = (1 - t) x0 + t noise, so (x_t - x0) / t = noise - x0 wherever t >= min_t."""
    rng = np.random.default_rng(seed)
    x0, noise = rng.standard_normal(shape), rng.standard_normal(shape)   # float64
    t = rng.uniform(0.05, 1.0, shape[0])
    x_t = ref.interpolate(x0, noise, t)
    assert_close(ref.velocity_from_x0(x0, x_t, t, 0.05), ref.velocity_target(x0, noise),
                 tol=FLOAT64_LINEAR_DERIVATIVE)


@given(shape=shapes, seed=seeds)
def test_below_min_t_the_velocity_is_scaled_by_t_over_min_t(shape, seed):
    """The clamp bounds the division: below min_t the implied velocity is (t / min_t)(noise - x0),
    never the 1 / t blow-up."""
    rng = np.random.default_rng(seed)
    x0, noise = rng.standard_normal(shape), rng.standard_normal(shape)   # float64
    t = rng.uniform(0.0, 0.05, shape[0])
    x_t = ref.interpolate(x0, noise, t)
    scale = (t / 0.05).reshape((-1,) + (1,) * (len(shape) - 1))
    assert_close(ref.velocity_from_x0(x0, x_t, t, 0.05), scale * ref.velocity_target(x0, noise),
                 tol=FLOAT64_LINEAR_DERIVATIVE)
