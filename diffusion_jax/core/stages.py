"""The run's stages, declared once: what each reads from the config, which stages it needs, what
it produces, and its fingerprint. `apps/pipeline.py` runs them in order; the single-purpose modes
check the same declarations before loading another stage's outputs, so a missing prerequisite is
reported with the command that makes it instead of being trained behind the caller's back.

    encoder       the conditioning identity encoder         needs -
    judge         an independent judge encoder (seed + 1)   needs -
    autoencoder   the latent-diffusion autoencoder          needs encoder (its perceptual loss)
    diffusion     the conditional diffusion model           needs encoder, autoencoder
    generate      the synthetic dataset                     needs diffusion, judge
    recognizers   `real` and `synthetic` recognisers        needs generate
    report        verification on held-out identities       needs recognizers, judge

A stage's fingerprint is the SHA-256 of the config values it reads and those of every stage it
needs, transitively: two configs with the same fingerprint make the same outputs. `neutral` keys
change where or how often a stage reads, logs or saves, not what it computes.
"""

import dataclasses
import hashlib
import json
from collections.abc import Callable

import ml_collections

from diffusion_jax.core import paths
from diffusion_jax.core.run_layout import RunLayout

# Keys (or key suffixes, starting with ".") that no stage's outputs depend on.
NEUTRAL_KEYS = (
    "data.data_dir",
    "data.worker_count",
    "data.verify_prepared",
    "generate.task_index",
    "generate.task_count",
    "generate.identities_timeout_minutes",
    "generate.dataset_timeout_minutes",
    ".log_every_steps",
    ".checkpoint_every_steps",
)


# Keys added after stage records were first written, with the value that computes what the code
# computed before they existed: a record without such a key was made with that value, so a
# workdir from an earlier version keeps its completed stages.
KEYS_ADDED_LATER = {
    "generate.max_training_image_similarity": 1.0,
    "generate.style_source": "none",
    "generate.style_strength": 0.6,
    "generate.max_style_similarity": 0.3,
}


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of the run (module docstring).

    reads:     config sections or single keys the stage's outputs depend on
    needs:     the stages whose outputs it reads
    produces:  the path whose existence means the stage's outputs are complete (a marker:
               an export's description, a dataset's manifest, a report)
    command:   how to run the stage on its own
    recomputed: the stage recomputes all of its outputs when rerun, so a changed config reruns
               it instead of being refused
    skipped:   when the config gives the stage's outputs (e.g. `encoder.checkpoint`) or does not
               use them, the stage has nothing to do
    model_fields: keys a reader of the outputs must agree with (sampling a diffusion checkpoint
               with another UNet would load the wrong weights)
    """

    name: str
    reads: tuple[str, ...]
    needs: tuple[str, ...]
    produces: Callable[[RunLayout], paths.Path]
    command: str
    recomputed: bool = False
    skipped: Callable[[ml_collections.ConfigDict], bool] = lambda config: False
    model_fields: tuple[str, ...] = ()


def _latent_autoencoder_given(config: ml_collections.ConfigDict) -> bool:
    return config.diffusion.space != "latent" or bool(config.autoencoder.checkpoint)


_MARKERS = {  # the file each trained export writes last (model_store.ModelStore)
    "encoder": "encoder.json",
    "autoencoder": "autoencoder.json",
}

STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage(
            name="encoder",
            reads=("data", "encoder"),
            needs=(),
            produces=lambda layout: layout.encoder.export_dir / _MARKERS["encoder"],
            command="--mode=train_encoder",
            skipped=lambda config: bool(config.encoder.checkpoint),
        ),
        Stage(
            name="judge",
            reads=("data", "encoder", "generate.judge_encoder"),
            needs=(),
            produces=lambda layout: layout.judge.export_dir / _MARKERS["encoder"],
            command="--mode=pipeline --stages=judge",
            skipped=lambda config: bool(config.generate.judge_encoder),
        ),
        Stage(
            name="autoencoder",
            reads=("autoencoder", "seed", "sample.identities"),
            needs=("encoder",),
            produces=lambda layout: layout.autoencoder.export_dir / _MARKERS["autoencoder"],
            command="--mode=train_autoencoder",
            skipped=_latent_autoencoder_given,
        ),
        Stage(
            name="diffusion",
            reads=("condition", "model", "diffusion", "train", "sample", "seed"),
            needs=("encoder", "autoencoder"),
            produces=lambda layout: layout.diffusion.checkpoints,
            command="--mode=train",
            model_fields=(
                "model.",
                "diffusion.",
                "condition.",
                "encoder.checkpoint",
                "autoencoder.checkpoint",
                "autoencoder.block_out_channels",
                "autoencoder.layers_per_block",
                "autoencoder.latent_channels",
                "autoencoder.norm_num_groups",
                "autoencoder.mid_block_add_attention",
                "seed",
                "data.resolution",
                "data.num_train_identities",
            ),
        ),
        Stage(
            name="generate",
            reads=("generate", "sample"),
            needs=("diffusion", "judge"),
            produces=lambda layout: layout.generated / "manifest.json",
            command="--mode=generate",
        ),
        Stage(
            name="recognizers",
            reads=("recognizer",),
            needs=("generate",),
            produces=lambda layout: layout.recognizer("real").export_dir / _MARKERS["encoder"],
            command="--mode=pipeline --stages=recognizers",
        ),
        Stage(
            name="report",
            reads=("evaluate",),
            needs=("recognizers", "judge"),
            produces=lambda layout: layout.report / "report.json",
            command="--mode=pipeline",
            recomputed=True,
        ),
    )
}


def requirements(name: str) -> list[str]:
    """`name` and every stage it needs, transitively, in the order of `STAGES`."""
    wanted, todo = set(), [name]
    while todo:
        stage = todo.pop()
        if stage not in wanted:
            wanted.add(stage)
            todo.extend(STAGES[stage].needs)
    return [stage for stage in STAGES if stage in wanted]


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """{'a': {'b': 1}} -> {'a.b': 1}; tuples become lists, as they are in JSON."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def is_neutral(key: str) -> bool:
    return key in NEUTRAL_KEYS or key.endswith(tuple(k for k in NEUTRAL_KEYS if k[0] == "."))


