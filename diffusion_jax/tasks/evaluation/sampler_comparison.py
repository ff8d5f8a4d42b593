"""Sample quality against the denoiser's cost: the same identities, from the same noise, under
several sampler settings (`--mode=sampler_sweep`, docs/samplers.md).

A setting is a sampler, its steps and a classifier-free guidance scale, written
"sampler:steps@guidance" ("ddim:50@1"). Its cost is the denoiser passes per image: the steps
times 1 when the guidance scale is 0 or 1 (one forward pass per step,
`guidance.guided_model_output`), times 2 otherwise (the conditional and the unconditional
branch). DDPM runs all T steps, so it is written "ddpm:T".

The identities are the first N training identities. Identity i is conditioned on c_i = E(r_i),
the conditioning encoder's embedding of its first real photo r_i, as `--mode=evaluate_samples`
conditions it; K images of each are drawn with one key per batch (`generate_for_conditions`), so
under every setting image k of identity i starts from the same x_T (and DDPM's step noise is the
same too): the settings differ in the sampler only. Under the judge encoder J (the workdir's, an
independent network, `identity_consistency`):

    judge_similarity_mean      mean cos(J(x_ik), J(r_i)): does a sample show its identity?
    judge_rank1                fraction of samples whose most similar source (under J, among the
                               N) is their own
    condition_similarity_mean  mean cos(E(x_ik), c_i), the conditioning encoder's own view
    judge_diversity            embedding diversity within identity (`dataset_metrics`): mean over
                               identities of the mean over pairs of its samples of
                               1 - cos(J(x_ik), J(x_il)); 0 when an identity's samples look alike
    judge_frechet_distance     Frechet distance (`frechet_distance`) between J of all N K samples
                               and J of the first R real images of the same identities
                               (config.evaluate.real_images_per_identity)
    sampling_seconds           wall seconds to draw and decode the N K images, compilation
                               excluded (compiled ahead of time); seconds_per_image

Numbers are comparable between settings of one comparison only: the same identities, photos,
judge and sample counts (a Frechet distance depends on the number of samples).
"""

import dataclasses
import time

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from diffusion_jax.core.bad_input import BadInputError
from diffusion_jax.core.diffusion.samplers import get_sampler
from diffusion_jax.core.diffusion.schedules import schedule_from_config
from diffusion_jax.tasks.conditional_diffusion.denoiser import unet_graphdef
from diffusion_jax.tasks.conditional_diffusion.sample_functions import make_sample_fn
from diffusion_jax.tasks.data.sources import input_pipeline
from diffusion_jax.tasks.evaluation.dataset_metrics import embedding_diversity
from diffusion_jax.tasks.evaluation.frechet_distance import frechet_distance
from diffusion_jax.tasks.evaluation.identity_consistency import (
    consistency_of_embeddings,
    generate_for_conditions,
)
from diffusion_jax.tasks.evaluation.sample_report import images_per_label
from diffusion_jax.tasks.generation.generation_models import GenerationModels, judge_directory
from diffusion_jax.tasks.latent.diffusion_space import diffusion_shape

