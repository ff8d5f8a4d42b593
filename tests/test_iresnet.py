"""IResNet: parameter counts against the published layout, shapes, modes and state."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffusion_jax.core.models import iresnet

# arcface_torch's iresnet50 at 112x112 has 43,590,848 parameters (`sum(p.numel() for p in
# model.parameters())`, the "43.59M" quoted for it); 512 of them are features.weight, fixed at 1,
# which IResNet does not store.
PUBLISHED_IRESNET50_PARAMETERS = 43_590_848

TINY = {
    "depths": [1, 1],
    "widths": [8, 16],
    "stem_channels": 8,
    "input_resolution": 16,
    "embedding_dim": 8,
    "dropout": 0.0,
}


def layout_counts(architecture: dict) -> tuple[int, int]:
    """(parameters, batch statistics) counted from the layer layout, independently of the code:
    BN has 2c parameters (scale, bias) and 2c statistics, PReLU c, a bias-free conv i*o*k*k."""
    parameters = statistics = 0

    def bn(channels: int, scale: bool = True) -> None:
        nonlocal parameters, statistics
        parameters += (2 if scale else 1) * channels
        statistics += 2 * channels

    def conv(i: int, o: int, k: int) -> None:
        nonlocal parameters
        parameters += i * o * k * k

    stem = architecture["stem_channels"]
    conv(3, stem, 3), bn(stem)
    parameters += stem  # PReLU
    channels = stem
    for depth, width in zip(architecture["depths"], architecture["widths"]):
        for index in range(depth):
            bn(channels), conv(channels, width, 3), bn(width), conv(width, width, 3), bn(width)
            parameters += width  # PReLU
            if index == 0:
                conv(channels, width, 1), bn(width)
            channels = width
    final = architecture["input_resolution"] // 2 ** len(architecture["depths"])
    embedding = architecture["embedding_dim"]
    bn(channels)
    parameters += channels * final**2 * embedding + embedding  # fc
    bn(embedding, scale=False)  # features
    return parameters, statistics


@functools.cache
def abstract_counts(name: str, input_resolution: int = 112) -> tuple[int, int]:
    """(nnx.Param, nnx.BatchStat) sizes of the IResNet `name`, built abstractly."""
    architecture = iresnet.iresnet_architecture(name, input_resolution=input_resolution)
    model = nnx.eval_shape(lambda: iresnet.IResNet(**architecture, rngs=nnx.Rngs(0)))
    return tuple(
        sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, kind)))
        for kind in (nnx.Param, nnx.BatchStat)
    )


@pytest.mark.parametrize("name", iresnet.IRESNET_NAMES)
def test_parameter_counts_match_the_layer_layout(name):
    architecture = iresnet.iresnet_architecture(name)
    assert json.loads(json.dumps(architecture)) == architecture
    assert abstract_counts(name) == layout_counts(architecture)


def test_iresnet50_has_the_published_parameter_count():
    parameters, _ = abstract_counts("iresnet50")
    assert parameters + 512 == PUBLISHED_IRESNET50_PARAMETERS


def test_parameter_count_matches_the_torch_twin():
    pytest.importorskip("torch")
    import torch

    from diffusion_jax.torch_twins import iresnet as torch_iresnet

    architecture = iresnet.iresnet_architecture("iresnet50")
    with torch.device("meta"):
        twin = torch_iresnet.build(architecture)
    trainable = sum(p.numel() for p in twin.parameters() if p.requires_grad)
    assert sum(p.numel() for p in twin.parameters()) == PUBLISHED_IRESNET50_PARAMETERS
    assert abstract_counts("iresnet50")[0] == trainable


def test_small_variant_fits_the_cpu_demo():
    parameters, _ = abstract_counts("iresnet_small", input_resolution=32)
    assert 300_000 <= parameters <= 1_500_000


def test_unknown_name_lists_the_names():
    with pytest.raises(ValueError, match="iresnet18.*iresnet_small"):
        iresnet.iresnet_architecture("resnet50")


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"input_resolution": 18}, "input_resolution=18 must be a positive multiple of 4"),
        ({"widths": [8]}, "one entry per stage"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_architecture_is_refused(edit, message):
    with pytest.raises(ValueError, match=message):
        iresnet.IResNet(**{**TINY, **edit}, rngs=nnx.Rngs(0))


# Jitted: on CPU one compilation of the network is faster than eager op-by-op dispatch.
embed = nnx.jit(lambda model, images, rngs=None: model(images, rngs=rngs))


def images(batch: int, seed: int = 0) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), (batch, 16, 16, 3), minval=-1, maxval=1)


def test_output_shape_and_wrong_input_shape():
    model = iresnet.IResNet(**TINY, rngs=nnx.Rngs(0))
    model.eval()
    embeddings = embed(model, images(2))
    assert embeddings.shape == (2, 8) and embeddings.dtype == jnp.float32
    expected = r"images.shape=\(2, 32, 32, 3\), expected \[B, 16, 16, 3\]"
    with pytest.raises(ValueError, match=expected):
        model(jnp.zeros((2, 32, 32, 3)))


def test_eval_mode_uses_running_averages_and_train_mode_updates_them():
    model = iresnet.IResNet(**TINY, rngs=nnx.Rngs(0))
    batch = images(2)

    model.eval()
    stats_before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    together = embed(model, batch)
    alone = embed(model, batch[:1])  # running averages: an example's embedding ignores the batch
    np.testing.assert_allclose(together[:1], alone, rtol=1e-5, atol=1e-5)
    jax.tree.map(np.testing.assert_array_equal, nnx.state(model, nnx.BatchStat), stats_before)

    model.train()
    train_together = embed(model, batch)
    assert not np.allclose(train_together, together, atol=1e-3)
    # After one step from mean 0 and variance 1, with PyTorch's momentum 0.1 (flax's 0.9):
    stem = model.conv1(batch)
    np.testing.assert_allclose(model.bn1.mean[...], 0.1 * stem.mean(axis=(0, 1, 2)), atol=1e-5)
    np.testing.assert_allclose(
        model.bn1.var[...], 0.9 + 0.1 * stem.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5
    )


def test_dropout_key_is_passed_at_call_time():
    model = iresnet.IResNet(**{**TINY, "dropout": 0.5}, rngs=nnx.Rngs(0))
    model.train()
    with pytest.raises(ValueError, match="rngs=None.*dropout=0.5"):
        model(images(2))
    first = embed(model, images(2), nnx.Rngs(dropout=1))
    second = embed(model, images(2), nnx.Rngs(dropout=2))
    assert not np.allclose(first, second, atol=1e-3)

    model.eval()
    np.testing.assert_array_equal(
        embed(model, images(2), nnx.Rngs(dropout=1)), embed(model, images(2), nnx.Rngs(dropout=2))
    )


def test_state_is_only_params_and_batch_stats():
    model = iresnet.IResNet(**{**TINY, "dropout": 0.5}, rngs=nnx.Rngs(0))
    model.train()
    embed(model, images(2), nnx.Rngs(dropout=0))
    _, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    assert jax.tree.leaves(rest) == []
    # The features BN has a bias but no scale: arcface_torch fixes that scale at 1.
    assert set(params["features"]) == {"bias"} and set(stats["features"]) == {"mean", "var"}


def test_prelu_has_one_slope_per_channel():
    prelu = iresnet.PReLU(2, dtype=jnp.float32, param_dtype=jnp.float32)
    prelu.negative_slope[...] = jnp.array([0.5, -2.0])
    x = jnp.array([[-1.0, -1.0], [3.0, 3.0]])
    np.testing.assert_array_equal(prelu(x), [[-0.5, 2.0], [3.0, 3.0]])
