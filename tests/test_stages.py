"""The declared pipeline stages (`core.stages`) and the run layout (`core.run_layout`): what each
stage needs, its fingerprint, the refusal of a missing prerequisite naming the command that makes
it, and the paths of a workdir, local or gs://."""

import json

import pytest

from diffusion_jax.core import paths, stages
from diffusion_jax.core.run_layout import RunLayout
from diffusion_jax.tasks.latent.diffusion_space import ARCHITECTURE_FIELDS
from tests.helpers import tiny_config


def test_requirements_are_the_stage_and_what_it_needs_transitively_in_pipeline_order():
    assert stages.requirements("encoder") == ["encoder"]
    assert stages.requirements("diffusion") == ["encoder", "autoencoder", "diffusion"]
    assert stages.requirements("generate") == [
        "encoder",
        "judge",
        "autoencoder",
        "diffusion",
        "generate",
    ]
    assert stages.requirements("report") == list(stages.STAGES)


def test_a_stage_config_holds_its_reads_and_those_of_the_stages_it_needs_only(tmp_path):
    config = tiny_config(str(tmp_path))
    diffusion = stages.stage_config(config, "diffusion")
    assert diffusion["model.base_channels"] == config.model.base_channels
    assert diffusion["encoder.seed"] == config.encoder.seed  # read by the encoder it needs
    assert not any(key.startswith(("generate.", "recognizer.", "evaluate.")) for key in diffusion)
    generate = stages.stage_config(config, "generate")
    assert set(diffusion) < set(generate)
    assert generate["generate.judge_encoder"] == ""  # read by the judge it needs
    json.dumps(generate)  # JSON values only


def test_fingerprints_change_with_what_a_stage_reads_and_not_with_neutral_keys(tmp_path):
    config = tiny_config(str(tmp_path))
    before = {name: stages.fingerprint(stages.stage_config(config, name)) for name in stages.STAGES}
    config.generate.min_judge_similarity += 0.1
    config.data.data_dir = str(tmp_path / "elsewhere")
    after = {name: stages.fingerprint(stages.stage_config(config, name)) for name in stages.STAGES}
    changed = {name for name in stages.STAGES if before[name] != after[name]}
    # data_dir is read by every stage but neutral: only its fingerprint changes, never a refusal.
    assert changed == set(stages.STAGES)
    old, new = (
        stages.stage_config(tiny_config(str(tmp_path)), "report"),
        stages.stage_config(config, "report"),
    )
    assert stages.changed_keys(old, new) == ["generate.min_judge_similarity"]
    assert stages.is_neutral("encoder.train.log_every_steps")
    assert not stages.is_neutral("encoder.train.num_steps")


def test_a_record_that_predates_a_key_was_made_with_the_value_that_keeps_the_old_behaviour(
    tmp_path,
):
    config = tiny_config(str(tmp_path))
    new = stages.stage_config(config, "generate")
    old = {key: value for key, value in new.items() if key not in stages.KEYS_ADDED_LATER}
    # The defaults are the values that compute what the code computed before the keys existed.
    assert {key: new[key] for key in stages.KEYS_ADDED_LATER} == stages.KEYS_ADDED_LATER
    assert stages.changed_keys(old, new) == []
    config.generate.style_source = "real"
    assert stages.changed_keys(old, stages.stage_config(config, "generate")) == [
        "generate.style_source"
    ]


def test_the_diffusion_model_fields_cover_the_autoencoder_architecture():
    fields = stages.STAGES["diffusion"].model_fields
    assert {f"autoencoder.{field}" for field in ARCHITECTURE_FIELDS} <= set(fields)


def test_model_mismatches_name_the_key_and_both_values(tmp_path):
    config = tiny_config(str(tmp_path))
    saved = config.to_dict()
    assert stages.model_mismatches(config, saved) == []
    config.model.base_channels += 8
    config.sample.num_steps += 1  # a sampler setting may differ from training
    (message,) = stages.model_mismatches(config, saved)
    assert message == (
        f"model.base_channels: checkpoint has {saved['model']['base_channels']}, "
        f"config has {config.model.base_channels}"
    )


def test_a_missing_prerequisite_is_refused_with_the_command_that_makes_it(tmp_path):
    config = tiny_config(str(tmp_path))
    config.condition.source = "encoder"
    layout = RunLayout.from_config(tmp_path / "run", config)
    with pytest.raises(
        stages.MissingStageOutput, match=r"judge stage.*--mode=pipeline --stages=judge"
    ):
        stages.require(layout, config, "judge")
    with pytest.raises(stages.MissingStageOutput, match=r"encoder stage.*--mode=train_encoder"):
        stages.require(layout, config, "encoder")
    # Given by the config, or not used by it: nothing to require.
    config.encoder.checkpoint = str(tmp_path / "somewhere")
    stages.require(RunLayout.from_config(tmp_path / "run", config), config, "encoder")
    config.diffusion.space = "pixel"
    stages.require(layout, config, "autoencoder")
    # Once the marker exists the stage's outputs are there.
    paths.write_json_atomically(layout.judge.export_dir / "encoder.json", {})
    stages.require(layout, config, "judge")


def test_the_diffusion_training_mode_refuses_a_missing_encoder_before_training(tmp_path):
    from diffusion_jax.apps import train

    config = tiny_config(str(tmp_path / "never_prepared"))
    config.condition.source = "encoder"
    with pytest.raises(stages.MissingStageOutput, match="--mode=train_encoder"):
        train.run(config, str(tmp_path / "run"))
    assert not (tmp_path / "never_prepared").exists()  # refused before preparing any data


def test_the_layout_names_every_output_under_the_workdir_or_where_the_config_says(tmp_path):
    config = tiny_config(str(tmp_path))
    layout = RunLayout.from_config(str(tmp_path / "run"), config)
    root = tmp_path / "run"
    assert layout.root == root
    assert layout.encoder.run_dir == root / "encoder"
    assert layout.encoder.export_dir == root / "encoder" / "model"
    assert layout.judge.export_dir == root / "judge" / "encoder" / "model"
    assert layout.autoencoder.checkpoints == root / "autoencoder" / "checkpoints"
    assert layout.diffusion.checkpoints == root / "checkpoints"
    assert (
        layout.recognizer("real").export_dir == root / "recognizers" / "real" / "encoder" / "model"
    )
    assert layout.generated == root / "generated"
    assert layout.samples(7) == root / "samples" / "step_7"
    assert layout.stage_record("generate") == root / "pipeline" / "generate.json"
    config.encoder.checkpoint, config.generate.output_dir = "~/enc", str(tmp_path / "out")
    given = RunLayout.from_config(str(tmp_path / "run"), config)
    assert given.encoder.given and str(given.encoder.export_dir) == str(paths.resolve("~/enc"))
    assert given.generated == tmp_path / "out"


def test_a_gs_workdir_stays_a_url():
    config = tiny_config()
    layout = RunLayout.from_config("gs://bucket/runs/a", config)
    assert str(layout.encoder.export_dir) == "gs://bucket/runs/a/encoder/model"
    assert str(layout.generated) == "gs://bucket/runs/a/generated"
    assert paths.is_url(layout.report) and not paths.is_url("/tmp/gs:/x")
