"""Style from real images (`generate.style_source = "real"`, `tasks/generation/style_sources.py`):
each generated image starts from a real training image noised to `generate.style_strength`
(SDEdit). The sampler-level maths (the strength rule, zero and full strength against the
Gaussian oracle) is tested in test_samplers.py; here the generation side, on networks with
random weights written into a workdir in-process (no training, so no test here is slow):

  (a) seed-for-seed determinism: the same seed gives the same bits, in any batch and row;
      another seed other bits;
  (b) zero strength returns the style image's reconstruction: the image itself in pixel space,
      decode(encode(image)), the autoencoder's round trip, in latent space;
  (c) full strength starts where plain sampling starts, plus the start term
      sqrt(abar_{T-1}) z_0 + (sqrt(1 - abar_{T-1}) - 1) eps, with the same noise eps;
  (d) an image whose judge cosine to its style image's identity exceeds
      `generate.max_style_similarity` is rejected as "near_style_source", redrawn and counted;
  (e) the generation job with style on runs end to end, its shard records naming each image's
      style source, and one image redrawn alone equals its stored copy.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tqdm
from flax import nnx
from PIL import Image

from diffusion_jax.apps import config_checks
from diffusion_jax.core import parallel
from diffusion_jax.core.diffusion.gaussian import q_sample
from diffusion_jax.core.diffusion.samplers import sampling_timesteps
from diffusion_jax.core.diffusion.schedules import schedule_from_config
from diffusion_jax.core.models.autoencoder import AutoencoderKL
from diffusion_jax.core.models.iresnet import IResNet
from diffusion_jax.core.run_layout import RunLayout
from diffusion_jax.core.training import state as state_lib
from diffusion_jax.core.training.checkpointing import Checkpointer
from diffusion_jax.tasks.conditional_diffusion.denoiser import unet_builder, unet_graphdef
from diffusion_jax.tasks.conditional_diffusion.sample_functions import make_sample_fn
from diffusion_jax.tasks.data.sources import input_pipeline
from diffusion_jax.tasks.generation import (
    dataset_validation,
    generation_job,
    manifest,
    shard_drawing,
)
from diffusion_jax.tasks.generation.generation_models import GenerationModels
from diffusion_jax.tasks.generation.image_filter import IdentityFilter
from diffusion_jax.tasks.generation.image_seeds import image_keys
from diffusion_jax.tasks.generation.style_sources import (
    STYLE_FIELDS,
    StyleSource,
    style_indices,
    style_source_for_generation,
)
from diffusion_jax.tasks.generation.training_images import cached_training_images
from diffusion_jax.tasks.latent import autoencoder_store
from diffusion_jax.tasks.latent.diffusion_space import configured_autoencoder_architecture
from diffusion_jax.tasks.recognition import encoder_store
from diffusion_jax.tasks.recognition.encoder_training import encoder_architecture
from tests.helpers import load_config, tiny_config

# 4 identities of 3 images in 2 shards; DPM-Solver++(2M) with 4 steps on T = 100: timesteps
# 99, 74, 49, 24, so strength 0.5 runs the last two (t < 50).
STYLE_OVERRIDES = {
    "condition.source": "encoder",
    "generate.style_source": "real",
    "generate.style_strength": 0.5,
    "generate.max_style_similarity": 1.0,  # (d) sets its own threshold
    "generate.num_identities": 4,
    "generate.identities_per_shard": 2,
    # A judge with random weights: only the style check rejects (no low similarity, no
    # duplicates; the image-level leakage check is off by default).
    "generate.min_judge_similarity": -1.0,
    "generate.max_duplicate_similarity": 1.0,
    "generate.max_resample_rounds": 1,
}


def style_config(data_dir: str, space: str = "pixel", **overrides):
    config = tiny_config(data_dir) if space == "pixel" else load_config("test,latent")
    config.data.data_dir = data_dir
    config.update_from_flattened_dict({**STYLE_OVERRIDES, **overrides})
    config_checks.validate(config)
    return config


def write_untrained_networks(config, workdir: str) -> None:
    """What `--mode=generate` loads, with random weights: the conditioning encoder, the judge
    (another seed), the autoencoder in latent space, and a diffusion checkpoint."""
    layout = RunLayout.from_config(workdir, config)
    architecture = encoder_architecture(config.encoder)
    for export_dir, seed in ((layout.encoder.export_dir, 0), (layout.judge.export_dir, 1)):
        model = IResNet(**architecture, rngs=nnx.Rngs(seed))
        model.eval()
        encoder_store.save_encoder(
            str(export_dir), model, architecture, provenance={"test": "untrained"}
        )
    if config.diffusion.space == "latent":
        architecture = configured_autoencoder_architecture(config)
        autoencoder_store.save_autoencoder(
            str(layout.autoencoder.export_dir),
            AutoencoderKL(**architecture, rngs=nnx.Rngs(2)),
            architecture,
            latent_scale=0.7,
            provenance={"test": "untrained"},
        )
    mesh = parallel.make_mesh(config.mesh, jax.local_devices())
    optimizer, _ = state_lib.make_optimizer(config.train)
    state = state_lib.init_train_state(unet_builder(config), optimizer, mesh, jax.random.key(3))
    checkpointer = Checkpointer(layout.diffusion.checkpoints)
    checkpointer.save(1, state, config)
    checkpointer.wait_until_finished()
    checkpointer.close()


def load_models(config, workdir: str) -> GenerationModels:
    """The job's networks with the training images under the judge and the style source."""
    mesh = parallel.make_mesh(config.mesh, jax.local_devices())
    layout = RunLayout.from_config(workdir, config)
    models = GenerationModels(config, workdir, str(layout.judge.export_dir), mesh)
    training = cached_training_images(
        config, models.judge, models.identity["judge_encoder"], layout.cache
    )
    models.use_training_images(training)
    models.use_style_source(
        style_source_for_generation(config, training.embeddings, training.labels)
    )
    return models


