"""The train state of the diffusion model and how it is built, sharded and initialised.

The NNX model is split once into a static `graphdef` and its parameters (`nnx.Param` state);
the train state holds only pytrees, so the jitted train step is a pure function of arrays:
`train_step(state, batch, rng) -> (state, metrics)`.
"""

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

from diffusion_jax import parallel
from diffusion_jax.models.unet import UNet

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@flax.struct.dataclass
class TrainState:
    """Everything a training step reads and writes; checkpointed as one pytree."""

    step: jax.Array  # int32 scalar: optimiser updates applied so far
    params: nnx.State
    ema_params: nnx.State  # exponential moving average of `params`, used for sampling
    opt_state: optax.OptState


def unet_architecture(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The UNet's architecture arguments for `config` (no dtypes, no RNGs).

    Shared with the PyTorch twin in benchmarks/, so both build the same network.
    """
    model_config = config.model
    return dict(
        image_size=config.data.resolution,
        in_channels=3,
        out_channels=3,
        base_channels=model_config.base_channels,
        channel_mults=tuple(model_config.channel_mults),
        num_res_blocks=model_config.num_res_blocks,
        attention_resolutions=tuple(model_config.attention_resolutions),
        head_channels=model_config.head_channels,
        dropout=model_config.dropout,
        cond_dim=config.condition.dim,
        cross_attention=model_config.cross_attention,
        num_cond_tokens=model_config.num_cond_tokens,
        stem=model_config.stem,
        num_groups=model_config.num_groups,
    )


def build_model(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> UNet:
    """The denoiser described by `config.model` for images of `config.data.resolution`."""
    return UNet(
        **unet_architecture(config),
        dtype=COMPUTE_DTYPES[config.model.dtype],
        param_dtype=jnp.float32,
        rngs=rngs,
    )


def model_graphdef(config: ml_collections.ConfigDict) -> nnx.GraphDef:
    """The static structure of the model, obtained without allocating parameters."""
    abstract_model = nnx.eval_shape(lambda: build_model(config, nnx.Rngs(0)))
    graphdef, _ = nnx.split(abstract_model, nnx.Param)
    return graphdef


def make_optimizer(
    train_config: ml_collections.ConfigDict,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with linear warm-up to a constant learning rate, after global-norm clipping."""
    learning_rate = optax.linear_schedule(
        0.0, train_config.learning_rate, max(train_config.warmup_steps, 1)
    )
    optimizer = optax.chain(
        optax.clip_by_global_norm(train_config.grad_clip_norm),
        optax.adamw(learning_rate, b1=0.9, b2=0.999, weight_decay=train_config.weight_decay),
    )
    return optimizer, learning_rate


def make_init_fn(
    config: ml_collections.ConfigDict, optimizer: optax.GradientTransformation
) -> Callable[[jax.Array], TrainState]:
    """A pure `rng -> TrainState`, suitable for `jax.eval_shape` and `jax.jit(out_shardings=...)`."""

    def init(rng: jax.Array) -> TrainState:
        model = build_model(config, nnx.Rngs(params=rng))
        _, params, rest = nnx.split(model, nnx.Param, ...)
        if jax.tree.leaves(rest):
            raise ValueError(f"The model holds state other than parameters: {rest}")
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            ema_params=params,
            opt_state=optimizer.init(params),
        )

    return init


def abstract_train_state(
    config: ml_collections.ConfigDict, optimizer: optax.GradientTransformation
) -> TrainState:
    """Shapes and dtypes of the train state, computed without allocating it."""
    return jax.eval_shape(make_init_fn(config, optimizer), jax.random.key(0))


def init_train_state(
    config: ml_collections.ConfigDict,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    rng: jax.Array,
) -> TrainState:
    """Initialises the train state directly into its shardings (no host-side full copy)."""
    shardings = parallel.state_shardings(mesh, abstract_train_state(config, optimizer))
    return jax.jit(make_init_fn(config, optimizer), out_shardings=shardings)(rng)


def count_params(params: nnx.State) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(params))
