"""`large`: a TPU pod slice or several GPUs, 112x112 faces, parameters sharded over `fsdp`."""

import ml_collections


def apply(config: ml_collections.ConfigDict) -> None:
    """The large preset's values, over configs/default.py."""
    config.data.resolution = 112
    config.data.num_train_identities = 10_000
    config.data.worker_count = 16

    config.model.base_channels = 192
    config.model.channel_mults = (1, 2, 3, 4)
    config.model.num_res_blocks = 3
    config.model.attention_resolutions = (28, 14)
    config.model.cross_attention = True

    config.train.batch_size = 1024
    config.train.learning_rate = 2e-4

    config.mesh.fsdp = 4


def apply_latent(config: ml_collections.ConfigDict) -> None:
    """28x28x4 latents of 112x112 faces."""
    config.model.channel_mults = (1, 2, 4)
    config.model.attention_resolutions = (14, 7)
