r"""Entry point: `python -m diffusion_jax.main --config=configs/faces.py:demo --workdir=DIR`.

Modes (one module each in `diffusion_jax.apps`, whose docstring says what it reads and writes):
  pipeline          (default) test the claim end to end: encoder, judge, autoencoder, diffusion
                    model, generated dataset, recognisers trained on it and on the real data,
                    their verification on held-out real identities, and DIR/report/report.md.
                    `--stages=a,b` runs only those stages and the stages they need.
  train             train the diffusion model in DIR, then write its figures to DIR/figures
  train_encoder     train the identity encoder in DIR/encoder, export it to DIR/encoder/model
  train_autoencoder train the latent-diffusion autoencoder in DIR/autoencoder
  evaluate_encoder  verification accuracy and identity reports of the encoder
  sample            samples and figures of the diffusion model into DIR/samples
  evaluate_samples  identity consistency of samples under a judge encoder
  generate          this worker's share of a synthetic dataset (default DIR/generated)
  validate_dataset  check a generated dataset against its manifest
  train_recognizer  train a recogniser with the encoder's recipe into DIR/recognizers/<name>
  evaluate          verification of recognisers into DIR/evaluation

A mode that needs another stage's outputs (the diffusion model needs the encoder, generation needs
the diffusion model and the judge) says which command makes them when they are missing; it never
trains them behind your back. DIR may be a local path or a gs:// URL. SIGTERM saves and stops
cleanly (exit status 0); rerunning the same command resumes.

Config fields are overridden as `--config.train.batch_size=64`; unknown keys and values of the
wrong type are refused by the locked config, and `apps.config_checks` refuses inconsistent
values, all before anything runs.
"""

import sys

import jax
import tensorflow as tf
from absl import app, flags, logging
from ml_collections import config_flags

from diffusion_jax.apps import (
    config_checks,
    evaluate,
    evaluate_encoder,
    evaluate_samples,
    generate,
    pipeline,
    sample,
    train,
    train_autoencoder,
    train_encoder,
    train_recognizer,
    validate_dataset,
)
from diffusion_jax.core import stages
from diffusion_jax.core.preemption import Preempted

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file, optionally with a preset: configs/faces.py:demo.",
    lock_config=True,
)
flags.DEFINE_string("workdir", None, "Directory (or gs:// URL) for checkpoints, logs and outputs.")
MODES = {
    "pipeline": pipeline.run,
    "train": train.run,
    "train_encoder": train_encoder.run,
    "train_autoencoder": train_autoencoder.run,
    "evaluate_encoder": evaluate_encoder.run,
    "sample": sample.run,
    "evaluate_samples": evaluate_samples.run,
    "generate": generate.run,
    "validate_dataset": validate_dataset.run,
    "train_recognizer": train_recognizer.run,
    "evaluate": evaluate.run,
}
flags.DEFINE_enum("mode", "pipeline", list(MODES), "What to run.")
flags.DEFINE_list(
    "stages",
    ["report"],
    f"--mode=pipeline: the stages to run, with those they need: {list(stages.STAGES)}.",
)
flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize() (multi-host: TPU pods, SLURM, several GPU hosts).",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.mode != "pipeline" and FLAGS.stages != ["report"]:
        raise app.UsageError("--stages applies to --mode=pipeline only.")
    # TF is only used for TFDS decoding and TensorBoard: keep it off the accelerators.
    tf.config.set_visible_devices([], "GPU")
    if FLAGS.distributed:
        jax.distributed.initialize()  # before any JAX computation, config checks included
    config = FLAGS.config
    config_checks.validate(config)
    logging.info(
        "JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(), jax.devices()
    )
    try:
        if FLAGS.mode == "pipeline":
            pipeline.run(config, FLAGS.workdir, tuple(FLAGS.stages))
        else:
            MODES[FLAGS.mode](config, FLAGS.workdir)
    except Preempted as stopped:
        logging.warning("%s", stopped)
    except stages.MissingStageOutput as missing:
        sys.exit(f"Error: {missing}")


if __name__ == "__main__":
    app.run(main)
