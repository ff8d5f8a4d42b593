"""`--mode=evaluate_samples`: identity consistency of the diffusion model's samples under the judge
`config.evaluate.judge_encoder`, and the judge-feature Frechet distance to real images, into
WORKDIR/sample_report."""

import ml_collections

from diffusion_jax.tasks.evaluation.sample_report import evaluate_samples


def run(config: ml_collections.ConfigDict, workdir: str):
    return evaluate_samples(config, workdir)
