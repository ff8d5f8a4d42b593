"""Samplers against an analytic oracle: Gaussian data, whose optimal denoiser is known exactly.

For data x_0 ~ N(mu, diag(s^2)), x_t = a x_0 + b eps (a = sqrt(abar_t), b = sqrt(1 - abar_t)) is
Gaussian too and the optimal (MMSE) noise prediction is

    eps*(x_t, t) = b (x_t - a mu) / (a^2 s^2 + b^2).

With eps* every sampler is an affine map of x_T plus Gaussian noise, so the exact mean and
variance of its output follow from a float64 recursion over the steps (`_exact_output_moments`,
written here from the papers' update rules). The Monte Carlo tests check that
  1. the exact output moments are within a stated discretisation error of (mu, s^2), and
  2. the sample moments are within 5 Monte Carlo standard errors of the exact output moments,
so the sample moments match (mu, s^2) within 5 standard errors plus the discretisation error.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.core.diffusion import samplers, schedules

NUM_TIMESTEPS = 1000
NUM_SAMPLES = 8192
DIM = 32
DATA_MEAN = np.linspace(-1.0, 1.0, DIM)
DATA_STD = np.linspace(0.5, 1.0, DIM)


def _optimal_eps_fn(schedule, mean, std):
    mean, variance = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32) ** 2

    def eps_fn(x_t, t):
        alphas_cumprod = schedule.alphas_cumprod[t][:, None]
        return (
            jnp.sqrt(1.0 - alphas_cumprod)
            * (x_t - jnp.sqrt(alphas_cumprod) * mean)
            / (alphas_cumprod * variance + 1.0 - alphas_cumprod)
        )

    return eps_fn


def _exact_output_moments(name, options, betas, mean, variance):
    """Per-dimension mean and variance of the sampler's output for x_T ~ N(0, I) and eps*.

    The state (x, previous x0_hat) evolves as state' = M state + offset + (sigma z, 0); its mean
    and 2x2 covariance are propagated exactly. x0_hat = E[x_0 | x_t] = g x_t + g0 with
    g = a s^2 / (a^2 s^2 + b^2), g0 = b^2 mu / (a^2 s^2 + b^2), and eps* = (x_t - a x0_hat) / b.
    """
    alphas_cumprod = np.cumprod(1.0 - betas)
    if name == "ddpm":
        timesteps = np.arange(len(betas) - 1, -1, -1)
        next_alphas_cumprod = np.concatenate([[1.0], alphas_cumprod[:-1]])[timesteps]
    else:
        timesteps = samplers.sampling_timesteps(len(betas), options["num_steps"])
        next_alphas_cumprod = np.append(alphas_cumprod[timesteps][1:], 1.0)
    state_mean = np.zeros((2, len(mean)))
    state_cov = np.zeros((2, 2, len(mean)))
    state_cov[0, 0] = 1.0
    previous_step = None
    for i, (t, abar_next) in enumerate(zip(timesteps, next_alphas_cumprod, strict=True)):
        abar = alphas_cumprod[t]
        a, b, a_next = np.sqrt(abar), np.sqrt(1.0 - abar), np.sqrt(abar_next)
        g = a * variance / (abar * variance + b**2)
        g0 = b**2 * mean / (abar * variance + b**2)
        # x' = x_coef x + x0_coef x0_hat + prev_coef x0_hat_previous + noise_std z
        prev_coef, noise_var = 0.0, 0.0
        if name == "ddpm":  # Ho et al. eq. 7: x' = mu-tilde(x, x0_hat) + sigma z
            beta = 1.0 - abar / abar_next
            x0_coef = beta * a_next / (1.0 - abar)
            x_coef = (1.0 - abar_next) * np.sqrt(1.0 - beta) / (1.0 - abar)
            posterior_var = beta * (1.0 - abar_next) / (1.0 - abar)
            noise_var = beta if options.get("variance") == "beta" and t > 0 else posterior_var
        elif name == "ddim":  # Song et al. eq. 12, eps_hat = (x - a x0_hat) / b
            noise_var = (
                options["eta"] ** 2 * (1.0 - abar_next) / (1.0 - abar) * (1.0 - abar / abar_next)
            )
            eps_coef = np.sqrt(max(1.0 - abar_next - noise_var, 0.0))
            x_coef, x0_coef = eps_coef / b, a_next - eps_coef * a / b
        else:  # Lu et al. 2022, DPM-Solver++(2M), first order at the first and last steps
            b_next = np.sqrt(1.0 - abar_next)
            step = (np.log(a_next / b_next) if b_next > 0 else np.inf) - np.log(a / b)
            weight = 0.5 * step / previous_step if 0 < i < len(timesteps) - 1 else 0.0
            data_coef = -a_next * np.expm1(-step)
            x_coef, x0_coef, prev_coef = b_next / b, data_coef * (1 + weight), -data_coef * weight
            previous_step = step
        zeros = np.zeros_like(mean)
        transition = np.array([[x_coef + x0_coef * g, prev_coef + zeros], [g, zeros]])
        state_mean = np.einsum("ijd,jd->id", transition, state_mean) + np.array([x0_coef * g0, g0])
        state_cov = np.einsum("ijd,jkd,lkd->ild", transition, state_cov, transition)
        state_cov[0, 0] += noise_var
    return state_mean[0], state_cov[0, 0]


@pytest.fixture(scope="module")
def schedule():
    return schedules.schedule_from_config("linear", NUM_TIMESTEPS)


@pytest.fixture(scope="module")
def x_T():
    return jax.random.normal(jax.random.key(0), (NUM_SAMPLES, DIM))


# (sampler, options, stated discretisation error: max |mean - mu|, max |variance / s^2 - 1|).
# The errors are those of the exact recursion for this data: x_T ~ N(0, I) instead of
# N(sqrt(abar_T) mu, ...) shifts the deterministic samplers' mean by ~0.006; DDIM is first order,
# so 50 steps lose ~11% of the variance of the narrowest dimensions (eta = 1: ~21%), while
# DPM-Solver++(2M), second order, loses ~9% in 20 steps.
MONTE_CARLO_CASES = [
    ("ddpm", {}, (1e-3, 0.02)),
    ("ddpm", {"variance": "beta"}, (1e-3, 0.02)),
    ("ddim", {"num_steps": 50, "eta": 0.0}, (0.007, 0.12)),
    ("ddim", {"num_steps": 50, "eta": 1.0}, (1e-3, 0.22)),
    ("dpm_solver_pp_2m", {"num_steps": 20}, (0.007, 0.09)),
]


@pytest.mark.parametrize("name, options, discretisation_error", MONTE_CARLO_CASES)
def test_sampler_reproduces_gaussian_data(schedule, x_T, name, options, discretisation_error):
    sampler = samplers.get_sampler(name)
    eps_fn = _optimal_eps_fn(schedule, DATA_MEAN, DATA_STD)
    sample_fn = jax.jit(functools.partial(sampler, eps_fn, **options))
    x = np.asarray(sample_fn(schedule, x_T, jax.random.key(1)), np.float64)

    exact_mean, exact_var = _exact_output_moments(
        name, options, schedules.beta_schedule("linear", NUM_TIMESTEPS), DATA_MEAN, DATA_STD**2
    )
    mean_error, variance_error = discretisation_error
    assert np.abs(exact_mean - DATA_MEAN).max() < mean_error
    assert np.abs(exact_var / DATA_STD**2 - 1.0).max() < variance_error

    # Monte Carlo standard errors of a sample mean and variance of N Gaussian draws.
    standard_error_mean = np.sqrt(exact_var / NUM_SAMPLES)
    standard_error_var = exact_var * np.sqrt(2.0 / (NUM_SAMPLES - 1))
    sample_mean, sample_var = x.mean(axis=0), x.var(axis=0, ddof=1)
    np.testing.assert_array_less(
        np.abs(sample_mean - DATA_MEAN),
        5 * standard_error_mean + np.abs(exact_mean - DATA_MEAN),
    )
    np.testing.assert_array_less(
        np.abs(sample_var - DATA_STD**2),
        5 * standard_error_var + np.abs(exact_var - DATA_STD**2),
    )
    # Sharper, pooling the D independent dimensions: the normalised errors against the exact
    # moments average to zero with standard deviation 1 / sqrt(D) (in units of standard error).
    mean_z = (sample_mean - exact_mean) / standard_error_mean
    var_z = (sample_var - exact_var) / standard_error_var
    assert abs(mean_z.mean()) < 5 / np.sqrt(DIM)
    assert abs(var_z.mean()) < 5 / np.sqrt(DIM)


# Structural tests: a short schedule and a tiny batch.
SMALL_TIMESTEPS = 50
SMALL_CASES = [
    ("ddpm", {}),
    ("ddim", {"num_steps": 10, "eta": 1.0}),
    ("dpm_solver_pp_2m", {"num_steps": 10}),
]


@pytest.fixture(scope="module")
def small_schedule():
    return schedules.schedule_from_config("linear", SMALL_TIMESTEPS)


@pytest.fixture(scope="module")
def small_x_T():
    return jax.random.normal(jax.random.key(2), (2, 3))


@pytest.mark.parametrize("name, options", SMALL_CASES)
def test_trajectory_runs_from_x_T_to_the_returned_sample(small_schedule, small_x_T, name, options):
    eps_fn = _optimal_eps_fn(small_schedule, np.zeros(3), np.full(3, 0.5))
    sample_fn = jax.jit(
        functools.partial(samplers.get_sampler(name), eps_fn, return_trajectory=True, **options)
    )
    x_0, trajectory = sample_fn(small_schedule, small_x_T, jax.random.key(3))
    num_steps = options.get("num_steps", SMALL_TIMESTEPS)
    assert isinstance(trajectory, samplers.Trajectory)
    assert trajectory.x_t.shape == (num_steps + 1, 2, 3)
    assert trajectory.x0_pred.shape == (num_steps, 2, 3)
    expected_t = (
        np.arange(SMALL_TIMESTEPS - 1, -1, -1)
        if name == "ddpm"
        else samplers.sampling_timesteps(SMALL_TIMESTEPS, num_steps)
    )
    np.testing.assert_array_equal(trajectory.t, expected_t)
    np.testing.assert_array_equal(trajectory.x_t[0], small_x_T)
    np.testing.assert_array_equal(trajectory.x_t[-1], x_0)
    # Every sampler's last step lands on the x_0 estimate of its last step, noise-free.
    np.testing.assert_allclose(x_0, trajectory.x0_pred[-1], atol=1e-6)


@pytest.mark.parametrize("name, options", SMALL_CASES)
def test_clip_x0_keeps_estimates_and_samples_in_range(small_schedule, small_x_T, name, options):
    # The data sit at 2 +- 0.1, outside [-1, 1], so clipping is active at every step.
    eps_fn = _optimal_eps_fn(small_schedule, np.full(3, 2.0), np.full(3, 0.1))
    sampler = functools.partial(samplers.get_sampler(name), eps_fn, **options)
    clipped = jax.jit(functools.partial(sampler, clip_x0=True, return_trajectory=True))
    x_0, trajectory = clipped(small_schedule, small_x_T, jax.random.key(4))
    assert np.abs(trajectory.x0_pred).max() <= 1.0
    np.testing.assert_allclose(x_0, 1.0, atol=1e-6)
    unclipped = jax.jit(sampler)(small_schedule, small_x_T, jax.random.key(4))
    np.testing.assert_allclose(unclipped, 2.0, atol=0.5)


def test_ddim_with_eta_zero_is_deterministic(small_schedule, small_x_T):
    eps_fn = _optimal_eps_fn(small_schedule, np.zeros(3), np.full(3, 0.5))
    sample_fn = jax.jit(functools.partial(samplers.ddim_sample, eps_fn, num_steps=10, eta=0.0))
    first = sample_fn(small_schedule, small_x_T, jax.random.key(5))
    second = sample_fn(small_schedule, small_x_T, jax.random.key(6))
    np.testing.assert_array_equal(first, second)


def test_ddim_with_eta_one_and_every_step_is_ddpm(small_schedule, small_x_T):
    """With eta = 1, sigma^2 = beta-tilde and DDIM's mean equals mu-tilde (Song et al. 2021)."""
    eps_fn = _optimal_eps_fn(small_schedule, np.full(3, 0.3), np.full(3, 0.5))
    rng = jax.random.key(7)
    ddim = samplers.ddim_sample(eps_fn, small_schedule, small_x_T, rng, eta=1.0)
    ddpm = samplers.ddpm_sample(eps_fn, small_schedule, small_x_T, rng)
    np.testing.assert_allclose(ddim, ddpm, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["x0", "v"])
