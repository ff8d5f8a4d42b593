"""Identity embeddings against the formulas of `recognition.embeddings`, computed by hand from the
encoder: e(x) = f(x) / |f(x)|, or with flip (f(x) + f(mirror x)) / |f(x) + f(mirror x)|."""

import jax
import numpy as np
import pytest
from flax import nnx

from diffusion_jax.core import parallel
from diffusion_jax.core.models.iresnet import IResNet
from diffusion_jax.tasks.recognition.embeddings import EmbeddingExtractor, resize_to
from tests.helpers import tiny_config

RESOLUTION = 16
ARCHITECTURE = {
    "depths": [1, 1],
    "widths": [8, 16],
    "stem_channels": 8,
    "input_resolution": RESOLUTION,
    "embedding_dim": 8,
    "dropout": 0.0,
}
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


@nnx.jit
def raw_embeddings(model: IResNet, images: jax.Array) -> jax.Array:
    """f(x): the encoder's un-normalised output."""
    return model(images)


def f(model: IResNet, images: np.ndarray) -> np.ndarray:
    return np.asarray(raw_embeddings(model, images))


def normalise(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def mirror(images: np.ndarray) -> np.ndarray:
    return images[:, :, ::-1, :]


@pytest.fixture(scope="module")
def model() -> IResNet:
    """A small IResNet in eval mode, with BatchNorm statistics other than their initial 0 and 1."""
    model = IResNet(**ARCHITECTURE, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    statistics = nnx.state(model, nnx.BatchStat)
    nnx.update(
        model, jax.tree.map(lambda x: rng.uniform(0.5, 1.5, x.shape).astype(x.dtype), statistics)
    )
    model.eval()
    return model


@pytest.fixture(scope="module")
def mesh():
    return parallel.make_mesh(tiny_config().mesh)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    shape = (8, RESOLUTION, RESOLUTION, 3)
    return np.random.default_rng(1).uniform(-1, 1, shape).astype(np.float32)


def test_without_flip_embeddings_are_the_unit_encoder_outputs(model, mesh, images):
    embeddings = EmbeddingExtractor(model, mesh, flip=False)(images)
    assert embeddings.sharding.is_equivalent_to(parallel.batch_sharding(mesh), 2)
    embeddings = np.asarray(embeddings)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(embeddings, normalise(f(model, images)), **TOLERANCE)


def test_flip_embeddings_normalise_the_sum_over_the_image_and_its_mirror(model, mesh, images):
    embeddings = np.asarray(EmbeddingExtractor(model, mesh, flip=True)(images))
    expected = normalise(f(model, images) + f(model, mirror(images)))
    np.testing.assert_allclose(embeddings, expected, **TOLERANCE)
    # The mirror term matters: without it the embeddings are measurably different.
    assert not np.allclose(embeddings, normalise(f(model, images)), atol=1e-3)


def test_flip_embeddings_are_invariant_to_mirroring_the_input(model, mesh, images):
    extractor = EmbeddingExtractor(model, mesh, flip=True)
    np.testing.assert_allclose(
        np.asarray(extractor(mirror(images))), np.asarray(extractor(images)), **TOLERANCE
    )


def test_embed_arrays_pads_the_last_batch_without_leaking_into_the_embeddings(model, mesh, images):
    # 5 images in batches of 4: the second batch holds one image and three padding rows.
    embeddings = EmbeddingExtractor(model, mesh, flip=False).embed_arrays(images[:5], batch_size=4)
    assert embeddings.shape == (5, 8) and embeddings.dtype == np.float32
    one_at_a_time = np.concatenate([normalise(f(model, images[i : i + 1])) for i in range(5)])
    np.testing.assert_allclose(embeddings, one_at_a_time, **TOLERANCE)


def test_embed_batch_gives_a_row_the_same_bits_whatever_the_other_rows_hold(model, mesh, images):
    # What the generation job's records rely on: a round's image k is always row k of a batch of
    # the same size, and its embedding must not depend on the round's other images.
    extractor = EmbeddingExtractor(model, mesh, flip=False)
    alone = extractor.embed_batch(images[:1], batch_size=6)
    with_others = extractor.embed_batch(images[:5], batch_size=6)
    with_different_others = extractor.embed_batch(
        np.concatenate([images[:1], images[::-1][:3]]), batch_size=6
    )
    assert alone.shape == (1, 8) and with_others.shape == (5, 8)
    np.testing.assert_array_equal(with_others[:1], alone)
    np.testing.assert_array_equal(with_different_others[:1], alone)
    np.testing.assert_allclose(with_others, normalise(f(model, images[:5])), **TOLERANCE)


def test_embed_batch_refuses_more_images_than_its_batch(model, mesh, images):
    extractor = EmbeddingExtractor(model, mesh, flip=False)
    with pytest.raises(ValueError, match="5 images do not fit a batch of 4"):
        extractor.embed_batch(images[:5], batch_size=4)


def test_embed_arrays_maps_uint8_pixels_to_minus_one_one(model, mesh):
    pixels = np.random.default_rng(2).integers(0, 256, (5, RESOLUTION, RESOLUTION, 3), np.uint8)
    extractor = EmbeddingExtractor(model, mesh, flip=False)
    from_pixels = extractor.embed_arrays(pixels, batch_size=4)
    from_floats = extractor.embed_arrays(pixels.astype(np.float32) / 127.5 - 1.0, batch_size=4)
    np.testing.assert_allclose(from_pixels, from_floats, **TOLERANCE)


def test_resize_to_is_the_identity_at_the_same_resolution_and_bilinear_otherwise(images):
    assert resize_to(images, RESOLUTION) is images

    resized = np.asarray(resize_to(images, 8))
    assert resized.shape == (8, 8, 8, 3)
    expected = jax.image.resize(images, (8, 8, 8, 3), "bilinear", antialias=True)
    np.testing.assert_allclose(resized, np.asarray(expected), **TOLERANCE)
    constant = np.full((1, 32, 32, 3), 0.25, np.float32)
    np.testing.assert_allclose(np.asarray(resize_to(constant, RESOLUTION)), 0.25, rtol=1e-6)


def test_images_at_another_resolution_are_resized_to_the_encoder_input(model, mesh, images):
    larger = np.asarray(jax.image.resize(images, (8, 32, 32, 3), "bilinear"))
    embeddings = np.asarray(EmbeddingExtractor(model, mesh, flip=False)(larger))
    expected = normalise(f(model, np.asarray(resize_to(larger, RESOLUTION))))
    np.testing.assert_allclose(embeddings, expected, **TOLERANCE)