@pytest.fixture(scope="module")
def pixel_workdir(tmp_path_factory, prepared_data_dir) -> str:
    workdir = str(tmp_path_factory.mktemp("style_pixel"))
    write_untrained_networks(style_config(prepared_data_dir), workdir)
    return workdir


@pytest.fixture(scope="module")
def pixel_models(pixel_workdir, prepared_data_dir) -> GenerationModels:
    return load_models(style_config(prepared_data_dir), pixel_workdir)


def unit_rows(count: int, dim: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(count, dim))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def jobs(*triples) -> list[shard_drawing.ImageJob]:
    return [shard_drawing.ImageJob(*triple) for triple in triples]


def test_style_images_are_chosen_from_the_seed_and_image_alone():
    indices = style_indices(0, [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1], count=1000)
    again = [
        style_indices(0, [i], [k], [a], count=1000)[0]
        for i, k, a in [(0, 0, 0), (0, 1, 0), (1, 0, 0), (0, 0, 1)]
    ]
    np.testing.assert_array_equal(indices, again)  # alone or in a batch, in any order
    assert len(set(indices.tolist())) == 4  # another image, identity or attempt: another image
    assert not np.array_equal(
        indices, style_indices(1, [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1], 1000)
    )
    assert style_indices(0, [3], [2], [1], count=7)[0] in range(7)
    with pytest.raises(ValueError, match="no training records"):
        style_indices(0, [0], [0], [0], count=0)


def test_seed_for_seed_determinism_in_any_batch(pixel_models, prepared_data_dir):
    """(a) The same (seed, identity, image, attempt) gives the same bits whatever else is in
    its batch and in which row; another seed gives another image."""
    config = style_config(prepared_data_dir)
    identities = unit_rows(4, 32, seed=0)
    batch = jobs((0, 0, 0), (1, 2, 0), (3, 1, 1))
    first = np.asarray(shard_drawing.dispatch(pixel_models, identities, 0, batch, 8))
    again = np.asarray(shard_drawing.dispatch(pixel_models, identities, 0, batch, 8))
    np.testing.assert_array_equal(first, again)
    reordered = jobs((2, 0, 0), (3, 1, 1), (0, 0, 0))  # another batch, other rows
    other_batch = np.asarray(shard_drawing.dispatch(pixel_models, identities, 0, reordered, 8))
    np.testing.assert_array_equal(other_batch[1], first[2])
    np.testing.assert_array_equal(other_batch[2], first[0])
    alone = shard_drawing.regenerate_image(pixel_models, identities, config.generate, batch[1])
    np.testing.assert_array_equal(alone, first[1])

    source = pixel_models.style_source
    other_seed = StyleSource(source.records, source.labels, source.judge_centres, seed=1)
    pixel_models.use_style_source(other_seed)
    try:
        reseeded = np.asarray(shard_drawing.dispatch(pixel_models, identities, 1, batch, 8))
    finally:
        pixel_models.use_style_source(source)
    assert np.abs(reseeded[:3].astype(int) - first[:3].astype(int)).max() > 10


