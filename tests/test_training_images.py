"""The image-level leakage check: each image's nearest real training image under the judge (a
brute-force reference), the cache of the training images' judge embeddings, and the check in the
shard drawing loop (a planted copy of a training image is rejected, counted, and redrawn; the
check off changes no decision), on tiny arrays and a fake generator."""

import jax
import numpy as np
import pytest
import tqdm

from diffusion_jax.core import parallel
from diffusion_jax.tasks.generation import manifest, training_images
from diffusion_jax.tasks.generation.image_seeds import image_keys
from diffusion_jax.tasks.generation.shard_drawing import Throughput, draw_shards
from diffusion_jax.tasks.generation.training_images import (
    NearestTrainingImages,
    TrainingImages,
    cached_training_images,
    training_images_for_generation,
)
from tests.helpers import tiny_config

DIM = 8


def unit_rows(values) -> np.ndarray:
    values = np.asarray(values, np.float64)
    return (values / np.linalg.norm(values, axis=-1, keepdims=True)).astype(np.float32)


def local_mesh():
    return parallel.make_mesh(tiny_config().mesh, jax.local_devices())


def brute_force(queries, training, query_labels=None):
    """(max cosine, first argmax) in float64 over the training rows of another label."""
    similarity = np.asarray(queries, np.float64) @ np.asarray(training.embeddings, np.float64).T
    if query_labels is not None:
        similarity[np.asarray(query_labels)[:, None] == training.labels[None, :]] = -np.inf
    return similarity.max(axis=1), similarity.argmax(axis=1)


def test_the_nearest_training_image_is_the_brute_force_one_across_chunks():
    rng = np.random.default_rng(0)
    training = TrainingImages(
        unit_rows(rng.normal(size=(37, DIM))), np.repeat(np.arange(10), 4)[:37].astype(np.int32)
    )
    queries = unit_rows(rng.normal(size=(11, DIM)))
    # Chunks of 8 rows: 5 chunks, the last one padded with 3 rows that must never be chosen.
    nearest = NearestTrainingImages(training, local_mesh(), chunk=8)
    similarity, index, label = nearest.search(queries, batch_size=4)
    expected, expected_index = brute_force(queries, training)
    np.testing.assert_allclose(similarity, expected, atol=1e-6)
    np.testing.assert_array_equal(index, expected_index)
    np.testing.assert_array_equal(label, training.labels[expected_index])
    # Leaving out each query's own identity: training images against another identity.
    own = training.labels[:11]
    similarity, index, label = nearest.search(training.embeddings[:11], own, batch_size=4)
    expected, expected_index = brute_force(training.embeddings[:11], training, own)
    np.testing.assert_allclose(similarity, expected, atol=1e-6)
    np.testing.assert_array_equal(index, expected_index)
    assert np.all(label != own)
    # An exact copy of a training image is found at cosine 1 (the first copy on ties).
    copies = np.concatenate([training.embeddings[5:6], training.embeddings[5:6]])
    doubled = TrainingImages(np.concatenate([training.embeddings, copies]), np.arange(39) % 10)
    similarity, index, _ = NearestTrainingImages(doubled, local_mesh(), chunk=8).search(copies)
    np.testing.assert_allclose(similarity, 1.0, atol=1e-6)
    np.testing.assert_array_equal(index, [5, 5])


class FakeJudge:
    """An `EmbeddingExtractor` stand-in: the unit vector of an image's first DIM values."""

    embedding_dim = DIM

    def __init__(self):
        self.images_embedded = 0

    def embed_arrays(self, images, *, batch_size=256, description=""):
        del batch_size, description
        self.images_embedded += len(images)
        flat = np.asarray(images, np.float64).reshape(len(images), -1)[:, :DIM]
        return unit_rows(flat)


