"""The train step shared by every model: one pure function, jitted once with shardings and a
donated state.

A model's objective is a `LossFn(model, batch, context) -> (loss, metrics)` called on the model
merged from the state in train mode; the `LossContext` gives it the step's random key, the step
number and the frozen networks it reads but does not train (a perceptual loss's encoder). The
step differentiates it with respect to the parameters, keeps the non-trainable state the forward
pass updated (BatchNorm statistics), applies the optimiser, and lets the EMA follow:
ema <- d * ema + (1 - d) * params.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import optax
from flax import nnx
from jax.sharding import Mesh

from diffusion_jax.core import parallel
from diffusion_jax.core.training import state as state_lib
from diffusion_jax.core.training.state import TrainState, split_model

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class LossContext:
    """What a loss function may read besides the model and the batch.

    rng: this step's key (the run's key folded with the step number).
    step: int32 scalar, the optimiser updates applied before this step (e.g. to gate a term).
    frozen: a pytree of arrays the loss reads but does not train, such as a frozen encoder's
      state. It enters the jitted step as an argument, so its weights are inputs of the compiled
      program rather than constants folded into it.
    """

    rng: jax.Array
    step: jax.Array
    frozen: Any = dataclasses.field(default_factory=dict)


LossFn = Callable[[nnx.Module, Batch, LossContext], tuple[jax.Array, Metrics]]
TrainStep = Callable[[TrainState, Batch, jax.Array, Any], tuple[TrainState, Metrics]]


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
    """Returns the pure `train_step(state, batch, rng, frozen) -> (state, metrics)`.

    `rng` is the run's base key; the step folds in `state.step`, so a resumed run draws exactly
    the randomness an uninterrupted one would have. `frozen` is passed on in the `LossContext`
    (an empty dict when the loss reads nothing frozen). Metrics are the loss, the gradient norm,
    the learning rate and whatever `loss_fn` reports.
    """

    def objective(params, model_state, batch, context):
        # copy=True: fresh Variables in this trace, so BatchNorm may update its statistics.
        model = nnx.merge(graphdef, params, model_state, copy=True)
        model.train()
        loss, metrics = loss_fn(model, batch, context)
        _, _, new_model_state = split_model(model)
        return loss, (new_model_state, metrics)

    def train_step(
        state: TrainState, batch: Batch, rng: jax.Array, frozen: Any
    ) -> tuple[TrainState, Metrics]:
        context = LossContext(
            rng=jax.random.fold_in(rng, state.step), step=state.step, frozen=frozen
        )
        (loss, (model_state, loss_metrics)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params, state.model_state, batch, context
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
    """Jits the step once: state in and out in its shardings (donated), batch over the mesh, the
    key and the frozen networks replicated."""
    batch_sharding = parallel.batch_sharding(mesh)
    replicated = parallel.replicated(mesh)
    return jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_sharding, replicated, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )


@dataclasses.dataclass(frozen=True)
class TrainingProgram:
    """What a training run compiles: its optimiser, the abstract train state (`jax.eval_shape`,
    no allocation), the state's shardings over the mesh, and the jitted step."""

    optimizer: optax.GradientTransformation
    abstract_state: TrainState
    state_shardings: Any
    step: TrainStep


def training_program(
    build_model: state_lib.BuildModel,
    loss_fn: LossFn,
    train_config: Any,
    mesh: Mesh,
    make_optimizer: Callable[[Any], tuple[optax.GradientTransformation, optax.Schedule]] = (
        state_lib.make_optimizer
    ),
) -> TrainingProgram:
    """The optimiser of `train_config` (with its learning-rate schedule and `ema_decay`), the
    abstract state of `build_model`, its shardings and `jit_train_step(make_train_step(...))`:
    what the training loop and the benchmarks build alike."""
    optimizer, learning_rate = make_optimizer(train_config)
    abstract_state = state_lib.abstract_train_state(build_model, optimizer)
    shardings = parallel.state_shardings(mesh, abstract_state)
    step = make_train_step(
        state_lib.model_graphdef(build_model),
        loss_fn,
        optimizer,
        learning_rate,
        train_config.ema_decay,
    )
    return TrainingProgram(
        optimizer, abstract_state, shardings, jit_train_step(step, mesh, shardings)
    )
