"""PyTorch twin of diffusion_jax's denoiser and of its training and sampling work, the peer that
benchmarks measure JAX against.

`TorchUNet` has the JAX `UNet`'s architecture, parameter count and module and attribute names
(NCHW instead of NHWC), so `load_jax_params` copies a JAX model's weights across and both compute
the same function. `make_train_step` and `make_sampler` do per call the work of
`diffusion_jax.core.training.step.make_train_step` and of
`diffusion_jax.tasks.conditional_diffusion.sample_functions.make_sample_fn` with the deterministic
samplers (`SAMPLERS`: DDIM at eta = 0, DPM-Solver++(2M) and (3M)); given the same weights and
x_T, `make_sampler` returns what the JAX sampler returns (tests/test_torch_twin_samplers.py).
Used by benchmarks/unet_throughput.py and by the UNet tests; it needs the optional `torch` extra.
"""

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

GROUP_NORM_EPSILON = 1e-5


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """[cos(t w_k), sin(t w_k)], w_k = max_period^(-k / (dim/2)): the JAX `sinusoidal_embedding`."""
    half = dim // 2
    frequencies = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    angles = t.float()[:, None] * frequencies[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def group_norm(channels: int, num_groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups, channels, eps=GROUP_NORM_EPSILON)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)


def zero_init(module: nn.Module) -> nn.Module:
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class ResBlock(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, emb_dim: int, *, num_groups: int, dropout: float
    ):
        super().__init__()
        self.norm_in = group_norm(in_channels, num_groups)
        self.conv_in = conv3x3(in_channels, out_channels)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels)
        self.norm_out = group_norm(out_channels, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv_out = zero_init(conv3x3(out_channels, out_channels))
        self.skip = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1)
            if in_channels != out_channels
            else None
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(F.silu(self.norm_in(x)))
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm_out(h) * (1 + scale) + shift
        h = self.conv_out(self.dropout(F.silu(h)))
        return h + (x if self.skip is None else self.skip(x))


