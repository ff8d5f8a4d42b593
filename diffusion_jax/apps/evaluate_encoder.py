"""`--mode=evaluate_encoder`: verification accuracy and identity reports of the conditioning
encoder (WORKDIR/encoder/model or `config.encoder.checkpoint`) into WORKDIR/encoder_report."""

import ml_collections

from diffusion_jax.tasks.evaluation.encoder_report import evaluate_encoder


def run(config: ml_collections.ConfigDict, workdir: str):
    return evaluate_encoder(config, workdir)
