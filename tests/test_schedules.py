"""Beta schedules and the DiffusionSchedule coefficients against float64 closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.core.diffusion import schedules

NUM_TIMESTEPS = 200


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _expected_betas(name: str, num_timesteps: int) -> np.ndarray:
    """Each schedule's betas written out from its paper, independently of the module."""
    scale = 1000.0 / num_timesteps
    if name == "linear":
        return np.linspace(1e-4 * scale, 0.02 * scale, num_timesteps)
    if name == "scaled_linear":
        return np.linspace((0.00085 * scale) ** 0.5, (0.012 * scale) ** 0.5, num_timesteps) ** 2
    tau = np.linspace(0.0, 1.0, num_timesteps + 1)
    if name == "cosine":
        f = np.cos((tau + 0.008) / 1.008 * np.pi / 2) ** 2
    elif name == "sigmoid":
        f = _sigmoid(3.0) - _sigmoid(6.0 * tau - 3.0)
    return np.clip(1.0 - f[1:] / f[:-1], 0.0, 0.999)


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "cosine", "sigmoid"])
def test_beta_schedule_matches_closed_form(name):
    betas = schedules.beta_schedule(name, NUM_TIMESTEPS)
    assert betas.dtype == np.float64 and betas.shape == (NUM_TIMESTEPS,)
    np.testing.assert_allclose(betas, _expected_betas(name, NUM_TIMESTEPS), rtol=1e-12)


def test_linear_schedule_at_1000_steps_is_ddpm():
    betas = schedules.beta_schedule("linear", 1000)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)


@pytest.mark.parametrize("name", ["cosine", "sigmoid"])
def test_continuous_time_schedules_reach_their_alphas_cumprod(name):
    schedule = schedules.schedule_from_config(name, NUM_TIMESTEPS)
    tau = np.arange(1, NUM_TIMESTEPS + 1) / NUM_TIMESTEPS  # abar_t = abar((t + 1) / T)
    if name == "cosine":
        f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
    else:
        f = lambda u: _sigmoid(3.0) - _sigmoid(6.0 * u - 3.0)  # noqa: E731
    expected = f(tau) / f(0.0)
    # The last beta is clipped at 0.999, so abar_{T-1} = 0.001 abar_{T-2} instead of 0.
    np.testing.assert_allclose(schedule.alphas_cumprod[:-1], expected[:-1], rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(
        schedule.alphas_cumprod[-1], 0.001 * expected[-2], rtol=2e-5, atol=1e-9
    )


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "cosine", "sigmoid"])
def test_schedule_coefficients_match_closed_forms(name):
    schedule = schedules.schedule_from_config(name, NUM_TIMESTEPS)
    betas = _expected_betas(name, NUM_TIMESTEPS)
    alphas_cumprod = np.cumprod(1.0 - betas)
    previous = np.concatenate([[1.0], alphas_cumprod[:-1]])
    posterior_variance = betas * (1.0 - previous) / (1.0 - alphas_cumprod)
    expected = {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": previous,
        "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
        "sqrt_recip_alphas_cumprod": 1.0 / np.sqrt(alphas_cumprod),
        "sqrt_recipm1_alphas_cumprod": np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod),
        "posterior_variance": posterior_variance,
        "posterior_mean_coef1": betas * np.sqrt(previous) / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - previous) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod),
    }
    for field, value in expected.items():
        array = getattr(schedule, field)
        assert array.dtype == jnp.float32 and array.shape == (NUM_TIMESTEPS,), field
        np.testing.assert_allclose(array, value, rtol=1e-6, atol=1e-30, err_msg=field)
    assert schedule.posterior_variance[0] == 0.0
    np.testing.assert_allclose(
        schedule.posterior_log_variance_clipped,
        np.log(np.concatenate([[posterior_variance[1]], posterior_variance[1:]])),
        rtol=1e-6,
    )
    assert schedule.num_timesteps == NUM_TIMESTEPS


def test_snr_is_alphas_cumprod_over_its_complement():
    schedule = schedules.schedule_from_config("linear", NUM_TIMESTEPS)
    t = jnp.array([0, 1, 57, NUM_TIMESTEPS - 1])
    alphas_cumprod = np.cumprod(1.0 - _expected_betas("linear", NUM_TIMESTEPS))[np.asarray(t)]
    np.testing.assert_allclose(
        schedules.snr(schedule, t), alphas_cumprod / (1.0 - alphas_cumprod), rtol=1e-5
    )


def test_schedule_is_a_pytree_with_static_length():
    schedule = schedules.schedule_from_config("linear", NUM_TIMESTEPS)
    leaves, treedef = jax.tree.flatten(schedule)
    assert len(leaves) == 11 and all(leaf.shape == (NUM_TIMESTEPS,) for leaf in leaves)
    # num_timesteps stays a Python int inside jit, so it can size arrays.
    doubled = jax.jit(lambda s: jnp.zeros(s.num_timesteps) + 2 * s.betas)(schedule)
    np.testing.assert_allclose(doubled, 2 * schedule.betas)
    assert jax.tree.unflatten(treedef, leaves).num_timesteps == NUM_TIMESTEPS


def test_at_timesteps_gathers_and_broadcasts():
    values = jnp.arange(10.0)
    gathered = schedules.at_timesteps(values, jnp.array([3, 7]), ndim=4)
    assert gathered.shape == (2, 1, 1, 1)
    np.testing.assert_array_equal(gathered.ravel(), [3.0, 7.0])


def test_unknown_schedule_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"name='quadratic'.*'cosine'.*'linear'"):
        schedules.beta_schedule("quadratic", 10)


@pytest.mark.parametrize("num_timesteps", [0, -3, 2.5])
def test_bad_num_timesteps_is_rejected(num_timesteps):
    with pytest.raises(ValueError, match="num_timesteps"):
        schedules.beta_schedule("linear", num_timesteps)


@pytest.mark.parametrize(
    "betas", [[0.1, 1.0], [0.0, 0.5], [0.1, np.nan], [-0.1, 0.2], [[0.1, 0.2]], [0.1]]
)
def test_make_schedule_rejects_betas_outside_the_open_unit_interval(betas):
    with pytest.raises(ValueError, match="betas"):
        schedules.make_schedule(np.array(betas))


def test_linear_schedule_too_short_for_its_scaling_is_rejected():
    # With T = 20 the 1000 / T scaling makes the last beta 1.0.
    with pytest.raises(ValueError, match="open interval"):
        schedules.schedule_from_config("linear", 20)


def test_at_timesteps_requires_a_batch_of_timesteps():
    with pytest.raises(ValueError, match=r"t must have shape \[batch\]"):
        schedules.at_timesteps(jnp.arange(10.0), jnp.array(3), ndim=2)
