"""`--mode=train_autoencoder`: train the latent-diffusion autoencoder of `config.autoencoder` in
WORKDIR/autoencoder, estimate its latent scale, and export it to WORKDIR/autoencoder/model. With a
perceptual loss it needs the identity encoder (`--mode=train_encoder` first)."""

import ml_collections

from diffusion_jax.tasks.latent.autoencoder_training import train_autoencoder


def run(config: ml_collections.ConfigDict, workdir: str):
    return train_autoencoder(config, workdir)
