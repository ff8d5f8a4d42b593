"""`--mode=sampler_sweep`: denoiser passes against quality. How few denoiser passes per image can
a sampler spend before the samples, and the recogniser trained on them, get worse?

From a workdir whose pipeline has run up to its recognisers, with the config it was run with
(`sweeps.check_workdir`: a missing stage names the command that makes it, another config is
refused naming the changed keys), for the settings of config.sampler_sweep (docs/samplers.md):

    1. quality     every setting of `settings` x `guidance_scales` ("sampler:steps" x scale;
                   an entry "sampler:steps@scale" at that scale only) draws
                   `samples_per_identity` images of each of the first `identities` training
                   identities, conditioned on the conditioning encoder's embedding of its first
                   real photo, from the key of the first of `noise_seeds`: the same x_T for
                   image k of identity i under every setting. Each is graded under the
                   workdir's judge (`sampler_comparison`: judge similarity, rank-1, condition
                   similarity, diversity within identity, Frechet distance to the real images of
                   those identities) and timed (compilation excluded). The `reference` setting
                   ("sampler:steps@guidance"; run too when `settings` lacks it) is also drawn
                   from the other noise seeds: another x_T, the same identities, so that the
                   spread of each measure over the seeds is its noise estimate. A setting's
                   measures are kept in WORKDIR/sampler_sweep/quality/<setting>_seed<S>.json and
                   not measured again while the identities, sample counts, networks and sampler
                   options they were measured with stay the same.
    2. ratio       for each of `ratio_settings`, the workdir's generation with only
                   sample.sampler, num_steps, guidance_scale and output_dir changed, into
                   WORKDIR/sampler_sweep/generated/<setting> (same seed, identities and filter;
                   skipped once its manifest is written), a `synthetic` recogniser on it with the
                   recognisers stage's recipe into WORKDIR/sampler_sweep/recognizers/<setting>
                   (not retrained once complete), both it and the workdir's `real` recogniser
                   (as it is) verified on `ratio_set` (default: the validation@N entry of
                   config.evaluate.verification_sets), and the ratio above chance
                   (acc_syn - 50) / (acc_real - 50) (`claim_report.claim_of`). Wall seconds of
                   each generation and recogniser are summed over the runs that worked on them
                   (WORKDIR/sampler_sweep/costs/).
    3. results     written by process 0 to sampler_sweep.out_dir (default
                   WORKDIR/sampler_sweep): sampler_sweep.json (every setting's measures, passes
                   per image and seconds; the noise block; the ratio settings' datasets,
                   recognisers and ratios; the commit, machine and command) and
                   sampler_sweep.png (the quality measures against the passes per image, log
                   axis, one line per sampler and guidance scale, the reference's noise band
                   shaded), and logged as tables.
"""

import dataclasses

import jax
import matplotlib.pyplot as plt
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from matplotlib import ticker

from diffusion_jax.apps.sweeps import (
    REAL,
    against_real,
    check_workdir,
    generate_once,
    recognizer_steps,
    run_record,
    text_table,
    train_synthetic_recognizers,
    write_results,
)
from diffusion_jax.core import parallel, paths
from diffusion_jax.core.bad_input import BadInputError
from diffusion_jax.core.run_layout import RunLayout
from diffusion_jax.tasks.data.sources import input_pipeline
from diffusion_jax.tasks.evaluation.recognizer_evaluation import (
    verification_json,
    verify_recognizers,
)
from diffusion_jax.tasks.evaluation.recognizer_training import (
    check_same_identities,
    generated_data_config,
)
from diffusion_jax.tasks.evaluation.sampler_comparison import (
    BETTER,
    FAITHFULNESS_METRICS,
    QUALITY_METRICS,
    SamplerComparison,
    SamplerSetting,
    check_sizes,
    parse_setting,
    parse_setting_list,
    parse_settings,
    sampling_config,
)
from diffusion_jax.tasks.generation import manifest

