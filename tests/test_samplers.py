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


def _dpm_solver_pp_coefficients(orders, abar, abar_next, step, previous_steps, index):
    """(x_coef, (coefficients of x0_hat_i, x0_hat_{i-1}, x0_hat_{i-2})) of a DPM-Solver++ step
    of order orders[index] (Lu et al. 2022; diffusers' multistep updates, the second order the
    midpoint one), in float64. The update is linear in the x0_hat's, so each coefficient is the
    update of x = 0 with that x0_hat set to 1 and the others to 0."""
    a_next, b_next = np.sqrt(abar_next), np.sqrt(1.0 - abar_next)
    x_coef = b_next / np.sqrt(1.0 - abar)
    expm1 = np.expm1(-step)
    order = orders[index]

    def update(m0, m1, m2):
        if order == 1:
            return -a_next * expm1 * m0
        r0 = previous_steps[-1] / step
        if order == 2:
            return -a_next * expm1 * (m0 + 0.5 * (m0 - m1) / r0)
        r1 = previous_steps[-2] / step
        d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        return (
            -a_next * expm1 * m0
            + a_next * (expm1 / step + 1.0) * d1
            - a_next * ((expm1 + step) / step**2 - 0.5) * d2
        )

    return x_coef, (update(1.0, 0.0, 0.0), update(0.0, 1.0, 0.0), update(0.0, 0.0, 1.0))


def _dpm_solver_pp_orders(name, num_steps):
    """The order of each step: 2M: 1, 2, ..., 2, 1; 3M: 1, 2, 3, ..., 3, 1, with the step before
    the last at most second order below 15 steps (diffusers' lower_order_final)."""
    max_order = 3 if name == "dpm_solver_pp_3m" else 2
    orders = [min(i + 1, max_order) for i in range(num_steps)]
    if num_steps >= 2 and num_steps < 15:
        orders[-2] = min(orders[-2], 2)
    orders[-1] = 1
    return orders


