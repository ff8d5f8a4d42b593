"""Throughput of the project's real train step and sampler in JAX, and of a PyTorch twin doing the
same work, measured in the same run; prints JSON.

Each size is a preset of configs/faces.py, with its model, diffusion, train and sample settings.
Three phases are measured per size and framework:

    forward     one eval-mode network evaluation.
    train_step  `core.training.step.make_train_step` jitted by `jit_train_step`: draw t and
                noise, noise x_0, drop conditions, weighted eps/x0/v loss, clip the gradient,
                AdamW, EMA. Twin: `diffusion_jax.torch_twins.unet.make_train_step`.
    sample      `tasks.conditional_diffusion.sample_functions.make_sample_fn` with the preset's
                sampler (`--sampler` overrides it: the demo's DPM-Solver++(2M), base's DDIM at
                eta = 0), steps and classifier-free guidance, as one batched forward per step.
                Twin: `diffusion_jax.torch_twins.unet.make_sampler` with the same sampler on the
                same timesteps, under inference mode (tests/test_torch_twin_samplers.py checks
                that both return the same samples given the same weights and x_T).

Reported per phase: images/s, GFLOP per image from XLA's cost analysis, the achieved GFLOP/s and
its fraction of a matmul peak in the compute dtype measured in this run, compile time, XLA's temp
memory, peak resident memory, and jax/torch ratios; per size, the network evaluations per image,
and under "sampler" what both sides' sample phase ran (the sampler each side was built with, its
timesteps, guidance scale, prediction type and clipping).
Each measurement runs in a fresh process, so its peak resident memory is its own and JAX's and
PyTorch's thread pools never compete for the cores. A measurement stops timing after --budget-s
seconds of calls (after one timed call at least), so that slow phases stay bounded. The report is
a `diffusion_jax.benchmark_record` (commit, machine, command line, settings, results).

    python benchmarks/unet_throughput.py --quick --output=/tmp/unet_quick.json
    python benchmarks/unet_throughput.py --sizes=demo,base --sampler=ddim
    python benchmarks/unet_throughput.py --sizes=demo --output=/tmp/unet_demo.json
    python benchmarks/unet_throughput.py --sizes=base --dtype=float32 --batch=4
"""

import argparse
import concurrent.futures
import importlib.metadata
import importlib.util
import multiprocessing
import os
import pathlib
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np
import presets

from diffusion_jax.benchmark_record import write_benchmark_json

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PHASES = ("forward", "train_step", "sample")
DTYPES = ("float32", "bfloat16")
# On a CPU the default batch is the preset's, capped at the pixels of 32 images of 32x32.
CPU_BATCH_PIXELS = 32 * 32 * 32


# The samplers the PyTorch twin has (diffusion_jax.torch_twins.unet.SAMPLERS, named here so that
# parsing the flags does not import torch); DDIM at eta = 0 only.
TWIN_SAMPLERS = ("ddim", "dpm_solver_pp_2m", "dpm_solver_pp_3m")
SAMPLERS = (*TWIN_SAMPLERS, "ddpm")


def load_preset(preset: str, sampler: str | None = None) -> ml_collections.ConfigDict:
    """`configs/faces.py:<preset>,pixel`: the UNet is timed on images (in pixel space), whatever
    space the preset defaults to, and sampled with the preset's sampler, or `sampler`."""
    config = presets.load_preset(f"{preset},pixel")
    if sampler is not None:
        config.sample.sampler = sampler
    return config


