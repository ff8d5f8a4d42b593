"""PatchDiscriminator: layout against taming's, logit-map sizes, state, and a short training run."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from diffusion_jax.core.models.patch_discriminator import PatchDiscriminator
from diffusion_jax.tasks.latent.autoencoder_losses import hinge_discriminator_loss

TINY = {"base_channels": 8, "num_groups": 4}


def layout_parameters(in_channels: int, base: int, num_layers: int) -> int:
    """Parameters of taming's NLayerDiscriminator layout, counted from its layers: a first conv
    with bias, num_layers bias-free convs each followed by a norm (2c), a last conv with bias."""
    widths = [base * min(2**n, 8) for n in range(num_layers + 1)]
    count = 16 * in_channels * widths[0] + widths[0]
    for n in range(1, num_layers + 1):
        count += 16 * widths[n - 1] * widths[n] + 2 * widths[n]
    return count + 16 * widths[-1] + 1


def parameter_count(model: nnx.Module) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("num_layers", [1, 2, 3, 4])
def test_parameters_follow_taming_layout(num_layers):
    model = nnx.eval_shape(
        lambda: PatchDiscriminator(num_layers=num_layers, num_groups=32, rngs=nnx.Rngs(0))
    )
    assert parameter_count(model) == layout_parameters(3, 64, num_layers)


def test_default_has_the_parameters_of_taming_nlayer_discriminator():
    # NLayerDiscriminator(input_nc=3, ndf=64, n_layers=3) with BatchNorm, counted in PyTorch.
    model = nnx.eval_shape(lambda: PatchDiscriminator(rngs=nnx.Rngs(0)))
    assert parameter_count(model) == 2_765_633


@pytest.fixture(scope="module")
def tiny_model() -> PatchDiscriminator:
    """Built once: on CPU, each layer's first initialisation compiles."""
    return PatchDiscriminator(num_layers=2, **TINY, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "side, num_layers, logit_side",
    [(32, 2, 6), (32, 3, 2), (64, 2, 14), (64, 3, 6), (112, 2, 26), (112, 3, 12), (50, 2, 10)],
)
def test_logit_map_side_is_floor_of_side_over_2_to_the_layers_minus_2(side, num_layers, logit_side):
    model = nnx.eval_shape(
        lambda: PatchDiscriminator(num_layers=num_layers, **TINY, rngs=nnx.Rngs(0))
    )
    images = jax.ShapeDtypeStruct((2, side, side, 3), jnp.float32)
    logits = nnx.eval_shape(lambda model, images: model(images), model, images)
    assert logits.shape == (2, logit_side, logit_side, 1) and logits.dtype == jnp.float32


def test_initialisation_and_state_are_only_parameters(tiny_model):
    _, params, rest = nnx.split(tiny_model, nnx.Param, ...)
    assert jax.tree.leaves(rest) == []
    layers = [params["conv_in"], *params["convs"].values(), params["conv_out"]]
    kernels = np.concatenate([np.ravel(layer["kernel"][...]) for layer in layers])
    # N(0, 0.02^2): the sample std of these 11,136 draws has a standard error of 1.3e-4.
    assert abs(kernels.std() - 0.02) < 6e-4 and abs(kernels.mean()) < 6e-4
    assert all("bias" not in layer for layer in params["convs"].values())
    for layer in (params["conv_in"], params["conv_out"]):
        np.testing.assert_array_equal(layer["bias"][...], 0.0)


def test_matches_a_pytorch_twin_of_the_layout():
    """Random weights in torch.nn layers with PyTorch's padding=1 give the same logits."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    abstract = nnx.eval_shape(lambda: PatchDiscriminator(num_layers=2, **TINY, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(abstract, nnx.Param)
    params = jax.tree.map(lambda x: 0.3 * rng.normal(size=x.shape).astype(np.float32), params)
    model = nnx.merge(graphdef, params)

    def tensor(array):
        return torch.from_numpy(np.array(array))

    def conv(layer, stride):
        kernel = np.asarray(layer.kernel[...])
        twin = torch.nn.Conv2d(*kernel.shape[2:], 4, stride, 1, bias=layer.use_bias)
        twin.weight.data = tensor(kernel.transpose(3, 2, 0, 1))
        if layer.use_bias:
            twin.bias.data = tensor(layer.bias[...])
        return twin

    def norm(layer):
        twin = torch.nn.GroupNorm(layer.num_groups, layer.scale[...].shape[0], eps=layer.epsilon)
        twin.weight.data, twin.bias.data = tensor(layer.scale[...]), tensor(layer.bias[...])
        return twin

    leaky = torch.nn.LeakyReLU(0.2)
    twin = torch.nn.Sequential(
        conv(model.conv_in, 2), leaky,
        conv(model.convs[0], 2), norm(model.norms[0]), leaky,
        conv(model.convs[1], 1), norm(model.norms[1]), leaky,
        conv(model.conv_out, 1),
    )  # fmt: skip
    images = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        expected = twin(tensor(images.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    logits = np.asarray(model(jnp.asarray(images)))
    assert logits.shape == expected.shape == (2, 6, 6, 1)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_logits_of_an_image_do_not_depend_on_its_batch(tiny_model):
    images = jax.random.uniform(jax.random.key(0), (3, 16, 16, 3), minval=-1, maxval=1)
    forward = nnx.jit(lambda model, x: model(x))
    np.testing.assert_allclose(
        forward(tiny_model, images)[:1], forward(tiny_model, images[:1]), atol=1e-6
    )


def test_hinge_training_separates_two_image_distributions(tiny_model):
    """Real images around +0.3, reconstructions around -0.3: a few Adam steps drive both hinge
    terms to zero, and fresh images of each kind get logits of the right sign everywhere."""
    graphdef, params = nnx.split(tiny_model, nnx.Param)
    optimizer = optax.adam(2e-3)

    def sample(key, centre):
        return centre + 0.2 * jax.random.normal(key, (8, 16, 16, 3))

    def loss_fn(params, key):
        real_key, fake_key = jax.random.split(key)
        model = nnx.merge(graphdef, params)
        real, fake = model(sample(real_key, 0.3)), model(sample(fake_key, -0.3))
        return hinge_discriminator_loss(real, fake)

    @jax.jit
    def train(params):
        def step(carry, key):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, key)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        keys = jax.random.split(jax.random.key(1), 40)
        (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), keys)
        return params, losses

    params, losses = train(params)
    assert float(losses[-1]) < 0.05 < 0.5 < float(losses[0])
    model = nnx.merge(graphdef, params)
    assert float(model(sample(jax.random.key(2), 0.3)).min()) > 0
    assert float(model(sample(jax.random.key(3), -0.3)).max()) < 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"base_channels": 8, "num_groups": 3}, r"num_groups=3 must divide .*\[16, 32, 64\]"),
        ({"num_layers": 0}, "must be positive"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PatchDiscriminator(**kwargs, rngs=nnx.Rngs(0))


def test_too_small_or_wrongly_shaped_images_raise(tiny_model):
    with pytest.raises(ValueError, match=r"H, W >= 12 \(num_layers=2\)"):
        tiny_model(jnp.zeros((1, 11, 16, 3)))
    with pytest.raises(ValueError, match=r"expected \[B, H, W, 3\]"):
        tiny_model(jnp.zeros((1, 16, 16, 1)))