def test_zero_strength_returns_the_style_image_in_pixel_space(pixel_workdir, prepared_data_dir):
    """(b) pixel space: s = 0 runs no step, and the stored pixels are the style image's."""
    config = style_config(prepared_data_dir, **{"generate.style_strength": 0.0})
    models = load_models(config, pixel_workdir)
    batch = jobs((0, 0, 0), (1, 1, 0), (2, 2, 1))
    drawn = np.asarray(shard_drawing.dispatch(models, unit_rows(4, 32, 0), 0, batch, 8))
    records = input_pipeline.training_records(config.data)
    for row, job in enumerate(batch):
        source = models.style_source.source(job.identity, job.image_index, job.attempt)
        np.testing.assert_array_equal(drawn[row], np.asarray(records[source["index"]]["image"]))


def test_zero_strength_returns_the_autoencoders_reconstruction_in_latent_space(
    tmp_path, prepared_data_dir
):
    """(b) latent space: s = 0 returns the style image's latent, decoded: decode(encode(y)),
    the autoencoder's round trip (not y: the untrained autoencoder changes it)."""
    config = style_config(prepared_data_dir, "latent", **{"generate.style_strength": 0.0})
    write_untrained_networks(config, str(tmp_path))
    models = load_models(config, str(tmp_path))
    identities = unit_rows(4, 32, 0)
    batch = jobs((0, 0, 0), (1, 1, 0), (3, 2, 1))
    drawn = np.asarray(shard_drawing.dispatch(models, identities, 0, batch, 8))
    columns = np.asarray([(j.identity, j.image_index, j.attempt) for j in batch]).T
    style = models.style_source.images(models.style_source.indices(*columns))
    put = lambda x: jax.device_put(x, parallel.batch_sharding(models.mesh))  # noqa: E731
    padded = np.concatenate([style, np.repeat(style[:1], 5, axis=0)])  # the batch of 8
    round_trip = models.space.decode(models.space.encode(put(padded)))
    expected = np.asarray(jnp.clip(jnp.round((round_trip + 1.0) * 127.5), 0, 255), np.uint8)
    np.testing.assert_array_equal(drawn[:3], expected[:3])
    images = np.clip(np.round((style + 1.0) * 127.5), 0, 255).astype(np.uint8)
    assert np.abs(drawn[:3].astype(int) - images.astype(int)).max() > 10


def test_full_strength_starts_at_plain_samplings_noise_plus_the_start_term(
    pixel_models, prepared_data_dir
):
    """(c) at the model: with s = 1 the first state is sqrt(abar_{T-1}) z_0 + sqrt(1 -
    abar_{T-1}) x_T with x_T plain sampling's first state for the same keys, and every step
    runs; s = 0.5 runs the steps t < 50. (The outputs' difference is bounded at the sampler
    level against the Gaussian oracle: test_samplers.py.)"""
    config = style_config(prepared_data_dir)
    schedule = schedule_from_config(config.diffusion.beta_schedule, config.diffusion.num_timesteps)
    graphdef = unet_graphdef(config)
    plain = make_sample_fn(graphdef, schedule, config, return_trajectory=True)
    full = make_sample_fn(graphdef, schedule, config, return_trajectory=True, strength=1.0)
    half = make_sample_fn(graphdef, schedule, config, return_trajectory=True, strength=0.5)
    cond = unit_rows(3, 32, 1)
    keys = image_keys(0, [0, 1, 2], [0, 0, 0], [0, 0, 0])
    z_0 = jnp.asarray(pixel_models.style_source.images(np.array([0, 5, 9])))
    _, plain_path = plain(pixel_models.params, cond, keys)
    _, full_path = full(pixel_models.params, cond, keys, z_0)
    _, half_path = half(pixel_models.params, cond, keys, z_0)
    timesteps = sampling_timesteps(100, config.sample.num_steps)
    np.testing.assert_array_equal(full_path.t, timesteps)
    expected = q_sample(schedule, z_0, jnp.full((3,), 99), plain_path.x_t[0])
    np.testing.assert_allclose(full_path.x_t[0], expected, atol=1e-6)
    abar = float(schedule.alphas_cumprod[99])
    assert 0 < np.sqrt(abar) < 1e-3  # cosine, T = 100: tiny, not zero
    np.testing.assert_array_equal(half_path.t, timesteps[timesteps < 50])
    expected = q_sample(schedule, z_0, jnp.full((3,), 49), plain_path.x_t[0])
    np.testing.assert_allclose(half_path.x_t[0], expected, atol=1e-6)


