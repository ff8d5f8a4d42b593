"""The report's image-level leakage section (`training_image_leakage`): its numbers against a
direct computation on a small generated dataset, real training images and held-out images."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from diffusion_jax.core import paths
from diffusion_jax.tasks.evaluation import training_image_leakage
from diffusion_jax.tasks.generation import manifest, training_images
from tests.helpers import tiny_config
from tests.test_training_images import DIM, FakeJudge, fake_records, local_mesh, unit_rows


def write_dataset(out_dir, kept_values, rejected: int, threshold: float) -> None:
    """A generated dataset's manifest and shard records, as far as the section reads them."""
    images = [
        {"decision": "kept", "nearest_training_image_similarity": value} for value in kept_values
    ]
    images += [{"decision": "low_similarity", "nearest_training_image_similarity": 0.1}]
    images += [
        {"decision": "near_training_image", "nearest_training_image_similarity": 0.99}
    ] * rejected
    shards = {}
    for shard, part in enumerate((images[::2], images[1::2])):
        manifest.write_json_atomically(manifest.shard_record_path(out_dir, shard), {"images": part})
        shards[manifest.shard_record_relative_path(shard)] = "sha"
    contents = {
        "plan": {"generate": {"max_training_image_similarity": threshold}},
        "counts": {
            "decisions": manifest.count_decisions(images),
            "judged_images": len(images),
        },
        "shards": shards,
    }
    paths.write_json_atomically(paths.Path(out_dir) / manifest.MANIFEST_FILE, contents)


def test_the_sections_numbers_equal_a_direct_computation(monkeypatch, tmp_path):
    records = fake_records(30)  # 10 identities of 3 images
    heldout = np.random.default_rng(5).normal(size=(8, DIM))
    heldout_labels = np.arange(8) // 2  # 4 identities: 2 validation, 2 test
    monkeypatch.setattr(training_images.input_pipeline, "training_records", lambda data: records)
    monkeypatch.setattr(
        training_image_leakage.input_pipeline,
        "load_split_arrays",
        lambda data, split: {"image": heldout, "label": heldout_labels},
    )
    config = tiny_config()
    assert config.data.source == "procedural"
    kept = np.random.default_rng(6).uniform(0.2, 0.8, size=25)
    write_dataset(tmp_path / "generated", kept, rejected=3, threshold=0.95)

    leakage, values = training_image_leakage.measure(
        config, tmp_path / "generated", FakeJudge(), "judge-a", tmp_path / "cache", local_mesh()
    )

    train = unit_rows(np.stack([record["image"] for record in records])).astype(np.float64)
    labels = np.asarray([record["label"] for record in records])
    similarity = train @ train.T
    similarity[labels[:, None] == labels[None, :]] = -np.inf
    other_identity = similarity.max(axis=1)
    validation = training_image_leakage.heldout_identity_parts(
        heldout_labels,
        data_seed=config.data.seed,
        validation_fraction=config.evaluate.validation_fraction,
    )["validation"]
    assert len(validation) == 2
    in_validation = np.isin(heldout_labels, validation)
    heldout_nearest = (unit_rows(heldout[in_validation]).astype(np.float64) @ train.T).max(axis=1)

    def summary(values):
        return {
            "images": len(values),
            "mean": pytest.approx(np.mean(values), abs=1e-6),
            "p50": pytest.approx(np.quantile(values, 0.5), abs=1e-6),
            "p90": pytest.approx(np.quantile(values, 0.9), abs=1e-6),
            "p99": pytest.approx(np.quantile(values, 0.99), abs=1e-6),
            "max": pytest.approx(np.max(values), abs=1e-6),
        }

    assert leakage["generated"] == summary(kept)
    assert leakage["real_other_identity"] == summary(other_identity)
    assert leakage["heldout_validation"] == summary(heldout_nearest)
    assert leakage["threshold"] == 0.95 and leakage["check_on"]
    assert leakage["rejected"] == 3 and leakage["judged_images"] == 29
    assert leakage["kept_above_real_p99"] == pytest.approx(
        np.mean(kept > np.quantile(other_identity, 0.99))
    )
    np.testing.assert_allclose(np.sort(values["generated"]), np.sort(kept))
    np.testing.assert_allclose(values["real_other_identity"], other_identity, atol=1e-6)

    markdown = "\n".join(training_image_leakage.markdown_lines(leakage))
    assert "3 of 29 judged images were rejected" in markdown
    assert f"| generated, kept | 25 | {np.mean(kept):.3f} |" in markdown
    assert training_image_leakage.FIGURE in markdown
    figure = training_image_leakage.figure(values, leakage["threshold"])
    assert len(figure.axes[0].patches) > 0
    plt.close(figure)


def test_a_dataset_without_the_records_has_no_section(tmp_path):
    write_dataset(tmp_path, [0.5], rejected=0, threshold=1.0)
    record_path = manifest.shard_record_path(tmp_path, 0)
    record = manifest.read_json(record_path)
    for image in record["images"]:
        del image["nearest_training_image_similarity"]
    manifest.write_json_atomically(record_path, record)
    assert training_image_leakage.measure(tiny_config(), tmp_path, None, "", tmp_path, None) == (
        None,
        None,
    )
    assert training_image_leakage.markdown_lines(None) == []


def test_evenly_spaced_indices_are_distinct_and_cover_the_range():
    for count, maximum in ((10, 20), (10, 10), (25, 4), (20_001, 20_000)):
        indices = training_image_leakage.evenly_spaced(count, maximum)
        assert len(indices) == min(count, maximum) and len(set(indices.tolist())) == len(indices)
        assert indices[0] == 0 and indices[-1] < count and np.all(np.diff(indices) > 0)
