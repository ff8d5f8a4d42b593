"""The train step shared by every model: one pure function, jitted once with shardings and a
donated state.

A model's objective is a `LossFn(model, batch, rng) -> (loss, metrics)` called on the model
merged from the state in train mode. The step differentiates it with respect to the parameters,
keeps the non-trainable state the forward pass updated (BatchNorm statistics), applies the
optimiser, and lets the EMA follow: ema <- d * ema + (1 - d) * params.
"""

from typing import Callable

import jax
import optax
from flax import nnx
from jax.sharding import Mesh

from diffusion_jax import parallel
from diffusion_jax.train.state import TrainState, split_model

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
LossFn = Callable[[nnx.Module, Batch, jax.Array], tuple[jax.Array, Metrics]]
TrainStep = Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]


def ema_update(ema: nnx.State, params: nnx.State, decay: float) -> nnx.State:
    """ema <- decay * ema + (1 - decay) * params, leaf by leaf."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def make_train_step(
    graphdef: nnx.GraphDef,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    learning_rate: optax.Schedule,
    ema_decay: float,
) -> TrainStep:
    """Returns the pure `train_step(state, batch, rng) -> (state, metrics)`.

    `rng` is the run's base key; the step folds in `state.step`, so a resumed run draws exactly
    the randomness an uninterrupted one would have. Metrics are the loss, the gradient norm, the
    learning rate and whatever `loss_fn` reports.
    """

    def objective(params, model_state, batch, rng):
        # copy=True: fresh Variables in this trace, so BatchNorm may update its statistics.
        model = nnx.merge(graphdef, params, model_state, copy=True)
        model.train()
        loss, metrics = loss_fn(model, batch, rng)
        _, _, new_model_state = split_model(model)
        return loss, (new_model_state, metrics)

    def train_step(state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, Metrics]:
        step_rng = jax.random.fold_in(rng, state.step)
        (loss, (model_state, loss_metrics)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params, state.model_state, batch, step_rng
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            model_state=model_state,
            ema_params=ema_update(state.ema_params, params, ema_decay),
            opt_state=opt_state,
        )
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": learning_rate(state.step),
            **loss_metrics,
        }
        return new_state, metrics

    return train_step


def jit_train_step(train_step: TrainStep, mesh: Mesh, state_shardings: TrainState) -> TrainStep:
    """Jits the step once: state in and out in its shardings (donated), batch over the mesh."""
    batch_sharding = parallel.batch_sharding(mesh)
    return jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_sharding, parallel.replicated(mesh)),
        out_shardings=(state_shardings, parallel.replicated(mesh)),
        donate_argnums=(0,),
    )
