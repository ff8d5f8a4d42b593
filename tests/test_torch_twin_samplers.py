"""The PyTorch twin's samplers (`diffusion_jax.torch_twins.unet.make_sampler`) against the project's
JAX sampler (`make_sample_fn`): the same weights and x_T give the same samples, for every sampler
the twin has (DDIM at eta = 0, DPM-Solver++(2M) and (3M)) and every prediction type, with
and without guidance and clipping. The twin gets its architecture, schedule and timesteps from
`benchmarks/unet_throughput.py`'s `project_constants`, as the benchmark hands them over. Skips
without torch."""

import importlib
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from diffusion_jax.core.diffusion.schedules import schedule_from_config
from diffusion_jax.tasks.conditional_diffusion.denoiser import unet_builder
from diffusion_jax.tasks.conditional_diffusion.sample_functions import make_sample_fn
from tests.helpers import REPO_ROOT, load_config

BATCH = 2

# (sampler, prediction type, guidance scale, clip_x0, steps): the demo preset's DPM-Solver++(2M)
# with v-prediction unguided, base's guided DDIM with clipping, and the remaining prediction type;
# DPM-Solver++(3M) with 6 steps (orders 1, 2, 3, 3, 2, 1: with 4 steps or fewer it is 2M) and
# 16 (1, 2, 3, ..., 3, 1: from 15 steps on, the step before the last is third order too).
CASES = [
    ("dpm_solver_pp_2m", "v", 1.0, False, 4),
    ("ddim", "eps", 2.0, True, 4),
    ("dpm_solver_pp_2m", "x0", 2.0, True, 4),
    ("dpm_solver_pp_3m", "v", 1.0, False, 6),
    ("dpm_solver_pp_3m", "eps", 2.0, True, 16),
]


@pytest.fixture(scope="module")
def unet_throughput():
    sys.path.insert(0, f"{REPO_ROOT}/benchmarks")
    try:
        yield importlib.import_module("unet_throughput")
    finally:
        sys.path.remove(f"{REPO_ROOT}/benchmarks")


def _config(
    sampler: str, prediction_type: str, guidance_scale: float, clip_x0: bool, num_steps: int
):
    """The unit tests' tiny pixel-space UNet (32x32, space-to-depth stem), `num_steps` steps."""
    config = load_config("test")
    config.sample.sampler = sampler
    config.sample.eta = 0.0
    config.sample.num_steps = num_steps
    config.sample.guidance_scale = guidance_scale
    config.sample.clip_x0 = clip_x0
    config.diffusion.prediction_type = prediction_type
    return config


@pytest.fixture(scope="module")
def network():
    """The tiny UNet in eval mode (the cases differ in sampling, not in architecture), with random
    weights and its zero-initialised layers perturbed, so that every input matters."""
    model = unet_builder(_config(*CASES[0]))(nnx.Rngs(0))
    model.eval()
    graphdef, params = nnx.split(model, nnx.Param)
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda p: p + 0.1 * rng.normal(size=p.shape).astype(np.float32), params)
    flat = {path: np.asarray(value[...]) for path, value in nnx.to_flat_state(params)}
    return graphdef, params, flat


@pytest.mark.parametrize(
    ("sampler", "prediction_type", "guidance_scale", "clip_x0", "num_steps"), CASES
)
def test_twin_sampler_matches_the_jax_sampler(
    unet_throughput, network, sampler, prediction_type, guidance_scale, clip_x0, num_steps
):
    torch = pytest.importorskip("torch")
    from diffusion_jax.torch_twins import unet as torch_unet

    config = _config(sampler, prediction_type, guidance_scale, clip_x0, num_steps)
    constants = unet_throughput.project_constants(config)
    graphdef, params, flat_params = network
    schedule = schedule_from_config(config.diffusion.beta_schedule, config.diffusion.num_timesteps)
    cond = np.random.default_rng(2).normal(size=(BATCH, config.condition.dim)).astype(np.float32)
    cond /= np.linalg.norm(cond, axis=-1, keepdims=True)
    rng = jax.random.key(3)
    jax_samples = np.asarray(make_sample_fn(graphdef, schedule, config)(params, cond, rng))
    # make_sample_fn's x_T for one key: normal(split(rng)[0], [B, H, W, C]).
    architecture = constants["architecture"]
    x_T = jax.random.normal(
        jax.random.split(rng)[0],
        (BATCH, architecture["image_size"], architecture["image_size"], 3),
    )

    twin = torch_unet.TorchUNet(**architecture)
    torch_unet.load_jax_params(twin, flat_params)
    sample = torch_unet.make_sampler(
        twin, torch.tensor(constants["alphas_cumprod"]), constants["timesteps"], config
    )
    torch_samples = sample(
        torch.from_numpy(cond), torch.from_numpy(np.array(x_T)).permute(0, 3, 1, 2)
    )
    assert sample.sampler == sampler and sampler in unet_throughput.TWIN_SAMPLERS
    assert set(unet_throughput.TWIN_SAMPLERS) == set(torch_unet.SAMPLERS)
    assert len(constants["timesteps"]) == num_steps and constants["timesteps"][0] == 99
    assert np.abs(jax_samples).max() > 0.1  # not a degenerate sample
    np.testing.assert_allclose(
        torch_samples.permute(0, 2, 3, 1).numpy(), jax_samples, atol=2e-4, rtol=1e-3
    )


def test_twin_refuses_samplers_it_cannot_reproduce():
    torch = pytest.importorskip("torch")
    from diffusion_jax.torch_twins import unet as torch_unet

    config = _config("ddim", "eps", 1.0, False, 4)
    twin = torch_unet.TorchUNet(
        image_size=8, base_channels=8, channel_mults=(1,), num_res_blocks=1,
        attention_resolutions=(), head_channels=8, cond_dim=4, num_groups=4,
    )  # fmt: skip
    alphas_cumprod = torch.linspace(0.99, 0.01, 10)
    config.sample.eta = 1.0
    with pytest.raises(ValueError, match="eta=0 only"):
        torch_unet.make_sampler(twin, alphas_cumprod, [9, 4], config)
    config.sample.sampler = "ddpm"
    with pytest.raises(ValueError, match="samples with"):
        torch_unet.make_sampler(twin, alphas_cumprod, [9, 4], config)
