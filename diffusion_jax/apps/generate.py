"""`--mode=generate`: this worker's share of a synthetic dataset of `config.generate`'s new
identities, into `config.generate.output_dir` (default WORKDIR/generated). It needs the diffusion
model and the judge encoder (`--mode=pipeline --stages=diffusion,judge` makes them); the worker's
index comes from `config.generate.task_index` or the scheduler (`generation.worker_index`)."""

import ml_collections

from diffusion_jax.tasks.generation.generation_job import generate_dataset


def run(config: ml_collections.ConfigDict, workdir: str):
    return generate_dataset(config, workdir)
