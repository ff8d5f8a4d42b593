"""`--mode=pipeline` (the default mode): does a recogniser trained on generated faces approach one
trained on the real faces the generator learned from?

Stages, in order, each resumable and skipped when its outputs are complete:

    encoder      the conditioning identity encoder (WORKDIR/encoder), unless config.encoder
                 .checkpoint names one
    judge        an independent judge encoder, the same recipe with encoder.seed + 1
                 (WORKDIR/judge), unless config.generate.judge_encoder names one
    diffusion    the autoencoder in latent space, then the diffusion model and its four figures
                 (WORKDIR, `train.diffusion_training`)
    generate     the synthetic dataset (`generate.generation_job`, config.generate.output_dir)
    recognizers  `real` on config.data and `synthetic` on the generated dataset, one recipe
                 (`recognition.recognizer_training`, WORKDIR/recognizers)
    report       verification of both on held-out real identities and the datasets' measures
                 (`evaluate.claim_report`, WORKDIR/report)

A stage that completes writes WORKDIR/pipeline/<stage>.json with a fingerprint of the config
sections it reads; a rerun skips a stage whose file holds the same fingerprint, and otherwise
runs it (the training stages then find their complete exports and return at once, or resume).
SIGTERM during a training stage stops the pipeline cleanly; a rerun resumes there.
"""

import hashlib
import json
import os
from collections.abc import Callable

import ml_collections
from absl import logging

from diffusion_jax.data import pipeline
from diffusion_jax.evaluate.claim_report import write_claim_report
from diffusion_jax.generate.generation_job import generate_dataset
from diffusion_jax.generate.generation_models import ensure_judge
from diffusion_jax.generate.manifest import output_directory
from diffusion_jax.recognition.encoder_training import train_encoder
from diffusion_jax.recognition.recognizer_training import (
    check_same_identities,
    generated_data_config,
    real_data_config,
    recognizer_directory,
    train_recognizer,
)
from diffusion_jax.train.diffusion_training import train_and_evaluate

STAGES_DIR = "pipeline"
# The config sections each stage reads (a change there reruns it and the stages after it).
STAGE_SECTIONS = {
    "encoder": ("data", "encoder"),
    "judge": ("data", "encoder", "generate"),
    "diffusion": ("data", "encoder", "autoencoder", "condition", "model", "diffusion", "train",
                  "sample", "seed"),
    "generate": ("generate", "sample"),
    "recognizers": ("encoder", "recognizer", "data"),
    "report": ("evaluate",),
}


def stage_fingerprints(config: ml_collections.ConfigDict) -> dict[str, str]:
    """{stage: SHA-256 of its sections and those of every stage before it}."""
    fingerprints, sections = {}, {}
    flat = config.to_dict()
    for stage, names in STAGE_SECTIONS.items():
        sections.update({name: flat[name] for name in names})
        payload = json.dumps(sections, sort_keys=True, default=list)
        fingerprints[stage] = hashlib.sha256(payload.encode()).hexdigest()
    return fingerprints


def _stage_path(workdir: str, stage: str) -> str:
    return os.path.join(workdir, STAGES_DIR, f"{stage}.json")


def run_stage(workdir: str, stage: str, fingerprint: str, run: Callable[[], object]) -> bool:
    """Runs `run` unless the stage's record holds `fingerprint`; records it when `run` returns
    something other than None (None: stopped by SIGTERM). Returns whether the stage is done."""
    path = _stage_path(workdir, stage)
    if os.path.isfile(path):
        with open(path) as file:
            if json.load(file).get("fingerprint") == fingerprint:
                logging.info("Pipeline stage %s: complete, skipped.", stage)
                return True
    logging.info("Pipeline stage %s: running.", stage)
    if run() is None:
        logging.warning("Pipeline stage %s stopped early; run again to resume.", stage)
        return False
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = f"{path}.partial"
    with open(partial, "w") as file:
        json.dump({"stage": stage, "fingerprint": fingerprint}, file)
    os.replace(partial, path)
    return True


def run_pipeline(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
    """Runs the stages of the module docstring; returns the report, or None if stopped."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    pipeline.ensure_prepared(config.data)
    fingerprints = stage_fingerprints(config)
    generated_dir = output_directory(config, workdir)
    recognizers = {name: recognizer_directory(workdir, name) for name in ("real", "synthetic")}

    def encoder():
        return config.encoder.checkpoint or train_encoder(config, workdir)

    def recognizers_stage():
        data = {"synthetic": generated_data_config(config, generated_dir),
                "real": real_data_config(config)}
        check_same_identities(config, data)
        if train_recognizer(config, workdir, "synthetic", data["synthetic"]) is None:
            return None
        return train_recognizer(config, workdir, "real", data["real"])

    report = {}

    def report_stage():
        report.update(write_claim_report(
            config, workdir, generated_dir, recognizers, ensure_judge(config, workdir, True)
        ))
        return report

    stages = {
        "encoder": encoder,
        "judge": lambda: ensure_judge(config, workdir, may_train=True),
        "diffusion": lambda: train_and_evaluate(config, workdir),
        "generate": lambda: generate_dataset(config, workdir),
        "recognizers": recognizers_stage,
        "report": report_stage,
    }
    for stage, run in stages.items():
        if not run_stage(workdir, stage, fingerprints[stage], run):
            return None
    if not report:  # every stage was complete: the report of the last run
        with open(os.path.join(workdir, "report", "report.json")) as file:
            report = json.load(file)
    return report