def test_make_eps_fn_converts_x0_and_v_models(small_schedule, prediction_type):
    eps_fn = _optimal_eps_fn(small_schedule, np.full(3, 0.3), np.full(3, 0.5))
    x_t = jnp.array([[0.1, -0.4, 1.2], [2.0, 0.0, -1.0]])
    t = jnp.array([3, 40])
    eps = eps_fn(x_t, t)
    a = jnp.sqrt(small_schedule.alphas_cumprod[t])[:, None]
    b = jnp.sqrt(1.0 - small_schedule.alphas_cumprod[t])[:, None]
    x0 = (x_t - b * eps) / a
    prediction = {"x0": x0, "v": a * eps - b * x0}[prediction_type]
    adapted = samplers.make_eps_fn(lambda x, t: prediction, small_schedule, prediction_type)
    np.testing.assert_allclose(adapted(x_t, t), eps, atol=1e-5)


def test_sampling_timesteps_spacings():
    np.testing.assert_array_equal(samplers.sampling_timesteps(10, 3), [9, 6, 2])
    np.testing.assert_array_equal(samplers.sampling_timesteps(10, 3, "leading"), [6, 3, 0])
    np.testing.assert_array_equal(samplers.sampling_timesteps(10, 3, "linspace"), [9, 4, 0])
    trailing = samplers.sampling_timesteps(1000, 50)
    np.testing.assert_array_equal(trailing, np.arange(999, 0, -20))
    np.testing.assert_array_equal(
        samplers.sampling_timesteps(1000, 50, "leading"), np.arange(980, -1, -20)
    )
    np.testing.assert_array_equal(samplers.sampling_timesteps(7, 7), np.arange(6, -1, -1))


