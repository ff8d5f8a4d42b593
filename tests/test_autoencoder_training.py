"""Training the latent-diffusion autoencoder: the round trip on a fixed batch, the split of the
gradients between autoencoder and discriminator, the frozen perceptual encoder as a step input,
and `--mode=train_autoencoder` (export, latent scale, reuse, refusal of another architecture)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffusion_jax.core import parallel
from diffusion_jax.core.models.iresnet import IResNet
from diffusion_jax.core.stages import MissingStageOutput
from diffusion_jax.core.training import state as state_lib
from diffusion_jax.core.training.step import LossContext, jit_train_step, make_train_step
from diffusion_jax.main import MODES
from diffusion_jax.tasks.data.faces.procedural_faces import render_faces
from diffusion_jax.tasks.data.sources import input_pipeline
from diffusion_jax.tasks.latent import autoencoder_store
from diffusion_jax.tasks.latent import autoencoder_training as training
from diffusion_jax.tasks.latent.autoencoder_losses import autoencoder_loss, discriminator_loss
from diffusion_jax.tasks.recognition.encoder_training import encoder_architecture
from tests.helpers import tiny_config

# Every test compiles the autoencoder's (and discriminator's) train step, the first trains it
# 160 steps, and `trained` runs --mode=train_encoder and --mode=train_autoencoder.
pytestmark = pytest.mark.slow

ROUND_TRIP_STEPS = 160


def face_batch(count: int = 8) -> jnp.ndarray:
    images = render_faces(
        seed=0, identity_ids=np.arange(count), image_ids=np.zeros(count, int), resolution=32
    )
    return jnp.asarray(images, jnp.float32) / 127.5 - 1


def jitted_step(config, loss_fn):
    build_model = training.autoencoder_builder(config)
    optimizer, learning_rate = training.per_network_optimizer(config.autoencoder.train)
    mesh = parallel.make_mesh(config.mesh)
    shardings = parallel.state_shardings(
        mesh, state_lib.abstract_train_state(build_model, optimizer)
    )
    state = state_lib.init_train_state(build_model, optimizer, mesh, jax.random.key(0))
    graphdef = state_lib.model_graphdef(build_model)
    step = jit_train_step(
        make_train_step(graphdef, loss_fn, optimizer, learning_rate, 0.0), mesh, shardings
    )
    return graphdef, state, step, mesh


def test_round_trip_learns_to_reconstruct_a_fixed_batch():
    config = tiny_config()
    config.autoencoder.perceptual_weight = 0.0
    config.autoencoder.discriminator_weight = 0.0
    config.autoencoder.train.learning_rate = 1e-2
    config.autoencoder.train.warmup_steps = 5
    images = face_batch()
    graphdef, state, step, mesh = jitted_step(config, training.make_autoencoder_loss(config, None))

    @jax.jit
    def reconstruction_error(params):
        autoencoder = nnx.merge(graphdef, params).autoencoder
        mean, _ = autoencoder.encode(images)
        return jnp.mean(jnp.abs(autoencoder.decode(mean) - images))

    before = float(reconstruction_error(state.params))
    batch = parallel.global_batch({"image": np.asarray(images)}, mesh)
    for _ in range(ROUND_TRIP_STEPS):
        state, metrics = step(state, batch, jax.random.key(1), {})
    after = float(reconstruction_error(state.params))
    # The untrained decoder's error is about 0.5; it must fall to a fifth (160 steps reach 0.09).
    assert after < 0.2 * before, (before, after)
    assert float(metrics["kl"]) > 0


def test_each_network_receives_the_gradient_of_its_own_loss_only():
    config = tiny_config()
    config.autoencoder.perceptual_weight = 0.0
    config.autoencoder.discriminator_weight = 0.7
    config.autoencoder.discriminator_start_step = 0
    model = training.autoencoder_builder(config)(nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    batch = {"image": face_batch(4)}
    context = LossContext(rng=jax.random.key(3), step=jnp.int32(5))
    loss_fn = training.make_autoencoder_loss(config, None)
    grads = jax.grad(lambda p: loss_fn(nnx.merge(graphdef, p), batch, context)[0])(params)

    def autoencoder_only(autoencoder_params):
        merged = nnx.merge(graphdef, params, copy=True)
        nnx.update(merged.autoencoder, autoencoder_params)
        reconstruction, mean, logvar = merged.autoencoder(batch["image"], context.rng)
        return autoencoder_loss(
            reconstruction,
            batch["image"],
            mean,
            logvar,
            kl_weight=config.autoencoder.kl_weight,
            logits_fake=merged.discriminator(reconstruction),
            adversarial_weight=0.7,
        )[0]

    def discriminator_only(discriminator_params):
        merged = nnx.merge(graphdef, params, copy=True)
        nnx.update(merged.discriminator, discriminator_params)
        reconstruction, _, _ = merged.autoencoder(batch["image"], context.rng)
        return discriminator_loss(
            merged.discriminator(batch["image"]),
            merged.discriminator(reconstruction),
            step=5,
            discriminator_start_step=0,
        )[0]

    expected_autoencoder = jax.grad(autoencoder_only)(params["autoencoder"])
    expected_discriminator = jax.grad(discriminator_only)(params["discriminator"])
    for got, expected in (
        (grads["autoencoder"], expected_autoencoder),
        (grads["discriminator"], expected_discriminator),
    ):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
    assert any(np.abs(leaf).max() > 0 for leaf in jax.tree.leaves(grads["discriminator"]))


def test_the_discriminator_stands_still_before_its_start_step():
    config = tiny_config()
    config.autoencoder.perceptual_weight = 0.0
    config.autoencoder.discriminator_weight = 0.5
    config.autoencoder.discriminator_start_step = 3
    graphdef, state, step, mesh = jitted_step(config, training.make_autoencoder_loss(config, None))
    batch = parallel.global_batch({"image": np.asarray(face_batch())}, mesh)
    initial = jax.device_get(state.params["discriminator"])
    for _ in range(3):  # steps 0, 1, 2: gated
        state, metrics = step(state, batch, jax.random.key(1), {})
        assert float(metrics["adversarial_weight"]) == 0.0
    gated = jax.device_get(state.params["discriminator"])
    for a, b in zip(jax.tree.leaves(initial), jax.tree.leaves(gated), strict=True):
        np.testing.assert_array_equal(a, b)
    state, metrics = step(state, batch, jax.random.key(1), {})  # step 3: open
    assert float(metrics["adversarial_weight"]) == 0.5
    moved = jax.device_get(state.params["discriminator"])
    assert any(
        not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(gated), jax.tree.leaves(moved))
    )


def test_the_perceptual_encoder_is_an_input_of_the_step_not_a_constant():
    config = tiny_config()
    config.autoencoder.discriminator_weight = 0.0
    architecture = encoder_architecture(config.encoder)
    encoders = [nnx.split(IResNet(**architecture, rngs=nnx.Rngs(seed))) for seed in (0, 1)]
    graphdef, state, step, mesh = jitted_step(
        config, training.make_autoencoder_loss(config, encoders[0][0])
    )
    batch = parallel.global_batch({"image": np.asarray(face_batch())}, mesh)
    perceptual = []
    for _, encoder_state in encoders:
        frozen = {training.PERCEPTUAL_ENCODER: encoder_state}
        # The step donates its state: give each call its own copy.
        _, metrics = step(jax.tree.map(jnp.copy, state), batch, jax.random.key(1), frozen)
        perceptual.append(float(metrics["perceptual"]))
    assert perceptual[0] > 0 and perceptual[1] > 0
    assert abs(perceptual[0] - perceptual[1]) > 1e-3 * perceptual[0], perceptual


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prepared_data_dir):
    """(config, workdir) after `--mode=train_encoder` (the encoder of the perceptual term, 4
    steps) and `--mode=train_autoencoder` (4 steps, with its discriminator) on the `test` preset;
    the autoencoder alone is refused first, naming the command that makes the encoder."""
    config = tiny_config(prepared_data_dir)
    config.autoencoder.discriminator_weight = 0.5
    workdir = str(tmp_path_factory.mktemp("autoencoder"))
    with pytest.raises(MissingStageOutput, match=r"encoder stage's outputs .*--mode=train_encoder"):
        MODES["train_autoencoder"](config, workdir)
    MODES["train_encoder"](config, workdir)
    assert MODES["train_autoencoder"](config, workdir) == os.path.join(
        workdir, "autoencoder", "model"
    )
    return config, workdir


def test_train_autoencoder_exports_the_latent_scale_of_the_training_latents(trained):
    config, workdir = trained
    loaded = autoencoder_store.load_autoencoder(os.path.join(workdir, "autoencoder", "model"))
    assert loaded.provenance["step"] == config.autoencoder.train.num_steps
    assert loaded.provenance["perceptual_encoder"] == os.path.join(workdir, "encoder", "model")
    assert 0 < loaded.provenance["reconstruction_mean_absolute_error"] < 2
    assert os.path.getsize(os.path.join(workdir, "autoencoder", "reconstructions.png")) > 1000
    # The scale's definition, recomputed: 1 / std (Bessel) of the posterior means of the first
    # `scale_batches` batches of the estimate's data stream.
    iterator = input_pipeline.make_train_iterator(
        config.data, global_batch_size=config.autoencoder.train.batch_size, seed=config.seed + 1
    )
    encode = jax.jit(lambda images: loaded.model.encode(images)[0])
    means = [
        np.asarray(encode(next(iterator)["image"]), np.float64)
        for _ in range(config.autoencoder.scale_batches)
    ]
    expected = 1.0 / np.std(np.concatenate([m.ravel() for m in means]), ddof=1)
    np.testing.assert_allclose(loaded.latent_scale, expected, rtol=1e-5)


def test_a_complete_autoencoder_is_reused_and_another_architecture_refused(trained):
    config, workdir = trained
    model_dir = os.path.join(workdir, "autoencoder", "model")
    modified = os.path.getmtime(os.path.join(model_dir, "autoencoder.json"))
    assert training.train_autoencoder(config, workdir) == model_dir
    assert os.path.getmtime(os.path.join(model_dir, "autoencoder.json")) == modified

    other = config.copy_and_resolve_references()
    other.autoencoder.latent_channels = 8
    with pytest.raises(ValueError, match="'latent_channels': 4.*'latent_channels': 8"):
        training.train_autoencoder(other, workdir)
