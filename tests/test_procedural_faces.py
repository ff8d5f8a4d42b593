"""Tests of the procedural face renderer: determinism, factor ranges, geometry and lighting.

Every render uses RENDER_BATCH_SIZE images at 32x32 (or `render_faces`, which pads to that size),
so the module compiles the renderer once per resolution.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.tasks.data.faces import procedural_faces as pf

BATCH = pf.RENDER_BATCH_SIZE
RESOLUTION = 32


def _symmetric_identities() -> dict:
    """Identities made left-right symmetric: no fringe sweep, mole, freckles or stubble."""
    identity = dict(pf.sample_identities(0, np.arange(BATCH)))
    symmetric = {
        "hair_sweep": 0.0,
        "mole_radius": -1.0,
        "freckles": -1.0,
        "beard": -1.0,
        "moustache": -1.0,
    }
    return {**identity, **{name: jnp.full((BATCH,), value) for name, value in symmetric.items()}}


def _canonical_scene(**changes: float) -> dict:
    scene = pf.canonical_nuisance(BATCH)
    return {
        **scene,
        **{name: jnp.full((BATCH,), value, jnp.float32) for name, value in changes.items()},
    }


@pytest.fixture(scope="module")
def render_symmetric():
    identity = _symmetric_identities()
    return lambda **changes: np.asarray(
        pf.render(identity, _canonical_scene(**changes), RESOLUTION)
    ).astype(np.int32)


def _left_right_asymmetry(images: np.ndarray) -> np.ndarray:
    return np.abs(images - images[:, :, ::-1]).mean(axis=(1, 2, 3))


def test_same_seed_gives_identical_bytes_whatever_the_batch():
    identity_ids = np.arange(40) // 4
    image_ids = np.arange(40) % 4
    images = pf.render_faces(7, identity_ids, image_ids, RESOLUTION)
    np.testing.assert_array_equal(images, pf.render_faces(7, identity_ids, image_ids, RESOLUTION))
    # An image is a function of (seed, identity, image index), not of its place in the batch.
    reversed_images = pf.render_faces(7, identity_ids[::-1], image_ids[::-1], RESOLUTION)
    np.testing.assert_array_equal(images, reversed_images[::-1])
    other_seed = pf.render_faces(8, identity_ids, image_ids, RESOLUTION)
    assert np.abs(images.astype(int) - other_seed).mean(axis=(1, 2, 3)).min() > 5


# 112 (base's encoder input) renders for over 20 s at the tests' LLVM level 0 (tests/conftest.py).
@pytest.mark.parametrize("resolution", [32, 64, pytest.param(112, marks=pytest.mark.slow)])
def test_output_is_uint8_images_using_the_intensity_range(resolution):
    images = pf.render_faces(0, np.arange(6), np.zeros(6, int), resolution)
    assert images.dtype == np.uint8
    assert images.shape == (6, resolution, resolution, 3)
    assert images.min(axis=(1, 2, 3)).max() < 60
    assert images.max(axis=(1, 2, 3)).min() > 150
    assert images.std(axis=(1, 2, 3)).min() > 15


def test_factors_are_uniform_over_their_ranges():
    identity_ids = np.arange(BATCH)
    draws = {
        **pf.sample_identities(3, identity_ids),
        **pf.sample_nuisance(3, identity_ids, np.full(BATCH, 5)),
    }
    ranges = {
        **dataclasses.asdict(pf.IDENTITY_FACTORS),
        **dataclasses.asdict(pf.NUISANCE_FACTORS),
    }
    assert set(draws) == set(ranges)
    for name, (low, high) in ranges.items():
        values = np.asarray(draws[name], np.float64)
        assert low <= values.min() and values.max() <= high, name
        # The mean of n uniform draws has standard deviation (high - low) / sqrt(12 n).
        assert abs(values.mean() - (low + high) / 2) < 4.5 * (high - low) / np.sqrt(12 * BATCH), (
            name
        )


def test_factors_depend_only_on_seed_identity_and_image():
    identity_ids = np.arange(BATCH)
    permutation = np.random.default_rng(0).permutation(BATCH)
    identities = pf.sample_identities(3, identity_ids)
    permuted = pf.sample_identities(3, identity_ids[permutation])
    for name in identities:
        np.testing.assert_array_equal(np.asarray(identities[name])[permutation], permuted[name])
    image_ids = identity_ids[::-1] % 7
    nuisance = pf.sample_nuisance(3, identity_ids, image_ids)
    permuted = pf.sample_nuisance(3, identity_ids[permutation], image_ids[permutation])
    other_image = pf.sample_nuisance(3, identity_ids, image_ids + 1)
    for name in nuisance:
        np.testing.assert_array_equal(np.asarray(nuisance[name])[permutation], permuted[name])
        assert not np.array_equal(nuisance[name], other_image[name]), name


def test_identities_differ_more_than_images_of_one_identity_at_a_frozen_pose():
    """16 identities x 8 images whose pose, framing, background, clothes, hat and occluder are
    frozen; lighting, expression, gaze, glasses, blur and noise still vary. Images of different
    identities under the same nuisance must differ more than images of one identity."""
    identities, images = 16, BATCH // 16
    identity_ids, image_ids = (
        np.repeat(np.arange(identities), images),
        np.tile(np.arange(images), identities),
    )
    nuisance = dict(pf.sample_nuisance(0, identity_ids, image_ids))
    canonical = pf.canonical_nuisance(BATCH)
    frozen = ["yaw", "pitch", "roll", "scale", "shift_x", "shift_y", "hat", "occluder"]
    frozen += [name for name in nuisance if name.startswith(("background", "clothes"))]
    nuisance.update({name: canonical[name] for name in frozen})
    rendered = pf.render(pf.sample_identities(0, identity_ids), nuisance, RESOLUTION)
    x = np.asarray(rendered, np.float64).reshape(identities, images, -1)
    within = [
        np.abs(x[k, i] - x[k, j]).mean()
        for k in range(identities)
        for i in range(images)
        for j in range(i)
    ]
    between = [
        np.abs(x[k, i] - x[other, i]).mean()
        for i in range(images)
        for k in range(identities)
        for other in range(k)
    ]
    assert np.mean(between) > 1.4 * np.mean(within)


def test_yaw_turns_the_head_in_3d(render_symmetric):
    frontal, turned_right, turned_left = (
        render_symmetric(),
        render_symmetric(yaw=0.6),
        render_symmetric(yaw=-0.6),
    )
    # Symmetric faces in a symmetric scene: frontal renders are mirror-symmetric, turned ones are
    # not, and turning right is the mirror image of turning left.
    assert _left_right_asymmetry(frontal).max() == 0
    assert _left_right_asymmetry(turned_right).min() > 2
    np.testing.assert_array_equal(turned_right, turned_left[:, :, ::-1])
    # The features move over the head rather than the head shifting: no horizontal shift of the
    # frontal image explains the turned one better than no shift.
    unshifted = np.abs(turned_right - frontal).mean(axis=(1, 2, 3))
    best_shift = np.min(
        [
            np.abs(turned_right - np.roll(frontal, s, axis=2)).mean(axis=(1, 2, 3))
            for s in range(-6, 7)
        ],
        0,
    )
    assert np.mean(best_shift / unshifted) > 0.9


def test_light_direction_moves_the_shading(render_symmetric):
    from_left, from_right = (
        render_symmetric(light_azimuth=-1.0),
        render_symmetric(light_azimuth=1.0),
    )
    half = RESOLUTION // 2

    def left_minus_right_brightness(images):
        return images[:, :, :half].mean(axis=(1, 2, 3)) - images[:, :, half:].mean(axis=(1, 2, 3))

    assert left_minus_right_brightness(from_left).min() > 3
    assert left_minus_right_brightness(from_right).max() < -3
    np.testing.assert_array_equal(from_left, from_right[:, :, ::-1])


def test_sensor_noise_has_the_drawn_standard_deviation(render_symmetric):
    clean = render_symmetric()
    noisy = render_symmetric(noise=0.03, noise_pattern=0.25)
    difference = (noisy - clean)[(clean > 20) & (clean < 235)]  # away from clipping
    assert abs(difference.mean()) < 0.2
    assert abs(difference.std() - 0.03 * 255) < 0.3
    assert (
        abs(np.abs(difference).max() - 0.03 * 255 * np.sqrt(3)) < 1.5
    )  # uniform: |x| <= sqrt(3) std


def test_blur_spreads_a_point_into_a_separable_gaussian():
    sigma, radius = np.array([0.0, 0.7, 1.3]), 3
    point = np.zeros((3, 3, 9, 9), np.float32)
    point[:, :, 4, 4] = 1.0
    blurred = np.asarray(
        pf._blur(jnp.asarray(point), jnp.asarray(sigma, jnp.float32), radius), np.float64
    )
    offsets = np.arange(-radius, radius + 1)
    for image, s in zip(blurred, sigma):
        weights = np.exp(-(offsets**2) / (2 * s**2)) if s else (offsets == 0).astype(float)
        kernel = np.outer(weights, weights) / weights.sum() ** 2
        np.testing.assert_allclose(
            image[:, 1:8, 1:8], np.broadcast_to(kernel, (3, 7, 7)), atol=2e-6
        )


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="resolution must be an integer in \\[32, 112\\], got 16"):
        pf.render_faces(0, [0], [0], 16)
    with pytest.raises(ValueError, match="resolution .* got 64.0"):
        pf.render_faces(0, [0], [0], 64.0)
    with pytest.raises(ValueError, match="seed must be an integer in \\[0, 2\\*\\*32\\), got -1"):
        pf.sample_identities(-1, [0])
    with pytest.raises(ValueError, match="identity_ids must be a 1-D array of integers"):
        pf.sample_identities(0, [[0, 1]])
    with pytest.raises(ValueError, match="image_ids must lie in \\[0, 2\\*\\*31\\)"):
        pf.sample_nuisance(0, [0], [-3])
    with pytest.raises(ValueError, match="same shape"):
        pf.render_faces(0, [0, 1], [0], 32)
    identity = pf.sample_identities(0, [0])
    with pytest.raises(ValueError, match="lack the factors \\['yaw'\\]"):
        nuisance = {
            name: value for name, value in pf.canonical_nuisance(1).items() if name != "yaw"
        }
        pf.render(identity, nuisance, 32)
