"""The identity report against hand-built embeddings, brute force and the sampling it promises."""

import json
import math

import numpy as np
import pytest

from diffusion_jax.core import figures
from diffusion_jax.tasks.evaluation import identity_report
from diffusion_jax.tasks.evaluation.identity_report import identity_report as report_of


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def clustered_embeddings(num_identities: int, per_identity: int, dim: int, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_identities, dim))
    labels = np.repeat(np.arange(num_identities), per_identity)
    embeddings = unit(centres[labels] + 0.8 * rng.normal(size=(len(labels), dim)))
    return embeddings, labels


def test_hand_built_two_identities():
    # A: (1, 0) and (0.6, 0.8); B: (0, 1) and (-0.8, 0.6). Genuine similarities 0.6, 0.6;
    # impostor ones 0, -0.8, 0.8, 0 (mean 0, population variance 0.32).
    # d' = 0.6 / sqrt((0 + 0.32) / 2) = 1.5.
    # ROC (FAR, FRR): inf (0, 1), 0.8 (1/4, 1), 0.6 (1/4, 0): the segment from (1/4, 1) to
    # (1/4, 0) crosses FAR = FRR at 1/4, threshold 0.6.
    # Centroids (2, 1)/sqrt5 and (-1, 2)/sqrt5 are orthogonal: nearest-identity similarity 0.
    embeddings = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-0.8, 0.6]])
    labels = np.array(["A", "A", "B", "B"])

    report = report_of(embeddings, labels)

    np.testing.assert_allclose(report.genuine_similarities, [0.6, 0.6])
    np.testing.assert_allclose(np.sort(report.impostor_similarities), [-0.8, 0, 0, 0.8], atol=1e-15)
    assert (report.num_genuine_pairs, report.num_impostor_pairs) == (2, 4)
    assert report.genuine_mean == pytest.approx(0.6) and report.genuine_std == pytest.approx(0)
    assert report.impostor_mean == pytest.approx(0)
    assert report.impostor_std**2 == pytest.approx(0.32)
    assert report.d_prime == pytest.approx(1.5)
    assert (report.eer, report.eer_threshold) == (pytest.approx(0.25), pytest.approx(0.6))
    np.testing.assert_allclose(report.nearest_identity_similarities, [0, 0], atol=1e-15)
    np.testing.assert_array_equal(report.identity_labels, ["A", "B"])


def test_d_prime_matches_the_formula():
    rng = np.random.default_rng(0)
    genuine, impostor = rng.normal(0.7, 0.1, 1000), rng.normal(0.1, 0.2, 3000)
    expected = abs(genuine.mean() - impostor.mean()) / math.sqrt(
        (genuine.var() + impostor.var()) / 2
    )
    assert identity_report.d_prime(genuine, impostor) == pytest.approx(expected, rel=1e-12)
    # Two point masses are separated infinitely well.
    assert identity_report.d_prime(np.ones(3), np.zeros(4)) == math.inf


def test_exhaustive_pairs_match_brute_force():
    embeddings, labels = clustered_embeddings(7, 5, 16, seed=1)
    labels[-3:] = 99  # identities of different sizes: 5 x 6, 2, and 3

    report = report_of(embeddings, labels)

    similarity = embeddings @ embeddings.T
    i, j = np.triu_indices(len(labels), k=1)
    same = labels[i] == labels[j]
    np.testing.assert_allclose(
        np.sort(report.genuine_similarities), np.sort(similarity[i, j][same]), rtol=1e-12
    )
    np.testing.assert_allclose(
        np.sort(report.impostor_similarities), np.sort(similarity[i, j][~same]), rtol=1e-12
    )
    assert report.num_genuine_pairs == 6 * 10 + 1 + 3
    assert report.num_impostor_pairs == same.size - 64


def test_identical_embeddings_within_an_identity_have_genuine_similarity_one():
    rng = np.random.default_rng(2)
    faces = unit(rng.normal(size=(5, 32))).astype(np.float32)
    labels = np.repeat(np.arange(5), 4)

    report = report_of(faces[labels], labels)

    np.testing.assert_allclose(report.genuine_similarities, 1.0, atol=1e-6)
    assert len(report.genuine_similarities) == 5 * 6
    # Each identity's centroid is its one face, so the nearest-identity similarities are the
    # largest off-diagonal face similarities.
    similarity = faces.astype(np.float64) @ faces.T.astype(np.float64)
    np.fill_diagonal(similarity, -np.inf)
    np.testing.assert_allclose(report.nearest_identity_similarities, similarity.max(1), atol=1e-6)


