"""Classifier-free guidance in one batched forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.core.diffusion import guidance

BATCH = 3


class CountingModel:
    """A toy conditional model, out = x_t * (1 + t) + where(cond_mask, cond @ W, null), that
    records the batch size of each call."""

    def __init__(self):
        self.batch_sizes = []
        self.projection = jnp.linspace(-1.0, 1.0, 4 * 5).reshape(4, 5)
        self.null_output = jnp.linspace(0.5, -0.5, 5)

    def __call__(self, x_t, t, cond, cond_mask):
        self.batch_sizes.append(x_t.shape[0])
        conditioning = jnp.where(
            cond_mask[:, None], cond["embedding"] @ self.projection, self.null_output
        )
        return x_t * (1.0 + t[:, None]) + conditioning

    def conditional(self, x_t, t, cond):
        return self(x_t, t, cond, jnp.ones((x_t.shape[0],), bool))

    def unconditional(self, x_t, t, cond):
        return self(x_t, t, cond, jnp.zeros((x_t.shape[0],), bool))


@pytest.fixture
def inputs():
    keys = jax.random.split(jax.random.key(0), 2)
    x_t = jax.random.normal(keys[0], (BATCH, 5))
    t = jnp.array([0, 3, 7])
    cond = {"embedding": jax.random.normal(keys[1], (BATCH, 4))}
    return x_t, t, cond


@pytest.mark.parametrize("scale", [0.0, 1.0, 2.5])
def test_batched_guidance_is_the_cfg_combination_in_one_call(inputs, scale):
    x_t, t, cond = inputs
    model = CountingModel()
    conditional = np.asarray(model.conditional(x_t, t, cond), np.float64)
    unconditional = np.asarray(model.unconditional(x_t, t, cond), np.float64)
    model.batch_sizes.clear()
    # A traced scale cannot be inspected, so every scale takes the batched path here.
    guided = jax.jit(lambda s: guidance.guided_model_output(model, x_t, t, cond, s))(scale)
    assert model.batch_sizes == [2 * BATCH]
    expected = unconditional + scale * (conditional - unconditional)
    np.testing.assert_allclose(guided, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scale, branch", [(0.0, "unconditional"), (1.0, "conditional")])
def test_python_scales_zero_and_one_call_only_the_needed_branch(inputs, scale, branch):
    x_t, t, cond = inputs
    model = CountingModel()
    expected = getattr(model, branch)(x_t, t, cond)
    model.batch_sizes.clear()
    guided = guidance.guided_model_output(model, x_t, t, cond, scale)
    assert model.batch_sizes == [BATCH]
    np.testing.assert_array_equal(guided, expected)


def test_guidance_is_linear_so_it_commutes_with_eps_to_x0_conversion(inputs):
    """Guiding eps, then converting to x0 = p x - q eps, equals guiding the x0 predictions."""
    x_t, t, cond = inputs
    model = CountingModel()
    p, q = 1.7, 0.4

    def x0_model(x, t, c, m):
        return p * x - q * model(x, t, c, m)

    guided_eps = guidance.guided_model_output(model, x_t, t, cond, 3.0)
    guided_x0 = guidance.guided_model_output(x0_model, x_t, t, cond, 3.0)
    np.testing.assert_allclose(guided_x0, p * x_t - q * guided_eps, rtol=1e-5, atol=1e-5)
