"""The parameters a trained diffusion model samples with, restored from its checkpoints.

The checkpoint's saved config must describe the same model, diffusion process and condition as
the config given (the diffusion stage's `model_fields`, `core.stages`); a mismatch is refused,
naming the keys. The other fields (paths, batch sizes, sampler settings) may differ.
"""

import jax
import ml_collections
from flax import nnx

from diffusion_jax.core import parallel, stages
from diffusion_jax.core.run_layout import RunLayout
from diffusion_jax.core.training import state as state_lib
from diffusion_jax.core.training.checkpointing import Checkpointer
from diffusion_jax.tasks.conditional_diffusion.denoiser import unet_builder


def check_matches_checkpoint(config: ml_collections.ConfigDict, saved: dict) -> None:
    """Refuses a config whose model-defining fields differ from the checkpoint's config."""
    differing = stages.model_mismatches(config, saved, "diffusion")
    if differing:
        raise ValueError(
            "The config does not describe the checkpoint's model:\n  " + "\n  ".join(differing)
        )


def restore_sampling_params(
    config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh
) -> tuple[nnx.State, int]:
    """The UNet parameters to sample with (EMA if `config.sample.use_ema`) from the checkpoint
    `config.sample.checkpoint_step` (-1: the latest) in `workdir`, and that step."""
    layout = RunLayout.from_config(workdir, config)
    stages.require(layout, config, "diffusion")
    checkpointer = Checkpointer(layout.diffusion.checkpoints, read_only=True)
    step = None if config.sample.checkpoint_step < 0 else config.sample.checkpoint_step
    check_matches_checkpoint(config, checkpointer.restore_config(step))
    optimizer, _ = state_lib.make_optimizer(config.train)
    abstract_state = state_lib.abstract_train_state(unet_builder(config), optimizer)
    state = checkpointer.restore(
        abstract_state, parallel.state_shardings(mesh, abstract_state), step=step
    )
    checkpointer.close()
    return (state.ema_params if config.sample.use_ema else state.params), int(state.step)
