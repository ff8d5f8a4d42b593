"""`--mode=sample`: load a checkpoint and write samples and figures for given identities.

Writes to `WORKDIR/samples/step_<N>/`: the four figures and one PNG per sample,
`identity_<label>/<k>.png`. The checkpoint's saved config must describe the same model,
diffusion process and condition as the config given; a mismatch is refused, naming the keys.
"""

import jax
import ml_collections
import numpy as np
from absl import logging

from diffusion_jax.core import parallel
from diffusion_jax.core.diffusion.schedules import schedule_from_config
from diffusion_jax.core.figures import to_uint8
from diffusion_jax.core.run_layout import RunLayout
from diffusion_jax.tasks.conditional_diffusion.denoiser import unet_graphdef
from diffusion_jax.tasks.conditional_diffusion.diffusion_figures import DiffusionFigureWriter
from diffusion_jax.tasks.conditional_diffusion.diffusion_training import figure_inputs
from diffusion_jax.tasks.conditional_diffusion.identity_conditions import identity_conditions
from diffusion_jax.tasks.conditional_diffusion.sampling_params import restore_sampling_params
from diffusion_jax.tasks.data.sources.image_decoding import encode_png
from diffusion_jax.tasks.latent.diffusion_space import diffusion_space


def run(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Samples `config.sample.identities` from the checkpoint in `workdir`; returns the out dir."""
    layout = RunLayout.from_config(workdir, config)
    mesh = parallel.make_mesh(config.mesh)
    params, step = restore_sampling_params(config, workdir, mesh)
    out_dir = layout.samples(step)
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
        identity_dir = out_dir / f"identity_{label}"
        identity_dir.mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(images):
            (identity_dir / f"{index:03d}.png").write_bytes(encode_png(np.asarray(image)))
    return str(out_dir)
