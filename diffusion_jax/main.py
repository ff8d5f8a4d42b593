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
  validate_dataset  check a generated dataset against its manifest (none in its directory: the
                    prepared real data of config.data against its listing of files)
  train_recognizer  train a recogniser with the encoder's recipe into DIR/recognizers/<name>
  evaluate          verification of recognisers into DIR/evaluation
  scaling_sweep     the scaling curve: synthetic recognisers on 1x, 2x, 4x... the real identities
                    (config.sweep), from a workdir whose pipeline ran up to its recognisers, into
                    DIR/sweep (or config.sweep.out_dir): scaling.json and scaling.png
  sampler_sweep     denoiser passes against quality: the same identities from the same noise
                    under each sampler setting (config.sampler_sweep), graded by the judge, and
                    for a few settings a generated dataset's recogniser against the real one,
                    from a workdir whose pipeline ran up to its recognisers, into
                    DIR/sampler_sweep (or config.sampler_sweep.out_dir): sampler_sweep.json and
                    sampler_sweep.png

A mode that needs another stage's outputs (the diffusion model needs the encoder, generation needs
the diffusion model and the judge) says which command makes them when they are missing; it never
trains them behind your back. DIR may be a local path or a gs:// URL. SIGTERM saves and stops
cleanly (exit status 0); rerunning the same command resumes. Every mode but generate and
validate_dataset holds a lock on DIR while it runs (`core.workdir_lock`): a second run on DIR
stops at once, naming the run that holds it.

Config fields are overridden as `--config.train.batch_size=64`; a config file that does not
load, unknown keys (named with the nearest keys) and values of the wrong type are refused while
the flags are parsed, and `apps.config_checks` refuses inconsistent values, all before anything
runs.

Bad input (`core.bad_input.BadInputError`: a config value, a corrupt or hostile file, a dataset
that cannot be read) and a missing stage output end the run with one line on stderr,
`Error: <what, where: why>`, and exit status 1. `--debug` lets them end in their traceback.
"""

import difflib
import re
import shlex
import sys

import jax
import ml_collections
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
    sampler_sweep,
    scaling_sweep,
    train,
    train_autoencoder,
    train_encoder,
    train_recognizer,
    validate_dataset,
)
from diffusion_jax.core import stages, workdir_lock
from diffusion_jax.core.bad_input import BadInputError
from diffusion_jax.core.preemption import Preempted
from diffusion_jax.core.run_layout import RunLayout

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
    "scaling_sweep": scaling_sweep.run,
    "sampler_sweep": sampler_sweep.run,
}
flags.DEFINE_enum("mode", "pipeline", list(MODES), "What to run.")
# Generation workers, and the validation of what they wrote, share a workdir by design; every
# other mode holds the workdir's lock while it runs, so that a second run on it is refused.
SHARED_WORKDIR_MODES = ("generate", "validate_dataset")
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
flags.DEFINE_bool(
    "debug",
    False,
    "Let bad input and missing stage outputs end in their traceback, not in one line.",
)
flags.mark_flags_as_required(["config", "workdir"])

# An override of a config key on the command line: --config.a.b=value (--noconfig.a.b: False).
_CONFIG_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)")


def _config_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """The dotted path of every key of `config`, sections included: "data", "data.path", ..."""
    keys = []
    for name, value in config.items():
        keys.append(prefix + name)
        if isinstance(value, ml_collections.ConfigDict):
            keys += _config_keys(value, f"{prefix}{name}.")
    return keys


def _peek(argv: list[str]) -> tuple[str | None, bool]:
    """(the value of --config, whether --debug is set) in `argv`, read apart from FLAGS."""
    peek = flags.FlagValues()
    flags.DEFINE_string("config", None, "", flag_values=peek)
    flags.DEFINE_bool("debug", False, "", flag_values=peek)
    peek(argv, known_only=True)
    return peek.config, peek.debug


def _unknown_config_key(argv: list[str], config_file: str) -> BadInputError | None:
    """The error naming the first override in `argv` of a key that the config of `config_file`
    lacks, with the nearest keys; None if every key exists."""
    keys = _config_keys(FLAGS["config"].parser.parse(config_file))  # the flag's own loader
    for argument in argv[1:]:
        match = _CONFIG_OVERRIDE.match(argument)
        key = match and match.group(1)
        if key and key.split("[", 1)[0] not in keys:
            nearest = [f"config.{near}" for near in difflib.get_close_matches(key, keys, 3, 0.5)]
            hint = f"nearest: {', '.join(nearest)}" if nearest else "see the config file"
            return BadInputError(f"--config.{key}", f"no such config key ({hint})")
    return None


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (a flag error ends the program with absl's usage line), where what
    ml_collections raises instead of a flag error also ends in one line (with --debug: in its
    traceback): a config file that does not load (a missing file, a syntax error, no
    `get_config`: raised when parsing or at the config's first use) and an override of a config
    key that does not exist (AttributeError or KeyError)."""
    try:
        remaining = app.parse_flags_with_usage(argv)
        FLAGS.config.get("preset")  # raises the error of a config file that did not load
        return remaining
    except Exception as error:  # noqa: BLE001 (re-raised unless it is one of those)
        config_file, debug = _peek(argv)
        try:
            refused = _unknown_config_key(argv, config_file)
        except Exception as loading:  # noqa: BLE001 (the config file itself does not load)
            cause = loading.__cause__ or loading
            reason = str(cause).strip().splitlines()[-1].strip() if str(cause).strip() else ""
            refused = BadInputError(
                f"--config={config_file}", f"cannot load it: {type(cause).__name__}: {reason}"
            )
        if refused is None or debug:
            raise error
        sys.exit(f"Error: {refused}")


def _lock_workdir(config: ml_collections.ConfigDict) -> None:
    """Holds the workdir's lock for the rest of the run (`core.workdir_lock`), except in the modes
    whose workers share a workdir; another run holding it ends this one with one line."""
    if FLAGS.mode in SHARED_WORKDIR_MODES:
        return
    try:
        workdir_lock.hold(RunLayout.from_config(FLAGS.workdir, config).lock, shlex.join(sys.argv))
    except workdir_lock.WorkdirLocked as locked:
        sys.exit(f"Error: {locked}")


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
    try:
        config_checks.validate(config)
        logging.info(
            "JAX process %d/%d, devices: %s",
            jax.process_index(),
            jax.process_count(),
            jax.devices(),
        )
        _lock_workdir(config)
        if FLAGS.mode == "pipeline":
            pipeline.run(config, FLAGS.workdir, tuple(FLAGS.stages))
        else:
            MODES[FLAGS.mode](config, FLAGS.workdir)
    except Preempted as stopped:
        logging.warning("%s", stopped)
    except (BadInputError, stages.MissingStageOutput) as error:
        if FLAGS.debug:
            raise
        sys.exit(f"Error: {error}")


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
