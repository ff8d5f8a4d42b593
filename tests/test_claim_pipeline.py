"""`--mode=pipeline` on the `test` preset, run as `launch/local.sh 2` runs it (two processes of one
jax.distributed job, one CPU device each): every stage runs in both, generation is shared
between them and the one that finishes first waits for the other's shards, the report has every
section with finite numbers, a pipeline interrupted between stages skips, when restarted, the
stages it had completed (checked by their outputs' modification times), and a config that
differs from a completed stage's is refused, naming the changed keys, before anything runs. The
scaling sweep (`--mode=scaling_sweep`) and the sampler sweep (`--mode=sampler_sweep`) run from
the same trained workdir."""

import collections
import json
import math
import os
import re
import shutil

import numpy as np
import pytest

from tests.helpers import run_main_job, run_main_job_in_processes

OVERRIDES = {"condition.source": "encoder", "generate.identities_per_shard": 3}
# One output of each stage, relative to the workdir.
STAGE_OUTPUTS = {
    "encoder": "encoder/model/encoder.json",
    "judge": "judge/encoder/model/encoder.json",
    "diffusion": "figures/identities.png",
    "generate": "generated/manifest.json",
    "recognizers": "recognizers/synthetic/encoder/model/encoder.json",
    "report": "report/report.json",
}


@pytest.fixture(scope="module")
def pipeline_processes(tmp_path_factory, prepared_data_dir):
    """(workdir, [log of process 0, log of process 1]) of the pipeline run by two processes."""
    workdir = str(tmp_path_factory.mktemp("claim_pipeline") / "run")
    log_dir = str(tmp_path_factory.mktemp("claim_pipeline_logs"))
    logs = run_main_job_in_processes(
        2, "test", workdir, prepared_data_dir, OVERRIDES, mode="pipeline", log_dir=log_dir
    )
    return workdir, logs


@pytest.fixture(scope="module")
def pipeline_run(pipeline_processes):
    return pipeline_processes[0]