class AttentionBlock(nn.Module):
    def __init__(
        self, channels: int, head_channels: int, *, token_dim: int | None, num_groups: int
    ):
        super().__init__()
        self.num_heads = channels // head_channels
        self.norm = group_norm(channels, num_groups)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.token_kv = nn.Linear(token_dim, 2 * channels) if token_dim is not None else None
        self.proj_out = zero_init(nn.Linear(channels, channels))

    def _split_heads(self, a: torch.Tensor) -> torch.Tensor:
        batch, length, _ = a.shape
        return a.reshape(batch, length, self.num_heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        batch, channels, height, width = x.shape
        positions = self.norm(x).flatten(2).transpose(1, 2)
        q, k, v = map(self._split_heads, self.qkv(positions).chunk(3, dim=-1))
        if tokens is not None:
            token_k, token_v = map(self._split_heads, self.token_kv(tokens).chunk(2, dim=-1))
            k = torch.cat([k, token_k], dim=2)
            v = torch.cat([v, token_v], dim=2)
        attended = F.scaled_dot_product_attention(q, k, v)
        attended = attended.transpose(1, 2).reshape(batch, height * width, channels)
        return x + self.proj_out(attended).transpose(1, 2).reshape(batch, channels, height, width)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv3x3(channels, channels, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class ResAttentionBlock(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        *,
        attention: bool,
        head_channels: int,
        token_dim: int | None,
        num_groups: int,
        dropout: float,
    ):
        super().__init__()
        self.res = ResBlock(
            in_channels, out_channels, emb_dim, num_groups=num_groups, dropout=dropout
        )
        self.attention = (
            AttentionBlock(out_channels, head_channels, token_dim=token_dim, num_groups=num_groups)
            if attention
            else None
        )

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, tokens: torch.Tensor | None
    ) -> torch.Tensor:
        h = self.res(x, emb)
        return h if self.attention is None else self.attention(h, tokens)


class TorchUNet(nn.Module):
    """The JAX UNet's architecture in PyTorch; takes NCHW images. Arguments as the JAX `UNet`'s
    (its constructor validates them; this twin assumes a configuration it accepted)."""

    def __init__(
        self,
        *,
        image_size: int,
        in_channels: int = 3,
        out_channels: int = 3,
        base_channels: int,
        channel_mults: Sequence[int],
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        head_channels: int,
        dropout: float = 0.0,
        cond_dim: int = 512,
        cross_attention: bool = False,
        num_cond_tokens: int = 4,
        stem: str = "conv",
        num_groups: int = 32,
    ):
        super().__init__()
        self.image_size = image_size
        self.in_channels = in_channels
        self.base_channels = base_channels
        self.stem_block = 2 if stem == "space_to_depth" else 1
        self.num_cond_tokens = num_cond_tokens if cross_attention else 0
        emb_dim = 4 * base_channels
        token_dim = emb_dim if cross_attention else None

        self.time_mlp = nn.Sequential(
            nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.cond_mlp = nn.Sequential(
            nn.Linear(cond_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.null_cond = nn.Parameter(torch.randn(cond_dim) / math.sqrt(cond_dim))
        self.cond_tokens = (
            nn.Linear(cond_dim, num_cond_tokens * emb_dim) if cross_attention else None
        )

        def block(in_ch: int, out_ch: int, size: int) -> ResAttentionBlock:
            return ResAttentionBlock(
                in_ch,
                out_ch,
                emb_dim,
                attention=size in attention_resolutions,
                head_channels=head_channels,
                token_dim=token_dim,
                num_groups=num_groups,
                dropout=dropout,
            )

        self.stem = conv3x3(in_channels * self.stem_block**2, base_channels)
        size = image_size // self.stem_block
        channels = base_channels
        skip_channels = [channels]
        self.encoder, self.downsamples = nn.ModuleList(), nn.ModuleList()
        for level, mult in enumerate(channel_mults):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(block(channels, base_channels * mult, size))
                channels = base_channels * mult
                skip_channels.append(channels)
            self.encoder.append(blocks)
            if level < len(channel_mults) - 1:
                self.downsamples.append(Downsample(channels))
                skip_channels.append(channels)
                size //= 2

        self.middle = ResAttentionBlock(
            channels,
            channels,
            emb_dim,
            attention=True,
            head_channels=head_channels,
            token_dim=token_dim,
            num_groups=num_groups,
            dropout=dropout,
        )
        self.middle_res = ResBlock(
            channels, channels, emb_dim, num_groups=num_groups, dropout=dropout
        )

        self.decoder, self.upsamples = nn.ModuleList(), nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(block(channels + skip_channels.pop(), base_channels * mult, size))
                channels = base_channels * mult
            self.decoder.append(blocks)
            if level > 0:
                self.upsamples.append(Upsample(channels))
                size *= 2

        self.head_norm = group_norm(channels, num_groups)
        self.head = zero_init(conv3x3(channels, out_channels * self.stem_block**2))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        cond_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [B, C, H, W], t [B] integer, cond [B, cond_dim], cond_mask bool [B] or None.

        Returns [B, out_channels, H, W] in x's dtype.
        """
        if cond_mask is not None:
            cond = torch.where(cond_mask[:, None], cond, self.null_cond)
        emb = self.time_mlp(sinusoidal_embedding(t, self.base_channels)) + self.cond_mlp(cond)
        tokens = (
            self.cond_tokens(cond).reshape(cond.shape[0], self.num_cond_tokens, -1)
            if self.cond_tokens is not None
            else None
        )

        h = self.stem(F.pixel_unshuffle(x, self.stem_block) if self.stem_block > 1 else x)
        skips = [h]
        for level, blocks in enumerate(self.encoder):
            for block in blocks:
                h = block(h, emb, tokens)
                skips.append(h)
            if level < len(self.downsamples):
                h = self.downsamples[level](h)
                skips.append(h)

        h = self.middle(h, emb, tokens)
        h = self.middle_res(h, emb)

        for level, blocks in enumerate(self.decoder):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb, tokens)
            if level < len(self.upsamples):
                h = self.upsamples[level](h)

        out = self.head(F.silu(self.head_norm(h)))
        out = F.pixel_shuffle(out, self.stem_block) if self.stem_block > 1 else out
        return out.to(x.dtype)  # under autocast too, as the JAX UNet returns x's dtype


def torch_name(jax_path: Sequence[str | int]) -> str:
    """Maps a JAX parameter path to the twin's parameter name.

    nnx.Sequential keeps its layers under `layers`; Flax calls weights `kernel` (Linear, Conv)
    and `scale` (GroupNorm) where PyTorch says `weight`.
    """
    renamed = {"kernel": "weight", "scale": "weight"}
    parts = [str(part) for part in jax_path if part != "layers"]
    parts[-1] = renamed.get(parts[-1], parts[-1])
    return ".".join(parts)


def load_jax_params(
    model: TorchUNet, jax_params: Mapping[tuple[str | int, ...], np.ndarray]
) -> None:
    """Copies JAX UNet parameters, keyed by their nnx path, into `model`.

    Layouts: conv kernels HWIO -> OIHW, linear kernels [in, out] -> [out, in], vectors as is.
    Every parameter of `model` must be given exactly once.
    """
    torch_params = dict(model.named_parameters())
    converted = {torch_name(path): value for path, value in jax_params.items()}
    if converted.keys() != torch_params.keys():
        raise ValueError(
            "parameter names differ; only in JAX: "
            f"{sorted(converted.keys() - torch_params.keys())}, only in torch: "
            f"{sorted(torch_params.keys() - converted.keys())}"
        )
    layouts = {4: (3, 2, 0, 1), 2: (1, 0), 1: (0,)}
    with torch.no_grad():
        for name, value in converted.items():
            tensor = torch.tensor(np.transpose(value, layouts[value.ndim]))
            if tensor.shape != torch_params[name].shape:
                raise ValueError(
                    f"{name}: JAX shape {value.shape} does not match torch shape "
                    f"{tuple(torch_params[name].shape)}"
                )
            torch_params[name].copy_(tensor)


# ----------------------------------------------------------------------------------------------
# The work of diffusion_jax's train step and sampler, for a config of configs/faces.py.

COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
PREDICTION_TYPES = ("eps", "x0", "v")
LOSS_WEIGHTINGS = ("uniform", "min_snr")
# The samplers `make_sampler` has: the deterministic ones (DDIM at eta = 0 only).
SAMPLERS = ("ddim", "dpm_solver_pp_2m", "dpm_solver_pp_3m")
# DPM-Solver++(3M): with fewer steps, the step before the last is at most second order
# (diffusers' lower_order_final; diffusion_jax.core.diffusion.samplers.LOWER_ORDER_FINAL_STEPS).
LOWER_ORDER_FINAL_STEPS = 15


def compute_precision(
    config: ml_collections.ConfigDict, device: torch.device
) -> contextlib.AbstractContextManager:
    """Computes in `config.model.dtype` with float32 weights, as the JAX UNet's `dtype` and
    `param_dtype` do: autocast for bfloat16, no change for float32."""
    dtype = config.model.dtype
    _check_choice("config.model.dtype", dtype, tuple(COMPUTE_DTYPES))
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=COMPUTE_DTYPES[dtype])


def eps_and_x0(
    output: torch.Tensor, x_t: torch.Tensor, a: torch.Tensor, b: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps, x_0) implied by a prediction at x_t = a x_0 + b eps, a = sqrt(abar_t),
    b = sqrt(1 - abar_t), as `diffusion_jax.core.diffusion.parameterization.model_output_to_eps_x0`:
    eps: x_0 = (x_t - b eps) / a;  x0: eps = (x_t - a x_0) / b;  v: eps = b x_t + a v,
    x_0 = a x_t - b v."""
    if prediction_type == "eps":
        return output, (x_t - b * output) / a
    if prediction_type == "x0":
        return (x_t - a * output) / b, output
    return b * x_t + a * output, a * x_t - b * output


def diffusion_loss(
    output: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    diffusion_config: ml_collections.ConfigDict,
) -> torch.Tensor:
    """Batch mean of w(t) mean_{C,H,W} (output - target)^2, as diffusion_jax.core.diffusion.losses.

    a = sqrt(abar_t), b = sqrt(1 - abar_t), both [B, 1, 1, 1]. The target is eps, x_0 or
    v = a eps - b x_0. w = 1 ("uniform"), or ("min_snr", SNR = a^2 / b^2) min(SNR, gamma) / SNR,
    min(SNR, gamma) or min(SNR, gamma) / (SNR + 1) for eps, x0 and v.
    """
    prediction_type = diffusion_config.prediction_type
    target = {"eps": noise, "x0": x0, "v": a * noise - b * x0}[prediction_type]
    per_example = (output.float() - target).square().mean(dim=(1, 2, 3))
    if diffusion_config.loss_weighting == "uniform":
        return per_example.mean()
    snr = (a / b).square().flatten()
    clipped = snr.clamp(max=diffusion_config.min_snr_gamma)
    weight = {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1)}[prediction_type]
    return (weight * per_example).mean()


def make_train_step(
    model: TorchUNet, alphas_cumprod: torch.Tensor, config: ml_collections.ConfigDict
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """`train_step(x0, cond) -> loss`: one update doing the work of diffusion_jax's train step.

    x0: clean images [B, C, H, W]; cond: identity embeddings [B, D]. The step draws
    t ~ U{0..T-1} and eps ~ N(0, I), forms x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, drops
    conditions (mask False with probability p_uncond; components zeroed at rate partial_dropout),
    minimises `diffusion_loss`, clips the gradient to global norm grad_clip_norm, takes an AdamW
    step and moves the EMA weights: ema <- d ema + (1 - d) params. The learning rate stays at its
    peak: the JAX step's warm-up schedule changes its value, not the work.
    """
    diffusion_config, train_config = config.diffusion, config.train
    _check_choice(
        "config.diffusion.prediction_type", diffusion_config.prediction_type, PREDICTION_TYPES
    )
    _check_choice(
        "config.diffusion.loss_weighting", diffusion_config.loss_weighting, LOSS_WEIGHTINGS
    )
    device = alphas_cumprod.device
    signal_scales, noise_scales = alphas_cumprod.sqrt(), (1 - alphas_cumprod).sqrt()
    params = list(model.parameters())
    ema_params = [param.detach().clone() for param in params]
    optimizer = torch.optim.AdamW(
        params,
        lr=train_config.learning_rate,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=train_config.weight_decay,
    )

    def train_step(x0: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        model.train()
        batch_size = x0.shape[0]
        t = torch.randint(len(alphas_cumprod), (batch_size,), device=device)
        noise = torch.randn_like(x0)
        a, b = signal_scales[t].view(-1, 1, 1, 1), noise_scales[t].view(-1, 1, 1, 1)
        cond_mask = torch.rand(batch_size, device=device) >= config.condition.p_uncond
        cond = F.dropout(cond, config.condition.partial_dropout)
        with compute_precision(config, device):
            output = model(a * x0 + b * noise, t, cond, cond_mask)
        loss = diffusion_loss(output, x0, noise, a, b, diffusion_config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, train_config.grad_clip_norm)
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1.0 - train_config.ema_decay)
        return loss.detach()

    return train_step


def sampler_coefficients(
    alphas_cumprod: torch.Tensor, timesteps: Sequence[int], sampler: str
) -> dict[str, torch.Tensor]:
    """Per-step coefficients [S] of `sampler` on the decreasing `timesteps`, computed in float64
    and returned in float32 on alphas_cumprod's device, as
    `diffusion_jax.core.diffusion.samplers` computes them.

    alpha = sqrt(abar), sigma = sqrt(1 - abar) at each step and at the next one, where
    (alpha, sigma) = (1, 0) after the last step. Always "alpha" and "sigma" (for the conversion of
    the prediction to (eps, x_0)), and per sampler:

        ddim (eta = 0)    x_next = x0_scale x0_hat + eps_scale eps_hat;
                          x0_scale = alpha_next, eps_scale = sigma_next.
        dpm_solver_pp_2m  x_next = x_scale x + data_scale ((1 + w) x0_hat - w x0_hat_prev);
                          lambda = log(alpha / sigma), h = lambda_next - lambda (inf at the last
                          step), x_scale = sigma_next / sigma, data_scale = -alpha_next expm1(-h),
                          w = h / (2 h_prev) at the steps strictly between the first and the
                          last (second order), else 0 (first order).
        dpm_solver_pp_3m  x_next = x_scale x + data_scale ((1 + w) x0_hat - w x0_hat_prev
                          + w2 (x0_hat_prev - x0_hat_prev2)), x_scale and data_scale as 2M's;
                          orders 1, 2, 3, ..., 3, 1, the step before the last at most 2 with
                          fewer than LOWER_ORDER_FINAL_STEPS steps; at a third-order step, with
                          E = expm1(-h), r0 = h_prev / h, r1 = h_prev2 / h,
                          b1 = -(E / h + 1) / E, b2 = ((E + h) / h^2 - 1/2) / E,
                          g = (b1 r0 + b2) / (r0 + r1), w = (b1 + g) / r0, w2 = -g / r1; at a
                          second-order step w as 2M's and w2 = 0; at a first-order one both 0.
    """
    _check_choice("config.sample.sampler", sampler, SAMPLERS)
    device = alphas_cumprod.device
    index = torch.as_tensor(np.asarray(timesteps, dtype=np.int64), device=device)
    abar = alphas_cumprod.double()[index]
    alphas, sigmas = abar.sqrt(), (1 - abar).sqrt()
    one, zero = torch.ones(1, dtype=abar.dtype, device=device), torch.zeros_like(abar[:1])
    alphas_next, sigmas_next = torch.cat([alphas[1:], one]), torch.cat([sigmas[1:], zero])
    coefficients = {"alpha": alphas, "sigma": sigmas}
    if sampler == "ddim":
        coefficients.update(x0_scale=alphas_next, eps_scale=sigmas_next)
    else:
        # lambda_next = log(1 / 0) = +inf after the last step, where expm1(-inf) = -1.
        step_sizes = (alphas_next.log() - sigmas_next.log()) - (alphas.log() - sigmas.log())
        previous_step_sizes = torch.cat([one, step_sizes[:-1]])
        num_steps = len(timesteps)
        steps = torch.arange(num_steps, device=device)
        max_order = 3 if sampler == "dpm_solver_pp_3m" else 2
        orders = torch.clamp(steps + 1, max=max_order)
        if num_steps < LOWER_ORDER_FINAL_STEPS:
            orders = torch.where(steps == num_steps - 2, orders.clamp(max=2), orders)
        orders = torch.where(steps == num_steps - 1, torch.ones_like(orders), orders)
        second_order, third_order = orders == 2, orders == 3
        weights = torch.where(
            second_order,
            0.5 * step_sizes / torch.where(second_order, previous_step_sizes, one),
            torch.zeros_like(step_sizes),
        )
        coefficients.update(
            x_scale=sigmas_next / sigmas,
            data_scale=-alphas_next * torch.expm1(-step_sizes),
            previous_weight=weights,
        )
        if sampler == "dpm_solver_pp_3m":
            # Where a step is not third order, divide by dummy ones: no inf or NaN.
            second_previous_step_sizes = torch.cat([one, one, step_sizes[:-2]])[:num_steps]
            h = torch.where(third_order, step_sizes, one)
            r0 = torch.where(third_order, previous_step_sizes, one) / h
            r1 = torch.where(third_order, second_previous_step_sizes, one) / h
            expm1_h = torch.expm1(-h)
            b1 = -(expm1_h / h + 1.0) / expm1_h
            b2 = ((expm1_h + h) / h.square() - 0.5) / expm1_h
            g = (b1 * r0 + b2) / (r0 + r1)
            coefficients.update(
                previous_weight=torch.where(third_order, (b1 + g) / r0, weights),
                second_previous_weight=torch.where(third_order, -g / r1, torch.zeros_like(h)),
            )
    return {name: value.float() for name, value in coefficients.items()}


def make_sampler(
    model: TorchUNet,
    alphas_cumprod: torch.Tensor,
    timesteps: Sequence[int],
    config: ml_collections.ConfigDict,
) -> Callable[..., torch.Tensor]:
    """`sample(cond, x_T=None) -> x_0` [B, C, H, W] with `config.sample.sampler` (also its
    attribute `sample.sampler`), one image per row of cond [B, D], from x_T [B, C, H, W]
    (default: drawn ~ N(0, I)), under `torch.inference_mode()`: the work of
    `diffusion_jax.tasks.conditional_diffusion.sample_functions.make_sample_fn`, and the same
    function given the same weights and x_T.

    Samplers (`SAMPLERS`; module `diffusion_jax.core.diffusion.samplers`), from each t of the
    decreasing `timesteps` (the JAX sampler's, `sampling_timesteps`) to the next one, with a last
    step to abar = 1 that returns the x_0 estimate (`sampler_coefficients` has the formulas):

        ddim              deterministic DDIM (Song et al. 2021, eta = 0 only: eta > 0 draws
                          noise from JAX's generator, which a twin cannot reproduce).
        dpm_solver_pp_2m  DPM-Solver++(2M) (Lu et al. 2022): multistep, in x0_hat, first order
                          at the first and the last step.
        dpm_solver_pp_3m  DPM-Solver++(3M): multistep third order, first order at the first and
                          the last step, second order at the second (and, below 15 steps, at the
                          one before the last).

    At each step (eps_hat, x0_hat) follow from the guided output out_u + w (out_c - out_u) of one
    forward pass on [x_t; x_t] (conditions, then the null condition) by the prediction type
    (eps, x0 or v; `eps_and_x0`); x0_hat is clipped to [-1, 1] and eps_hat recomputed from it when
    config.sample.clip_x0. As in `diffusion_jax.core.diffusion.guidance`, a guidance scale w of
    exactly 0 or 1 costs one unguided pass on B examples. The state x stays in float32 whatever
    the compute dtype.
    """
    sample_config = config.sample
    sampler = sample_config.sampler
    if sampler not in SAMPLERS:
        raise ValueError(
            f"the torch twin samples with {SAMPLERS}; got config.sample.sampler={sampler!r}"
        )
    if sampler == "ddim" and sample_config.eta != 0:
        raise ValueError(
            "the torch twin samples with DDIM at eta=0 only (eta > 0 draws JAX's noise); got "
            f"config.sample.eta={sample_config.eta}"
        )
    prediction_type = config.diffusion.prediction_type
    _check_choice("config.diffusion.prediction_type", prediction_type, PREDICTION_TYPES)
    device = alphas_cumprod.device
    coefficients = sampler_coefficients(alphas_cumprod, timesteps, sampler)
    guidance_scale = sample_config.guidance_scale
    image_shape = (model.in_channels, model.image_size, model.image_size)

    def guided_output(x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        batch_size = x_t.shape[0]
        if guidance_scale in (0, 1):
            cond_mask = torch.full((batch_size,), guidance_scale == 1, device=device)
            return model(x_t, t, cond, cond_mask)
        cond_mask = torch.arange(2 * batch_size, device=device) < batch_size
        doubled = [torch.cat([value, value]) for value in (x_t, t, cond)]
        out_c, out_u = model(*doubled, cond_mask).chunk(2)
        return out_u + guidance_scale * (out_c - out_u)

    @torch.inference_mode()
    def sample(cond: torch.Tensor, x_T: torch.Tensor | None = None) -> torch.Tensor:
        model.eval()
        batch_size = cond.shape[0]
        if x_T is None:
            x = torch.randn((batch_size,) + image_shape, device=device)
        else:
            x = x_T.to(device=device, dtype=torch.float32)
        previous_x0, second_previous_x0 = torch.zeros_like(x), torch.zeros_like(x)
        for step, t in enumerate(timesteps):
            t_batch = torch.full((batch_size,), int(t), device=device)
            with compute_precision(config, device):
                output = guided_output(x, t_batch, cond)
            a, b = coefficients["alpha"][step], coefficients["sigma"][step]
            eps, x0 = eps_and_x0(output.float(), x, a, b, prediction_type)
            if sample_config.clip_x0:
                x0 = x0.clamp(-1.0, 1.0)
                eps = (x - a * x0) / b
            if sampler == "ddim":
                x = coefficients["x0_scale"][step] * x0 + coefficients["eps_scale"][step] * eps
            else:
                weight = coefficients["previous_weight"][step]
                data = (1.0 + weight) * x0 - weight * previous_x0
                if sampler == "dpm_solver_pp_3m":
                    weight2 = coefficients["second_previous_weight"][step]
                    data = data + weight2 * (previous_x0 - second_previous_x0)
                x = coefficients["x_scale"][step] * x + coefficients["data_scale"][step] * data
                previous_x0, second_previous_x0 = x0, previous_x0
        return x

    sample.sampler = sampler  # what it samples with, for a benchmark's record
    return sample


def make_ddim_sampler(
    model: TorchUNet,
    alphas_cumprod: torch.Tensor,
    timesteps: Sequence[int],
    config: ml_collections.ConfigDict,
) -> Callable[..., torch.Tensor]:
    """`make_sampler` for a config that samples with DDIM at eta = 0 (refuses any other)."""
    if config.sample.sampler != "ddim":
        raise ValueError(
            f"make_ddim_sampler: config.sample.sampler={config.sample.sampler!r}; use make_sampler"
        )
    return make_sampler(model, alphas_cumprod, timesteps, config)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r}; expected one of {choices}")