def stage_config(config: ml_collections.ConfigDict, name: str) -> dict[str, object]:
    """{dotted key: value} of what `name` and the stages it needs read, as in JSON."""
    flat = flatten(config.to_dict())
    sections = {read for stage in requirements(name) for read in STAGES[stage].reads}
    selected = {
        key: value
        for key, value in flat.items()
        if any(key == section or key.startswith(section + ".") for section in sections)
    }
    return json.loads(json.dumps(selected, sort_keys=True, default=list))


def fingerprint(stage_values: dict[str, object]) -> str:
    """SHA-256 of a stage config's canonical JSON."""
    return hashlib.sha256(json.dumps(stage_values, sort_keys=True).encode()).hexdigest()


def changed_keys(old: dict[str, object], new: dict[str, object]) -> list[str]:
    """The non-neutral keys whose values differ between two stage configs. A key the old
    config predates counts as holding its `KEYS_ADDED_LATER` value."""

    def value(config: dict[str, object], key: str) -> object:
        return config.get(key, KEYS_ADDED_LATER.get(key, "<absent>"))

    return sorted(
        key
        for key in set(old) | set(new)
        if value(old, key) != value(new, key) and not is_neutral(key)
    )


def model_mismatches(
    config: ml_collections.ConfigDict, saved: dict, stage: str = "diffusion"
) -> list[str]:
    """The `model_fields` of `stage` where `config` and a saved config (from a checkpoint)
    disagree, as "key: checkpoint has X, config has Y"."""
    fields = STAGES[stage].model_fields
    given, saved = flatten(config.to_dict()), flatten(saved)
    return [
        f"{key}: checkpoint has {saved.get(key)!r}, config has {given.get(key)!r}"
        for key in sorted(set(given) | set(saved))
        if key.startswith(fields) and given.get(key) != saved.get(key)
    ]


class MissingStageOutput(FileNotFoundError):
    """A stage's outputs are needed but do not exist; the message names the command that makes
    them."""


def require(layout: RunLayout, config: ml_collections.ConfigDict, name: str) -> None:
    """Raises `MissingStageOutput` unless stage `name`'s outputs exist (or the config gives
    them, or does not use them)."""
    stage = STAGES[name]
    if stage.skipped(config):
        return
    marker = stage.produces(layout)
    if not marker.exists():
        raise MissingStageOutput(
            f"This needs the {name} stage's outputs ({marker.parent}), which do not exist: run "
            f"`python -m diffusion_jax.main --config=... --workdir={layout.root} {stage.command}` "
            f"first, or the whole pipeline (`--mode=pipeline`)."
        )