def numbers(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from numbers(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


@pytest.mark.slow  # reads the module's `--mode=pipeline` run (a subprocess)
@pytest.mark.e2e
def test_the_report_has_every_section_with_finite_numbers(pipeline_run):
    with open(os.path.join(pipeline_run, "report", "report.json")) as file:
        report = json.load(file)
    assert set(report["verification"]) == {"real", "synthetic"}
    real = report["verification"]["real"]["heldout"]["accuracy_mean"]
    synthetic = report["verification"]["synthetic"]["heldout"]["accuracy_mean"]
    claim = report["claim"]["heldout"]
    assert claim["gap"] == pytest.approx(real - synthetic)
    # Undefined (None) for a real-trained recogniser at chance: whichever case this run is in is
    # checked, so the assertion cannot be skipped.
    expected_ratio = None if real == 0.5 else pytest.approx((synthetic - 0.5) / (real - 0.5))
    assert claim["ratio_above_chance"] == expected_ratio
    for name in ("generated", "real"):
        measures = report["dataset"][name]
        assert {"separation", "embedding_diversity", "pixel_diversity", "photometry"} <= set(
            measures
        )
        assert measures["images"] > 0 and measures["identities"] >= 2
    assert "nearest_real_identity" in report["dataset"]["generated"]
    values = list(numbers({key: value for key, value in report.items() if key != "claim"}))
    assert values and all(math.isfinite(value) for value in values if value is not None)
    with open(os.path.join(pipeline_run, "report", "report.md")) as file:
        markdown = file.read()
    for section in (
        "real-trained acc",
        "## The datasets",
        "Frechet distance",
        "roc.png",
        "generated_vs_real.png",
        "../figures/reverse_process.png",
    ):
        assert section in markdown
    for name in ("roc.png", "similarity_histograms.png", "generated_vs_real.png"):
        assert os.path.getsize(os.path.join(pipeline_run, "report", name)) > 1000


@pytest.mark.slow
@pytest.mark.e2e
def test_two_processes_run_every_stage_and_share_the_generation(pipeline_processes):
    from diffusion_jax.tasks.generation import dataset_validation

    workdir, logs = pipeline_processes
    for stage in ("encoder", "judge", "diffusion", "generate", "recognizers", "report"):
        assert all(f"Pipeline stage {stage}: running." in log for log in logs), stage
    written = []
    for index, log in enumerate(logs):
        assert f"Worker {index} of 2 (from jax)" in log
        summary = re.search(r"Generation summary: .*'shards_written': \[([\d, ]*)\]", log)
        written.append({int(shard) for shard in summary.group(1).split(",") if shard.strip()})
        # Both processes leave the stage with the whole dataset, whichever finished it.
        assert "'dataset_complete': True" in log[summary.start() :]
    generated = os.path.join(workdir, "generated")
    with open(os.path.join(generated, "manifest.json")) as file:
        num_shards = len(json.load(file)["shards"])
    assert written[0] and written[1] and not written[0] & written[1]
    assert written[0] | written[1] == set(range(num_shards))
    dataset_validation.validate(generated)
    records = sorted(os.listdir(os.path.join(workdir, "pipeline")))
    assert records == [f"{stage}.json" for stage in sorted(STAGE_OUTPUTS)]  # no .partial left


@pytest.mark.slow
@pytest.mark.e2e
def test_a_restarted_pipeline_does_not_redo_completed_stages(
    pipeline_run, prepared_data_dir, tmp_path
):
    # On a copy (modification times kept), so the other tests' shared run stays whole whatever
    # the order the tests run in.
    workdir = str(tmp_path / "claim_pipeline")
    shutil.copytree(pipeline_run, workdir)

    def modified(stage):
        return os.stat(os.path.join(workdir, STAGE_OUTPUTS[stage])).st_mtime_ns

    before = {stage: modified(stage) for stage in STAGE_OUTPUTS}
    # As if the first run had been interrupted after the `generate` stage.
    shutil.rmtree(os.path.join(workdir, "recognizers", "synthetic"))
    shutil.rmtree(os.path.join(workdir, "report"))
    for stage in ("recognizers", "report"):
        os.remove(os.path.join(workdir, "pipeline", f"{stage}.json"))
    run_main_job("test", workdir, prepared_data_dir, OVERRIDES, timeout=1200, mode="pipeline")
    after = {stage: modified(stage) for stage in STAGE_OUTPUTS}
    for stage in ("encoder", "judge", "diffusion", "generate"):
        assert after[stage] == before[stage], f"stage {stage} was redone"
    for stage in ("recognizers", "report"):
        assert after[stage] > before[stage], f"stage {stage} was not redone"
    real = os.path.join(workdir, "recognizers", "real", "encoder", "model", "encoder.json")
    assert os.stat(real).st_mtime_ns < after["recognizers"]  # complete, so not retrained


@pytest.mark.slow
@pytest.mark.e2e
def test_evaluate_mode_verifies_named_recognizers_as_the_report_does(
    pipeline_run, prepared_data_dir
):
    from diffusion_jax.tasks.evaluation.recognizer_evaluation import evaluate_recognizers
    from tests.helpers import tiny_config

    config = tiny_config(prepared_data_dir)
    config.update_from_flattened_dict(OVERRIDES)
    synthetic = os.path.join(pipeline_run, "recognizers", "synthetic", "encoder", "model")
    config.recognizer.evaluate = (f"mine={synthetic}",)
    report = evaluate_recognizers(config, pipeline_run)
    with open(os.path.join(pipeline_run, "report", "report.json")) as file:
        pipeline_report = json.load(file)
    assert report["recognizers"] == {"mine": synthetic}
    assert (
        report["verification"]["mine"]["heldout"]
        == pipeline_report["verification"]["synthetic"]["heldout"]
    )
    assert os.path.getsize(os.path.join(pipeline_run, "evaluation", "roc.png")) > 1000
    config.recognizer.evaluate = ()  # every recogniser under WORKDIR/recognizers
    assert set(evaluate_recognizers(config, pipeline_run)["recognizers"]) == {"real", "synthetic"}


@pytest.mark.slow
@pytest.mark.e2e
def test_train_recognizer_mode_trains_on_a_generated_recordio_dataset(
    pipeline_run, prepared_data_dir, tmp_path
):
    from diffusion_jax.tasks.data.sources.recordio import RecordIOReader
    from diffusion_jax.tasks.evaluation.recognizer_training import train_recognizer_mode
    from diffusion_jax.tasks.recognition import encoder_store
    from tests.helpers import tiny_config

    config = tiny_config(prepared_data_dir)
    config.update_from_flattened_dict(OVERRIDES)
    rec = os.path.join(pipeline_run, "generated", "recordio", "train.rec")
    config.recognizer.update(name="from_rec", data_source="recordio", data_path=rec)
    # Into its own workdir: a recogniser added under the shared run's recognizers/ would change
    # what test_evaluate_mode_... finds there when it runs later.
    workdir = str(tmp_path)
    directory = train_recognizer_mode(config, workdir)
    assert directory == os.path.join(workdir, "recognizers", "from_rec", "encoder", "model")
    provenance = encoder_store.read_description(directory)["provenance"]
    assert provenance["data"]["path"] == rec and provenance["seed"] == config.recognizer.seed
    assert provenance["num_training_identities"] == len(RecordIOReader(rec).identity_ranges)


@pytest.mark.slow
@pytest.mark.e2e
def test_recognizer_sizes_fix_both_training_sets(pipeline_run, prepared_data_dir):
    from diffusion_jax.tasks.data.sources import input_pipeline
    from diffusion_jax.tasks.data.sources.recordio import RecordIOReader
    from diffusion_jax.tasks.evaluation.recognizer_training import (
        check_same_identities,
        generated_data_config,
        real_data_config,
    )
    from tests.helpers import tiny_config

    config = tiny_config(prepared_data_dir)
    config.update_from_flattened_dict(OVERRIDES)
    out_dir = os.path.join(pipeline_run, "generated")

    def labels(data):
        records = input_pipeline.training_records(data)
        return sorted(int(records[index]["label"]) for index in range(len(records)))

    # By default the real set is matched to the generated images per identity.
    per_identity = config.generate.images_per_identity
    assert labels(real_data_config(config)) == sorted(
        list(range(config.data.num_train_identities)) * per_identity
    )

    config.recognizer.num_identities, config.recognizer.images_per_identity = 2, 2
    real, generated = real_data_config(config), generated_data_config(config, out_dir)
    assert labels(real) == [0, 0, 1, 1]
    ranges = RecordIOReader(os.path.join(out_dir, "recordio", "train.rec")).identity_ranges
    kept = [min(2, int(end - start)) for start, end in ranges[:2]]
    assert labels(generated) == [0] * kept[0] + [1] * kept[1]
    check_same_identities(config, {"real": real, "synthetic": generated})
    # Both recognisers' augmentation, not the diffusion model's.
    config.recognizer.max_shift = 3
    config.recognizer.color_jitter = 0.25
    for data in (real_data_config(config), generated_data_config(config, out_dir)):
        assert (data.max_shift, data.color_jitter) == (3, 0.25)
    assert config.data.max_shift == 0 and config.data.color_jitter == 0.0

    config.recognizer.num_identities = len(ranges) + 1
    with pytest.raises(ValueError, match=rf"num_identities={len(ranges) + 1}.*synthetic"):
        check_same_identities(
            config,
            {"real": real_data_config(config), "synthetic": generated_data_config(config, out_dir)},
        )


@pytest.mark.slow
@pytest.mark.e2e
def test_the_scaling_sweep_trains_each_prefix_once_against_the_real_recognizer(
    pipeline_run, prepared_data_dir, tmp_path
):
    from diffusion_jax.core import stages
    from diffusion_jax.main import MODES
    from diffusion_jax.tasks.recognition import encoder_store
    from tests.helpers import tiny_config

    # On a copy: the sweep writes WORKDIR/sweep, and the last part removes the real recogniser.
    workdir = str(tmp_path / "run")
    shutil.copytree(pipeline_run, workdir)
    config = tiny_config(prepared_data_dir)
    config.update_from_flattened_dict(OVERRIDES)
    config.encoder.train.checkpoint_every_steps = 100  # neutral: one save per recogniser
    config.evaluate.verification_sets = ("heldout",)
    out_dir = tmp_path / "scaling"
    config.sweep.update(
        # 4 of the 8 real identities (the pipeline's first 4), at 2 and 3 images: two points
        # keep the test short; the identity cut is the same code as the image cut.
        identity_multiples=(0.5,),
        images_per_identity=(2, 3),
        report_set="heldout@20",  # verified besides the sets above
        out_dir=str(out_dir),
    )
    real = os.path.join(workdir, "recognizers", "real", "encoder", "model", "encoder.json")
    real_written = os.stat(real).st_mtime_ns
    results = MODES["scaling_sweep"](config, workdir)

    assert os.stat(real).st_mtime_ns == real_written  # verified, not retrained
    points = results["points"]
    assert [(p["identities"], p["images_per_identity"]) for p in points] == [(4, 2), (4, 3)]
    # One dataset of the largest point, whose identities and images are the pipeline's own
    # first ones (same seed, sampler and filter; the same judge reference at 3 images).
    generated, pipeline_generated = (
        os.path.join(workdir, "sweep", "generated"),
        os.path.join(workdir, "generated"),
    )

    def images(out_dir, identities):
        with open(os.path.join(out_dir, "manifest.json")) as file:
            contents = json.load(file)
        records = []
        for shard in contents["shards"]:
            with open(os.path.join(out_dir, shard)) as file:
                records += json.load(file)["images"]
        return contents, sorted(
            (r["identity"], r["image_index"], r["attempt"], r["decision"], r["seed"])
            for r in records
            if r["identity"] < identities
        )

    contents, sweep_images = images(generated, 4)
    assert (
        contents["plan"]["generate"]["num_identities"],
        contents["plan"]["generate"]["images_per_identity"],
    ) == (4, 3)
    assert sweep_images == images(pipeline_generated, 4)[1]
    np.testing.assert_array_equal(
        np.load(os.path.join(generated, "identities.npy")),
        np.load(os.path.join(pipeline_generated, "identities.npy"))[:4],
    )
    # Each point trains on its prefix: the first identities, the first kept images of each.
    kept = collections.Counter(image[0] for image in sweep_images if image[3] == "kept")
    for point in points:
        identities, per_identity = point["identities"], point["images_per_identity"]
        assert point["images"] == sum(min(kept[i], per_identity) for i in range(identities))
        assert point["cost"]["images"] == point["images"]
        provenance = encoder_store.read_description(point["recognizer"])["provenance"]
        assert provenance["num_training_identities"] == identities
        assert provenance["data"]["max_images_per_identity"] == per_identity
        assert provenance["seed"] == config.recognizer.seed  # the recognisers' recipe
        assert provenance["step"] == config.recognizer.num_steps
        assert point["cost"]["recognizer_steps"] == config.recognizer.num_steps
        assert point["recognizer"].startswith(os.path.join(workdir, "sweep", "recognizers"))
        share = point["images"] / results["generation"]["images"]
        assert point["cost"]["generation_share_seconds"] == pytest.approx(
            share * results["generation"]["seconds"]
        )
    # Every set, the report set included; the ratio and gap from the JSON's own accuracies, and
    # one real recogniser for all points.
    with open(out_dir / "scaling.json") as file:
        written = json.load(file)
    assert written == results
    for set_name in ("heldout", "heldout@20"):
        real_accuracy = written["verification"]["real"][set_name]["accuracy_mean"]
        for point in written["points"]:
            result = point["sets"][set_name]
            assert result["real_accuracy"] == real_accuracy
            synthetic = written["verification"][point["name"]][set_name]["accuracy_mean"]
            assert result["synthetic_accuracy"] == synthetic
            assert result["gap"] == pytest.approx(real_accuracy - result["synthetic_accuracy"])
            expected = (
                None
                if real_accuracy == 0.5
                else pytest.approx((result["synthetic_accuracy"] - 0.5) / (real_accuracy - 0.5))
            )
            assert result["ratio_above_chance"] == expected
    assert written["headline"]["report_set"] == "heldout@20"
    assert {"commit", "machine", "command", "config_overrides"} <= set(written)
    assert os.path.getsize(out_dir / "scaling.png") > 1000

    # A rerun retrains nothing and regenerates nothing; the recorded costs stay.
    exports = {p["name"]: os.path.join(p["recognizer"], "encoder.json") for p in points}
    written_at = {name: os.stat(path).st_mtime_ns for name, path in exports.items()}
    manifest_at = os.stat(os.path.join(generated, "manifest.json")).st_mtime_ns
    again = MODES["scaling_sweep"](config, workdir)
    assert {name: os.stat(path).st_mtime_ns for name, path in exports.items()} == written_at
    assert os.stat(os.path.join(generated, "manifest.json")).st_mtime_ns == manifest_at
    assert not any(p["trained_in_this_run"] for p in again["points"])
    assert [p["cost"] for p in again["points"]] == [p["cost"] for p in points]
    assert again["points"] == [{**p, "trained_in_this_run": False} for p in points]

    # Other sizes than the sweep's dataset's, or another recogniser recipe than the workdir's,
    # are refused, naming the keys; a missing real recogniser names the command that makes it.
    config.sweep.images_per_identity = (2, 4)
    with pytest.raises(ValueError, match=r"other sizes \(generate\.images_per_identity: 3 there"):
        MODES["scaling_sweep"](config, workdir)
    config.sweep.images_per_identity = (2, 3)
    config.recognizer.num_steps += 1
    with pytest.raises(ValueError, match=r"stage recognizers .*recognizer\.num_steps: 4 -> 5"):
        MODES["scaling_sweep"](config, workdir)
    config.recognizer.num_steps -= 1
    shutil.rmtree(os.path.join(workdir, "recognizers", "real"))
    with pytest.raises(stages.MissingStageOutput, match="--mode=pipeline --stages=recognizers"):
        MODES["scaling_sweep"](config, workdir)


@pytest.mark.slow
@pytest.mark.e2e
def test_the_sampler_sweep_grades_every_setting_from_the_same_noise(
    pipeline_run, prepared_data_dir, tmp_path
):
    from diffusion_jax.main import MODES
    from diffusion_jax.tasks.evaluation.sampler_comparison import QUALITY_METRICS
    from diffusion_jax.tasks.recognition import encoder_store
    from tests.helpers import tiny_config

    workdir = str(tmp_path / "run")  # a copy: the sweep writes WORKDIR/sampler_sweep
    shutil.copytree(pipeline_run, workdir)
    config = tiny_config(prepared_data_dir)
    config.update_from_flattened_dict(OVERRIDES)
    config.encoder.train.checkpoint_every_steps = 100  # neutral: one save per recogniser
    out_dir = tmp_path / "sampler_sweep"
    config.sampler_sweep.update(
        # DPM-Solver++(2M) with 2 steps takes two first-order steps, which are DDIM's (eta 0):
        # the same images, and so the same measures, only if both start from the same x_T. The
        # reference (guided, not in `settings`: added) costs 2 x 2 passes.
        settings="ddim:2,dpm_solver_pp_2m:2",
        guidance_scales="1",
        reference="ddim:2@2",
        noise_seeds=(0, 1),
        identities=4,
        samples_per_identity=2,
        # The workdir's sampler (dpm_solver_pp_2m:4@2) without guidance.
        ratio_settings="dpm_solver_pp_2m:4@1",
        ratio_set="heldout",
        out_dir=str(out_dir),
    )
    real = os.path.join(workdir, "recognizers", "real", "encoder", "model", "encoder.json")
    real_written = os.stat(real).st_mtime_ns
    results = MODES["sampler_sweep"](config, workdir)

    with open(out_dir / "sampler_sweep.json") as file:
        assert json.load(file) == results
    assert os.path.getsize(out_dir / "sampler_sweep.png") > 1000
    assert {"commit", "machine", "command", "config_overrides", "headline", "noise"} <= set(results)
    settings = {s["label"]: s for s in results["settings"]}
    assert list(settings) == ["ddim:2@1", "dpm_solver_pp_2m:2@1", "ddim:2@2"]
    for setting in settings.values():
        guided = setting["guidance_scale"] not in (0, 1)
        assert setting["passes_per_image"] == setting["num_steps"] * (2 if guided else 1)
        assert set(QUALITY_METRICS) | {"sampling_seconds", "judge_real_genuine_mean"} <= set(
            setting["metrics"]
        )
        assert all(math.isfinite(value) for value in setting["metrics"].values())
        assert setting["metrics"]["sampling_seconds"] > 0 and setting["measured_in_this_run"]
    assert [s["passes_per_image"] for s in settings.values()] == [2, 2, 4]
    assert settings["ddim:2@2"]["reference"] and not settings["ddim:2@1"]["reference"]
    ddim, dpm = settings["ddim:2@1"]["metrics"], settings["dpm_solver_pp_2m:2@1"]["metrics"]
    for metric in QUALITY_METRICS:
        assert dpm[metric] == pytest.approx(ddim[metric], rel=1e-5, abs=1e-6), metric
    assert ddim["judge_diversity"] > 0.01  # the samples depend on x_T: the agreement is not free
    # The noise block: the reference at both seeds, whose x_T differ and so do the measures.
    noise = results["noise"]
    assert (noise["setting"], noise["seeds"]) == ("ddim:2@2", [0, 1])
    for metric, (first, second) in noise["per_seed"].items():
        assert first == settings["ddim:2@2"]["metrics"][metric]
        assert noise["spread"][metric] == pytest.approx(abs(first - second))
    assert noise["spread"]["judge_frechet_distance"] > 1e-4
    assert all(settings["ddim:2@2"]["within_reference_noise"].values())

    # The ratio setting: the workdir's generation with only the sampler changed, its own
    # synthetic recogniser, and the workdir's real one verified as it is.
    assert os.stat(real).st_mtime_ns == real_written
    (ratio,) = results["ratio"]
    generated = os.path.join(workdir, "sampler_sweep", "generated", "dpm_solver_pp_2m_4_g1")
    assert ratio["generation"]["out_dir"] == generated
    with open(os.path.join(generated, "manifest.json")) as file:
        plan = json.load(file)["plan"]
    with open(os.path.join(workdir, "generated", "manifest.json")) as file:
        workdir_plan = json.load(file)["plan"]
    assert plan["sample"] == {**workdir_plan["sample"], "guidance_scale": 1.0}
    assert {k: v for k, v in plan.items() if k != "sample"} == {
        k: v for k, v in workdir_plan.items() if k != "sample"
    }
    np.testing.assert_array_equal(
        np.load(os.path.join(generated, "identities.npy")),
        np.load(os.path.join(workdir, "generated", "identities.npy")),
    )
    assert 0 < ratio["generation"]["images"] <= ratio["generation"]["judged_images"]
    assert ratio["generation"]["seconds"] > 0
    provenance = encoder_store.read_description(ratio["recognizer"])["provenance"]
    assert provenance["seed"] == config.recognizer.seed
    assert provenance["step"] == ratio["recognizer_steps"] == config.recognizer.num_steps
    verification = results["verification"]
    assert ratio["real_accuracy"] == verification["real"]["heldout"]["accuracy_mean"]
    synthetic = verification["dpm_solver_pp_2m_4_g1"]["heldout"]["accuracy_mean"]
    assert ratio["synthetic_accuracy"] == synthetic
    expected = (
        None
        if ratio["real_accuracy"] == 0.5
        else pytest.approx((synthetic - 0.5) / (ratio["real_accuracy"] - 0.5))
    )
    assert ratio["ratio_above_chance"] == expected

    # A rerun measures, generates and trains nothing again, and gives the same numbers.
    records = os.path.join(workdir, "sampler_sweep", "quality")
    outputs = [os.path.join(records, name) for name in sorted(os.listdir(records))] + [
        os.path.join(generated, "manifest.json"),
        os.path.join(ratio["recognizer"], "encoder.json"),
    ]
    assert len(outputs) == 6  # 3 settings, the reference's second seed, dataset, recogniser
    written_at = [os.stat(path).st_mtime_ns for path in outputs]
    again = MODES["sampler_sweep"](config, workdir)
    assert [os.stat(path).st_mtime_ns for path in outputs] == written_at
    assert not any(s["measured_in_this_run"] for s in again["settings"])
    assert not again["ratio"][0]["trained_in_this_run"]
    assert [s["metrics"] for s in again["settings"]] == [s["metrics"] for s in results["settings"]]
    assert (
        again["noise"] == results["noise"]
        and again["ratio"][0]["generation"] == (ratio["generation"])
    )


def test_a_changed_config_is_refused_naming_the_keys_before_any_stage_runs(tmp_path):
    from diffusion_jax.apps import pipeline as pipeline_mode
    from diffusion_jax.core import stages
    from tests.helpers import tiny_config

    workdir, config = str(tmp_path / "run"), tiny_config(str(tmp_path / "never_prepared"))
    configs = pipeline_mode.stage_configs(config)
    runs = []
    for stage in ("encoder", "judge", "diffusion", "generate", "recognizers", "report"):
        assert pipeline_mode.run_stage(workdir, stage, configs[stage], lambda: runs.append(1) or 1)
    assert pipeline_mode.run_stage(workdir, "encoder", configs["encoder"], lambda: runs.append(1))
    assert len(runs) == 6  # the second encoder call was skipped

    # A generation setting leaves the judge and the diffusion model valid (the judge reads only
    # generate.judge_encoder) and is refused at `generate`, whose dataset would be reused.
    config.generate.min_judge_similarity = 0.45
    config.recognizer.num_steps = 7
    with pytest.raises(
        ValueError,
        match=r"stage generate .*generate\.min_judge_similarity: 0\.3 "
        r"-> 0\.45\); its outputs would be reused",
    ):
        pipeline_mode.run_pipeline(config, workdir)
    assert not os.path.exists(tmp_path / "never_prepared")  # refused before the data preparation
    changed = pipeline_mode.stage_configs(config)
    for stage in ("encoder", "judge", "diffusion"):
        assert changed[stage] == configs[stage]
    with pytest.raises(ValueError, match=r"stage recognizers .*recognizer\.num_steps: 4 -> 7"):
        pipeline_mode.check_stage_configs(workdir, {"recognizers": changed["recognizers"]})

    # Where the data is prepared, whether it is hashed and how often a run logs change nothing
    # it computes.
    config.data.data_dir, config.encoder.train.log_every_steps = str(tmp_path / "moved"), 1
    config.data.verify_prepared = True
    pipeline_mode.check_stage_configs(
        workdir, {"judge": pipeline_mode.stage_configs(config)["judge"]}
    )
    # ... so such a stage is not run again, though its fingerprint changed.
    moved = pipeline_mode.stage_configs(config)["judge"]
    assert stages.fingerprint(moved) != stages.fingerprint(configs["judge"])
    assert pipeline_mode.run_stage(workdir, "judge", moved, lambda: runs.append(1))
    assert len(runs) == 6
    # The report recomputes everything it writes, so a new evaluation config reruns it.
    pipeline_mode.check_stage_configs(workdir, {"report": {**configs["report"], "x": 1}})
    # Records from before they held their config are trusted, as then.
    record = os.path.join(workdir, "pipeline", "generate.json")
    with open(record) as file:
        legacy = {key: value for key, value in json.load(file).items() if key != "config"}
    with open(record, "w") as file:
        json.dump(legacy, file)
    pipeline_mode.check_stage_configs(workdir, {"generate": changed["generate"]})