def test_nearest_identity_fractions_on_four_hand_built_identities():
    # Centroids in the first three axes: A = (1, 0, 0), B = (0.6, 0.8, 0), C = (0, 1, 0),
    # D = (0, 0, 1). Similarities AB 0.6, BC 0.8, AC = AD = BD = CD = 0, so the nearest other
    # identity is at 0.6 for A, 0.8 for B and C, 0 for D. Above 0.5: A, B, C (3/4); above 0.7:
    # B, C (2/4); above 0.9: none.
    # Each identity holds the two embeddings c cos(30) +- w sin(30), w = (0, 0, 0, 1): their
    # mean c cos(30) is shorter than 1, and only after renormalisation are the centroids A..D
    # (without it AB would be 0.45 and BC 0.6).
    centroids = np.array([[1, 0, 0, 0], [0.6, 0.8, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], float)
    w = np.array([0, 0, 0, 1.0])
    angle = math.radians(30)
    along, across = centroids * math.cos(angle), w * math.sin(angle)
    embeddings = np.concatenate([along + across, along - across])
    labels = np.tile(np.arange(4), 2)

    report = report_of(embeddings, labels, thresholds=(0.5, 0.7, 0.9))

    np.testing.assert_allclose(report.nearest_identity_similarities, [0.6, 0.8, 0.8, 0], atol=1e-12)
    assert report.nearest_identity_fraction_above == (0.75, 0.5, 0.0)
    # Genuine pairs are 60 degrees apart.
    np.testing.assert_allclose(report.genuine_similarities, [0.5] * 4, atol=1e-12)
    assert report.to_json()["nearest_identity_fraction_above"] == [
        {"threshold": 0.5, "fraction": 0.75},
        {"threshold": 0.7, "fraction": 0.5},
        {"threshold": 0.9, "fraction": 0.0},
    ]


def test_sampled_pairs_agree_with_all_pairs_within_sampling_error():
    embeddings, labels = clustered_embeddings(60, 5, 16, seed=3)  # 600 genuine, 44,250 impostor
    everything = report_of(embeddings, labels, max_pairs=100_000)
    sampled = report_of(embeddings, labels, max_pairs=400, seed=7)

    assert len(everything.impostor_similarities) == 44_250
    assert len(sampled.genuine_similarities) == len(sampled.impostor_similarities) == 400
    # Sampled pairs are pairs of the right kind: each similarity is one of the exhaustive set's.
    assert np.isin(sampled.genuine_similarities, everything.genuine_similarities).all()
    assert np.isin(sampled.impostor_similarities, everything.impostor_similarities).all()
    for kind in ("genuine", "impostor"):
        mean, std = getattr(everything, f"{kind}_mean"), getattr(everything, f"{kind}_std")
        assert abs(getattr(sampled, f"{kind}_mean") - mean) < 4 * std / math.sqrt(400)
        assert getattr(sampled, f"{kind}_std") == pytest.approx(std, rel=0.25)
    # Totals are of the whole set either way; the same seed draws the same pairs.
    assert sampled.num_impostor_pairs == everything.num_impostor_pairs
    again = report_of(embeddings, labels, max_pairs=400, seed=7)
    np.testing.assert_array_equal(again.impostor_similarities, sampled.impostor_similarities)


@pytest.mark.parametrize("kind", ["genuine", "impostor"])
def test_pair_sampling_is_uniform_over_pairs(kind):
    # Identities of sizes 1, 2 and 3: genuine pairs {1,2}, {3,4}, {3,5}, {4,5}; 11 impostor pairs.
    # Identity sizes differ, so drawing an identity (or an embedding) uniformly would not be.
    labels = np.array([0, 1, 1, 2, 2, 2])
    groups = identity_report._group(labels)
    sample = getattr(identity_report, f"_sample_{kind}_pairs")
    first, second = sample(groups, 44_000, np.random.default_rng(0))

    assert np.all((labels[first] == labels[second]) == (kind == "genuine"))
    assert np.all(first != second)
    unordered = np.sort(np.stack([first, second], axis=1), axis=1)
    pairs, counts = np.unique(unordered, axis=0, return_counts=True)
    assert len(pairs) == {"genuine": 4, "impostor": 11}[kind]
    expected = 44_000 / len(pairs)
    # Each count is binomial; 5 standard deviations is at most sqrt(expected) * 5 ~ 5%.
    assert np.all(np.abs(counts - expected) < 5 * math.sqrt(expected))


def test_to_json_holds_summaries_only():
    embeddings, labels = clustered_embeddings(10, 4, 8, seed=4)
    encoded = report_of(embeddings, labels).to_json()

    assert json.loads(json.dumps(encoded, allow_nan=False)) == encoded
    assert encoded["num_embeddings"] == 40 and encoded["num_identities"] == 10
    assert encoded["num_genuine_scored"] == encoded["num_genuine_pairs"] == 60
    assert not any(isinstance(value, list) and len(value) > 3 for value in encoded.values())


@pytest.mark.parametrize(
    "embeddings, labels, message",
    [
        (np.eye(3), np.arange(2), r"embeddings \(3, 3\) must be \[N, D\] and labels \(2,\)"),
        (np.eye(3)[0], np.arange(3), r"embeddings \(3,\) must be \[N, D\]"),
        (np.eye(3), np.zeros(3, int), "needs 2 or more identities, got 1"),
        (np.eye(3), np.arange(3), "no identity has 2 or more embeddings among 3"),
        (np.eye(3) * [[1], [2], [1]], np.array([0, 0, 1]), "row 1 with norm 2.0"),
        (np.array([[1, 0], [np.nan, 0]]), np.array([0, 1]), "row 1 with norm nan"),
        (np.eye(3, dtype=int), np.array([0, 0, 1]), "must be floating point, got dtype int"),
    ],
)
def test_refuses_what_it_cannot_report(embeddings, labels, message):
    with pytest.raises(ValueError, match=message):
        report_of(embeddings, labels)


def test_similarity_histogram_figure_is_written(tmp_path):
    reports = {
        "real": report_of(*clustered_embeddings(20, 5, 16, seed=5)),
        "synthetic": report_of(*clustered_embeddings(20, 5, 16, seed=6)),
    }
    path = tmp_path / "similarities.png"

    pixels = figures.save_figure(identity_report.similarity_histogram_figure(reports), str(path))

    assert path.stat().st_size > 0
    assert pixels.dtype == np.uint8 and pixels.shape == (320, 800, 3)  # 8 x 3.2 inches at 100 dpi
    assert pixels.std() > 0
