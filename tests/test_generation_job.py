"""The generation job end to end on the `test` preset: a valid dataset in every format that
loads back through the data layer, one image regenerated alone, a worker killed with SIGKILL and
rerun, and two workers sharing one output (all in new processes, each compared file by file with
the uninterrupted in-process run: the same bytes, records included; `assert_same_dataset`),
refusals, and validation. The processes of one jax.distributed job as workers are tested in the
pipeline they run (`test_claim_pipeline.py`)."""

import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from diffusion_jax.core.fingerprint import file_sha256
from diffusion_jax.tasks.data.sources import image_folders
from diffusion_jax.tasks.data.sources.recordio import RecordIOReader
from diffusion_jax.tasks.generation import (
    dataset_validation,
    dataset_writers,
    generation_job,
    manifest,
    shard_drawing,
)
from diffusion_jax.tasks.generation.generation_models import GenerationModels
from diffusion_jax.tasks.generation.sphere_sampling import max_similarity_to
from tests.helpers import (
    REPO_ROOT,
    config_argument,
    main_job_environment,
    run_main_job,
    tiny_config,
)

# A run of the main job in a subprocess, then generation jobs in- and out-of-process.
pytestmark = [pytest.mark.slow, pytest.mark.e2e]

TRAIN_OVERRIDES = {"condition.source": "encoder"}
# 6 identities of 3 images in 6 shards. DDPM (all 100 steps, fresh noise at each) makes a shard
# take long enough that a worker can be killed mid-run, and exercises per-image sampler noise.
GENERATE_OVERRIDES = {
    **TRAIN_OVERRIDES,
    "generate.identities_per_shard": 1,
    "generate.min_judge_similarity": 0.5,
    "sample.sampler": "ddpm",
}


def job_config(data_dir: str, **overrides):
    config = tiny_config(data_dir)
    config.update_from_flattened_dict({**GENERATE_OVERRIDES, **overrides})
    return config


def command(workdir: str, data_dir: str, out_dir: str, mode: str = "generate", **overrides):
    flags = {**GENERATE_OVERRIDES, "generate.output_dir": out_dir, **overrides}
    return [
        sys.executable,
        "-m",
        "diffusion_jax.main",
        f"--config={config_argument('test')}",
        f"--workdir={workdir}",
        f"--mode={mode}",
        f"--config.data.data_dir={data_dir}",
    ] + [f"--config.{key}={value}" for key, value in flags.items()]