RESULTS_FILE, FIGURE_FILE = "sampler_sweep.json", "sampler_sweep.png"
# What a ratio setting's generation changes in the workdir's config, besides output_dir.
SAMPLE_FIELDS = ("sample.sampler", "sample.num_steps", "sample.guidance_scale")
FIELD = "config.sampler_sweep"
# The figure's panels: (measure, axis label).
PANELS = (
    ("judge_similarity_mean", "judge similarity to the source (higher: better)"),
    ("judge_rank1", "judge rank-1 identification (higher: better)"),
    ("judge_diversity", "judge diversity within identity"),
    ("judge_frechet_distance", "judge Frechet distance to real (lower: better)"),
)


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    """config.sampler_sweep, parsed: the settings measured (the reference among them), the noise
    seeds (every setting uses the first, the reference every one), the ratio settings and the
    verification set of their ratio (None without ratio settings)."""

    settings: tuple[SamplerSetting, ...]
    reference: SamplerSetting
    noise_seeds: tuple[int, ...]
    ratio_settings: tuple[SamplerSetting, ...]
    ratio_set: str | None

    def runs(self) -> list[tuple[SamplerSetting, int]]:
        """(setting, noise seed) of every measurement: each setting at the first seed, then the
        reference at the others."""
        first, *others = self.noise_seeds
        return [(s, first) for s in self.settings] + [(self.reference, s) for s in others]


def _ratio_set(config: ml_collections.ConfigDict) -> str:
    if config.sampler_sweep.ratio_set:
        return config.sampler_sweep.ratio_set
    validation = [s for s in config.evaluate.verification_sets if s.startswith("validation@")]
    if not validation:
        raise BadInputError(
            f"{FIELD}.ratio_set",
            "empty, and config.evaluate.verification_sets "
            f"{tuple(config.evaluate.verification_sets)} has no validation@N entry to default "
            "to; name the verification set of the ratio",
        )
    return validation[0]


def sweep_plan(config: ml_collections.ConfigDict) -> SweepPlan:
    """The plan of config.sampler_sweep; refuses what it cannot run, naming the key and entry."""
    sweep, num_timesteps = config.sampler_sweep, config.diffusion.num_timesteps
    settings = parse_settings(sweep.settings, sweep.guidance_scales, num_timesteps, FIELD)
    reference = parse_setting(sweep.reference, num_timesteps, f"{FIELD}.reference")
    if reference not in settings:
        settings.append(reference)
    seeds = tuple(sweep.noise_seeds)
    if (
        len(seeds) < 2
        or len(set(seeds)) < len(seeds)
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)
    ):
        raise BadInputError(
            f"{FIELD}.noise_seeds",
            f"{seeds}: at least 2 distinct whole numbers >= 0, please (the reference is drawn "
            "from each, for the noise estimate)",
        )
    check_sizes(config, sweep.identities, sweep.samples_per_identity)
    ratio_settings = parse_setting_list(
        sweep.ratio_settings, num_timesteps, f"{FIELD}.ratio_settings"
    )
    return SweepPlan(
        settings=tuple(settings),
        reference=reference,
        noise_seeds=seeds,
        ratio_settings=tuple(ratio_settings),
        ratio_set=_ratio_set(config) if ratio_settings else None,
    )


def _run_name(setting: SamplerSetting, seed: int) -> str:
    return f"{setting.name}_seed{seed}"


def _measure(
    config: ml_collections.ConfigDict, workdir: str, layout: RunLayout, plan: SweepPlan
) -> tuple[dict[tuple[SamplerSetting, int], dict], dict]:
    """({(setting, seed): {"metrics", "measured_now"}}, what they depend on): each run of the
    plan measured, or read back when measured before with the same inputs."""
    sweep = config.sampler_sweep
    comparison = SamplerComparison(
        config,
        workdir,
        parallel.make_mesh(config.mesh),
        sweep.identities,
        sweep.samples_per_identity,
    )
    runs = plan.runs()
    # Decided for every run before any is written, so that all processes agree.
    kept = {}
    for setting, seed in runs:
        inputs = manifest.as_json({"setting": setting.label, "seed": seed, **comparison.inputs})
        record = paths.read_json_if_exists(layout.sampler_sweep.quality(_run_name(setting, seed)))
        kept[setting, seed] = (inputs, record if record and record["inputs"] == inputs else None)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("sampler_sweep: quality records read")
    measured = {}
    for index, (setting, seed) in enumerate(runs):
        inputs, record = kept[setting, seed]
        measured_now = record is None
        if measured_now:
            record = {"inputs": inputs, "metrics": comparison.measure(setting, seed)}
            if jax.process_index() == 0:
                paths.write_json_atomically(
                    layout.sampler_sweep.quality(_run_name(setting, seed)), manifest.as_json(record)
                )
        metrics = record["metrics"]
        logging.info(
            "Sampler sweep %d/%d: %s, seed %d%s: judge similarity %.4f, rank-1 %.3f, diversity "
            "%.4f, Frechet distance %.4f, %.1f s.",
            index + 1,
            len(runs),
            setting.label,
            seed,
            "" if measured_now else " (measured before)",
            metrics["judge_similarity_mean"],
            metrics["judge_rank1"],
            metrics["judge_diversity"],
            metrics["judge_frechet_distance"],
            metrics["sampling_seconds"],
        )
        measured[setting, seed] = {"metrics": metrics, "measured_now": measured_now}
    return measured, comparison.inputs


