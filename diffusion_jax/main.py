r"""Entry point: `python -m diffusion_jax.main --config=configs/faces.py:demo --workdir=DIR`.

Modes:
  pipeline          (default) test the claim end to end (`pipeline_mode`): encoder, judge,
                    diffusion model, generated dataset, a recogniser trained on it and one on the
                    real data, their verification on held-out real identities, and
                    DIR/report/report.md.
  train             train the diffusion model (resuming from DIR/checkpoints), then
                    write the figures to DIR/figures. Conditioned on an identity encoder that is
                    not given by `config.encoder.checkpoint`, it first trains one in DIR/encoder;
                    in latent space without `config.autoencoder.checkpoint`, it then trains the
                    autoencoder in DIR/autoencoder.
  train_encoder     train the identity encoder of `config.encoder` in DIR/encoder and export it
                    to DIR/encoder/model.
  train_autoencoder train the latent-diffusion autoencoder of `config.autoencoder` in
                    DIR/autoencoder, estimate its latent scale, and export it to
                    DIR/autoencoder/model.
  evaluate_encoder  verification accuracy and identity reports of the encoder (the conditioning
                    one, or `config.encoder.checkpoint`) into DIR/encoder_report.
  sample            load a checkpoint from DIR and write samples and figures for
                    `config.sample.identities` to DIR/samples.
  evaluate_samples  identity consistency of samples under `config.evaluate.judge_encoder`, into
                    DIR/sample_report.
  generate          this worker's share of a synthetic dataset of `config.generate`'s new
                    identities, into `config.generate.output_dir` (default DIR/generated).
  validate_dataset  check a generated dataset against its manifest and print a summary.
  train_recognizer  train a recogniser with the encoder's recipe on `config.recognizer`'s data
                    into DIR/recognizers/<config.recognizer.name>.
  evaluate          verification of recognisers (`config.recognizer.evaluate`, default every
                    one in DIR/recognizers) into DIR/evaluation.

Config fields are overridden as `--config.train.batch_size=64`; unknown keys and values of the
wrong type are refused by the locked config, and `diffusion_jax.apps.config_checks` refuses
inconsistent values, all before anything runs.
"""

import jax
import tensorflow as tf
from absl import app, flags, logging
from ml_collections import config_flags

from diffusion_jax.apps import config_checks
from diffusion_jax.tasks.evaluation.encoder_report import evaluate_encoder
from diffusion_jax.tasks.evaluation.recognizer_evaluation import evaluate_recognizers
from diffusion_jax.tasks.evaluation.sample_report import evaluate_samples
from diffusion_jax.tasks.generation.dataset_validation import validate_generated_dataset
from diffusion_jax.tasks.generation.generation_job import generate_dataset
from diffusion_jax.tasks.latent.autoencoder_training import train_autoencoder
from diffusion_jax.apps.pipeline import run_pipeline
from diffusion_jax.tasks.recognition.encoder_training import train_encoder
from diffusion_jax.tasks.evaluation.recognizer_training import train_recognizer_mode
from diffusion_jax.apps.sample import sample_from_checkpoint
from diffusion_jax.tasks.conditional_diffusion.diffusion_training import train_and_evaluate

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with a preset: configs/faces.py:demo.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and figures.")
MODES = {
    "pipeline": run_pipeline,
    "train": train_and_evaluate,
    "train_encoder": train_encoder,
    "train_autoencoder": train_autoencoder,
    "evaluate_encoder": evaluate_encoder,
    "sample": sample_from_checkpoint,
    "evaluate_samples": evaluate_samples,
    "generate": generate_dataset,
    "validate_dataset": validate_generated_dataset,
    "train_recognizer": train_recognizer_mode,
    "evaluate": evaluate_recognizers,
}
flags.DEFINE_enum("mode", "pipeline", list(MODES), "What to run.")
flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize() (multi-host: TPU pods, SLURM, several GPU hosts).",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # TF is only used for TFDS decoding and TensorBoard: keep it off the accelerators.
    tf.config.set_visible_devices([], "GPU")
    if FLAGS.distributed:
        jax.distributed.initialize()  # before any JAX computation, config checks included
    config = FLAGS.config
    config_checks.validate(config)
    logging.info(
        "JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(), jax.devices()
    )

    MODES[FLAGS.mode](config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
