"""`--mode=evaluate_samples`: identity consistency of the diffusion model's samples under a judge.

For the first `config.evaluate.consistency_identities` training identities it takes two real
images of each (the first is the source whose conditioning-encoder embedding is the condition;
the second gives the real-photo ceiling), draws `consistency_samples_per_identity` samples per
condition with `config.sample`'s sampler and guidance, and grades them with the judge encoder
`config.evaluate.judge_encoder` (`evaluate.identity_consistency`). It also gives the Frechet
distance (`evaluation.frechet_distance`) between the judge's embeddings of all samples and of the
first `config.evaluate.real_images_per_identity` real images of the same identities. Writes to
WORKDIR/sample_report/: identity_consistency.json and consistency_grid.png (per row: source,
second real image, samples).
"""

import json

import jax
import ml_collections
import numpy as np
from absl import logging

from diffusion_jax.core import parallel, stages
from diffusion_jax.core.diffusion.schedules import schedule_from_config
from diffusion_jax.core.figures import image_grid, save_figure
from diffusion_jax.core.run_layout import RunLayout
from diffusion_jax.tasks.conditional_diffusion.denoiser import unet_graphdef
from diffusion_jax.tasks.conditional_diffusion.sample_functions import make_sample_fn
from diffusion_jax.tasks.conditional_diffusion.sampling_params import restore_sampling_params
from diffusion_jax.tasks.data.sources import input_pipeline
from diffusion_jax.tasks.data.sources.image_decoding import to_model_range
from diffusion_jax.tasks.evaluation.frechet_distance import frechet_distance
from diffusion_jax.tasks.evaluation.identity_consistency import (
    generate_for_conditions,
    identity_consistency,
)
from diffusion_jax.tasks.latent.diffusion_space import diffusion_space
from diffusion_jax.tasks.recognition.embeddings import EmbeddingExtractor
from diffusion_jax.tasks.recognition.encoder_store import load_encoder

GRID_ROWS = 8


def images_per_label(
    data_config: ml_collections.ConfigDict, num_labels: int, per_label: int
) -> np.ndarray:
    """The first `per_label` training images of labels 0..num_labels-1, uint8 [N, per_label, H,
    W, 3]. The procedural faces are indexed directly; other sources are scanned in stored order."""
    records = input_pipeline.training_records(data_config)
    if data_config.source == "procedural":
        if data_config.images_per_train_identity < per_label:
            raise ValueError(
                f"the sample report needs {per_label} images per training identity, but "
                f"data.images_per_train_identity is {data_config.images_per_train_identity}"
            )
        first = np.arange(num_labels) * data_config.images_per_train_identity
        indices = {
            label: list(range(start, start + per_label)) for label, start in enumerate(first)
        }
    else:
        indices = {}
        for index in range(len(records)):
            label = int(records[index]["label"])
            if label < num_labels and len(indices.setdefault(label, [])) < per_label:
                indices[label].append(index)
            if len(indices) == num_labels and all(len(v) == per_label for v in indices.values()):
                break
        missing = [label for label in range(num_labels) if len(indices.get(label, [])) < per_label]
        if missing:
            raise ValueError(f"training labels {missing[:10]} have fewer than {per_label} images")
    return np.stack(
        [
            np.stack([np.asarray(records[index]["image"]) for index in indices[label]])
            for label in range(num_labels)
        ]
    )


def evaluate_samples(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Writes the report of the module docstring; returns its JSON contents."""
    evaluate_config = config.evaluate
    if not evaluate_config.judge_encoder:
        raise ValueError(
            "--mode=evaluate_samples needs a judge: set --config.evaluate.judge_encoder to an "
            "encoder directory other than the conditioning one (e.g. one trained with "
            "--mode=train_encoder --config.encoder.seed=1)."
        )
    layout = RunLayout.from_config(workdir, config)
    out_dir = layout.sample_report
    out_dir.mkdir(parents=True, exist_ok=True)
    mesh = parallel.make_mesh(config.mesh)
    input_pipeline.ensure_prepared(config.data)

    stages.require(layout, config, "encoder")
    conditioning_encoder = load_encoder(layout.encoder.export_dir)
    judge_encoder = load_encoder(evaluate_config.judge_encoder)
    if judge_encoder.weights_sha256 == conditioning_encoder.weights_sha256:
        raise ValueError(
            f"The judge {judge_encoder.directory} has the conditioning encoder's weights; a "
            "sample must be graded by a different network."
        )
    conditioning = EmbeddingExtractor(conditioning_encoder.model, mesh, flip=False)
    judge = EmbeddingExtractor(judge_encoder.model, mesh, flip=False)

    real = images_per_label(
        config.data,
        evaluate_config.consistency_identities,
        evaluate_config.real_images_per_identity,
    )
    sources, seconds = real[:, 0], real[:, 1]
    conditions = conditioning.embed_arrays(sources, description="Conditions")
    params, step = restore_sampling_params(config, workdir, mesh)
    schedule = schedule_from_config(config.diffusion.beta_schedule, config.diffusion.num_timesteps)
    sample_fn = make_sample_fn(unet_graphdef(config), schedule, config)
    space = diffusion_space(config, workdir, mesh)
    samples = generate_for_conditions(
        lambda cond, rng: space.decode(sample_fn(params, cond, rng)),
        conditions,
        evaluate_config.consistency_samples_per_identity,
        jax.random.key(config.seed + 2),
        batch_size=evaluate_config.batch_size,
    )
    result = identity_consistency(
        samples, sources, seconds, conditions, conditioning=conditioning, judge=judge
    )
    real_features = judge.embed_arrays(
        real.reshape((-1,) + real.shape[2:]), description="Judging real images"
    )
    sample_features = judge.embed_arrays(
        samples.reshape((-1,) + samples.shape[2:]), description="Judging samples"
    )
    report = {
        "diffusion_step": step,
        "conditioning_encoder": conditioning_encoder.directory,
        "judge_encoder": judge_encoder.directory,
        "sampler": config.sample.to_dict(),
        **result.to_json(),
        "judge_frechet_distance": frechet_distance(sample_features, real_features),
        "frechet_real_images": int(len(real_features)),
        "frechet_samples": int(len(sample_features)),
    }
    if jax.process_index() == 0:
        rows = min(GRID_ROWS, len(samples))
        real = np.stack([to_model_range(sources[:rows]), to_model_range(seconds[:rows])], axis=1)
        grid = np.concatenate([real, samples[:rows]], axis=1)
        columns = ["source", "real #2"] + [f"sample {k}" for k in range(samples.shape[1])]
        figure = image_grid(
            grid,
            title=(
                f"Identity consistency, {config.diffusion.space} diffusion step {step} "
                f"(judge similarity {result.judge_similarity_mean:.3f})"
            ),
            row_labels=[f"id {label}" for label in range(rows)],
            column_labels=columns,
        )
        save_figure(figure, out_dir / "consistency_grid.png")
        (out_dir / "identity_consistency.json").write_text(json.dumps(report, indent=2))
    logging.info("Identity consistency: %s", json.dumps(result.to_json()))
    return report