def default_batch_size(config: ml_collections.ConfigDict, platform: str) -> int:
    """`config.train.batch_size`; on a CPU at most CPU_BATCH_PIXELS / resolution^2 (base: 8)."""
    if platform != "cpu":
        return config.train.batch_size
    return max(1, min(config.train.batch_size, CPU_BATCH_PIXELS // config.data.resolution**2))


def make_batch(config: ml_collections.ConfigDict, batch_size: int) -> dict[str, np.ndarray]:
    """A training batch: x_0, NHWC images uniform in [-1, 1], and unit identity embeddings."""
    rng = np.random.default_rng(config.seed)
    size = config.data.resolution
    cond = rng.normal(size=(batch_size, config.condition.dim)).astype(np.float32)
    return {
        "x0": rng.uniform(-1, 1, size=(batch_size, size, size, 3)).astype(np.float32),
        "cond": cond / np.linalg.norm(cond, axis=-1, keepdims=True),
    }


def forward_inputs(
    config: ml_collections.ConfigDict, batch: dict[str, np.ndarray]
) -> tuple[np.ndarray, ...]:
    """(x_t, t, cond, cond_mask) of one network evaluation: t spread over [0, T), every other
    condition replaced by the null condition."""
    batch_size = len(batch["cond"])
    t = np.linspace(0, config.diffusion.num_timesteps - 1, batch_size).astype(np.int32)
    return batch["x0"], t, batch["cond"], np.arange(batch_size) % 2 == 0


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def images_per_second(
    run_once: Callable[[], None], batch_size: int, iterations: int, warmup: int, budget_s: float
) -> tuple[float, int]:
    """(batch_size / the median time of one timed call, the number of timed calls).

    `warmup` untimed calls, then up to `iterations` timed ones; once the calls have taken
    `budget_s` in all, the next call is timed and the last. The median shrugs off other load on
    the machine.
    """
    deadline = time.perf_counter() + budget_s
    seconds = []
    for call in range(warmup + iterations):
        timed = call >= warmup or time.perf_counter() > deadline
        start = time.perf_counter()
        run_once()
        if timed:
            seconds.append(time.perf_counter() - start)
        if seconds and time.perf_counter() > deadline:
            break
    return batch_size / float(np.median(seconds)), len(seconds)


def rounded(report: Any, digits: int = 4) -> Any:
    """Rounds every float in a JSON-like report to `digits` significant digits."""
    if isinstance(report, dict):
        return {key: rounded(value, digits) for key, value in report.items()}
    if isinstance(report, (list, tuple)):
        return [rounded(value, digits) for value in report]
    if isinstance(report, float):
        return float(f"{report:.{digits}g}")
    return report


# ----------------------------------------------------------------------------------------------
# JAX: the project's own code.


def matmul_peak_gflops(n: int, dtype: str, repeats: int = 5) -> dict[str, Any]:
    """Best [n, n] @ [n, n] rate in `dtype`: 2 n^3 FLOPs per product."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    matmul = jax.jit(jnp.dot).lower(a, a).compile()
    matmul(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    device = jax.devices()[0]
    return {
        "gflops": 2 * n**3 / best / 1e9,
        "n": n,
        "platform": device.platform,
        "device": device.device_kind,
        "jax_version": jax.__version__,
    }


def project_constants(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What the twin and the report take from diffusion_jax: the UNet's architecture arguments,
    the schedule's abar_t [T], the sampler's timesteps [S] and the model's parameter count (from
    shapes, nothing allocated). Computed once here so the PyTorch processes never import JAX."""
    from flax import nnx

    from diffusion_jax.core.diffusion.samplers import sampling_timesteps
    from diffusion_jax.core.diffusion.schedules import schedule_from_config
    from diffusion_jax.core.training import state as state_lib
    from diffusion_jax.tasks.conditional_diffusion.denoiser import unet_architecture, unet_builder
    from diffusion_jax.tasks.conditional_diffusion.sample_functions import sampler_options

    num_timesteps = config.diffusion.num_timesteps
    schedule = schedule_from_config(config.diffusion.beta_schedule, num_timesteps)
    num_steps = sampler_options(config.sample, num_timesteps)["num_steps"]
    abstract_model = nnx.eval_shape(lambda: unet_builder(config)(nnx.Rngs(0)))
    return {
        "architecture": unet_architecture(config),
        "alphas_cumprod": np.asarray(schedule.alphas_cumprod),
        "timesteps": sampling_timesteps(num_timesteps, num_steps),
        "num_params": state_lib.count_params(nnx.state(abstract_model, nnx.Param)),
    }


def measure_jax(
    phase: str,
    config: ml_collections.ConfigDict,
    batch_size: int,
    iterations: int,
    warmup: int,
    budget_s: float,
) -> dict[str, Any]:
    """Compiles and times one phase (see the module docstring) of the project's JAX code."""
    import jax
    from flax import nnx

    from diffusion_jax.core import parallel
    from diffusion_jax.core.diffusion.schedules import schedule_from_config
    from diffusion_jax.core.training import state as state_lib
    from diffusion_jax.core.training.step import training_program
    from diffusion_jax.tasks.conditional_diffusion.denoiser import (
        make_diffusion_loss,
        unet_builder,
    )
    from diffusion_jax.tasks.conditional_diffusion.sample_functions import (
        make_sample_fn,
        sampler_options,
    )

    schedule = schedule_from_config(config.diffusion.beta_schedule, config.diffusion.num_timesteps)
    mesh = parallel.make_mesh(config.mesh)
    batch = make_batch(config, batch_size)
    rng = jax.random.key(config.seed)
    if phase == "train_step":
        program = training_program(
            unet_builder(config), make_diffusion_loss(schedule, config), config.train, mesh
        )
        jitted = program.step
        state = state_lib.init_train_state(unet_builder(config), program.optimizer, mesh, rng)
        args = [state, parallel.global_batch(batch, mesh), rng, {}]
    else:
        model = unet_builder(config)(nnx.Rngs(config.seed))
        model.eval()
        graphdef, params = nnx.split(model, nnx.Param)
        if phase == "sample":
            jitted = make_sample_fn(graphdef, schedule, config)
            args = [params, jax.device_put(batch["cond"]), rng]
        else:
            jitted = jax.jit(lambda params, inputs: nnx.merge(graphdef, params)(*inputs))
            args = [params, jax.device_put(forward_inputs(config, batch))]

    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    compile_s = time.perf_counter() - start

    def run_once():
        outputs = jax.block_until_ready(compiled(*args))
        if phase == "train_step":
            args[0] = outputs[0]  # the step donated the state it was given

    images_per_s, timed_calls = images_per_second(
        run_once, batch_size, iterations, warmup, budget_s
    )
    flops = compiled.cost_analysis()["flops"]
    if phase == "sample":
        # XLA counts the body of the sampler's scan once; the set-up outside it is negligible.
        flops *= sampler_options(config.sample, schedule.num_timesteps)["num_steps"]
    memory_stats = jax.devices()[0].memory_stats() or {}
    return {
        "sampler": config.sample.sampler if phase == "sample" else None,
        "images_per_s": images_per_s,
        "timed_calls": timed_calls,
        "gflop_per_image": flops / batch_size / 1e9,
        "compile_s": compile_s,
        "xla_temp_mb": compiled.memory_analysis().temp_size_in_bytes / 2**20,
        "device_peak_mb": memory_stats.get("peak_bytes_in_use", 0) / 2**20 or None,
        "peak_rss_mb": peak_rss_mb(),
    }


# ----------------------------------------------------------------------------------------------
# PyTorch twin.


def measure_torch(
    phase: str,
    config: ml_collections.ConfigDict,
    constants: dict[str, Any],
    batch_size: int,
    iterations: int,
    warmup: int,
    budget_s: float,
    threads: int,
) -> dict[str, Any]:
    """Times one phase of the twin `torch_twins.unet`, on the inputs the JAX phase gets."""
    import torch

    from diffusion_jax.torch_twins import unet as torch_unet

    torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = torch_unet.TorchUNet(**constants["architecture"]).to(device)
    alphas_cumprod = torch.tensor(constants["alphas_cumprod"], device=device)
    batch = make_batch(config, batch_size)

    def tensor(array: np.ndarray) -> torch.Tensor:
        """On `device`; images NHWC -> NCHW."""
        value = torch.from_numpy(array)
        return (value.permute(0, 3, 1, 2) if value.ndim == 4 else value).contiguous().to(device)

    if phase == "train_step":
        train_step = torch_unet.make_train_step(model, alphas_cumprod, config)
        x0, cond = tensor(batch["x0"]), tensor(batch["cond"])

        def work():
            train_step(x0, cond)

    elif phase == "sample":
        sample = torch_unet.make_sampler(model, alphas_cumprod, constants["timesteps"], config)
        cond = tensor(batch["cond"])

        def work():
            sample(cond)

    else:
        model.eval()
        inputs = [tensor(value) for value in forward_inputs(config, batch)]

        def work():
            with torch.inference_mode(), torch_unet.compute_precision(config, device):
                model(*inputs)

    def run_once():
        work()
        synchronize()

    images_per_s, timed_calls = images_per_second(
        run_once, batch_size, iterations, warmup, budget_s
    )
    return {
        "sampler": sample.sampler if phase == "sample" else None,
        "images_per_s": images_per_s,
        "timed_calls": timed_calls,
        "num_params": sum(p.numel() for p in model.parameters()),
        "peak_rss_mb": peak_rss_mb(),
    }


# ----------------------------------------------------------------------------------------------
# Driver.


def in_fresh_process(fn: Callable[..., Any], *args) -> Any:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def by_metric(per_phase: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{phase: {metric: value}} -> {metric: {phase: value}}."""
    metrics = next(iter(per_phase.values()))
    return {metric: {phase: per_phase[phase][metric] for phase in per_phase} for metric in metrics}


def add_achieved_rates(
    result: dict[str, Any], gflop_per_image: dict[str, float], peak_gflops: float
) -> None:
    achieved = {
        phase: gflop_per_image[phase] * images_per_s
        for phase, images_per_s in result["images_per_s"].items()
    }
    result["achieved_gflops"] = achieved
    result["fraction_of_matmul_peak"] = {
        phase: rate / peak_gflops for phase, rate in achieved.items()
    }


def benchmark_preset(
    config: ml_collections.ConfigDict,
    args: argparse.Namespace,
    peak: dict[str, Any],
    with_torch: bool,
) -> dict[str, Any]:
    """The report of one size: JAX's phases (`args.phases`), then the twin's, in fresh
    processes."""
    batch_size = args.batch or default_batch_size(config, peak["platform"])
    constants = in_fresh_process(project_constants, config)
    timing = (batch_size, args.iterations, args.warmup, args.budget_s)
    jax_result = by_metric(
        {phase: in_fresh_process(measure_jax, phase, config, *timing) for phase in args.phases}
    )
    gflop_per_image = jax_result.pop("gflop_per_image")
    jax_sampler = jax_result.pop("sampler").get("sample")  # None where not measured
    add_achieved_rates(jax_result, gflop_per_image, peak["gflops"])
    guided = config.sample.guidance_scale not in (0, 1)
    entry = {
        "config": {
            "image_size": config.data.resolution,
            "cond_dim": config.condition.dim,
            "model": config.model.to_dict(),
            "diffusion": config.diffusion.to_dict(),
            "sample": {
                key: config.sample[key]
                for key in ("sampler", "num_steps", "eta", "guidance_scale", "clip_x0")
            },
        },
        "dtype": config.model.dtype,
        "batch": batch_size,
        "num_params": constants["num_params"],
        "network_evaluations_per_image": {
            "forward": 1,
            "train_step": 1,
            "sample": len(constants["timesteps"]) * (2 if guided else 1),
        },
        "gflop_per_image": gflop_per_image,
        # What the sample phase ran: the same sampler on the same timesteps on both sides.
        "sampler": {
            "jax": jax_sampler,
            "torch": None,
            "num_steps": len(constants["timesteps"]),
            "timesteps": [int(t) for t in constants["timesteps"]],
            "guidance_scale": config.sample.guidance_scale,
            "eta": config.sample.eta if jax_sampler == "ddim" else None,
            "prediction_type": config.diffusion.prediction_type,
            "clip_x0": config.sample.clip_x0,
        },
        "jax": jax_result,
    }
    if with_torch:
        torch_result = by_metric(
            {
                phase: in_fresh_process(
                    measure_torch, phase, config, constants, *timing, args.threads
                )
                for phase in args.phases
            }
        )
        entry["sampler"]["torch"] = torch_result.pop("sampler").get("sample")
        assert entry["sampler"]["torch"] == jax_sampler, entry["sampler"]
        torch_params = set(torch_result.pop("num_params").values())
        assert torch_params == {entry["num_params"]}, (
            f"the torch twin has {torch_params} parameters, the JAX UNet {entry['num_params']}"
        )
        add_achieved_rates(torch_result, gflop_per_image, peak["gflops"])
        entry["torch"] = {
            "threads": args.threads,
            "torch_version": importlib.metadata.version("torch"),
            **torch_result,
        }
        entry["jax_over_torch"] = {
            phase: jax_result["images_per_s"][phase] / torch_result["images_per_s"][phase]
            for phase in args.phases
        }
    return entry


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="demo,base", help="comma-separated presets of configs/faces.py"
    )
    parser.add_argument(
        "--batch",
        type=int,
        help="batch size (default: the preset's config.train.batch_size; on a CPU at most "
        f"{CPU_BATCH_PIXELS} pixels, e.g. base: 8)",
    )
    parser.add_argument(
        "--dtype", choices=DTYPES, help="model compute dtype (default: the preset's model.dtype)"
    )
    parser.add_argument(
        "--sampler",
        choices=SAMPLERS,
        help="the sample phase's sampler (default: the preset's config.sample.sampler; the "
        f"PyTorch twin has {', '.join(TWIN_SAMPLERS)})",
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated phases to measure, of {','.join(PHASES)} (a base-size sample phase "
        "takes minutes on a CPU)",
    )
    parser.add_argument("--iterations", type=int, default=10, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    parser.add_argument(
        "--budget-s", type=float, default=60.0, help="seconds of calls after which timing stops"
    )
    parser.add_argument("--matmul-size", type=int, default=4096, help="n of the peak matmul")
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: the CPU count; --quick: 1)"
    )
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch twin")
    parser.add_argument("--output", help="also write the JSON report to this file")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a check that everything runs, in seconds: the presets of --sizes (default demo) "
        "shrunk to tiny sizes (benchmarks/presets.py shrink_for_quick: their samplers, guidance "
        "and prediction types kept, at most 4 sampler steps), batch 2, 2 iterations, 1 warmup, "
        "a 5 s budget, a 512 matmul, 1 torch thread",
    )
    args = parser.parse_args(argv)
    # One torch thread in --quick: on a busy CPU (CI, another quick mode beside it) its thread
    # pool spins, and a tiny forward pass took 2 s with 2 threads, 3 ms with 1.
    if args.threads is None:
        args.threads = 1 if args.quick else os.cpu_count()
    if args.quick:
        if args.sizes == parser.get_default("sizes"):
            args.sizes = "demo"
        args.batch, args.iterations, args.warmup = args.batch or 2, 2, 1
        args.budget_s, args.matmul_size = min(args.budget_s, 5.0), 512
    args.sizes = args.sizes.split(",")
    args.phases = args.phases.split(",")
    if not args.phases or not set(args.phases) <= set(PHASES):
        parser.error(f"--phases={','.join(args.phases)}: choose among {','.join(PHASES)}")
    for name in ("batch", "iterations", "matmul_size", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')}={value} must be positive")
    if args.warmup < 0:
        parser.error(f"--warmup={args.warmup} must be non-negative")
    if not args.budget_s > 0:
        parser.error(f"--budget-s={args.budget_s} must be positive")
    try:
        args.configs = {size: load_preset(size, args.sampler) for size in args.sizes}
    except ValueError as error:
        parser.error(f"--sizes={','.join(args.sizes)}: {error}")
    for config in args.configs.values():
        config.model.dtype = args.dtype or config.model.dtype
        if args.quick:
            presets.shrink_for_quick(config)
    args.with_torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    for size, config in args.configs.items():
        sample = config.sample
        if args.with_torch and (
            sample.sampler not in TWIN_SAMPLERS or (sample.sampler == "ddim" and sample.eta != 0)
        ):
            parser.error(
                f"{size} samples with {sample.sampler} (eta={sample.eta}); the PyTorch twin has "
                f"{', '.join(TWIN_SAMPLERS)} (DDIM at eta=0): choose --sampler or --no-torch"
            )
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with_torch = args.with_torch
    dtypes = sorted({config.model.dtype for config in args.configs.values()})
    peaks = {
        dtype: in_fresh_process(matmul_peak_gflops, args.matmul_size, dtype) for dtype in dtypes
    }
    results = {
        "matmul_peak": peaks,
        "sizes": {
            size: benchmark_preset(config, args, peaks[config.model.dtype], with_torch)
            for size, config in args.configs.items()
        },
    }
    settings = {
        "sizes": args.sizes,
        "batch": args.batch,
        "dtype": args.dtype,
        "sampler": args.sampler,
        "phases": args.phases,
        "iterations": args.iterations,
        "warmup": args.warmup,
        "budget_s": args.budget_s,
        "matmul_size": args.matmul_size,
        "threads": args.threads,
        "with_torch": with_torch,
        "quick": args.quick,
    }
    # The record reads the machine now, so the parent takes JAX's backend only after the
    # measurements' processes are done.
    write_benchmark_json(args.output, "unet_throughput", rounded(results), settings)


if __name__ == "__main__":
    main(sys.argv[1:])
