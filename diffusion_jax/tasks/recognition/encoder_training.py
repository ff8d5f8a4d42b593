"""Training an identity encoder: an IResNet with a margin-softmax head over the training labels.

`train_encoder(config, model)` trains in `model.run_dir` (a `run_layout.TrainedModel`:
WORKDIR/encoder for the conditioning encoder) with the loop, train step and Orbax checkpoints
every model of this project shares (`core.training.loop`), on the labelled training source of
`config.data`, and resumes there after an interruption. When training completes, the backbone
alone (without the head, which only knows the training identities) is exported with
`encoder_store.save_encoder` to `model.export_dir`, the directory the diffusion model's
conditioning and `--mode=evaluate_encoder` read. A complete export is not trained again.

The loss is the cross entropy of the margin logits (`core.models.margin_heads`) of the backbone's
embedding of each image, resized to the encoder's input resolution; the logged `accuracy` is that
of the margin-free cosine classifier on the training batch.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from flax import nnx

from diffusion_jax.core import parallel
from diffusion_jax.core.models.iresnet import IResNet, iresnet_architecture
from diffusion_jax.core.models.margin_heads import (
    MarginSoftmaxHead,
    margin_softmax_loss,
    margins_for,
)
from diffusion_jax.core.run_layout import TrainedModel
from diffusion_jax.core.training import state as state_lib
from diffusion_jax.core.training.loop import TrainingTask, run_training
from diffusion_jax.core.training.step import Batch, LossContext, LossFn, Metrics
from diffusion_jax.tasks.data.sources import input_pipeline
from diffusion_jax.tasks.recognition import encoder_store
from diffusion_jax.tasks.recognition.embeddings import resize_to


class EncoderWithHead(nnx.Module):
    """The network trained: `backbone` (the exported encoder) and its margin `head`."""

    def __init__(self, architecture: dict[str, Any], head: MarginSoftmaxHead, backbone_rngs):
        self.backbone = IResNet(**architecture, rngs=backbone_rngs)
        self.head = head


def encoder_architecture(encoder_config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The IResNet keyword arguments that `config.encoder` describes."""
    return iresnet_architecture(
        encoder_config.architecture,
        input_resolution=encoder_config.input_resolution,
        embedding_dim=encoder_config.embedding_dim,
        dropout=encoder_config.dropout,
    )


def encoder_margins(encoder_config: ml_collections.ConfigDict) -> tuple[float, float, float]:
    """(m1, m2, m3): the preset of `head`, or `margins` when given."""
    return margins_for(encoder_config.head, *(encoder_config.margins or (None,) * 3))


def encoder_builder(config: ml_collections.ConfigDict, num_classes: int) -> state_lib.BuildModel:
    encoder_config = config.encoder
    m1, m2, m3 = encoder_margins(encoder_config)

    def build(rngs: nnx.Rngs) -> EncoderWithHead:
        head = MarginSoftmaxHead(
            encoder_config.embedding_dim,
            num_classes,
            scale=encoder_config.margin_scale,
            m1=m1,
            m2=m2,
            m3=m3,
            rngs=rngs,
        )
        return EncoderWithHead(encoder_architecture(encoder_config), head, rngs)

    return build


def make_margin_loss() -> LossFn:
    """Mean margin-softmax cross entropy over batches {"image", "label"} (module docstring)."""

    def loss_fn(
        model: EncoderWithHead, batch: Batch, context: LossContext
    ) -> tuple[jax.Array, Metrics]:
        images = resize_to(batch["image"], model.backbone.input_resolution)
        embeddings = model.backbone(images, rngs=nnx.Rngs(dropout=context.rng))
        loss = margin_softmax_loss(model.head(embeddings, batch["label"]), batch["label"]).mean()
        predictions = jnp.argmax(model.head.cosines(embeddings), axis=-1)
        return loss, {"accuracy": jnp.mean(predictions == batch["label"])}

    return loss_fn


def train_encoder(config: ml_collections.ConfigDict, model: TrainedModel) -> str:
    """Trains (or resumes, or finds complete) the encoder of `config` in `model.run_dir`;
    returns its export directory. Raises `preemption.Preempted` when SIGTERM stopped training
    (the next run resumes it)."""
    export_directory = model.export_dir
    architecture = encoder_architecture(config.encoder)
    if encoder_store.is_complete(export_directory):
        _check_same_architecture(export_directory, architecture)
        logging.info("Identity encoder already trained: %s.", export_directory)
        return str(export_directory)

    mesh = parallel.make_mesh(config.mesh)
    input_pipeline.ensure_prepared(config.data)
    num_classes = input_pipeline.num_train_identities(config.data)
    build_model = encoder_builder(config, num_classes)
    task = TrainingTask(
        name="identity encoder",
        config=config,
        train_config=config.encoder.train,
        build_model=build_model,
        loss_fn=make_margin_loss(),
        data_iterator=input_pipeline.make_train_iterator(
            config.data, global_batch_size=config.encoder.train.batch_size, seed=config.encoder.seed
        ),
    )
    result = run_training(task, model.run_dir, mesh, jax.random.key(config.encoder.seed))
    network = nnx.merge(
        state_lib.model_graphdef(build_model), result.state.params, result.state.model_state
    )
    encoder_store.save_encoder(
        export_directory,
        network.backbone,
        architecture,
        provenance={
            "trained_in": str(model.run_dir),
            "step": int(result.state.step),
            "num_training_identities": num_classes,
            "seed": config.encoder.seed,
            "data": config.data.to_dict(),
        },
    )
    logging.info("Exported the identity encoder to %s.", export_directory)
    return str(export_directory)


def _check_same_architecture(directory, architecture: dict[str, Any]) -> None:
    saved = encoder_store.read_description(directory)["architecture"]
    if saved != architecture:
        raise ValueError(
            f"The encoder already trained in {directory} has architecture {saved}, but the config "
            f"asks for {architecture}. Remove {directory.parent} to train a new one, or "
            "restore the config."
        )
