"""`--mode=evaluate`: verification of face recognisers (`config.recognizer.evaluate`, default every
one in WORKDIR/recognizers) on `config.evaluate.verification_sets`, into WORKDIR/evaluation."""

import ml_collections

from diffusion_jax.tasks.evaluation.recognizer_evaluation import evaluate_recognizers


def run(config: ml_collections.ConfigDict, workdir: str):
    return evaluate_recognizers(config, workdir)
