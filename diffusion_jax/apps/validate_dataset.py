"""`--mode=validate_dataset`: check a generated dataset against its manifest (every file's
SHA-256, counts, formats) and print a summary."""

import ml_collections

from diffusion_jax.tasks.generation.dataset_validation import validate_generated_dataset


def run(config: ml_collections.ConfigDict, workdir: str):
    return validate_generated_dataset(config, workdir)