def run(args: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(
        args, cwd=REPO_ROOT, env=main_job_environment(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def dataset_files(out_dir: str) -> dict[str, str]:
    """{relative path: sha256} of every file under out_dir."""
    return {
        os.path.relpath(os.path.join(directory, name), out_dir): file_sha256(
            os.path.join(directory, name)
        )
        for directory, _, names in os.walk(out_dir)
        for name in names
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prepared_data_dir):
    """A workdir with the `test` preset's encoder-conditioned pixel model (4 + 6 steps) and its
    judge: the pipeline's `diffusion` and `judge` stages."""
    workdir = str(tmp_path_factory.mktemp("generation_model"))
    run_main_job("test", workdir, prepared_data_dir, TRAIN_OVERRIDES, stages="diffusion,judge")
    return workdir


@pytest.fixture(scope="module")
def generated(trained, prepared_data_dir):
    """(out_dir, summary) of one uninterrupted in-process generation."""
    config = job_config(prepared_data_dir)
    config.generate.output_dir = os.path.join(trained, "dataset_a")
    summary = generation_job.generate_dataset(config, trained)
    return config.generate.output_dir, summary


def test_the_dataset_is_complete_and_valid_with_a_manifest(generated):
    out_dir, summary = generated
    assert summary["dataset_complete"] and summary["shards_written"] == list(range(6))
    contents = manifest.read_json(os.path.join(out_dir, manifest.MANIFEST_FILE))
    counts = contents["counts"]
    assert counts["identities"] == 6 and counts["judged_images"] >= 18
    assert counts["images"] == counts["decisions"].get("kept", 0) == summary["images_kept"]
    assert summary["images_drawn"] == counts["judged_images"]
    records = [
        image
        for shard in range(6)
        for image in manifest.read_shard_record(out_dir, shard)["images"]
    ]
    last_round = {}
    for image in records:
        last_round[image["identity"]] = max(last_round.get(image["identity"], 0), image["attempt"])
    assert summary["rounds_judged"] == sum(attempt + 1 for attempt in last_round.values())
    validated = dataset_validation.validate(out_dir)
    assert validated["images"] == counts["images"]
    assert validated["format_lengths"] == {"tfds": counts["images"], "recordio": counts["images"]}
    record = manifest.read_shard_record(out_dir, 0)
    for image in record["images"]:
        assert image["seed"] == [0, image["identity"], image["image_index"], image["attempt"]]
        assert image["decision"] in ("kept", "low_similarity", "duplicate")
        assert (image["decision"] == "low_similarity") == (image["judge_similarity"] < 0.5)
    plan = contents["plan"]
    assert plan["networks"]["judge_encoder"] != plan["networks"]["conditioning_encoder"]
    assert plan["networks"]["diffusion"]["step"] == 6


def test_identities_are_separated_and_far_from_the_training_identities(
    generated, trained, prepared_data_dir
):
    out_dir, _ = generated
    identities = np.load(os.path.join(out_dir, manifest.IDENTITIES_FILE))
    config = job_config(prepared_data_dir)
    similarity = identities @ identities.T
    np.fill_diagonal(similarity, -1)
    assert identities.shape == (6, 32) and similarity.max() <= 0.5 + 1e-6
    cache = [
        name
        for name in os.listdir(os.path.join(trained, "cache"))
        if name.startswith("training_identities-")
    ]
    with np.load(os.path.join(trained, "cache", cache[0])) as cached:
        centres = cached["centres"]
    assert centres.shape == (config.data.num_train_identities, 32)
    nearest, _ = max_similarity_to(identities, centres)
    assert nearest.max() <= config.generate.max_training_similarity + 1e-6
    plan = manifest.read_json(os.path.join(out_dir, manifest.PLAN_FILE))
    assert plan["identities"]["max_similarity_to_training_identity"] == pytest.approx(nearest.max())


def test_every_image_records_its_nearest_training_image_under_the_judge(generated, trained):
    from diffusion_jax.tasks.generation.training_images import CACHE_PREFIX, TrainingImages
    from diffusion_jax.tasks.recognition import encoder_store
    from diffusion_jax.tasks.recognition.embeddings import EmbeddingExtractor

    out_dir, _ = generated
    (cache,) = [name for name in os.listdir(os.path.join(trained, "cache")) if CACHE_PREFIX in name]
    with np.load(os.path.join(trained, "cache", cache)) as cached:
        training = TrainingImages(cached["embeddings"], cached["labels"])
    plan = manifest.read_json(os.path.join(out_dir, manifest.PLAN_FILE))
    assert plan["identities"]["training_images"] == {
        "count": len(training),
        "sha256": training.sha256,
    }
    images = [
        image
        for shard in range(6)
        for image in manifest.read_shard_record(out_dir, shard)["images"]
    ]
    for image in images:  # the check is off in the test preset: recorded, rejecting nothing
        assert image["decision"] != "near_training_image"
        index = image["nearest_training_image_index"]
        assert image["nearest_training_image_label"] == training.labels[index]
    # The stored image's judge embedding against every training image, in float64.
    kept = next(image for image in images if image["decision"] == "kept")
    judge = encoder_store.load_encoder(os.path.join(trained, "judge", "encoder", "model"))
    stored = np.asarray(Image.open(os.path.join(out_dir, kept["path"])))
    embedding = EmbeddingExtractor(judge.model, generated_mesh(), flip=False).embed_arrays(
        stored[None], batch_size=1
    )[0]
    similarity = training.embeddings.astype(np.float64) @ embedding.astype(np.float64)
    assert kept["nearest_training_image_similarity"] == pytest.approx(similarity.max(), abs=1e-5)
    assert similarity[kept["nearest_training_image_index"]] == pytest.approx(
        similarity.max(), abs=1e-5
    )
    contents = manifest.read_json(os.path.join(out_dir, manifest.MANIFEST_FILE))
    summary = contents["counts"]["kept_nearest_training_image_similarity"]
    assert summary["images"] == contents["counts"]["images"]


def test_every_format_loads_back_with_the_same_images_and_labels(generated, tmp_path):
    out_dir, _ = generated
    kept = [
        image
        for shard in range(6)
        for image in manifest.read_shard_record(out_dir, shard)["images"]
        if image["decision"] == "kept"
    ]
    kept.sort(key=lambda image: (image["identity"], image["image_index"]))
    pixels = [np.asarray(Image.open(os.path.join(out_dir, image["path"]))) for image in kept]
    labels = [image["identity"] for image in kept]

    builder = image_folders.prepare_image_folder(
        os.path.join(out_dir, dataset_writers.FOLDERS_DIR), tmp_path / "tfds", resolution=32
    )
    folders = image_folders.ImageLabelSource(builder.data_dir)
    tfds_records = tfds.builder_from_directory(
        os.path.join(out_dir, dataset_writers.TFDS_DIR)
    ).as_data_source("train")
    recordio = RecordIOReader(os.path.join(out_dir, dataset_writers.RECORDIO_REC))
    assert len(folders) == len(tfds_records) == len(recordio) == len(kept)
    for index, (expected, label) in enumerate(zip(pixels, labels)):
        np.testing.assert_array_equal(folders[index]["image"], expected)
        assert folders[index]["label"] == label  # every identity kept an image here
        np.testing.assert_array_equal(tfds_records[index]["image"], expected)
        assert tfds_records[index]["label"] == label
        record = recordio[index]
        assert record["label"] == label
        np.testing.assert_array_equal(
            np.asarray(Image.open(__import__("io").BytesIO(record["image_bytes"]))), expected
        )


def test_one_image_regenerated_alone_equals_its_copy(generated, trained, prepared_data_dir):
    out_dir, _ = generated
    config = job_config(prepared_data_dir)
    config.generate.output_dir = out_dir
    judge = os.path.join(trained, "judge", "encoder", "model")
    models = GenerationModels(config, trained, judge, generated_mesh())
    identities = np.load(os.path.join(out_dir, manifest.IDENTITIES_FILE))
    record = manifest.read_shard_record(out_dir, 4)
    image = [image for image in record["images"] if image["decision"] == "kept"][-1]
    job = shard_drawing.ImageJob(image["identity"], image["image_index"], image["attempt"])
    alone = shard_drawing.regenerate_image(models, identities, config.generate, job)
    stored = np.asarray(Image.open(os.path.join(out_dir, image["path"])))
    np.testing.assert_array_equal(alone, stored)
    # The records score the stored pixels: cos(E(x), c) of the PNG, up to the last bits a batch
    # row can change (the float sample before rounding to uint8 scores 1e-4 to 1e-3 away).
    condition = models.conditioning.embed_arrays(stored[None], batch_size=1)[0]
    assert float(condition @ identities[job.identity]) == pytest.approx(
        image["condition_similarity"], abs=1e-5
    )


def generated_mesh():
    from diffusion_jax.core import parallel

    return parallel.make_mesh(tiny_config().mesh, jax.local_devices())


def test_a_worker_killed_mid_run_and_rerun_gives_the_uninterrupted_dataset(
    generated, trained, prepared_data_dir
):
    out_dir, _ = generated
    killed = os.path.join(trained, "dataset_killed")
    args = command(trained, prepared_data_dir, killed)
    process = subprocess.Popen(
        args,
        cwd=REPO_ROOT,
        env=main_job_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first_record = manifest.shard_record_path(killed, 0)
    deadline = time.monotonic() + 300
    while not os.path.exists(first_record) and time.monotonic() < deadline:
        assert process.poll() is None, "the worker ended before writing a shard"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not os.path.exists(os.path.join(killed, manifest.MANIFEST_FILE))
    run(args)  # resumes
    assert_same_dataset(killed, out_dir)


def test_two_new_worker_processes_write_disjoint_shards_that_form_the_same_dataset(
    generated, trained, prepared_data_dir
):
    out_dir, _ = generated
    shared = os.path.join(trained, "dataset_two_workers")
    workers = [
        subprocess.Popen(
            command(
                trained,
                prepared_data_dir,
                shared,
                **{"generate.task_index": index, "generate.task_count": 2},
            ),
            cwd=REPO_ROOT,
            env=main_job_environment(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in (1, 0)  # worker 1 starts first and waits for worker 0's identities
    ]
    for worker in workers:
        _, stderr = worker.communicate(timeout=600)
        assert worker.returncode == 0, stderr[-4000:]
    assert_same_dataset(shared, out_dir)
    for shard in range(6):
        record = manifest.read_shard_record(shared, shard)
        assert record["identities"] == [shard, shard + 1]


def assert_same_dataset(actual_dir: str, expected_dir: str) -> None:
    """The same files, byte for byte (images, shard records with their float similarities, and
    the manifest), and a manifest whose hashes match its own files."""
    assert dataset_files(actual_dir) == dataset_files(expected_dir)
    dataset_validation.validate(actual_dir)


def test_validation_names_a_changed_a_missing_and_an_extra_file(generated, tmp_path):
    out_dir, _ = generated
    broken = str(tmp_path / "broken")
    shutil.copytree(out_dir, broken)
    images = sorted(path for path in dataset_files(broken) if path.startswith("images/"))
    with open(os.path.join(broken, images[0]), "r+b") as file:
        file.seek(40)
        file.write(b"\x00\x01\x02")
    os.remove(os.path.join(broken, images[1]))
    shutil.copy(os.path.join(broken, images[2]), os.path.join(broken, images[2] + ".copy.png"))
    with pytest.raises(dataset_validation.InvalidDatasetError) as error:
        dataset_validation.validate(broken)
    message = str(error.value)
    assert f"{images[0]} does not match its SHA-256" in message
    assert f"{images[1]} is missing" in message
    assert f"{images[2]}.copy.png is not in any shard record" in message
    os.remove(os.path.join(broken, manifest.MANIFEST_FILE))
    with pytest.raises(dataset_validation.InvalidDatasetError, match="6 shard records present"):
        dataset_validation.validate(broken)


def test_another_config_is_refused_in_an_existing_output(generated, trained, prepared_data_dir):
    out_dir, _ = generated
    config = job_config(prepared_data_dir, **{"generate.images_per_identity": 4})
    config.generate.output_dir = out_dir
    with pytest.raises(ValueError, match="images_per_identity"):
        generation_job.generate_dataset(config, trained)


def test_identities_from_unconditional_samples_and_from_an_image_set(
    generated, trained, prepared_data_dir, tmp_path
):
    from diffusion_jax.tasks.data.sources import input_pipeline
    from diffusion_jax.tasks.data.sources.image_decoding import encode_png
    from diffusion_jax.tasks.generation.identity_sources import choose_identities
    from diffusion_jax.tasks.generation.image_seeds import candidate_keys

    config = job_config(prepared_data_dir)
    models = GenerationModels(
        config, trained, os.path.join(trained, "judge", "encoder", "model"), generated_mesh()
    )
    heldout = input_pipeline.load_split_arrays(config.data, "heldout")["image"][::4]
    for index, image in enumerate(heldout):  # nested folders: any depth is read
        path = tmp_path / f"group_{index % 3}" / f"{index:03d}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(encode_png(image))
    centres = np.zeros((1, 32), np.float32)
    centres[0, 0] = 1.0
    arguments = dict(
        dim=32,
        training_centres=centres,
        conditioning=models.conditioning,
        resolution=32,
        draw_unconditional=models.draw_unconditional,
    )

    def check_separated_and_far_from_training(found):
        similarity = found @ found.T
        np.fill_diagonal(similarity, -1)
        assert similarity.max() <= config.generate.max_identity_similarity + 1e-6
        assert (found @ centres.T).max() <= config.generate.max_training_similarity + 1e-6

    config.generate.identity_source = "images"
    config.generate.identity_images = str(tmp_path)
    identities, info = choose_identities(config.generate, **arguments)
    check_separated_and_far_from_training(identities)
    chosen = [np.asarray(Image.open(tmp_path / path)) for path in info["images"]]
    np.testing.assert_allclose(
        identities, models.conditioning.embed_arrays(np.stack(chosen)), atol=1e-5
    )
    assert info["candidates"] == len(heldout)

    config.generate.identity_source = "unconditional"
    identities, info = choose_identities(config.generate, **arguments)
    assert info["candidates"] == 6 * config.generate.candidates_per_identity
    keys = candidate_keys(config.generate.seed, 0, config.generate.batch_size)
    first_batch = np.asarray(models.conditioning(models.draw_unconditional(keys)))
    in_first_batch = [i for i, c in enumerate(info["candidate_indices"]) if c < len(first_batch)]
    np.testing.assert_allclose(
        identities[in_first_batch],
        first_batch[[info["candidate_indices"][i] for i in in_first_batch]],
        atol=1e-5,
    )
    check_separated_and_far_from_training(identities)