def noise_estimate(plan: SweepPlan, measured: dict) -> dict:
    """The reference's measures at each noise seed and their spread (max - min; with two seeds
    the difference): how much a measure moves with x_T alone."""
    per_seed = {}
    for seed in plan.noise_seeds:
        for metric, value in measured[plan.reference, seed]["metrics"].items():
            per_seed.setdefault(metric, []).append(value)
    return {
        "setting": plan.reference.label,
        "seeds": list(plan.noise_seeds),
        "per_seed": per_seed,
        "spread": {metric: max(values) - min(values) for metric, values in per_seed.items()},
    }


def _ratio(
    config: ml_collections.ConfigDict, workdir: str, layout: RunLayout, plan: SweepPlan
) -> tuple[list[dict], dict]:
    """(per ratio setting its dataset, recogniser and ratio on plan.ratio_set, the verification
    of every recogniser)."""
    if not plan.ratio_settings:
        return [], {}
    sweep = layout.sampler_sweep
    generated, runs = {}, {}
    for setting in plan.ratio_settings:
        generation = sampling_config(config, setting)
        generation.generate.output_dir = str(sweep.generated / setting.name)
        logging.info("Sampler sweep: the dataset of %s.", setting.label)
        generated[setting] = generate_once(
            generation,
            workdir,
            sweep.cost(f"generation_{setting.name}"),
            SAMPLE_FIELDS,
            f"delete {generation.generate.output_dir} to generate it anew.",
        )
        data = generated_data_config(config, generated[setting]["out_dir"])
        check_same_identities(config, {"synthetic": data})
        runs[setting.name] = (config, data)
    trained = train_synthetic_recognizers(sweep, runs)
    verified = ml_collections.ConfigDict(config.to_dict())
    verified.evaluate.verification_sets = (plan.ratio_set,)
    recognizers = {REAL: str(layout.recognizer(REAL).export_dir)} | {
        name: t["recognizer"] for name, t in trained.items()
    }
    verification = verify_recognizers(verified, recognizers, parallel.make_mesh(config.mesh))
    results = []
    for setting in plan.ratio_settings:
        name = setting.name
        results.append(
            {
                **setting.to_json(),
                "generation": generated[setting],
                "recognizer": trained[name]["recognizer"],
                "trained_in_this_run": trained[name]["trained_now"],
                "recognizer_seconds": trained[name]["seconds"],
                "recognizer_steps": recognizer_steps(trained[name]["recognizer"]),
                "images": trained[name]["images"],
                **against_real(verification, name, config.recognizer.seed)[plan.ratio_set],
            }
        )
    return results, verification


def _settings_results(plan: SweepPlan, measured: dict, noise: dict) -> list[dict]:
    """Per setting (at the first noise seed) its measures, and for each quality measure whether
    it lies within the reference's noise, |value - reference| <= the reference's spread, and
    whether it is no worse than the reference beyond that noise, (value - reference) x BETTER
    >= -spread."""
    seed = plan.noise_seeds[0]
    reference = measured[plan.reference, seed]["metrics"]
    results = []
    for setting in plan.settings:
        metrics = measured[setting, seed]["metrics"]
        results.append(
            {
                **setting.to_json(),
                "reference": setting == plan.reference,
                "noise_seed": seed,
                "measured_in_this_run": measured[setting, seed]["measured_now"],
                "metrics": metrics,
                "within_reference_noise": {
                    metric: bool(
                        abs(metrics[metric] - reference[metric]) <= noise["spread"][metric]
                    )
                    for metric in QUALITY_METRICS
                },
                "no_worse_than_reference": {
                    metric: bool(
                        (metrics[metric] - reference[metric]) * BETTER[metric]
                        >= -noise["spread"][metric]
                    )
                    for metric in QUALITY_METRICS
                },
            }
        )
    return results