def fake_records(count: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"image": rng.normal(size=(DIM,)), "label": index // 3} for index in range(count)]


@pytest.fixture
def fake_training_data(monkeypatch):
    """`input_pipeline.training_records` and `ensure_prepared` faked: 12 records of 4 labels."""
    records = fake_records(12)
    monkeypatch.setattr(training_images.input_pipeline, "training_records", lambda data: records)
    monkeypatch.setattr(training_images.input_pipeline, "ensure_prepared", lambda data: None)
    return records


def test_the_cache_is_reused_and_another_judge_or_data_has_its_own(fake_training_data, tmp_path):
    config, judge = tiny_config(), FakeJudge()
    first = cached_training_images(config, judge, "judge-a", tmp_path)
    assert judge.images_embedded == 12
    np.testing.assert_array_equal(first.labels, np.arange(12) // 3)
    np.testing.assert_allclose(
        first.embeddings,
        FakeJudge().embed_arrays(np.stack([r["image"] for r in fake_training_data])),
    )
    again = cached_training_images(config, judge, "judge-a", tmp_path)
    assert judge.images_embedded == 12  # read from the cache
    np.testing.assert_array_equal(again.embeddings, first.embeddings)
    assert again.sha256 == first.sha256
    cached_training_images(config, judge, "judge-b", tmp_path)  # another judge: computed again
    assert judge.images_embedded == 24
    config.data.max_images_per_identity = 2  # other data: computed again
    cached_training_images(config, judge, "judge-a", tmp_path)
    assert judge.images_embedded == 36
    assert len(list(tmp_path.glob(f"{training_images.CACHE_PREFIX}*.npz"))) == 3


def test_a_worker_refuses_training_embeddings_other_than_the_plans(fake_training_data, tmp_path):
    config, judge = tiny_config(), FakeJudge()
    expected = cached_training_images(config, judge, "judge-a", tmp_path).sha256
    found = training_images_for_generation(config, judge, "judge-a", tmp_path, expected)
    assert found.sha256 == expected
    with pytest.raises(ValueError, match="not those the dataset's plan records"):
        training_images_for_generation(config, judge, "judge-a", tmp_path, "0" * 64)


# ------------------------------------------------------------------ the check in the drawing loop


def fake_pixels(keys) -> np.ndarray:
    """uint8 [B, 2, 2, 3]: a function of each image's key alone, as the sampler's images are."""
    data = np.asarray(jax.random.key_data(keys), np.uint64).reshape(len(keys), -1)
    rng_values = [np.random.default_rng(row.tolist()).integers(0, 256, 12) for row in data]
    return np.asarray(rng_values, np.uint8).reshape(-1, 2, 2, 3)


def fake_embedding(pixels) -> np.ndarray:
    """A unit judge embedding [DIM] of one image's pixels: random, determined by the pixels."""
    return unit_rows(np.random.default_rng(pixels.reshape(-1).tolist()).normal(size=DIM))


class FakeModels:
    """`GenerationModels` with a fake sampler and judge and the real nearest-image search."""

    style_source = None

    def __init__(self, training: TrainingImages, round_batch_size: int):
        self.round_batch_size = round_batch_size
        self.nearest_training = NearestTrainingImages(training, local_mesh())

    def draw(self, cond, keys):
        del cond
        return fake_pixels(keys)

    def embed_round(self, pixels):
        judge = np.zeros((self.round_batch_size, DIM), np.float32)
        judge[: len(pixels)] = [fake_embedding(image) for image in pixels]
        return (judge, judge, *self.nearest_training.dispatch(judge))


def generation_config(max_training_image_similarity: float):
    config = tiny_config()
    config.generate.update(
        num_identities=4,
        images_per_identity=3,
        identities_per_shard=2,
        batch_size=4,
        min_judge_similarity=-1.0,  # only the leakage check rejects
        max_duplicate_similarity=1.0,
        max_resample_rounds=2,
        max_training_image_similarity=max_training_image_similarity,
    )
    return config


def draw_all(config, training: TrainingImages) -> list[dict]:
    identities = unit_rows(np.random.default_rng(1).normal(size=(4, DIM)))
    models = FakeModels(training, config.generate.images_per_identity)
    with tqdm.tqdm(total=0, disable=True) as progress:
        shards = draw_shards(config, models, identities, [0, 1], Throughput(), progress)
        return {shard: records for shard, records, _ in shards}


@pytest.fixture(scope="module")
def planted():
    """Training images: 20 random ones (4 identities) and, at index 20 with label 9, a copy of
    the first draw of identity 1's image 2."""
    rng = np.random.default_rng(2)
    copied = fake_embedding(fake_pixels(image_keys(0, [1], [2], [0]))[0])
    embeddings = np.concatenate([unit_rows(rng.normal(size=(20, DIM))), copied[None]])
    labels = np.asarray([*(np.arange(20) // 5), 9], np.int32)
    return TrainingImages(embeddings, labels)


def decisions(shards: dict) -> dict[tuple[int, int, int], str]:
    return {
        (image["identity"], image["image_index"], image["attempt"]): image["decision"]
        for records in shards.values()
        for image in records
    }


def test_every_image_records_its_nearest_training_image_as_the_brute_force_one(planted):
    shards = draw_all(generation_config(1.0), planted)
    images = [image for records in shards.values() for image in records]
    assert len(images) == 12 and all(image["decision"] == "kept" for image in images)
    for image in images:
        pixels = fake_pixels(
            image_keys(0, [image["identity"]], [image["image_index"]], [image["attempt"]])
        )[0]
        expected, index = brute_force(fake_embedding(pixels)[None], planted)
        assert image["nearest_training_image_similarity"] == pytest.approx(expected[0], abs=1e-6)
        assert image["nearest_training_image_index"] == index[0]
        assert image["nearest_training_image_label"] == planted.labels[index[0]]
    copied = next(image for image in images if (image["identity"], image["image_index"]) == (1, 2))
    assert copied["nearest_training_image_index"] == 20
    assert copied["nearest_training_image_label"] == 9
    assert copied["nearest_training_image_similarity"] == pytest.approx(1.0, abs=1e-6)


def test_an_image_above_the_threshold_is_rejected_counted_and_redrawn(planted, tmp_path):
    shards = draw_all(generation_config(0.99), planted)
    found = decisions(shards)
    assert found[(1, 2, 0)] == "near_training_image"
    assert found[(1, 2, 1)] == "kept"  # its redraw
    assert [decision for decision in found.values()].count("near_training_image") == 1
    # The check's rejection is a decision of its own in the shard's and the manifest's counts.
    records = []
    for shard, images in sorted(shards.items()):
        record = {"shard": shard, "counts": manifest.count_decisions(images), "images": images}
        record["files"] = {}
        manifest.write_json_atomically(manifest.shard_record_path(tmp_path, shard), record)
        records.append(record)
    assert records[0]["counts"] == {"kept": 6, "near_training_image": 1}
    plan = {"generate": {"num_identities": 4}}
    counts = manifest.build_manifest(plan, records, {}, tmp_path)["counts"]
    assert counts["decisions"] == {"kept": 12, "near_training_image": 1}
    assert counts["images"] == 12 and counts["judged_images"] == 13
    kept = [
        image["nearest_training_image_similarity"]
        for record in records
        for image in record["images"]
        if image["decision"] == "kept"
    ]
    assert counts["kept_nearest_training_image_similarity"] == training_images.similarity_summary(
        kept
    )
    assert counts["kept_nearest_training_image_similarity"]["max"] < 0.99


def test_the_check_off_changes_no_decision(planted):
    without_copy = TrainingImages(planted.embeddings[:20], planted.labels[:20])
    off = draw_all(generation_config(1.0), planted)
    assert decisions(off) == decisions(draw_all(generation_config(1.0), without_copy))
    # The same records, similarities included, in a second run: the same bits.
    assert off == draw_all(generation_config(1.0), planted)


def test_similarity_summary_is_numpys():
    values = np.random.default_rng(3).uniform(-1, 1, size=101)
    summary = training_images.similarity_summary([*values, np.nan, -np.inf])
    assert summary == {
        "images": 101,
        "mean": pytest.approx(values.mean()),
        "p50": pytest.approx(np.median(values)),
        "p90": pytest.approx(np.quantile(values, 0.9)),
        "p99": pytest.approx(np.quantile(values, 0.99)),
        "max": pytest.approx(values.max()),
    }
    assert training_images.similarity_summary([]) == {"images": 0}
