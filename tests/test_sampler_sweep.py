"""`--mode=sampler_sweep`'s settings, plan, measures, answer, table and plot, without a trained
model (the sweep itself runs from the claim pipeline's trained workdir in
tests/test_claim_pipeline.py)."""

import ml_collections
import numpy as np
import pytest

from diffusion_jax.apps import sampler_sweep
from diffusion_jax.core.bad_input import BadInputError
from diffusion_jax.tasks.evaluation import sampler_comparison
from diffusion_jax.tasks.evaluation.sampler_comparison import (
    QUALITY_METRICS,
    SamplerSetting,
    parse_setting,
    parse_setting_list,
    parse_settings,
)
from tests.helpers import load_config, tiny_config


def test_every_setting_runs_at_every_guidance_scale_and_costs_its_passes():
    settings = parse_settings(" ddpm:100, ddim:10,dpm_solver_pp_2m:5 ", "1, 2, 0,1.5", 100)
    assert [s.label for s in settings[:4]] == [
        "ddpm:100@1",
        "ddpm:100@2",
        "ddpm:100@0",
        "ddpm:100@1.5",
    ]
    assert len(settings) == 12
    # One denoiser pass per step at scales 0 and 1, two otherwise.
    assert [s.passes_per_image for s in settings[4:8]] == [10, 20, 10, 20]
    assert settings[0].passes_per_image == 100 and settings[1].passes_per_image == 200
    assert settings[-1].name == "dpm_solver_pp_2m_5_g1.5"
    assert parse_setting("ddim:50@1", 1000, "f") == SamplerSetting("ddim", 50, 1.0)
    assert parse_setting("ddim:50@1", 1000, "f") in parse_settings("ddim:50", "1", 1000)
    assert parse_setting_list("", 1000, "f") == []
    # An entry with its own scale runs at that scale only.
    pinned = parse_settings("ddpm:100@1,ddim:10", "1,2", 100)
    assert [s.label for s in pinned] == ["ddpm:100@1", "ddim:10@1", "ddim:10@2"]
    assert [s.label for s in parse_setting_list("ddim:50@1, dpm_solver_pp_2m:8@2", 1000, "f")] == [
        "ddim:50@1",
        "dpm_solver_pp_2m:8@2",
    ]


@pytest.mark.parametrize(
    "settings, scales, field, message",
    [
        ("ddim:10,euler:5", "1", "settings", r"entry 'euler:5': Unknown sampler name='euler'"),
        ("ddim:10,ddim", "1", "settings", r"entry 'ddim': write sampler:steps"),
        ("ddim:10,:5", "1", "settings", r"entry ':5': write sampler:steps"),
        ("ddim:ten", "1", "settings", r"entry 'ddim:ten': the steps must be a whole number"),
        (
            "ddim:0",
            "1",
            "settings",
            r"entry 'ddim:0': the steps must be a whole number in \[1, 100\]",
        ),
        ("ddim:101", "1", "settings", r"entry 'ddim:101'"),
        ("ddim:-3", "1", "settings", r"entry 'ddim:-3'"),
        ("ddpm:50", "1", "settings", r"entry 'ddpm:50': DDPM runs all .*write ddpm:100"),
        ("ddim:10,ddim:10", "1", "settings", r"entry 'ddim:10' is listed twice"),
        ("ddim:10,ddim:10@1", "1", "settings", r"lists a setting twice"),
        ("ddim:10@x", "1", "settings", r"entry 'ddim:10@x': the guidance scale"),
        ("ddim:10,,ddim:5", "1", "settings", r"entry 2 of 'ddim:10,,ddim:5' is empty"),
        ("", "1", "settings", "is empty"),
        ("ddim:10", "1,x", "guidance_scales", r"entry 'x': the guidance scale must be a number"),
        ("ddim:10", "-1", "guidance_scales", r"entry '-1'"),
        ("ddim:10", "nan", "guidance_scales", r"entry 'nan'"),
        ("ddim:10", "1,1.0", "guidance_scales", "repeats a scale"),
    ],
)
def test_a_bad_entry_is_refused_naming_it(settings, scales, field, message):
    with pytest.raises(BadInputError, match=rf"config\.sampler_sweep\.{field}: .*{message}"):
        parse_settings(settings, scales, 100, "config.sampler_sweep")