def test_the_filter_rejects_images_near_their_style_source_after_the_other_checks():
    first_round = np.eye(3)[[0, 0, 0]] + np.eye(3)[[1, 2, 1]] * 0.1
    kwargs = dict(min_similarity=0.5, max_duplicate_similarity=0.999, max_style_similarity=0.3)
    image_filter = IdentityFilter(first_round, **kwargs)
    assert image_filter.decide(first_round[0], 0, 0, style_similarity=0.31)[0] == (
        "near_style_source"
    )
    assert image_filter.decide(first_round[1], 1, 0, style_similarity=0.3)[0] == "kept"
    assert image_filter.decide(-first_round[2], 2, 0, style_similarity=0.9)[0] == (
        "low_similarity"  # judged first
    )
    assert image_filter.decide(first_round[1], 1, 1, style_similarity=0.0)[0] == "duplicate"
    with pytest.raises(ValueError, match="style similarity"):
        image_filter.decide(first_round[0], 0, 1)
    no_style = IdentityFilter(first_round, min_similarity=0.5, max_duplicate_similarity=0.999)
    assert no_style.decide(first_round[0], 0, 0, style_similarity=1.0)[0] == "kept"


def draw_records(config, models, identities) -> list[dict]:
    records = []
    with tqdm.tqdm(total=0, disable=True) as progress:
        for _, shard_records, _ in shard_drawing.draw_shards(
            config, models, identities, [0, 1], shard_drawing.Throughput(), progress
        ):
            records += shard_records
    return records


def test_images_near_their_style_source_are_rejected_redrawn_and_counted(
    pixel_models, prepared_data_dir
):
    """(d) With max_style_similarity at the median of the first round's style similarities,
    exactly the first-round images above it are "near_style_source" (the first round is the
    same images either way), their redraws are judged too, and the counts add up."""
    identities = unit_rows(4, 32, seed=2)
    config = style_config(prepared_data_dir)
    unfiltered = draw_records(config, pixel_models, identities)
    assert {record["decision"] for record in unfiltered} == {"kept"}
    first = {
        (r["identity"], r["image_index"]): r["style_similarity"]
        for r in unfiltered
        if r["attempt"] == 0
    }
    threshold = float(np.median(list(first.values())))
    config.generate.max_style_similarity = threshold
    records = draw_records(config, pixel_models, identities)
    for record in records:
        rejected = record["style_similarity"] > threshold
        assert (record["decision"] == "near_style_source") == rejected
        if record["attempt"] == 0:
            key = (record["identity"], record["image_index"])
            assert record["style_similarity"] == first[key]
    counts = manifest.count_decisions(records)
    rejected_first = sum(value > threshold for value in first.values())
    assert 0 < rejected_first < len(first)
    assert counts["near_style_source"] >= rejected_first
    redraws = [r for r in records if r["attempt"] == 1]
    assert len(redraws) == rejected_first  # each rejection redrawn once (max_resample_rounds)
    assert sum(counts.values()) == len(first) + len(redraws)


@pytest.fixture(scope="module")
def styled_dataset(pixel_workdir, prepared_data_dir):
    config = style_config(prepared_data_dir, **{"generate.max_style_similarity": 0.9})
    config.generate.output_dir = os.path.join(pixel_workdir, "styled")
    summary = generation_job.generate_dataset(config, pixel_workdir)
    return config, summary