# The quality measures of a setting (module docstring): higher is better for the first three,
# lower for the Frechet distance; diversity is wanted, but not at the cost of the identity.
QUALITY_METRICS = (
    "judge_similarity_mean",
    "judge_rank1",
    "condition_similarity_mean",
    "judge_diversity",
    "judge_frechet_distance",
)
# The direction in which each quality measure is better: +1 higher, -1 lower.
BETTER = {
    "judge_similarity_mean": 1,
    "judge_rank1": 1,
    "condition_similarity_mean": 1,
    "judge_diversity": 1,
    "judge_frechet_distance": -1,
}
# The measures of faithfulness: identity consistency under the judge and the distance to real
# faces (diversity is what few steps trade against them).
FAITHFULNESS_METRICS = ("judge_similarity_mean", "judge_rank1", "judge_frechet_distance")
# Raised whenever `measure` computes anything differently, so that kept measures are remeasured.
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class SamplerSetting:
    """A sampler, its steps and a guidance scale: `label` "ddim:50@2", `name` "ddim_50_g2" (for
    file names)."""

    sampler: str
    num_steps: int
    guidance_scale: float

    @property
    def guided(self) -> bool:
        """Two denoiser passes per step: the scale is neither 0 nor 1."""
        return self.guidance_scale not in (0, 1)

    @property
    def passes_per_image(self) -> int:
        return self.num_steps * (2 if self.guided else 1)

    @property
    def label(self) -> str:
        return f"{self.sampler}:{self.num_steps}@{self.guidance_scale:g}"

    @property
    def name(self) -> str:
        return f"{self.sampler}_{self.num_steps}_g{self.guidance_scale:g}"

    def to_json(self) -> dict:
        return {
            "label": self.label,
            "name": self.name,
            "sampler": self.sampler,
            "num_steps": self.num_steps,
            "guidance_scale": self.guidance_scale,
            "guided": self.guided,
            "passes_per_image": self.passes_per_image,
        }


def _entries(text: str, field: str, what: str) -> list[str]:
    """The comma-separated entries of `text`, stripped; an empty one or a repeated one is
    refused, naming it."""
    entries = [entry.strip() for entry in text.split(",")] if text.strip() else []
    for index, entry in enumerate(entries):
        if not entry:
            raise BadInputError(field, f"entry {index + 1} of {text!r} is empty; write {what}")
        if entry in entries[:index]:
            raise BadInputError(field, f"entry {entry!r} is listed twice")
    return entries


def _sampler_and_steps(entry: str, num_timesteps: int, field: str, what: str) -> tuple[str, int]:
    """("ddim", 50) of "ddim:50"; refuses, naming `entry`, an unknown sampler and steps outside
    [1, T] (DDPM: other than T)."""
    sampler, colon, steps = entry.partition(":")
    sampler, steps = sampler.strip(), steps.strip()
    if not colon or not sampler or not steps:
        raise BadInputError(field, f"entry {entry!r}: write {what}")
    try:
        get_sampler(sampler)
    except ValueError as unknown:
        raise BadInputError(field, f"entry {entry!r}: {unknown}") from None
    if sampler == "ddpm" and steps != str(num_timesteps):
        raise BadInputError(
            field,
            f"entry {entry!r}: DDPM runs all diffusion.num_timesteps={num_timesteps} steps; "
            f"write ddpm:{num_timesteps}",
        )
    if not steps.isdigit() or not 1 <= int(steps) <= num_timesteps:
        raise BadInputError(
            field,
            f"entry {entry!r}: the steps must be a whole number in [1, {num_timesteps}] "
            f"(diffusion.num_timesteps)",
        )
    return sampler, int(steps)


def _guidance_scale(text: str, entry: str, field: str) -> float:
    try:
        scale = float(text)
    except ValueError:
        scale = -1.0
    if not np.isfinite(scale) or scale < 0:
        raise BadInputError(
            field, f"entry {entry!r}: the guidance scale must be a number >= 0, got {text!r}"
        )
    return scale


def parse_settings(
    settings: str, guidance_scales: str, num_timesteps: int, field: str = "config.sampler_sweep"
) -> list[SamplerSetting]:
    """Every "sampler:steps" of `settings` with every scale of `guidance_scales` ("1,2"), in the
    order given (settings first); an entry "sampler:steps@scale" is run at that scale only (DDPM's
    1,000 steps with guidance cost 2,000 passes per image). An entry that is not understood is
    refused, naming it."""
    scales = [
        _guidance_scale(entry, entry, f"{field}.guidance_scales")
        for entry in _entries(guidance_scales, f"{field}.guidance_scales", "a number")
    ]
    if len(set(scales)) < len(scales):
        raise BadInputError(f"{field}.guidance_scales", f"{guidance_scales!r} repeats a scale")
    what = "sampler:steps or sampler:steps@guidance"
    result = []
    for entry in _entries(settings, f"{field}.settings", what):
        if "@" in entry:
            result.append(parse_setting(entry, num_timesteps, f"{field}.settings"))
            continue
        sampler, steps = _sampler_and_steps(entry, num_timesteps, f"{field}.settings", what)
        result.extend(SamplerSetting(sampler, steps, scale) for scale in scales)
    if not result or not scales:
        empty = "settings" if not result else "guidance_scales"
        raise BadInputError(f"{field}.{empty}", "is empty; list at least one")
    if len(set(result)) < len(result):
        raise BadInputError(f"{field}.settings", f"{settings!r} lists a setting twice")
    return result


