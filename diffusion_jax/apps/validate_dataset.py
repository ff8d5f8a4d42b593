"""`--mode=validate_dataset`: check a dataset and print its summary as JSON.

- When the generated dataset's directory (`config.generate.output_dir`, default WORKDIR/generated)
  holds anything: that dataset against its manifest (every file's SHA-256, counts, formats;
  `tasks.generation.dataset_validation`).
- Otherwise the real data of `config.data` as prepared in `data.data_dir` (the procedural faces
  and pairs, or identity folders): every file against the listing its preparation wrote, sizes
  and SHA-256 (`input_pipeline.check_prepared`). Nothing is prepared.
"""

import json

import ml_collections
from absl import logging

from diffusion_jax.core import paths
from diffusion_jax.core.run_layout import RunLayout
from diffusion_jax.tasks.data.sources import input_pipeline
from diffusion_jax.tasks.generation.dataset_validation import validate_generated_dataset


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    if paths.is_nonempty_dir(RunLayout.from_config(workdir, config).generated):
        return validate_generated_dataset(config, workdir)
    summary = {
        "valid": True,
        "data_source": config.data.source,
        "prepared_datasets": input_pipeline.check_prepared(config.data),
    }
    logging.info("Valid prepared data: %s", summary)
    print(json.dumps(summary, indent=1))
    return summary
