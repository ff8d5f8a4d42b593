"""Probe: do other timestep spacings move the few-step frontier? DPM-Solver++(2M) at 8 and 10
steps, the sampler sweep's quality measures on its 48 identities x 4 samples and x_T, with the
timesteps of each named spacing ("linspace", "leading", or the probe's own "logsnr" and
"trailing_to_zero"). Writes spacing_probe.json in the current directory.

    python docs/experiments/2026-12-06-samplers/spacing_probe.py linspace,leading
"""

import json
import sys

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))

from diffusion_jax.core import parallel
from diffusion_jax.core.diffusion import samplers
from diffusion_jax.tasks.evaluation.sampler_comparison import SamplerComparison, SamplerSetting
from tests.helpers import load_config


def logsnr_timesteps(schedule, num_steps):
    a = np.asarray(schedule.sqrt_alphas_cumprod, np.float64)
    s = np.asarray(schedule.sqrt_one_minus_alphas_cumprod, np.float64)
    lam = np.log(a) - np.log(s)  # decreasing in t
    T = len(lam)
    targets = np.linspace(lam[T - 1], lam[0], num_steps)
    ts = [int(np.argmin(np.abs(lam - x))) for x in targets]
    return np.array(ts, np.int32)


SPACING = {}
orig_timesteps = samplers.sampling_timesteps
from diffusion_jax.core.diffusion.schedules import schedule_from_config

SCHED = schedule_from_config("cosine", 1000)


def patched(num_timesteps, num_steps, spacing="trailing"):
    if SPACING.get("value") == "logsnr":
        return logsnr_timesteps(SCHED, num_steps)
    if SPACING.get("value") == "trailing_to_zero":  # trailing, its last step at t = 0
        ts = orig_timesteps(num_timesteps, num_steps, "trailing")
        return np.concatenate([ts[:-1], [0]]).astype(np.int32)
    return orig_timesteps(num_timesteps, num_steps, SPACING.get("value", spacing))


samplers.sampling_timesteps = patched

config = load_config("demo")
config.data.data_dir = "/work/runs/tfds_fresh2"
mesh = parallel.make_mesh(config.mesh)
comp = SamplerComparison(config, "/work/runs/demo_fresh2", mesh, 48, 4)
out = {}
for spacing in sys.argv[1].split(","):
    for steps in (8, 10):
        SPACING["value"] = spacing
        comp._draw_fns.clear()
        setting = SamplerSetting("dpm_solver_pp_2m", steps, 1.0)
        m = comp.measure(setting, 0)
        key = f"{spacing}:{steps}"
        out[key] = {
            k: m[k]
            for k in (
                "judge_similarity_mean",
                "judge_rank1",
                "judge_diversity",
                "judge_frechet_distance",
            )
        }
        print(key, out[key], patched(1000, steps), flush=True)
json.dump(out, open("spacing_probe.json", "w"), indent=1)
