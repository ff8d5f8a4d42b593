"""`--mode=pipeline` (the default mode): does a recogniser trained on generated faces approach one
trained on the real faces the generator learned from?

Runs the stages declared in `core.stages`, in order, each resumable and skipped when complete:

    encoder      the conditioning identity encoder (WORKDIR/encoder)
    judge        an independent judge encoder, the same recipe with encoder.seed + 1
                 (WORKDIR/judge)
    autoencoder  in latent space, the autoencoder (WORKDIR/autoencoder)
    diffusion    the diffusion model and its four figures (WORKDIR)
    generate     the synthetic dataset (config.generate.output_dir, default WORKDIR/generated)
    recognizers  `real` on config.data and `synthetic` on the generated dataset, one recipe
                 (WORKDIR/recognizers)
    report       verification of both on held-out real identities and the datasets' measures
                 (WORKDIR/report)

`--stages=diffusion,judge` runs only those stages and the stages they need. A stage that
completes writes WORKDIR/pipeline/<stage>.json with the config it read and its fingerprint; a
rerun skips a stage whose record holds the same fingerprint and runs one without a record (the
training stages resume). A config that differs from a completed stage's is refused before
anything runs, naming the changed keys, since the stage's outputs would otherwise be reused as
they are; only `report`, which recomputes everything it writes, reruns instead. SIGTERM during a
stage raises `preemption.Preempted` after saving; a rerun resumes there.
"""

from collections.abc import Callable, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from diffusion_jax.core import paths, stages
from diffusion_jax.core.run_layout import RunLayout
from diffusion_jax.tasks.conditional_diffusion.diffusion_training import train_and_evaluate
from diffusion_jax.tasks.data.sources import input_pipeline
from diffusion_jax.tasks.evaluation.claim_report import write_claim_report
from diffusion_jax.tasks.evaluation.recognizer_training import train_claim_recognizers
from diffusion_jax.tasks.generation.generation_job import generate_dataset
from diffusion_jax.tasks.latent.autoencoder_training import train_autoencoder
from diffusion_jax.tasks.recognition.encoder_training import train_encoder


def stage_configs(config: ml_collections.ConfigDict) -> dict[str, dict]:
    """{stage: the config values its outputs depend on} for every declared stage."""
    return {name: stages.stage_config(config, name) for name in stages.STAGES}


def check_stage_configs(workdir: str, configs: dict[str, dict]) -> None:
    """Refuses, before any stage runs, a config that differs from the one a completed stage with
    kept outputs was run with, naming the keys that changed. (Records written before they held
    their config are trusted, as then.)"""
    layout = RunLayout(paths.resolve(workdir))
    for name, stage_config in configs.items():
        record = paths.read_json_if_exists(layout.stage_record(name))
        if stages.STAGES[name].recomputed or record is None or "config" not in record:
            continue
        if record["fingerprint"] == stages.fingerprint(stage_config):
            continue
        old = record["config"]
        changed = stages.changed_keys(old, stage_config)
        if not changed:
            continue
        details = ", ".join(
            f"{key}: {old.get(key, '<absent>')!r} -> {stage_config.get(key, '<absent>')!r}"
            for key in changed[:8]
        ) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
        raise ValueError(
            f"Pipeline stage {name} in {layout.root} was completed with another config "
            f"({details}); its outputs would be reused as they are. Use a new --workdir, or "
            f"delete {layout.stage_record(name)} and that stage's outputs to redo it."
        )


def run_stage(workdir: str, name: str, stage_config: dict, run: Callable[[], object]) -> bool:
    """Runs `run` unless the stage's record holds this config's fingerprint or a config that
    differs from it in neutral keys only, then records the stage with its config. `run`
    returning False means its outputs are not complete yet (another worker's share is
    missing): the stage is not recorded. Returns whether the stage is done.
    With several processes every process runs it, they wait for each other at its end, and
    process 0 writes the record."""
    layout = RunLayout(paths.resolve(workdir))
    record = paths.read_json_if_exists(layout.stage_record(name))
    fingerprint = stages.fingerprint(stage_config)
    if record is not None and (
        record.get("fingerprint") == fingerprint
        or ("config" in record and not stages.changed_keys(record["config"], stage_config))
    ):
        # The same config, or one that differs in neutral keys only (where data or logs go).
        logging.info("Pipeline stage %s: complete, skipped.", name)
        return True
    logging.info("Pipeline stage %s: running.", name)
    done = run() is not False
    if jax.process_count() > 1:
        # Every process finishes the stage before any goes on, and all agree whether it is done.
        done = bool(np.all(multihost_utils.process_allgather(np.int32(done))))
    if not done:
        logging.warning("Pipeline stage %s is not complete yet; run again to finish it.", name)
        return False
    if jax.process_index() == 0:
        paths.write_json_atomically(
            layout.stage_record(name),
            {"stage": name, "fingerprint": fingerprint, "config": stage_config},
        )
    return True


def _stage_runners(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Callable]:
    """{stage: a function running it} but the report's; each returns False while its outputs
    are incomplete."""
    layout = RunLayout.from_config(workdir, config)

    def judge():
        judge_config = ml_collections.ConfigDict(config.to_dict())
        judge_config.encoder.seed = config.encoder.seed + 1
        logging.info(
            "Training the judge encoder (encoder.seed=%d) in %s.",
            judge_config.encoder.seed,
            layout.judge.run_dir,
        )
        train_encoder(judge_config, layout.judge)

    def generate():
        return generate_dataset(config, workdir)["dataset_complete"]

    def recognizers():
        train_claim_recognizers(config, workdir, config.recognizer.seed)

    return {
        "encoder": lambda: train_encoder(config, layout.encoder),
        "judge": judge,
        "autoencoder": lambda: train_autoencoder(config, workdir),
        "diffusion": lambda: train_and_evaluate(config, workdir),
        "generate": generate,
        "recognizers": recognizers,
    }


def run_pipeline(
    config: ml_collections.ConfigDict, workdir: str, targets: Sequence[str] = ("report",)
) -> dict | None:
    """Runs the `targets` stages and every stage they need (module docstring); returns the
    report when it was among them, else None."""
    unknown = sorted(set(targets) - set(stages.STAGES))
    if unknown:
        raise ValueError(
            f"Unknown pipeline stages {unknown}; the stages are {list(stages.STAGES)}."
        )
    layout = RunLayout.from_config(workdir, config)
    names = [name for name in stages.STAGES if any(name in stages.requirements(t) for t in targets)]
    configs = stage_configs(config)
    check_stage_configs(workdir, {name: configs[name] for name in names})
    input_pipeline.ensure_prepared(config.data)
    runners = _stage_runners(config, workdir)
    report = {}  # every process gets the report it computed; only process 0 writes the file
    runners["report"] = lambda: report.update(write_claim_report(config, workdir))
    for name in names:
        if stages.STAGES[name].skipped(config):
            logging.info("Pipeline stage %s: not needed by this config.", name)
            continue
        if not run_stage(workdir, name, configs[name], runners[name]):
            return None
    if "report" in names:
        return report or paths.read_json(layout.report / "report.json")  # or the last run's
    return None


def run(config: ml_collections.ConfigDict, workdir: str, targets: Sequence[str] = ("report",)):
    run_pipeline(config, workdir, targets)
