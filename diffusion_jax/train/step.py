"""The diffusion train step: one pure function, jitted once with shardings and a donated state.

For a batch of clean images x_0 with conditions c, one step draws t ~ U{0..T-1} and
eps ~ N(0, I), forms x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, drops the condition for
classifier-free guidance, and minimises the (optionally min-SNR weighted) L_simple loss of the
model's eps / x_0 / v prediction. Then AdamW updates the parameters and the EMA follows:
ema <- d * ema + (1 - d) * params.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

from diffusion_jax import parallel
from diffusion_jax.diffusion.gaussian import q_sample
from diffusion_jax.diffusion.losses import diffusion_loss
from diffusion_jax.diffusion.schedules import DiffusionSchedule
from diffusion_jax.models.conditioning import condition_dropout
from diffusion_jax.train.state import TrainState

Batch = dict[str, jax.Array]  # 'image': [B, H, W, C] in [-1, 1]; 'cond': [B, D] unit vectors
Metrics = dict[str, jax.Array]


def ema_update(ema: nnx.State, params: nnx.State, decay: float) -> nnx.State:
    """ema <- decay * ema + (1 - decay) * params, leaf by leaf."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def make_train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    learning_rate: optax.Schedule,
    schedule: DiffusionSchedule,
    config: ml_collections.ConfigDict,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
    """Returns the pure `train_step(state, batch, rng) -> (state, metrics)`.

    `rng` is the run's base key; the step folds in `state.step`, so a resumed run draws exactly
    the noise an uninterrupted one would have.
    """
    diffusion_config = config.diffusion

    def loss_fn(params: nnx.State, batch: Batch, rng: jax.Array) -> jax.Array:
        x0 = batch["image"]
        t_rng, noise_rng, cond_rng, dropout_rng = jax.random.split(rng, 4)
        t = jax.random.randint(t_rng, (x0.shape[0],), 0, schedule.num_timesteps)
        noise = jax.random.normal(noise_rng, x0.shape, x0.dtype)
        x_t = q_sample(schedule, x0, t, noise)
        cond, cond_mask = condition_dropout(
            cond_rng,
            batch["cond"],
            p_uncond=config.condition.p_uncond,
            partial_dropout=config.condition.partial_dropout,
        )
        model = nnx.merge(graphdef, params)
        model.train()
        output = model(x_t, t, cond, cond_mask, rngs=nnx.Rngs(dropout=dropout_rng))
        per_example = diffusion_loss(
            schedule,
            output.astype(jnp.float32),
            x0,
            noise,
            t,
            prediction_type=diffusion_config.prediction_type,
            weighting=diffusion_config.loss_weighting,
            min_snr_gamma=diffusion_config.min_snr_gamma,
        )
        return per_example.mean()

    def train_step(state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, Metrics]:
        step_rng = jax.random.fold_in(rng, state.step)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, step_rng)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            ema_params=ema_update(state.ema_params, params, config.train.ema_decay),
            opt_state=opt_state,
        )
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": learning_rate(state.step),
        }
        return new_state, metrics

    return train_step


def jit_train_step(
    train_step: Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]],
    mesh: Mesh,
    state_shardings: TrainState,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
    """Jits the step once: state in and out in its shardings (donated), batch over the mesh."""
    batch_sharding = parallel.batch_sharding(mesh)
    return jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_sharding, parallel.replicated(mesh)),
        out_shardings=(state_shardings, parallel.replicated(mesh)),
        donate_argnums=(0,),
    )
