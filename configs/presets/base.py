"""`base`: one GPU, 64x64 faces, an ADM UNet in pixel space. It is configs/default.py as it is."""

import ml_collections


def apply(config: ml_collections.ConfigDict) -> None:
    """The default's values are the base preset's."""
    del config


def apply_latent(config: ml_collections.ConfigDict) -> None:
    """16x16x4 latents of 64x64 faces."""
    config.model.attention_resolutions = (8, 4)