def _cheapest(settings: list[dict], passes) -> dict | None:
    return min(
        (s for s in settings if passes(s)),
        key=lambda s: (s["passes_per_image"], s["label"]),
        default=None,
    )


def headline(settings: list[dict], reference: str) -> dict:
    """The cheapest settings (fewest passes per image): the one whose every quality measure lies
    within the reference's noise; the one no worse than the reference beyond its noise on every
    measure; and the one no worse on the FAITHFULNESS_METRICS (identity consistency and Frechet
    distance), however much diversity it loses. The first as a sentence too."""
    within = [s for s in settings if all(s["within_reference_noise"].values())]
    cheapest = _cheapest(within, lambda s: True)
    if cheapest is None:  # not even the reference: a spread of NaN
        answer = f"No setting is within the noise of the reference {reference}."
    else:
        answer = (
            f"{cheapest['label']} ({cheapest['passes_per_image']} denoiser passes per image) is "
            f"the cheapest setting whose every quality measure lies within the noise of the "
            f"reference {reference}."
        )
    no_worse = _cheapest(settings, lambda s: all(s["no_worse_than_reference"].values()))
    faithful = _cheapest(
        settings,
        lambda s: all(s["no_worse_than_reference"][m] for m in FAITHFULNESS_METRICS),
    )
    return {
        "reference": reference,
        "settings_within_reference_noise": [s["label"] for s in within],
        "cheapest_within_reference_noise": cheapest["label"] if cheapest else None,
        "cheapest_no_worse_than_reference": no_worse["label"] if no_worse else None,
        "cheapest_no_worse_in_identity_and_frechet": faithful["label"] if faithful else None,
        "answer": answer,
    }


def sweep_figure(results: dict) -> plt.Figure:
    """The quality measures against the denoiser passes per image (log axis): one panel per
    measure, one colour per sampler, a solid line and filled markers without guidance (scale 0
    or 1), a dashed or dotted line and open markers per guidance scale; the star is the
    reference, the band its value +- its noise spread."""
    settings, noise = results["settings"], results["noise"]
    reference = next(s for s in settings if s["reference"])
    samplers = list(dict.fromkeys(s["sampler"] for s in settings))
    colours = {name: plt.get_cmap("tab10")(index % 10) for index, name in enumerate(samplers)}
    guided_styles = iter(("--", ":", "-.") * 10)
    styles = {
        scale: "-" if scale in (0, 1) else next(guided_styles)
        for scale in sorted({s["guidance_scale"] for s in settings})
    }
    passes = [s["passes_per_image"] for s in settings]
    within_a_decade = max(passes) < 10 * min(passes)  # then label the minor ticks too
    plain = ticker.FuncFormatter(lambda value, _: f"{value:g}")
    figure, axes = plt.subplots(2, 2, figsize=(10.0, 7.6))
    for axis, (metric, label) in zip(axes.flat, PANELS):
        centre, spread = reference["metrics"][metric], noise["spread"][metric]
        axis.axhspan(centre - spread, centre + spread, color="0.5", alpha=0.2, linewidth=0)
        for sampler in samplers:
            for scale, style in styles.items():
                line = sorted(
                    (
                        s
                        for s in settings
                        if s["sampler"] == sampler and s["guidance_scale"] == scale
                    ),
                    key=lambda s: s["passes_per_image"],
                )
                if line:
                    axis.plot(
                        [s["passes_per_image"] for s in line],
                        [s["metrics"][metric] for s in line],
                        style,
                        marker="o",
                        markersize=4.5,
                        color=colours[sampler],
                        markerfacecolor="white" if style != "-" else colours[sampler],
                        label=f"{sampler}, guidance {scale:g}",
                    )
        axis.plot([reference["passes_per_image"]], [centre], "*", color="black", markersize=11)
        axis.set_xscale("log")
        axis.xaxis.set_major_formatter(plain)
        axis.xaxis.set_minor_formatter(plain if within_a_decade else ticker.NullFormatter())
        axis.set_xlabel("denoiser passes per image")
        axis.set_ylabel(label, fontsize=8)
        axis.grid(True, linestyle="--", linewidth=0.5)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    handles.append(plt.Rectangle((0, 0), 1, 1, color="0.5", alpha=0.2))
    labels.append(
        f"reference {reference['label']} (star) +- its spread over noise seeds "
        f"{', '.join(str(s) for s in noise['seeds'])}"
    )
    figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    figure.suptitle(
        f"Sample quality against denoiser passes: {results['identities']} identities x "
        f"{results['samples_per_identity']} samples, the same x_T under every setting",
        fontsize=10,
    )
    figure.tight_layout(rect=(0, 0.1, 1, 0.97))
    return figure


