"""Diffusion maths as pure functions: schedules, forward process, posterior, losses, samplers
and classifier-free guidance (DDPM, improved DDPM, DDIM, DPM-Solver++)."""

from diffusion_jax.core.diffusion.gaussian import (
    predict_eps_from_x0,
    predict_x0_from_eps,
    q_mean_variance,
    q_posterior_mean_variance,
    q_sample,
)
from diffusion_jax.core.diffusion.guidance import guided_model_output
from diffusion_jax.core.diffusion.losses import LOSS_WEIGHTINGS, diffusion_loss, loss_weight
from diffusion_jax.core.diffusion.parameterization import (
    PREDICTION_TYPES,
    eps_x0_from_v,
    model_output_to_eps_x0,
    training_target,
    v_from_eps_x0,
)
from diffusion_jax.core.diffusion.samplers import (
    SAMPLERS,
    Trajectory,
    ddim_sample,
    ddpm_sample,
    dpm_solver_pp_2m_sample,
    dpm_solver_pp_3m_sample,
    get_sampler,
    make_eps_fn,
    sampling_timesteps,
)
from diffusion_jax.core.diffusion.schedules import (
    BETA_SCHEDULES,
    DiffusionSchedule,
    at_timesteps,
    beta_schedule,
    make_schedule,
    schedule_from_config,
    snr,
)

__all__ = [
    "BETA_SCHEDULES",
    "LOSS_WEIGHTINGS",
    "PREDICTION_TYPES",
    "SAMPLERS",
    "DiffusionSchedule",
    "Trajectory",
    "at_timesteps",
    "beta_schedule",
    "ddim_sample",
    "ddpm_sample",
    "diffusion_loss",
    "dpm_solver_pp_2m_sample",
    "dpm_solver_pp_3m_sample",
    "eps_x0_from_v",
    "get_sampler",
    "guided_model_output",
    "loss_weight",
    "make_eps_fn",
    "make_schedule",
    "model_output_to_eps_x0",
    "predict_eps_from_x0",
    "predict_x0_from_eps",
    "q_mean_variance",
    "q_posterior_mean_variance",
    "q_sample",
    "sampling_timesteps",
    "schedule_from_config",
    "snr",
    "training_target",
    "v_from_eps_x0",
]