@pytest.mark.parametrize(
    "text, message",
    [
        ("ddim:50", r"entry 'ddim:50': write sampler:steps@guidance"),
        ("ddim@1", r"entry 'ddim': write sampler:steps@guidance"),
        ("ddim:50@", r"entry 'ddim:50@': the guidance scale"),
        ("dpm_solver_pp_9m:5@1", r"entry 'dpm_solver_pp_9m:5': Unknown sampler"),
        ("ddim:5@1,ddim:5@1", r"entry 'ddim:5@1' is listed twice"),
    ],
)
def test_a_bad_setting_with_guidance_is_refused_naming_it(text, message):
    with pytest.raises(BadInputError, match=rf"config\.sampler_sweep\.ratio_settings: {message}"):
        parse_setting_list(text, 100, "config.sampler_sweep.ratio_settings")


def test_the_plan_adds_the_reference_and_defaults_the_ratio_set_to_validation():
    config = load_config("demo")
    plan = sampler_sweep.sweep_plan(config)
    assert len(plan.settings) == 25  # DDPM unguided, 12 settings x 2 guidance scales
    assert plan.reference.label == "ddim:50@1" and plan.reference in plan.settings
    assert plan.ratio_set == "validation@300"
    assert [s.label for s in plan.ratio_settings] == [
        "ddim:50@1",
        "dpm_solver_pp_2m:15@1",
        "dpm_solver_pp_2m:8@1",
    ]
    assert plan.runs()[-1] == (plan.reference, 1)  # the reference again, at the other seed
    assert len(plan.runs()) == 26

    config = tiny_config()  # T = 100; verification sets without a validation part
    config.sampler_sweep.update(settings="ddim:4", guidance_scales="2", reference="ddim:8@1")
    config.sampler_sweep.ratio_settings = ""
    plan = sampler_sweep.sweep_plan(config)
    assert [s.label for s in plan.settings] == ["ddim:4@2", "ddim:8@1"]
    assert plan.ratio_set is None  # not needed
    config.sampler_sweep.ratio_settings = "ddim:4@2"
    with pytest.raises(BadInputError, match=r"ratio_set: empty, .* no validation@N entry"):
        sampler_sweep.sweep_plan(config)
    config.sampler_sweep.ratio_set = "heldout"
    assert sampler_sweep.sweep_plan(config).ratio_set == "heldout"
    for seeds in ((0,), (1, 1), (0, -1)):
        config.sampler_sweep.noise_seeds = seeds
        with pytest.raises(BadInputError, match=r"noise_seeds: .*at least 2 distinct"):
            sampler_sweep.sweep_plan(config)
    config.sampler_sweep.noise_seeds = (0, 1)
    for key, message in (
        ("sampler_sweep.identities", "impostors"),
        ("sampler_sweep.samples_per_identity", "pairs within an identity"),
        ("evaluate.real_images_per_identity", "a second real image"),
    ):
        too_small = ml_collections.ConfigDict(config.to_dict())
        too_small.update_from_flattened_dict({key: 1})
        with pytest.raises(BadInputError, match=rf"config\.{key}: 1: at least 2, .*{message}"):
            sampler_sweep.sweep_plan(too_small)
    config.sampler_sweep.settings = "ddpm:1000"  # the default's DDPM, at the tests' T = 100
    with pytest.raises(BadInputError, match=r"settings: entry 'ddpm:1000': .*write ddpm:100"):
        sampler_sweep.sweep_plan(config)


def test_the_sampling_config_changes_the_sampler_only():
    config = tiny_config()
    changed = sampler_comparison.sampling_config(config, SamplerSetting("ddim", 7, 0.0))
    assert (changed.sample.sampler, changed.sample.num_steps, changed.sample.guidance_scale) == (
        "ddim",
        7,
        0.0,
    )
    differing = {
        key for key, value in changed.sample.to_dict().items() if value != config.sample[key]
    }
    assert differing == {"sampler", "num_steps", "guidance_scale"}
    changed.sample.sampler = "ddpm"
    assert {k: v for k, v in changed.to_dict().items() if k != "sample"} == {
        k: v for k, v in config.to_dict().items() if k != "sample"
    }