def _number(value: float | None, form: str) -> str:
    return "n/a" if value is None or not np.isfinite(value) else format(value, form)


def table(results: dict) -> str:
    """The settings' measures (and the noise row), then the ratio settings', as plain text."""
    rows = [
        ("setting", "passes", "judge sim", "rank-1", "cond sim", "diversity", "FD", "s", "in noise")
    ]

    def row(label, passes, m, within):
        return (
            label,
            passes,
            _number(m["judge_similarity_mean"], ".4f"),
            _number(m["judge_rank1"], ".3f"),
            _number(m["condition_similarity_mean"], ".4f"),
            _number(m["judge_diversity"], ".4f"),
            _number(m["judge_frechet_distance"], ".4f"),
            _number(m["sampling_seconds"], ".1f"),
            within,
        )

    for s in results["settings"]:
        within = f"{sum(s['within_reference_noise'].values())}/{len(QUALITY_METRICS)}"
        label = s["label"] + (" (ref)" if s["reference"] else "")
        rows.append(row(label, str(s["passes_per_image"]), s["metrics"], within))
    rows.append(row("noise (spread)", "", results["noise"]["spread"], ""))
    text = text_table(rows)
    if results["ratio"]:
        ratio_rows = [
            ("ratio setting", "passes", "kept", "judged", "gen s", "real", "syn", "ratio")
        ]
        for r in results["ratio"]:
            ratio_rows.append(
                (
                    r["label"],
                    str(r["passes_per_image"]),
                    str(r["generation"]["images"]),
                    str(r["generation"]["judged_images"]),
                    _number(r["generation"]["seconds"], ".0f"),
                    f"{100 * r['real_accuracy']:.2f}",
                    f"{100 * r['synthetic_accuracy']:.2f}",
                    _number(r["ratio_above_chance"], ".3f"),
                )
            )
        text += f"\n\nOn {results['ratio_set']}:\n" + text_table(ratio_rows)
    return text


def run_sweep(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """--mode=sampler_sweep (module docstring); returns the results written to
    sampler_sweep.json."""
    plan = sweep_plan(config)  # refuses bad settings before anything is read
    layout = check_workdir(config, workdir)
    workdir = str(layout.root)
    input_pipeline.ensure_prepared(config.data)
    logging.info(
        "Sampler sweep in %s: settings %s, reference %s at seeds %s; ratio settings %s.",
        layout.sampler_sweep.root,
        [s.label for s in plan.settings],
        plan.reference.label,
        plan.noise_seeds,
        [s.label for s in plan.ratio_settings],
    )
    measured, inputs = _measure(config, workdir, layout, plan)
    noise = noise_estimate(plan, measured)
    settings = _settings_results(plan, measured, noise)
    ratio, verification = _ratio(config, workdir, layout, plan)
    results = {
        **run_record(),
        "workdir": workdir,
        "identities": inputs["identities"],
        "samples_per_identity": inputs["samples_per_identity"],
        "real_images_per_identity": inputs["real_images_per_identity"],
        "batch_size": inputs["batch_size"],
        "networks": inputs["networks"],
        "reference": plan.reference.label,
        "noise_seeds": list(plan.noise_seeds),
        "headline": headline(settings, plan.reference.label),
        "settings": settings,
        "noise": noise,
        "ratio_set": plan.ratio_set,
        "ratio": ratio,
        "verification": verification_json(verification),
        "config": {
            "sampler_sweep": config.sampler_sweep.to_dict(),
            "sample": config.sample.to_dict(),
            "recognizer": config.recognizer.to_dict(),
            "generate_seed": config.generate.seed,
        },
    }
    logging.info("Sampler sweep:\n%s", table(results))
    logging.info("Sampler sweep: %s", results["headline"]["answer"])
    return write_results(
        results,
        config.sampler_sweep.out_dir,
        layout.sampler_sweep.root,
        (RESULTS_FILE, FIGURE_FILE),
        sweep_figure,
    )


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    return run_sweep(config, workdir)
