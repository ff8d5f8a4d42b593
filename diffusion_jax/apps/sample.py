"""`--mode=sample`: load a checkpoint and write samples and figures for given identities.

Writes to `workdir/samples/step_<N>/`: the four figures and one PNG per sample,
`identity_<label>/<k>.png`. The checkpoint's saved config must describe the same model,
diffusion process and condition as the config given; a mismatch is refused, naming the keys.
"""

import os

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from PIL import Image

from diffusion_jax.core import parallel
from diffusion_jax.core.diffusion.schedules import schedule_from_config
from diffusion_jax.tasks.conditional_diffusion.diffusion_figures import DiffusionFigureWriter
from diffusion_jax.core.figures import to_uint8
from diffusion_jax.tasks.latent.diffusion_space import ARCHITECTURE_FIELDS, diffusion_space
from diffusion_jax.core.training import state as state_lib
from diffusion_jax.core.training.checkpointing import Checkpointer
from diffusion_jax.tasks.conditional_diffusion.denoiser import unet_builder, unet_graphdef
from diffusion_jax.tasks.conditional_diffusion.diffusion_training import figure_inputs
from diffusion_jax.tasks.conditional_diffusion.identity_conditions import identity_conditions

# Config fields (or whole sections) that define the model and its conditions; the others
# (paths, batch sizes, sampler settings) may differ between training and sampling.
MODEL_DEFINING = (
    "model.",
    "diffusion.",
    "condition.",
    "encoder.checkpoint",
    "autoencoder.checkpoint",
    *(f"autoencoder.{field}" for field in ARCHITECTURE_FIELDS),
    "seed",
    "data.resolution",
    "data.num_train_identities",
)


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """{'a': {'b': 1}} -> {'a.b': 1}; tuples become lists, as they are in JSON."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def check_matches_checkpoint(config: ml_collections.ConfigDict, saved: dict) -> None:
    """Refuses a config whose model-defining fields differ from the checkpoint's config."""
    given, saved = flatten(config.to_dict()), flatten(saved)
    differing = [
        f"{key}: checkpoint has {saved.get(key)!r}, config has {given.get(key)!r}"
        for key in sorted(set(given) | set(saved))
        if key.startswith(MODEL_DEFINING) and given.get(key) != saved.get(key)
    ]
    if differing:
        raise ValueError(
            "The config does not describe the checkpoint's model:\n  " + "\n  ".join(differing)
        )


def restore_sampling_params(
    config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh
) -> tuple[nnx.State, int]:
    """The UNet parameters to sample with (EMA if `config.sample.use_ema`) from the checkpoint
    `config.sample.checkpoint_step` (-1: the latest) in `workdir`, and that step."""
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    step = None if config.sample.checkpoint_step < 0 else config.sample.checkpoint_step
    check_matches_checkpoint(config, checkpointer.restore_config(step))
    optimizer, _ = state_lib.make_optimizer(config.train)
    abstract_state = state_lib.abstract_train_state(unet_builder(config), optimizer)
    state = checkpointer.restore(
        abstract_state, parallel.state_shardings(mesh, abstract_state), step=step
    )
    checkpointer.close()
    return (state.ema_params if config.sample.use_ema else state.params), int(state.step)


def sample_from_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Samples `config.sample.identities` from the checkpoint in `workdir`; returns the out dir."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    mesh = parallel.make_mesh(config.mesh)
    params, step = restore_sampling_params(config, workdir, mesh)
    out_dir = os.path.join(workdir, "samples", f"step_{step}")
    logging.info("Sampling step %d into %s.", step, out_dir)

    conditions = identity_conditions(config, workdir, mesh)
    schedule = schedule_from_config(config.diffusion.beta_schedule, config.diffusion.num_timesteps)
    space = diffusion_space(config, workdir, mesh)
    figure_writer = DiffusionFigureWriter(unet_graphdef(config), schedule, config, space)
    _, samples = figure_writer.write(
        params=params,
        **figure_inputs(config, conditions),
        rng=jax.random.key(config.seed + 1),
        out_dir=out_dir,
    )
    for label, images in zip(config.sample.identities, to_uint8(samples)):
        identity_dir = os.path.join(out_dir, f"identity_{label}")
        os.makedirs(identity_dir, exist_ok=True)
        for index, image in enumerate(images):
            Image.fromarray(np.asarray(image)).save(os.path.join(identity_dir, f"{index:03d}.png"))
    return out_dir