@pytest.mark.slow  # runs the generation job (in-process, ~10 s)
def test_the_job_with_style_on_names_every_images_style_source(
    styled_dataset, pixel_workdir, pixel_models
):
    """(e) End to end: a complete, valid dataset whose plan holds the style settings and whose
    records name each image's style source (the record index the seed chooses and its label),
    with its style similarity; one image redrawn alone equals its stored copy."""
    config, summary = styled_dataset
    out_dir = config.generate.output_dir
    assert summary["dataset_complete"]
    dataset_validation.validate(out_dir)
    plan = manifest.read_json(os.path.join(out_dir, manifest.PLAN_FILE))
    assert {field: plan["generate"][field] for field in STYLE_FIELDS} == {
        "style_source": "real",
        "style_strength": 0.5,
        "max_style_similarity": 0.9,
    }
    records = input_pipeline.training_records(config.data)
    images = [
        image
        for shard in range(2)
        for image in manifest.read_shard_record(out_dir, shard)["images"]
    ]
    for image in images:
        index = style_indices(
            0, [image["identity"]], [image["image_index"]], [image["attempt"]], len(records)
        )[0]
        assert image["style_source"] == {
            "index": int(index),
            "label": int(records[int(index)]["label"]),
        }
        assert -1.0 <= image["style_similarity"] <= 1.0
        assert (image["decision"] == "near_style_source") == (image["style_similarity"] > 0.9)
    counts = manifest.read_json(os.path.join(out_dir, manifest.MANIFEST_FILE))["counts"]
    assert counts["decisions"] == manifest.count_decisions(images)

    kept = next(image for image in images if image["decision"] == "kept")
    identities = np.load(os.path.join(out_dir, manifest.IDENTITIES_FILE))
    job = shard_drawing.ImageJob(kept["identity"], kept["image_index"], kept["attempt"])
    alone = shard_drawing.regenerate_image(pixel_models, identities, config.generate, job)
    stored = np.asarray(Image.open(os.path.join(out_dir, kept["path"])))
    np.testing.assert_array_equal(alone, stored)


@pytest.mark.slow  # runs the generation job (in-process, ~10 s)
def test_without_style_the_plan_and_records_have_no_style_fields(
    styled_dataset, pixel_workdir, prepared_data_dir
):
    """Style off (the default) leaves generation.json and the shard records as they were before
    the option existed, and draws other images than style on."""
    config = style_config(prepared_data_dir, **{"generate.style_source": "none"})
    config.generate.output_dir = os.path.join(pixel_workdir, "plain")
    assert generation_job.generate_dataset(config, pixel_workdir)["dataset_complete"]
    plan = manifest.read_json(os.path.join(config.generate.output_dir, manifest.PLAN_FILE))
    assert not set(STYLE_FIELDS) & set(plan["generate"])
    for shard in range(2):
        for image in manifest.read_shard_record(config.generate.output_dir, shard)["images"]:
            assert "style_source" not in image and "style_similarity" not in image
    styled_config, _ = styled_dataset
    path = manifest.read_shard_record(config.generate.output_dir, 0)["images"][0]["path"]
    plain_image = np.asarray(Image.open(os.path.join(config.generate.output_dir, path)))
    styled_image = np.asarray(Image.open(os.path.join(styled_config.generate.output_dir, path)))
    assert np.abs(plain_image.astype(int) - styled_image.astype(int)).max() > 10


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"generate.style_source": "photos"}, r"config.generate.style_source='photos' is not one"),
        ({"generate.style_strength": 1.5}, r"config.generate.style_strength: strength must lie"),
        ({"generate.style_strength": -0.1}, r"generate.style_strength.*\[0, 1\]"),
        ({"generate.max_style_similarity": 2.0}, r"max_style_similarity=2.0 must lie in"),
    ],
)
def test_config_checks_refuse_bad_style_values(overrides, message):
    config = tiny_config()
    config.update_from_flattened_dict({**STYLE_OVERRIDES, **overrides})
    with pytest.raises(config_checks.ConfigError, match=message):
        config_checks.validate(config)
