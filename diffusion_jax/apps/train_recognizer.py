"""`--mode=train_recognizer`: train a face recogniser with the encoder's recipe on
`config.recognizer`'s data (default `config.data`) into
WORKDIR/recognizers/<config.recognizer.name>."""

import ml_collections

from diffusion_jax.tasks.evaluation.recognizer_training import train_recognizer_mode


def run(config: ml_collections.ConfigDict, workdir: str):
    return train_recognizer_mode(config, workdir)
