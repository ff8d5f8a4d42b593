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

A stage that completes writes WORKDIR/pipeline/<stage>.json with the config sections it reads
(and those of the stages before it) and their fingerprint; a rerun skips a stage whose file holds
the same fingerprint and runs one without a file (the training stages resume). A config that
differs from a completed stage's is refused before anything runs, naming the changed keys: the
stage's trained exports or dataset would otherwise be reused as they are (`NEUTRAL_FIELDS`,
such as where the data is prepared, are not compared). Only `report`, which recomputes
everything it writes, reruns instead.
SIGTERM during a training stage stops the pipeline cleanly; a rerun resumes there.
"""

import hashlib
import json
import os
from collections.abc import Callable

import ml_collections
from absl import logging

from diffusion_jax.tasks.data.sources import input_pipeline
from diffusion_jax.tasks.evaluation.claim_report import write_claim_report
from diffusion_jax.tasks.generation.generation_job import generate_dataset
from diffusion_jax.tasks.generation.generation_models import ensure_judge
from diffusion_jax.tasks.generation.manifest import output_directory
from diffusion_jax.tasks.recognition.encoder_training import train_encoder
from diffusion_jax.tasks.evaluation.recognizer_training import check_same_identities, generated_data_config, real_data_config, recognizer_directory, train_recognizer
from diffusion_jax.apps.sample import flatten
from diffusion_jax.tasks.conditional_diffusion.diffusion_training import train_and_evaluate

STAGES_DIR = "pipeline"
# The config sections (or single fields) each stage reads; a stage's fingerprint covers its own
# and those of every stage before it.
STAGE_SECTIONS = {
    "encoder": ("data", "encoder"),
    "judge": ("data", "encoder", "generate.judge_encoder"),
    "diffusion": ("data", "encoder", "autoencoder", "condition", "model", "diffusion", "train",
                  "sample", "seed"),
    "generate": ("generate", "sample"),
    "recognizers": ("encoder", "recognizer", "data"),
    "report": ("evaluate",),
}
# Stages that recompute all of their outputs when rerun; the others keep trained exports and
# datasets, so a changed config there is refused rather than silently served the old outputs.
RECOMPUTED_STAGES = ("report",)
# Fields that change where and how often a run reads, logs or saves, not what it computes: a
# change there alone reruns the stage (which finds its outputs complete) instead of refusing.
NEUTRAL_FIELDS = ("data.data_dir", "data.worker_count")
NEUTRAL_SUFFIXES = (".log_every_steps", ".checkpoint_every_steps")


def _config_value(tree: dict, name: str):
    for part in name.split("."):
        tree = tree[part]
    return tree


def stage_configs(config: ml_collections.ConfigDict) -> dict[str, dict]:
    """{stage: {dotted key: value} of its sections and those of every stage before it}."""
    configs, sections = {}, {}
    tree = config.to_dict()
    for stage, names in STAGE_SECTIONS.items():
        sections.update({name: _config_value(tree, name) for name in names})
        configs[stage] = json.loads(json.dumps(flatten(sections), sort_keys=True, default=list))
    return configs


def fingerprint(stage_config: dict) -> str:
    return hashlib.sha256(json.dumps(stage_config, sort_keys=True).encode()).hexdigest()


def _stage_path(workdir: str, stage: str) -> str:
    return os.path.join(workdir, STAGES_DIR, f"{stage}.json")


def _read_record(workdir: str, stage: str) -> dict | None:
    path = _stage_path(workdir, stage)
    if not os.path.isfile(path):
        return None
    with open(path) as file:
        return json.load(file)


def check_stage_configs(workdir: str, configs: dict[str, dict]) -> None:
    """Refuses, before any stage runs, a config that differs from the one a completed stage with
    kept outputs was run with, naming the keys that changed. (Records written before they held
    their config are trusted, as then.)"""
    for stage, stage_config in configs.items():
        record = _read_record(workdir, stage)
        if stage in RECOMPUTED_STAGES or record is None or "config" not in record:
            continue
        if record["fingerprint"] == fingerprint(stage_config):
            continue
        old = record["config"]
        changed = sorted(
            key for key in set(old) | set(stage_config)
            if old.get(key, "<absent>") != stage_config.get(key, "<absent>")
            and key not in NEUTRAL_FIELDS and not key.endswith(NEUTRAL_SUFFIXES)
        )
        if not changed:
            continue
        details = ", ".join(
            f"{key}: {old.get(key, '<absent>')!r} -> {stage_config.get(key, '<absent>')!r}"
            for key in changed[:8]
        ) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
        raise ValueError(
            f"Pipeline stage {stage} in {workdir} was completed with another config ({details}); "
            f"its outputs would be reused as they are. Use a new --workdir, or delete "
            f"{_stage_path(workdir, stage)} and that stage's outputs to redo it."
        )


def run_stage(workdir: str, stage: str, stage_config: dict, run: Callable[[], object]) -> bool:
    """Runs `run` unless the stage's record holds this config's fingerprint; records it, with
    the config, when `run` returns something other than None (None: stopped by SIGTERM).
    Returns whether the stage is done."""
    path = _stage_path(workdir, stage)
    record = _read_record(workdir, stage)
    if record is not None and record.get("fingerprint") == fingerprint(stage_config):
        logging.info("Pipeline stage %s: complete, skipped.", stage)
        return True
    logging.info("Pipeline stage %s: running.", stage)
    if run() is None:
        logging.warning("Pipeline stage %s stopped early; run again to resume.", stage)
        return False
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = f"{path}.partial"
    with open(partial, "w") as file:
        json.dump({"stage": stage, "fingerprint": fingerprint(stage_config),
                   "config": stage_config}, file, indent=1)
    os.replace(partial, path)
    return True


def run_pipeline(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
    """Runs the stages of the module docstring; returns the report, or None if stopped."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    configs = stage_configs(config)
    check_stage_configs(workdir, configs)
    input_pipeline.ensure_prepared(config.data)
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
        if not run_stage(workdir, stage, configs[stage], run):
            return None
    if not report:  # every stage was complete: the report of the last run
        with open(os.path.join(workdir, "report", "report.json")) as file:
            report = json.load(file)
    return report
