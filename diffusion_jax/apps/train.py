"""`--mode=train`: train the diffusion model (resuming from WORKDIR/checkpoints), then write its
four figures to WORKDIR/figures.

It needs the identity encoder (WORKDIR/encoder/model, or `config.encoder.checkpoint`) when the
condition comes from an encoder, and in latent space the autoencoder (WORKDIR/autoencoder/model,
or `config.autoencoder.checkpoint`): `--mode=pipeline --stages=diffusion` makes whatever is
missing first.
"""

import ml_collections

from diffusion_jax.tasks.conditional_diffusion.diffusion_training import train_and_evaluate


def run(config: ml_collections.ConfigDict, workdir: str):
    return train_and_evaluate(config, workdir)