def parse_setting(text: str, num_timesteps: int, field: str) -> SamplerSetting:
    """The setting "sampler:steps@guidance" ("ddim:50@1"), refused naming it if not understood."""
    what = "sampler:steps@guidance, e.g. 'ddim:50@1'"
    pair, at, scale = text.strip().rpartition("@")
    if not at:
        raise BadInputError(field, f"entry {text!r}: write {what}")
    sampler, steps = _sampler_and_steps(pair, num_timesteps, field, what)
    return SamplerSetting(sampler, steps, _guidance_scale(scale.strip(), text, field))


def parse_setting_list(text: str, num_timesteps: int, field: str) -> list[SamplerSetting]:
    """The settings of "ddim:50@1,dpm_solver_pp_2m:8@1" (`parse_setting`; "" is none)."""
    what = "sampler:steps@guidance"
    return [parse_setting(e, num_timesteps, field) for e in _entries(text, field, what)]


def sampling_config(
    config: ml_collections.ConfigDict, setting: SamplerSetting
) -> ml_collections.ConfigDict:
    """`config` sampling with `setting`: sample.sampler, num_steps and guidance_scale changed."""
    changed = ml_collections.ConfigDict(config.to_dict())
    changed.sample.sampler = setting.sampler
    changed.sample.num_steps = setting.num_steps
    changed.sample.guidance_scale = float(setting.guidance_scale)
    return changed


def quality_of_embeddings(
    judged_samples: np.ndarray,
    self_graded: np.ndarray,
    judged_real: np.ndarray,
    conditions: np.ndarray,
) -> dict:
    """The measures of the module docstring, and the rest of `identity_consistency`'s, from unit
    embeddings: the judge's of the samples [N, K, D_J] and of the real images [N, R, D_J] (the
    source first, then the second image), the conditioning encoder's of the samples [N, K, D] and
    the conditions [N, D]."""
    num_identities, samples_per_identity = judged_samples.shape[:2]
    consistency = consistency_of_embeddings(
        judged_samples, judged_real[:, 0], judged_real[:, 1], self_graded, conditions
    ).to_json()
    del consistency["num_identities"], consistency["samples_per_identity"]  # the comparison's
    flat = judged_samples.reshape(num_identities * samples_per_identity, -1)
    return {
        **consistency,
        "judge_diversity": embedding_diversity(
            flat, np.repeat(np.arange(num_identities), samples_per_identity)
        ),
        "judge_frechet_distance": frechet_distance(
            flat, judged_real.reshape(-1, judged_real.shape[-1])
        ),
    }


def check_sizes(
    config: ml_collections.ConfigDict, identities: int, samples_per_identity: int
) -> None:
    """Refuses sizes the measures are not defined for, naming the key."""
    if identities < 2:
        raise BadInputError(
            "config.sampler_sweep.identities", f"{identities}: at least 2, please (impostors)"
        )
    if samples_per_identity < 2:
        raise BadInputError(
            "config.sampler_sweep.samples_per_identity",
            f"{samples_per_identity}: at least 2, please (pairs within an identity)",
        )
    if config.evaluate.real_images_per_identity < 2:
        raise BadInputError(
            "config.evaluate.real_images_per_identity",
            f"{config.evaluate.real_images_per_identity}: at least 2, please (a source and a "
            "second real image per identity)",
        )