def test_the_measures_of_hand_made_embeddings():
    # 2 identities x 2 samples in 3 dimensions; the judge's real images: source, second.
    e = np.eye(3)
    judged_samples = np.stack([np.stack([e[0], e[1]]), np.stack([e[1], e[1]])])
    judged_real = np.stack([np.stack([e[0], e[0]]), np.stack([e[1], e[2]])])
    conditions = np.stack([e[0], e[1]])
    measures = sampler_comparison.quality_of_embeddings(
        judged_samples, judged_samples, judged_real, conditions
    )
    assert measures["judge_similarity_mean"] == pytest.approx(0.75)  # 3 of 4 on their source
    assert measures["judge_rank1"] == pytest.approx(0.75)
    assert measures["judge_real_genuine_mean"] == pytest.approx(0.5)
    # Identity 0's pair is orthogonal (1 - 0), identity 1's identical (1 - 1).
    assert measures["judge_diversity"] == pytest.approx(0.5)
    assert measures["judge_frechet_distance"] >= 0.0
    assert set(QUALITY_METRICS) <= set(measures)


def _setting(label, sampler, steps, scale, values, reference=False, within=True, no_worse=None):
    setting = SamplerSetting(sampler, steps, scale)
    return {
        **setting.to_json(),
        "reference": reference,
        "metrics": {
            **dict(zip(QUALITY_METRICS, values)),
            "sampling_seconds": 1.5,
        },
        "within_reference_noise": {metric: within for metric in QUALITY_METRICS},
        "no_worse_than_reference": {
            metric: within if no_worse is None else metric in no_worse for metric in QUALITY_METRICS
        },
    }


def _results():
    settings = [
        _setting("", "ddim", 10, 1.0, (0.2, 0.5, 0.6, 0.3, 0.9), within=False),
        _setting("", "ddim", 50, 1.0, (0.3, 0.6, 0.7, 0.3, 0.8), reference=True),
        _setting("", "ddim", 10, 2.0, (0.35, 0.6, 0.7, 0.2, 0.7)),
        _setting("", "dpm_solver_pp_2m", 8, 1.0, (0.29, 0.6, 0.7, 0.31, 0.8)),
        _setting("", "ddpm", 100, 1.0, (0.3, 0.6, 0.7, 0.3, 0.8)),
        _setting(
            "",
            "dpm_solver_pp_2m",
            5,
            1.0,
            (0.4, 0.7, 0.8, 0.1, 0.8),
            within=False,
            no_worse=("judge_similarity_mean", "judge_rank1", "judge_frechet_distance"),
        ),
    ]
    spread = {metric: 0.02 for metric in QUALITY_METRICS} | {"sampling_seconds": 0.1}
    return {
        "identities": 4,
        "samples_per_identity": 2,
        "settings": settings,
        "noise": {"setting": "ddim:50@1", "seeds": [0, 1], "spread": spread},
        "ratio_set": "heldout",
        "ratio": [
            {
                "label": "ddim:50@1",
                "passes_per_image": 50,
                "generation": {"images": 17, "judged_images": 20, "seconds": 12.0},
                "real_accuracy": 0.8,
                "synthetic_accuracy": 0.7,
                "ratio_above_chance": 2 / 3,
            }
        ],
    }


def test_the_answer_is_the_cheapest_setting_within_the_reference_noise():
    results = _results()
    answer = sampler_sweep.headline(results["settings"], "ddim:50@1")
    assert answer["cheapest_within_reference_noise"] == "dpm_solver_pp_2m:8@1"  # 8 passes
    assert "ddim:10@1" not in answer["settings_within_reference_noise"]
    assert answer["answer"].startswith("dpm_solver_pp_2m:8@1 (8 denoiser passes per image)")
    assert answer["cheapest_no_worse_than_reference"] == "dpm_solver_pp_2m:8@1"
    # dpm_solver_pp_2m:5@1 loses diversity only: no worse in identity and Frechet distance.
    assert answer["cheapest_no_worse_in_identity_and_frechet"] == "dpm_solver_pp_2m:5@1"


