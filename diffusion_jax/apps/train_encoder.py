"""`--mode=train_encoder`: train the identity encoder of `config.encoder` in WORKDIR/encoder and
export its backbone to WORKDIR/encoder/model (a complete export is not trained again)."""

import ml_collections

from diffusion_jax.core import paths
from diffusion_jax.core.run_layout import RunLayout
from diffusion_jax.tasks.recognition.encoder_training import train_encoder


def run(config: ml_collections.ConfigDict, workdir: str):
    return train_encoder(config, RunLayout(paths.resolve(workdir)).encoder)