def _exact_output_moments(name, options, betas, mean, variance):
    """Per-dimension mean and variance of the sampler's output for x_T ~ N(0, I) and eps*.

    The state (x, previous x0_hat, the one before) evolves as state' = M state + offset +
    (sigma z, 0, 0); its mean and 3x3 covariance are propagated exactly. x0_hat = E[x_0 | x_t] =
    g x_t + g0 with g = a s^2 / (a^2 s^2 + b^2), g0 = b^2 mu / (a^2 s^2 + b^2), and
    eps* = (x_t - a x0_hat) / b.
    """
    alphas_cumprod = np.cumprod(1.0 - betas)
    if name == "ddpm":
        timesteps = np.arange(len(betas) - 1, -1, -1)
        next_alphas_cumprod = np.concatenate([[1.0], alphas_cumprod[:-1]])[timesteps]
    else:
        timesteps = samplers.sampling_timesteps(len(betas), options["num_steps"])
        next_alphas_cumprod = np.append(alphas_cumprod[timesteps][1:], 1.0)
    orders = _dpm_solver_pp_orders(name, len(timesteps))
    state_mean = np.zeros((3, len(mean)))
    state_cov = np.zeros((3, 3, len(mean)))
    state_cov[0, 0] = 1.0
    previous_steps = []
    for i, (t, abar_next) in enumerate(zip(timesteps, next_alphas_cumprod, strict=True)):
        abar = alphas_cumprod[t]
        a, b, a_next = np.sqrt(abar), np.sqrt(1.0 - abar), np.sqrt(abar_next)
        g = a * variance / (abar * variance + b**2)
        g0 = b**2 * mean / (abar * variance + b**2)
        # x' = x_coef x + x0_coef x0_hat + prev_coef x0_hat_previous
        #      + prev2_coef x0_hat_before_previous + noise_std z
        prev_coef, prev2_coef, noise_var = 0.0, 0.0, 0.0
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
        else:  # Lu et al. 2022, DPM-Solver++(2M) and (3M), `_dpm_solver_pp_orders`
            b_next = np.sqrt(1.0 - abar_next)
            step = (np.log(a_next / b_next) if b_next > 0 else np.inf) - np.log(a / b)
            x_coef, (x0_coef, prev_coef, prev2_coef) = _dpm_solver_pp_coefficients(
                orders, abar, abar_next, step, previous_steps, i
            )
            previous_steps.append(step)
        zeros = np.zeros_like(mean)
        transition = np.array(
            [
                [x_coef + x0_coef * g, prev_coef + zeros, prev2_coef + zeros],
                [g, zeros, zeros],
                [zeros, 1.0 + zeros, zeros],
            ]
        )
        offset = np.array([x0_coef * g0, g0, zeros])
        state_mean = np.einsum("ijd,jd->id", transition, state_mean) + offset
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
# DPM-Solver++(2M), second order, loses ~8.5% in 20 steps and DPM-Solver++(3M) ~7.9%: most of it
# is their shared first-order last step, which returns x0_hat at t = 49, the posterior mean.
MONTE_CARLO_CASES = [
    ("ddpm", {}, (1e-3, 0.02)),
    ("ddpm", {"variance": "beta"}, (1e-3, 0.02)),
    ("ddim", {"num_steps": 50, "eta": 0.0}, (0.007, 0.12)),
    ("ddim", {"num_steps": 50, "eta": 1.0}, (1e-3, 0.22)),
    ("dpm_solver_pp_2m", {"num_steps": 20}, (0.007, 0.09)),
    ("dpm_solver_pp_3m", {"num_steps": 20}, (0.007, 0.08)),
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


@pytest.mark.parametrize(
    "name, options",
    [
        ("ddim", {"num_steps": 50, "eta": 0.0}),
        ("dpm_solver_pp_2m", {"num_steps": 20}),
        ("dpm_solver_pp_3m", {"num_steps": 8}),
        ("dpm_solver_pp_3m", {"num_steps": 20}),
    ],
)
def test_deterministic_samplers_are_the_exact_recursions_affine_map(schedule, name, options):
    """With eps* a deterministic sampler maps x_T to G x_T + c per dimension, and the exact
    recursion's output for x_T ~ N(0, I) has mean c and variance G^2 (G > 0): x_T = 0 gives c,
    x_T = 1 gives c + G, to float32 rounding (measured <= 6e-7). Checks every coefficient, the
    third-order ones of 3M included (8 steps: orders 1, 2, 3, 3, 3, 3, 2, 1; 20: 1, 2, 3, ..., 3,
    1)."""
    eps_fn = _optimal_eps_fn(schedule, DATA_MEAN, DATA_STD)
    sample_fn = jax.jit(functools.partial(samplers.get_sampler(name), eps_fn, **options))
    x_T = jnp.stack([jnp.zeros(DIM), jnp.ones(DIM)])
    x = np.asarray(sample_fn(schedule, x_T, jax.random.key(1)), np.float64)
    exact_mean, exact_var = _exact_output_moments(
        name, options, schedules.beta_schedule("linear", NUM_TIMESTEPS), DATA_MEAN, DATA_STD**2
    )
    np.testing.assert_allclose(x[0], exact_mean, atol=5e-6)
    np.testing.assert_allclose(x[1] - x[0], np.sqrt(exact_var), atol=5e-6)


# Structural tests: a short schedule and a tiny batch.
SMALL_TIMESTEPS = 50
SMALL_CASES = [
    ("ddpm", {}),
    ("ddim", {"num_steps": 10, "eta": 1.0}),
    ("dpm_solver_pp_2m", {"num_steps": 10}),
    ("dpm_solver_pp_3m", {"num_steps": 10}),
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
    with pytest.raises(
        ValueError, match=r"name='euler'.*'ddim', 'ddpm', 'dpm_solver_pp_2m', 'dpm_solver_pp_3m'"
    ):
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
    with pytest.raises(ValueError, match=r"num_steps must be in \[1, num_timesteps=50\], got 0"):
        samplers.dpm_solver_pp_3m_sample(eps_fn, small_schedule, small_x_T, rng, num_steps=0)
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


@pytest.mark.parametrize("name", ["dpm_solver_pp_2m", "dpm_solver_pp_3m"])
def test_dpm_solvers_ignore_the_keys_and_sample_each_example_on_its_own(small_schedule, name):
    """The deterministic solvers: example b is the same drawn in a batch of four or alone, and
    the same with a key per example, one key for the batch or another key."""
    eps_fn = _optimal_eps_fn(small_schedule, np.full(3, 0.3), np.full(3, 0.5))
    sampler = jax.jit(functools.partial(samplers.get_sampler(name), eps_fn, num_steps=10))
    keys = jax.random.split(jax.random.key(8), 4)
    x_T = jax.random.normal(jax.random.key(9), (4, 3))
    batch = sampler(small_schedule, x_T, keys)
    np.testing.assert_allclose(sampler(small_schedule, x_T[2:3], keys[2:3]), batch[2:3], atol=1e-6)
    np.testing.assert_array_equal(sampler(small_schedule, x_T, keys[0]), batch)
    np.testing.assert_array_equal(sampler(small_schedule, x_T, jax.random.key(99)), batch)


# DPM-Solver++(3M) against (2M): where their orders coincide, and where the third order matters.


def _exact_probability_flow(schedule, timesteps, x_T, mean, std):
    """The exact solution of the probability-flow ODE for data N(mean, diag(std^2)) from
    x_{t_0} = x_T, at each of `timesteps` [S] (t_0 first), float64 [S, B, D]. Each dimension's
    marginal at t is N(a mean, a^2 std^2 + b^2) and the ODE maps quantiles to quantiles, so
    x_t = a mean + sqrt(a^2 std^2 + b^2) z, z = (x_T - a_0 mean) / sqrt(a_0^2 std^2 + b_0^2)."""
    abar = np.asarray(schedule.alphas_cumprod, np.float64)[np.asarray(timesteps)][:, None, None]
    a, b = np.sqrt(abar), np.sqrt(1.0 - abar)
    scale = np.sqrt(abar * std**2 + b**2)
    z = (np.asarray(x_T, np.float64) - a[0] * mean) / scale[0]
    return a * mean + scale * z


@pytest.mark.parametrize("num_steps", [1, 2, 3, 4])
def test_3m_with_at_most_four_steps_is_2m(small_schedule, num_steps):
    """Orders 1 | 1, 1 | 1, 2, 1 | 1, 2, 2, 1 (below 15 steps the step before the last is at
    most second order, the last first order): the (2M) steps, which 3M computes with the same
    arithmetic (bit for bit on CPU; asserted to float32 rounding)."""
    eps_fn = _optimal_eps_fn(small_schedule, np.full(3, 0.3), np.full(3, 0.5))
    x_T = jax.random.normal(jax.random.key(16), (8, 3))
    trajectories = [
        jax.jit(
            functools.partial(
                samplers.get_sampler(name), eps_fn, num_steps=num_steps, return_trajectory=True
            )
        )(small_schedule, x_T, jax.random.key(0))[1]
        for name in ("dpm_solver_pp_2m", "dpm_solver_pp_3m")
    ]
    assert trajectories[1].x_t.shape == (num_steps + 1, 8, 3)
    assert np.all(np.isfinite(trajectories[1].x_t))
    np.testing.assert_allclose(trajectories[1].x_t, trajectories[0].x_t, rtol=0, atol=1e-6)


@pytest.mark.parametrize("num_steps, same_as_2m", [(10, True), (20, False)])
def test_3m_started_part_way_steps_first_then_second_then_third_order(num_steps, same_as_2m):
    """At strength s, from start_x0 noised, 3M runs its last 4 steps with orders 1, 2, 3, 1,
    except that below 15 steps in the whole sequence (diffusers' lower_order_final counts
    num_steps, not the steps run) the third is second order, 2M's 1, 2, 2, 1. Its first two
    steps run are always 2M's; with 20 steps the third differs, and is closer to the exact
    probability-flow solution."""
    schedule = schedules.schedule_from_config("linear", NUM_TIMESTEPS)
    eps_fn = _optimal_eps_fn(schedule, DATA_MEAN, DATA_STD)
    timesteps = samplers.sampling_timesteps(NUM_TIMESTEPS, num_steps)
    strength = (timesteps[-4] + 0.5) / NUM_TIMESTEPS  # t_i < s T: the last 4 steps
    x_T = jax.random.normal(jax.random.key(17), (64, DIM))
    start_x0 = jnp.asarray(DATA_MEAN + DATA_STD * np.random.default_rng(18).normal(size=(64, DIM)))
    trajectories = [
        jax.jit(
            functools.partial(
                samplers.get_sampler(name),
                eps_fn,
                num_steps=num_steps,
                strength=strength,
                return_trajectory=True,
            )
        )(schedule, x_T, jax.random.key(0), start_x0=start_x0)[1]
        for name in ("dpm_solver_pp_2m", "dpm_solver_pp_3m")
    ]
    np.testing.assert_array_equal(trajectories[1].t, timesteps[-4:])
    x_2m, x_3m = (np.asarray(trajectory.x_t, np.float64) for trajectory in trajectories)
    np.testing.assert_allclose(x_3m[:3], x_2m[:3], rtol=0, atol=1e-6)  # steps 1 and 2
    if same_as_2m:
        np.testing.assert_allclose(x_3m, x_2m, rtol=0, atol=1e-6)
        return
    exact = _exact_probability_flow(schedule, timesteps[-4:], x_3m[0], DATA_MEAN, DATA_STD)
    error_2m, error_3m = (np.sqrt(np.mean((x[3] - exact[3]) ** 2)) for x in (x_2m, x_3m))
    assert np.abs(x_3m[3] - x_2m[3]).max() > 1e-3
    assert error_3m < error_2m


@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
@pytest.mark.parametrize("num_steps", [7, 8])
def test_3m_follows_the_probability_flow_ode_closer_than_2m(schedule_name, num_steps):
    """With the Gaussian oracle denoiser and 7 or 8 steps, 3M's state before its last step (at
    t_{S-1}) is closer to the exact probability-flow solution from the same x_T
    (`_exact_probability_flow`) than 2M's, by 36-52% in RMS (measured: linear 7: 2.1e-2 vs
    3.3e-2, 8: 1.1e-2 vs 2.2e-2; cosine 7: 8.6e-3 vs 1.8e-2, 8: 5.1e-3 vs 1.0e-2), and closer
    at every state from its first third-order step on. The margin asserted, 30%, fails if its
    third-order steps are replaced by second-order ones: that is 2M. Both share the first-order
    first step (on the cosine schedule a long one, h = 8.4, whose error both carry) and the
    first-order last step to sigma = 0, which returns x0_hat at t_{S-1}, the posterior mean and
    not the ODE's end point, so the output errors differ by less (max: linear 8, 0.42 vs 0.43)."""
    schedule = schedules.schedule_from_config(schedule_name, NUM_TIMESTEPS)
    eps_fn = _optimal_eps_fn(schedule, DATA_MEAN, DATA_STD)
    x_T = jax.random.normal(jax.random.key(0), (256, DIM))
    exact = _exact_probability_flow(
        schedule, samplers.sampling_timesteps(NUM_TIMESTEPS, num_steps), x_T, DATA_MEAN, DATA_STD
    )
    errors = {}
    for name in ("dpm_solver_pp_2m", "dpm_solver_pp_3m"):
        _, trajectory = jax.jit(
            functools.partial(
                samplers.get_sampler(name), eps_fn, num_steps=num_steps, return_trajectory=True
            )
        )(schedule, x_T, jax.random.key(1))
        states = np.asarray(trajectory.x_t[:-1], np.float64)  # x at t_0 .. t_{S-1}
        errors[name] = np.sqrt(np.mean((states - exact) ** 2, axis=(1, 2)))
    error_2m, error_3m = errors["dpm_solver_pp_2m"], errors["dpm_solver_pp_3m"]
    # Orders 1, 2, then 3: the states up to the third-order step's are 2M's.
    np.testing.assert_allclose(error_3m[:3], error_2m[:3], rtol=1e-4)
    assert np.all(error_3m[3:] < error_2m[3:])
    assert error_3m[-1] < 0.7 * error_2m[-1]


# Starting part-way (SDEdit): the strength rule, zero and full strength.


def test_start_index_runs_the_timesteps_below_strength_times_T():
    trailing = samplers.sampling_timesteps(1000, 50)  # 999, 979, ..., 19
    assert samplers.start_index(trailing, 1000, 1.0) == 0  # every step: t_0 = T - 1 < T
    assert samplers.start_index(trailing, 1000, 0.0) == 50  # none
    k = samplers.start_index(trailing, 1000, 0.5)
    assert (k, trailing[k]) == (25, 499)  # the first t < 500
    all_steps = np.arange(99, -1, -1)  # DDPM's T - 1 .. 0
    assert samplers.start_index(all_steps, 100, 0.0) == 100  # not even t = 0 runs
    assert samplers.start_index(all_steps, 100, 0.07) == 93  # 0.07 x 100 is 7, t = 6 first
    assert samplers.start_index(all_steps, 100, 1.0) == 0
    for strength in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match="strength must"):
            samplers.start_index(trailing, 1000, strength)


@pytest.mark.parametrize("name, options", SMALL_CASES)
def test_zero_strength_returns_the_clean_start_and_full_strength_without_it_changes_nothing(
    small_schedule, small_x_T, name, options
):
    eps_fn = _optimal_eps_fn(small_schedule, np.full(3, 0.3), np.full(3, 0.5))
    sampler = functools.partial(samplers.get_sampler(name), eps_fn, **options)
    start_x0 = jnp.array([[0.5, -0.25, 1.0], [-1.0, 0.0, 0.75]])
    rng = jax.random.key(10)
    x_0, trajectory = jax.jit(functools.partial(sampler, strength=0.0, return_trajectory=True))(
        small_schedule, small_x_T, rng, start_x0=start_x0
    )
    np.testing.assert_array_equal(x_0, start_x0)  # no step runs: the clean input, exactly
    assert trajectory.x_t.shape == (1, 2, 3) and trajectory.x0_pred.shape == (0, 2, 3)
    assert trajectory.t.shape == (0,)
    # strength = 1 and no start_x0 is the default path, bit for bit.
    np.testing.assert_array_equal(
        jax.jit(functools.partial(sampler, strength=1.0))(small_schedule, small_x_T, rng),
        jax.jit(sampler)(small_schedule, small_x_T, rng),
    )
    with pytest.raises(ValueError, match="start_x0 has shape"):
        sampler(small_schedule, small_x_T, rng, strength=0.5, start_x0=start_x0[:1])


@pytest.mark.parametrize("name, options", [("ddpm", {}), ("ddim", {"num_steps": 10, "eta": 1.0})])
def test_a_run_started_part_way_from_the_full_runs_state_continues_it(
    small_schedule, name, options
):
    """Strength s from the full run's own state x_{t_k} (no start_x0) runs its steps k..S-1
    with the same step noise (step i keeps fold_in(rng, i)), so it ends where the full run
    ends. (DPM-Solver++'s first step run is first order, so it is not a continuation.)"""
    eps_fn = _optimal_eps_fn(small_schedule, np.full(3, 0.3), np.full(3, 0.5))
    sampler = functools.partial(samplers.get_sampler(name), eps_fn, **options)
    keys = jax.random.split(jax.random.key(11), 2)
    x_T = jax.random.normal(jax.random.key(12), (2, 3))
    full, trajectory = jax.jit(functools.partial(sampler, return_trajectory=True))(
        small_schedule, x_T, keys
    )
    strength = 0.45  # t < 22.5 of T = 50
    k = samplers.start_index(np.asarray(trajectory.t), SMALL_TIMESTEPS, strength)
    assert 0 < k < len(trajectory.t) and trajectory.t[k] < 22.5 <= trajectory.t[k - 1]
    part, part_trajectory = jax.jit(
        functools.partial(sampler, strength=strength, return_trajectory=True)
    )(small_schedule, trajectory.x_t[k], keys)
    np.testing.assert_array_equal(part_trajectory.t, trajectory.t[k:])
    np.testing.assert_allclose(part, full, rtol=1e-6, atol=1e-6)


# (schedule, sampler, options, float32 rounding tolerance). The cosine schedule's first x0
# estimate divides by sqrt(abar_{T-1}) = 4.9e-5, which amplifies the last bits of the state
# 2e4-fold: its outputs carry ~1e-3 of rounding, far above its start term.
FULL_STRENGTH_CASES = [
    ("linear", "ddpm", {}, 2e-5),
    ("linear", "ddim", {"num_steps": 50, "eta": 0.0}, 2e-5),
    ("linear", "ddim", {"num_steps": 50, "eta": 1.0}, 2e-5),
    ("linear", "dpm_solver_pp_2m", {"num_steps": 20}, 2e-5),
    ("cosine", "dpm_solver_pp_2m", {"num_steps": 20}, 2e-3),
    ("linear", "dpm_solver_pp_3m", {"num_steps": 20}, 2e-5),
    ("cosine", "dpm_solver_pp_3m", {"num_steps": 20}, 2e-3),
]


@pytest.mark.parametrize("schedule_name, name, options, rounding", FULL_STRENGTH_CASES)
def test_full_strength_differs_from_plain_sampling_only_by_the_start_term(
    schedule_name, name, options, rounding
):
    """Full strength (s = 1) from a clean x_0 with the noise eps that plain sampling starts
    from (x_T = eps) starts at x_{t_0} = sqrt(abar_{t_0}) x_0 + sqrt(1 - abar_{t_0}) eps,
    t_0 = T - 1, so the two starts differ by

        delta = sqrt(abar_{T-1}) x_0 + (sqrt(1 - abar_{T-1}) - 1) eps,

    with T = 1000: sqrt(abar_{T-1}) = 6.4e-3 (linear), 4.9e-5 (cosine: tiny, not zero), and
    1 - sqrt(1 - abar_{T-1}) <= 2.1e-5 (asserted: the start is x_0 + delta to 1e-6). With the
    Gaussian oracle denoiser (module docstring) every sampler, its step noise fixed (the same
    rng: step i draws fold_in(rng, i) in both runs), is an affine map of its start with a
    per-dimension gain g, measured here from two plain runs whose starts differ by 1. Asserted,
    to the case's float32 rounding: (1) the outputs differ by g * delta; (2) hence
    |styled - plain| <= max(g) (sqrt(abar_{T-1}) |x_0| + 2.1e-5 |eps|) elementwise, the
    residual of the start term, with max(g) <= 1.01 here; (3) the deterministic samplers' g is
    the exact recursion's output standard deviation for x_T ~ N(0, I)."""
    schedule = schedules.schedule_from_config(schedule_name, NUM_TIMESTEPS)
    eps_fn = _optimal_eps_fn(schedule, DATA_MEAN, DATA_STD)
    sampler = jax.jit(functools.partial(samplers.get_sampler(name), eps_fn, **options))
    full_strength = jax.jit(
        functools.partial(
            samplers.get_sampler(name), eps_fn, strength=1.0, return_trajectory=True, **options
        )
    )
    eps = jax.random.normal(jax.random.key(13), (16, DIM))
    x_0 = jnp.asarray(DATA_MEAN + DATA_STD * np.random.default_rng(14).normal(size=(16, DIM)))
    keys = jax.random.split(jax.random.key(15), 16)

    plain = np.asarray(sampler(schedule, eps, keys), np.float64)
    styled, trajectory = full_strength(schedule, eps, keys, start_x0=x_0)
    styled = np.asarray(styled, np.float64)
    gain = np.asarray(sampler(schedule, eps + 1.0, keys), np.float64) - plain
    abar = float(schedule.alphas_cumprod[NUM_TIMESTEPS - 1])
    delta = np.sqrt(abar) * np.asarray(x_0) + (np.sqrt(1.0 - abar) - 1.0) * np.asarray(eps)

    assert int(trajectory.t[0]) == NUM_TIMESTEPS - 1  # every step runs
    np.testing.assert_allclose(trajectory.x_t[0], np.asarray(eps) + delta, atol=1e-6)
    np.testing.assert_allclose(gain, np.broadcast_to(gain[:1], gain.shape), atol=rounding)
    np.testing.assert_allclose(styled - plain, gain * delta, atol=rounding)
    assert 1.0 - np.sqrt(1.0 - abar) <= 2.1e-5 and np.abs(gain).max() <= 1.01
    bound = np.abs(gain).max() * (np.sqrt(abar) * np.abs(x_0) + 2.1e-5 * np.abs(eps))
    assert np.all(np.abs(styled - plain) <= bound + rounding)
    if name.startswith("dpm_solver_pp") or options.get("eta") == 0.0:  # deterministic
        if schedule_name == "linear":  # the term is there, well above rounding: abar_{T-1} > 0
            assert np.abs(styled - plain).max() > 100 * rounding
        _, exact_var = _exact_output_moments(
            name,
            options,
            schedules.beta_schedule(schedule_name, NUM_TIMESTEPS),
            DATA_MEAN,
            DATA_STD**2,
        )
        np.testing.assert_allclose(gain[0], np.sqrt(exact_var), rtol=1e-3, atol=rounding)
