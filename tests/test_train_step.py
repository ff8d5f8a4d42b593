"""The train step learns: a tiny model overfits a tiny batch, and the EMA follows its equation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffusion_jax.core import parallel
from diffusion_jax.core.diffusion.gaussian import q_sample
from diffusion_jax.core.diffusion.losses import diffusion_loss
from diffusion_jax.core.diffusion.schedules import schedule_from_config
from diffusion_jax.core.models.conditioning import random_identity_embeddings
from diffusion_jax.core.training import state as state_lib
from diffusion_jax.core.training.step import ema_update, jit_train_step, make_train_step
from diffusion_jax.tasks.conditional_diffusion.denoiser import make_diffusion_loss, unet_builder
from diffusion_jax.tasks.data.faces.procedural_faces import render_faces
from tests.helpers import tiny_config

STEPS = 250
LOSS_DROP_FACTOR = 3.0


@pytest.mark.slow  # many jitted train steps
def test_tiny_model_overfits_a_tiny_batch():
    config = tiny_config()
    config.train.learning_rate = 3e-3
    config.train.warmup_steps = 5
    config.condition.p_uncond = 0.0
    images = render_faces(
        seed=0,
        identity_ids=np.arange(4),
        image_ids=np.zeros(4, int),
        resolution=config.data.resolution,
    )
    images = jnp.asarray(images, jnp.float32) / 127.5 - 1
    batch = {"x0": images, "cond": random_identity_embeddings(4, config.condition.dim, seed=0)}

    optimizer, learning_rate = state_lib.make_optimizer(config.train)
    schedule = schedule_from_config(config.diffusion.beta_schedule, config.diffusion.num_timesteps)
    build_model = unet_builder(config)
    graphdef = state_lib.model_graphdef(build_model)
    mesh = parallel.make_mesh(config.mesh)
    shardings = parallel.state_shardings(
        mesh, state_lib.abstract_train_state(build_model, optimizer)
    )
    state = state_lib.init_train_state(build_model, optimizer, mesh, jax.random.key(0))
    loss_fn = make_diffusion_loss(schedule, config)
    step = jit_train_step(
        make_train_step(graphdef, loss_fn, optimizer, learning_rate, config.train.ema_decay),
        mesh,
        shardings,
    )

    # A fixed evaluation set of (t, noise) over the batch, so the comparison is noise-free.
    t = jnp.tile(jnp.linspace(0, schedule.num_timesteps - 1, 8).astype(jnp.int32), 4)
    x0 = jnp.repeat(batch["x0"], 8, axis=0)
    cond = jnp.repeat(batch["cond"], 8, axis=0)
    noise = jax.random.normal(jax.random.key(7), x0.shape)

    @jax.jit
    def evaluation_loss(params):
        model = nnx.merge(graphdef, params)
        model.eval()
        output = model(q_sample(schedule, x0, t, noise), t, cond)
        return diffusion_loss(
            schedule,
            output,
            x0,
            noise,
            t,
            prediction_type=config.diffusion.prediction_type,
            weighting=config.diffusion.loss_weighting,
            min_snr_gamma=config.diffusion.min_snr_gamma,
        ).mean()

    before = float(evaluation_loss(state.params))
    global_batch = parallel.global_batch({k: np.asarray(v) for k, v in batch.items()}, mesh)
    rng = jax.random.key(1)
    with jax.transfer_guard("disallow"):  # the step must not copy anything between host and device
        for _ in range(STEPS):
            state, _ = step(state, global_batch, rng, {})
    after = float(evaluation_loss(state.params))
    assert int(state.step) == STEPS
    assert after * LOSS_DROP_FACTOR < before, (before, after)


def test_ema_update_follows_its_equation():
    ema = {"w": jnp.array([1.0, 2.0])}
    params = {"w": jnp.array([3.0, -2.0])}
    updated = ema_update(ema, params, decay=0.9)
    np.testing.assert_allclose(
        updated["w"], 0.9 * np.array([1.0, 2.0]) + 0.1 * np.array([3.0, -2.0]), rtol=1e-6
    )