class SamplerComparison:
    """The workdir's diffusion model, encoders and judge (`GenerationModels`), and the first
    `identities` training identities: their first `real_images_per_identity` real images, the
    judge's embeddings of them and the conditions. `measure(setting, seed)` samples and grades.
    Every process must call it alike."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: str,
        mesh: Mesh,
        identities: int,
        samples_per_identity: int,
    ):
        check_sizes(config, identities, samples_per_identity)
        available = input_pipeline.num_train_identities(config.data)
        if identities > available:
            raise BadInputError(
                "config.sampler_sweep.identities",
                f"{identities}, but the training data has {available} identities",
            )
        real_per_identity = config.evaluate.real_images_per_identity
        self.config = config
        self.samples_per_identity = samples_per_identity
        self.batch_size = config.evaluate.batch_size
        self.models = GenerationModels(config, workdir, judge_directory(config, workdir), mesh)
        real = images_per_label(config.data, identities, real_per_identity)
        self.conditions = self.models.conditioning.embed_arrays(
            real[:, 0], description="Conditions"
        )
        self.judged_real = self.models.judge.embed_arrays(
            real.reshape((-1,) + real.shape[2:]), description="Judging real images"
        ).reshape(identities, real_per_identity, -1)
        self.schedule = schedule_from_config(
            config.diffusion.beta_schedule, config.diffusion.num_timesteps
        )
        self._draw_fns = {}
        jax.random.fold_in(jax.random.key(0), 0)  # compiled now, not in the first timing

    @property
    def inputs(self) -> dict:
        """What the measures depend on besides the setting and the seed."""
        return {
            "format_version": FORMAT_VERSION,
            "identities": int(len(self.conditions)),
            "samples_per_identity": self.samples_per_identity,
            "real_images_per_identity": int(self.judged_real.shape[1]),
            "batch_size": self.batch_size,
            "sample": {key: self.config.sample[key] for key in ("eta", "clip_x0", "use_ema")},
            "networks": self.models.identity,
        }

    def _draw_fn(self, setting: SamplerSetting):
        """(cond [B, D], rng) -> images [B, R, R, 3] in [-1, 1] under `setting`, its sampler
        compiled ahead of time and the decoder's compilation warmed up (on zeros), so that no
        sample is drawn twice and no compilation is timed."""
        if setting not in self._draw_fns:
            sample_fn = make_sample_fn(
                unet_graphdef(self.config),
                self.schedule,
                sampling_config(self.config, setting),
            )
            params, space = self.models.params, self.models.space
            cond = np.zeros((self.batch_size, self.conditions.shape[1]), np.float32)
            compiled = sample_fn.lower(params, cond, jax.random.key(0)).compile()
            side, channels = diffusion_shape(self.config)
            zeros = np.zeros((self.batch_size, side, side, channels), np.float32)
            jax.block_until_ready(space.decode(jax.device_put(zeros, compiled.output_shardings)))
            self._draw_fns[setting] = lambda cond, rng: space.decode(compiled(params, cond, rng))
        return self._draw_fns[setting]

    def measure(self, setting: SamplerSetting, seed: int) -> dict:
        """The measures of `setting`'s samples drawn from `jax.random.key(seed)`."""
        draw = self._draw_fn(setting)
        started = time.perf_counter()
        samples = generate_for_conditions(
            draw,
            self.conditions,
            self.samples_per_identity,
            jax.random.key(seed),
            batch_size=self.batch_size,
            description=f"Sampling {setting.label}, seed {seed}",
        )
        seconds = time.perf_counter() - started
        flat = samples.reshape((-1,) + samples.shape[2:])
        shape = samples.shape[:2] + (-1,)
        judged = self.models.judge.embed_arrays(flat, description="Judging samples")
        self_graded = self.models.conditioning.embed_arrays(flat, description="Self-grading")
        return {
            **quality_of_embeddings(
                judged.reshape(shape),
                self_graded.reshape(shape),
                self.judged_real,
                self.conditions,
            ),
            "sampling_seconds": seconds,
            "seconds_per_image": seconds / len(flat),
        }