def test_get_sampler_lists_the_registered_names():
    assert samplers.get_sampler("ddim") is samplers.ddim_sample
    with pytest.raises(ValueError, match=r"name='euler'.*'ddim', 'ddpm', 'dpm_solver_pp_2m'"):
        samplers.get_sampler("euler")


def test_bad_sampler_options_are_rejected(small_schedule, small_x_T):
    eps_fn = _optimal_eps_fn(small_schedule, np.zeros(3), np.ones(3))
    rng = jax.random.key(0)
    with pytest.raises(ValueError, match="all num_timesteps=50 steps; got num_steps=10"):
        samplers.ddpm_sample(eps_fn, small_schedule, small_x_T, rng, num_steps=10)
    with pytest.raises(ValueError, match="variance='learned'"):
        samplers.ddpm_sample(eps_fn, small_schedule, small_x_T, rng, variance="learned")
    with pytest.raises(ValueError, match=r"num_steps must be in \[1, num_timesteps=50\], got 51"):
        samplers.ddim_sample(eps_fn, small_schedule, small_x_T, rng, num_steps=51)
    with pytest.raises(ValueError, match=r"eta must be >= 0, got -0\.5"):
        samplers.ddim_sample(eps_fn, small_schedule, small_x_T, rng, num_steps=5, eta=-0.5)
    with pytest.raises(ValueError, match="spacing='karras'"):
        samplers.dpm_solver_pp_2m_sample(
            eps_fn, small_schedule, small_x_T, rng, num_steps=5, timestep_spacing="karras"
        )
    with pytest.raises(ValueError, match="prediction_type='noise'"):
        samplers.make_eps_fn(lambda x, t: x, small_schedule, "noise")


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_per_example_keys_make_each_sample_independent_of_its_batch(small_schedule, name):
    """With a key per example, example b depends on its key (and x_T row) alone: drawn in a
    batch of four or alone, it is the same; with one key for the batch, the same rows differ."""
    eps_fn = _optimal_eps_fn(small_schedule, np.full(3, 0.3), np.full(3, 0.5))
    options = {"eta": 1.0, "num_steps": 10} if name == "ddim" else {}
    sampler = jax.jit(functools.partial(samplers.get_sampler(name), eps_fn, **options))
    keys = jax.random.split(jax.random.key(8), 4)
    x_T = jax.random.normal(jax.random.key(9), (4, 3))
    batch = sampler(small_schedule, x_T, keys)
    alone = sampler(small_schedule, x_T[2:3], keys[2:3])
    np.testing.assert_allclose(batch[2:3], alone, rtol=1e-6, atol=1e-6)
    shared = sampler(small_schedule, x_T, keys[0])
    assert np.abs(np.asarray(shared[1:]) - np.asarray(batch[1:])).max() > 1e-3
    with pytest.raises(ValueError, match="keys of shape"):
        sampler(small_schedule, x_T, keys[:3])
