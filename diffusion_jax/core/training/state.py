"""The train state shared by every model this project trains, and how it is built and sharded.

A model (the diffusion UNet, or an identity encoder with its margin head) is given as
`build_model(rngs) -> nnx.Module`. It is split once into a static `graphdef`, its trainable
parameters (`nnx.Param`) and the rest of its state (`model_state`: BatchNorm statistics; empty for
the UNet). The train state holds only pytrees, so the jitted train step is a pure function of
arrays: `train_step(state, batch, rng) -> (state, metrics)`.
"""

from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

from diffusion_jax.core import parallel

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
LR_DECAYS = ("none", "cosine")

BuildModel = Callable[[nnx.Rngs], nnx.Module]


@flax.struct.dataclass
class TrainState:
    """Everything a training step reads and writes; checkpointed as one pytree."""

    step: jax.Array  # int32 scalar: optimiser updates applied so far
    params: nnx.State
    model_state: nnx.State  # non-trainable state updated in training (BatchNorm statistics)
    ema_params: nnx.State  # exponential moving average of `params`
    opt_state: optax.OptState


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, params, model_state); `nnx.merge(graphdef, params, model_state)` inverts it."""
    return nnx.split(model, nnx.Param, ...)


def model_graphdef(build_model: BuildModel) -> nnx.GraphDef:
    """The static structure of the model, obtained without allocating parameters."""
    graphdef, _, _ = split_model(nnx.eval_shape(lambda: build_model(nnx.Rngs(0))))
    return graphdef


def make_optimizer(
    train_config: ml_collections.ConfigDict,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW after global-norm clipping, with a linear warm-up to `learning_rate`, then either
    constant (`lr_decay="none"`) or a cosine decay to zero at `num_steps`."""
    warmup_steps = max(train_config.warmup_steps, 1)
    if train_config.lr_decay == "cosine":
        learning_rate = optax.warmup_cosine_decay_schedule(
            0.0,
            train_config.learning_rate,
            warmup_steps,
            decay_steps=max(train_config.num_steps, warmup_steps + 1),
        )
    elif train_config.lr_decay == "none":
        learning_rate = optax.linear_schedule(0.0, train_config.learning_rate, warmup_steps)
    else:
        raise ValueError(f"lr_decay must be one of {LR_DECAYS}, got {train_config.lr_decay!r}")
    optimizer = optax.chain(
        optax.clip_by_global_norm(train_config.grad_clip_norm),
        optax.adamw(learning_rate, b1=0.9, b2=0.999, weight_decay=train_config.weight_decay),
    )
    return optimizer, learning_rate


def make_init_fn(
    build_model: BuildModel, optimizer: optax.GradientTransformation
) -> Callable[[jax.Array], TrainState]:
    """A pure `rng -> TrainState`, for `jax.eval_shape` and `jax.jit(out_shardings=...)`."""

    def init(rng: jax.Array) -> TrainState:
        _, params, model_state = split_model(build_model(nnx.Rngs(params=rng)))
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            model_state=model_state,
            ema_params=params,
            opt_state=optimizer.init(params),
        )

    return init


def abstract_train_state(
    build_model: BuildModel, optimizer: optax.GradientTransformation
) -> TrainState:
    """Shapes and dtypes of the train state, computed without allocating it."""
    return jax.eval_shape(make_init_fn(build_model, optimizer), jax.random.key(0))


def init_train_state(
    build_model: BuildModel, optimizer: optax.GradientTransformation, mesh: Mesh, rng: jax.Array
) -> TrainState:
    """Initialises the train state directly into its shardings (no host-side full copy)."""
    shardings = parallel.state_shardings(mesh, abstract_train_state(build_model, optimizer))
    return jax.jit(make_init_fn(build_model, optimizer), out_shardings=shardings)(rng)


def count_params(params: nnx.State) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(params))