def test_the_plot_and_the_table_show_every_setting(tmp_path):
    from diffusion_jax.core.figures import save_figure

    results = _results()
    figure = sampler_sweep.sweep_figure(results)
    assert len(figure.axes) == 4 and all(axis.get_xscale() == "log" for axis in figure.axes)
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert {"ddim, guidance 1", "ddim, guidance 2", "dpm_solver_pp_2m, guidance 1"} <= set(labels)
    styles = {line.get_label(): line.get_linestyle() for line in figure.axes[0].get_lines()}
    assert styles["ddim, guidance 1"] == "-" and styles["ddim, guidance 2"] == "--"
    pixels = save_figure(figure, tmp_path / "sampler_sweep.png")
    assert pixels.ndim == 3 and (tmp_path / "sampler_sweep.png").stat().st_size > 1000
    text = sampler_sweep.table(results).splitlines()
    assert text[0].split()[:2] == ["setting", "passes"]
    assert text[2].split()[:3] == ["ddim:50@1", "(ref)", "50"]
    assert text[1].split()[-1] == "0/5" and text[2].split()[-1] == "5/5"
    assert text[7].split()[:2] == ["noise", "(spread)"]
    assert text[9] == "On heldout:" and text[-1].split()[-1] == "0.667"


def test_the_mode_refuses_a_workdir_without_its_trained_models(tmp_path):
    from diffusion_jax.core import stages
    from diffusion_jax.main import MODES

    config = tiny_config(str(tmp_path / "never_prepared"))
    config.condition.source = "encoder"
    config.sampler_sweep.update(settings="ddim:2", guidance_scales="1", reference="ddim:2@1")
    config.sampler_sweep.ratio_settings = ""
    with pytest.raises(stages.MissingStageOutput, match="--mode=train_encoder"):
        MODES["sampler_sweep"](config, str(tmp_path / "run"))
    assert not (tmp_path / "never_prepared").exists()  # refused before reading any data
    config.sampler_sweep.settings = "ddim:2,euler:3"
    with pytest.raises(BadInputError, match="entry 'euler:3'"):  # before the workdir is read
        MODES["sampler_sweep"](config, str(tmp_path / "run"))


def test_no_worse_than_the_reference_knows_which_way_each_measure_is_better():
    reference, fewer_steps = SamplerSetting("ddim", 50, 1.0), SamplerSetting("ddim", 10, 1.0)
    plan = sampler_sweep.SweepPlan((reference, fewer_steps), reference, (0, 1), (), None)
    values = {
        # judge similarity, rank-1, condition similarity, diversity, Frechet distance
        (reference, 0): (0.35, 0.30, 0.6, 0.72, 0.130),
        (reference, 1): (0.34, 0.26, 0.6, 0.71, 0.134),  # spreads .01 .04 0 .01 .004
        (fewer_steps, 0): (0.37, 0.36, 0.6, 0.70, 0.133),
    }
    measured = {
        key: {"metrics": dict(zip(QUALITY_METRICS, v)), "measured_now": True}
        for key, v in values.items()
    }
    noise = sampler_sweep.noise_estimate(plan, measured)
    results = {r["label"]: r for r in sampler_sweep._settings_results(plan, measured, noise)}
    few = results["ddim:10@1"]
    # More identity-consistent than the reference by more than the noise: not within the
    # noise, but no worse; less diverse by more than the noise: worse; a Frechet distance
    # 0.003 above the reference, within its 0.004 spread: both.
    assert few["within_reference_noise"]["judge_similarity_mean"] is False
    assert few["no_worse_than_reference"]["judge_similarity_mean"] is True
    assert few["no_worse_than_reference"]["judge_rank1"] is True
    assert few["within_reference_noise"]["judge_diversity"] is False
    assert few["no_worse_than_reference"]["judge_diversity"] is False
    assert few["within_reference_noise"]["judge_frechet_distance"] is True
    assert few["no_worse_than_reference"]["judge_frechet_distance"] is True
    answer = sampler_sweep.headline(list(results.values()), "ddim:50@1")
    assert answer["cheapest_within_reference_noise"] == "ddim:50@1"
    assert answer["cheapest_no_worse_than_reference"] == "ddim:50@1"
    assert answer["cheapest_no_worse_in_identity_and_frechet"] == "ddim:10@1"
