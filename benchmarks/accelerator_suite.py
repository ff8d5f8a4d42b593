"""The accelerator suite: on whatever devices JAX sees, in at most --time_budget_s (default 480 s),
the `base` preset's diffusion train step, sampler, generation job with judging and encoder train
step, and peak device memory; prints (and with --output writes) one benchmark JSON record.

Sections (each on a mesh of every device JAX sees, `config.mesh` of the preset: data parallel):

    diffusion_train_step  `core.training.step.make_train_step` over the UNet and the diffusion
                          loss, jitted by `jit_train_step` (noising, condition dropout, loss,
                          clipping, AdamW, EMA), at `train.batch_size`, in the preset's compute
                          dtype (bfloat16).
    sampler               `make_sample_fn` with the preset's sampler, steps and classifier-free
                          guidance, at `generate.batch_size` images, one key per image as the
                          generation job draws them.
    generation            the generation job's drawing and judging (`shard_drawing.draw_shards`:
                          full batches across shards, the next batch queued before the last is
                          judged, each identity's round embedded by the judge and the conditioning
                          encoder, each image's nearest training image searched among random unit
                          stand-ins for the preset's training images' judge embeddings
                          (num_train_identities x images_per_train_identity of them), the filter,
                          redraws of rejected images up to
                          `max_resample_rounds`) with `GenerationModels.draw` and `.embed_round`
                          on randomly initialised networks: a random UNet, and two random
                          IResNets (the preset's architecture, different seeds) as conditioning
                          encoder and judge; identities are random unit vectors, 2 per shard.
                          Files are not written (benchmarks/generation_throughput.py times the
                          whole job of a trained run). Reported: images drawn per second, and
                          the share of time outside the denoiser = 1 - batches x t(sampler
                          alone, same batch) / seconds of the drawing loop. A warm-up shard
                          compiles the embeddings first (the sampler's section compiled it).
                          With random networks the judge's decisions (and so the redraws) are not
                          those of a trained run.
    encoder_train_step    the identity encoder's train step: `encoder_builder` (IResNet + margin
                          head over `data.num_train_identities` classes) and `make_margin_loss`,
                          jitted by `jit_train_step`, at `encoder.train.batch_size` images at the
                          encoder's input resolution (float32 compute, as training runs it).
    memory                `jax.devices()[0].memory_stats()`: peak bytes in use (after each section
                          too) and the limit; null where the backend keeps none (CPU).

For each timed program: images/s (the median of timed calls, after a warm-up call), compile
seconds, and FLOPs per image from XLA's cost analysis of the compiled program (per device, times
the device count, over the global batch; a sampler's scan body is counted once by XLA, so its
count is multiplied by the steps). Model FLOP utilisation (MFU) = achieved FLOP/s / (device count
x the device's peak dense bfloat16 FLOP/s), the peak CITED from benchmarks/device_specs.py
(H100, H200, A100, TPU v4, v5e, v5p, v6e); null for a device kind not in the table (a CPU). The
encoder computes in float32 (TF32 on NVIDIA GPUs by XLA's default precision); its MFU is still
against the bf16 peak, and says so.

The budget: compiles cannot be cut short, timing loops can. Each section's timing stops at its
share of the budget left or its cap (30 s; generation 60 s), after at most 50 timed calls (the
sampler 10), and a section that would start with less than --reserve_s left is skipped (reported
as such). Compiles dominate on an accelerator: the four programs, the two embedding functions and
two state initialisations. Sizes: the preset's batches, except --quick (a check that it runs,
for the tests on a CPU): the base preset shrunk to a tiny UNet at 32x32, iresnet_small at 32x32,
32-dimensional identities, batches of 8, 4 sampler steps.

    python benchmarks/accelerator_suite.py --output=benchmarks/results/accelerator_suite_h100.json
    python benchmarks/accelerator_suite.py --quick --output=/tmp/suite.json
"""

import argparse
import pathlib
import statistics
import sys
import time
from typing import Any

import numpy as np

# Beside this script (Python puts the script's directory first on its path).
from device_specs import peak_for_device_kind
from presets import load_preset
from unet_throughput import rounded

from diffusion_jax.benchmark_record import write_benchmark_json

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SECTIONS = ("diffusion_train_step", "sampler", "generation", "encoder_train_step", "memory")
# Share of the budget left that each timed section may spend timing (compiles come on top), and
# the most seconds it may spend, whatever is left.
TIMING_SHARE = {
    "diffusion_train_step": 0.25,
    "sampler": 0.25,
    "generation": 0.4,
    "encoder_train_step": 0.5,
}
TIMING_CAP_S = {
    "diffusion_train_step": 30.0,
    "sampler": 30.0,
    "generation": 60.0,
    "encoder_train_step": 30.0,
}
MAX_CALLS, QUICK_CALLS = 50, 3  # timed calls per program at most
SAMPLER_MAX_CALLS = 10  # a guided 50-step batch takes about a second on an H100
QUICK_TIMING_S = 2.0  # --quick: seconds of timing per program at most
# Identities per shard of the generation section: small, so that the warm-up shard is short and
# the timed drawing stops at a shard's end soon after its deadline.
SUITE_IDENTITIES_PER_SHARD = 2


def suite_config(quick: bool):
    """The base preset in pixel space; with `quick`, shrunk to tiny sizes (module docstring)."""
    config = load_preset("base,pixel")
    config.generate.identities_per_shard = SUITE_IDENTITIES_PER_SHARD
    if not quick:
        return config
    config.data.resolution = 32
    config.data.num_train_identities = 8
    config.condition.dim = 32
    config.encoder.architecture = "iresnet_small"
    config.encoder.input_resolution = 32
    config.encoder.embedding_dim = 32
    config.encoder.train.batch_size = 8
    config.model.base_channels = 16
    config.model.channel_mults = (1, 2)
    config.model.num_res_blocks = 1
    config.model.attention_resolutions = (8,)
    config.model.head_channels = 8
    config.model.num_groups = 4
    config.model.stem = "space_to_depth"
    config.train.batch_size = 8
    config.sample.num_steps = 4
    config.generate.batch_size = 8
    config.generate.images_per_identity = 4
    return config


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class Budget:
    """Seconds left of the suite's budget, and how much a section may spend timing."""

    def __init__(self, total_s: float, reserve_s: float, quick: bool):
        self.start = time.perf_counter()
        self.total_s, self.reserve_s = total_s, reserve_s
        # --quick times a few calls only: it checks that everything runs.
        self.max_calls = QUICK_CALLS if quick else MAX_CALLS
        self.max_timing_s = QUICK_TIMING_S if quick else float("inf")

    def left(self) -> float:
        return self.total_s - (time.perf_counter() - self.start)

    def timing_s(self, section: str) -> float:
        share = max(0.0, TIMING_SHARE[section] * (self.left() - self.reserve_s))
        return min(share, TIMING_CAP_S[section], self.max_timing_s)


def median_call_seconds(call, seconds: float, max_calls: int) -> tuple[float, int]:
    """Median seconds of `call()` (which blocks until done) over timed calls after one untimed
    call; timing stops after `seconds` (one timed call at least) or `max_calls`."""
    import jax

    jax.block_until_ready(call())
    deadline = time.perf_counter() + seconds
    times = []
    while len(times) < max_calls:
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
        if time.perf_counter() > deadline:
            break
    return statistics.median(times), len(times)


def flops_per_image(compiled, num_devices: int, global_batch: int, repeats: int = 1) -> float:
    """XLA's FLOPs (per device, x devices) per image; `repeats`: a scan body counted once."""
    return compiled.cost_analysis()["flops"] * num_devices * repeats / global_batch


def utilisation(flops_image: float, images_per_s: float, peak: float | None) -> dict[str, Any]:
    achieved = flops_image * images_per_s
    return {
        "achieved_tflops": achieved / 1e12,
        "mfu": None if peak is None else achieved / peak,
    }


def memory_now() -> dict[str, Any]:
    import jax

    stats = jax.devices()[0].memory_stats()
    if not stats:
        return {"peak_bytes_in_use": None, "bytes_limit": None}
    return {
        "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
        "bytes_limit": stats.get("bytes_limit"),
    }


# ----------------------------------------------------------------------------------------------
# Sections. Each returns its report; `context` carries what later sections reuse.


def diffusion_train_step(config, mesh, budget: Budget, peak, context) -> dict[str, Any]:
    import jax

    from diffusion_jax.core import parallel
    from diffusion_jax.core.diffusion.schedules import schedule_from_config
    from diffusion_jax.core.training import state as state_lib
    from diffusion_jax.core.training.step import training_program
    from diffusion_jax.tasks.conditional_diffusion.denoiser import make_diffusion_loss, unet_builder

    num_devices = mesh.devices.size
    batch_size = round_up(config.train.batch_size, num_devices)
    schedule = schedule_from_config(config.diffusion.beta_schedule, config.diffusion.num_timesteps)
    program = training_program(
        unet_builder(config), make_diffusion_loss(schedule, config), config.train, mesh
    )
    jitted = program.step
    rng = jax.random.key(config.seed)
    state = state_lib.init_train_state(unet_builder(config), program.optimizer, mesh, rng)
    data = np.random.default_rng(0)
    side = config.data.resolution
    cond = data.normal(size=(batch_size, config.condition.dim)).astype(np.float32)
    batch = parallel.global_batch(
        {
            "x0": data.uniform(-1, 1, (batch_size, side, side, 3)).astype(np.float32),
            "cond": cond / np.linalg.norm(cond, axis=1, keepdims=True),
        },
        mesh,
    )
    start = time.perf_counter()
    compiled = jitted.lower(state, batch, rng, {}).compile()
    compile_s = time.perf_counter() - start
    holder = [state]

    def step():
        holder[0], metrics = compiled(holder[0], batch, rng, {})  # the state is donated
        return metrics["loss"]

    seconds, calls = median_call_seconds(
        step, budget.timing_s("diffusion_train_step"), budget.max_calls
    )
    images_per_s = batch_size / seconds
    flops = flops_per_image(compiled, num_devices, batch_size)
    context["num_params"] = state_lib.count_params(holder[0].params)
    holder.clear()  # the last state: freed before the next section
    del state
    return {
        "batch": batch_size,
        "dtype": config.model.dtype,
        "num_params": context["num_params"],
        "images_per_s": images_per_s,
        "step_s": seconds,
        "timed_calls": calls,
        "compile_s": compile_s,
        "gflop_per_image": flops / 1e9,
        **utilisation(flops, images_per_s, peak),
    }


def sampler(config, mesh, budget: Budget, peak, context) -> dict[str, Any]:
    import jax
    from flax import nnx

    from diffusion_jax.core import parallel
    from diffusion_jax.core.diffusion.schedules import schedule_from_config
    from diffusion_jax.tasks.conditional_diffusion.denoiser import unet_builder
    from diffusion_jax.tasks.conditional_diffusion.sample_functions import (
        make_sample_fn,
        sampler_options,
    )
    from diffusion_jax.tasks.generation.image_seeds import image_keys

    num_devices = mesh.devices.size
    batch_size = round_up(config.generate.batch_size, num_devices)
    config.generate.batch_size = batch_size
    schedule = schedule_from_config(config.diffusion.beta_schedule, config.diffusion.num_timesteps)
    model = unet_builder(config)(nnx.Rngs(config.seed))
    model.eval()
    graphdef, params = nnx.split(model, nnx.Param)
    params = jax.device_put(params, parallel.replicated(mesh))
    sample_fn = make_sample_fn(graphdef, schedule, config)
    cond = np.random.default_rng(1).normal(size=(batch_size, config.condition.dim))
    cond = (cond / np.linalg.norm(cond, axis=1, keepdims=True)).astype(np.float32)
    cond = jax.device_put(cond, parallel.batch_sharding(mesh))
    indices = np.arange(batch_size)
    keys = jax.device_put(image_keys(0, indices, indices, indices), parallel.batch_sharding(mesh))
    start = time.perf_counter()
    compiled = sample_fn.lower(params, cond, keys).compile()
    compile_s = time.perf_counter() - start
    seconds, calls = median_call_seconds(
        lambda: compiled(params, cond, keys),
        budget.timing_s("sampler"),
        min(budget.max_calls, SAMPLER_MAX_CALLS),
    )
    steps = sampler_options(config.sample, schedule.num_timesteps)["num_steps"]
    guided = config.sample.guidance_scale not in (0, 1)
    flops = flops_per_image(compiled, num_devices, batch_size, repeats=steps)
    images_per_s = batch_size / seconds
    # The generation section reuses the UNet, the compiled sampler (the job's batches have these
    # shapes and shardings, so it is not compiled again) and its time per batch.
    context.update(params=params, sample_fn=compiled, sample_s=seconds)
    return {
        "sampler": config.sample.sampler,
        "num_steps": steps,
        "guidance_scale": config.sample.guidance_scale,
        "network_evaluations_per_image": steps * (2 if guided else 1),
        "batch": batch_size,
        "images_per_s": images_per_s,
        "batch_s": seconds,
        "timed_calls": calls,
        "compile_s": compile_s,
        "gflop_per_image": flops / 1e9,
        **utilisation(flops, images_per_s, peak),
    }


def random_generation_models(config, mesh, context):
    """A `GenerationModels` over random networks (module docstring): its own `draw` and
    `embed_round`, set up as its constructor sets them up from a trained run."""
    from flax import nnx

    from diffusion_jax.core.models.iresnet import IResNet
    from diffusion_jax.tasks.generation.generation_models import GenerationModels
    from diffusion_jax.tasks.generation.training_images import TrainingImages
    from diffusion_jax.tasks.latent.diffusion_space import DiffusionSpace
    from diffusion_jax.tasks.recognition.embeddings import EmbeddingExtractor
    from diffusion_jax.tasks.recognition.encoder_training import encoder_architecture

    if config.diffusion.space != "pixel":
        raise ValueError("the suite draws in pixel space (a latent space needs an autoencoder)")

    class RandomGenerationModels(GenerationModels):
        def __init__(self):  # the parent's constructor loads a trained run; none here
            self.mesh = mesh
            self.params, self.step = context["params"], 0
            architecture = encoder_architecture(config.encoder)
            self.conditioning = EmbeddingExtractor(
                IResNet(**architecture, rngs=nnx.Rngs(config.encoder.seed)), mesh, flip=False
            )
            self.judge = EmbeddingExtractor(
                IResNet(**architecture, rngs=nnx.Rngs(config.encoder.seed + 1)), mesh, flip=False
            )
            self.space = DiffusionSpace(mesh)
            self.sample_fn = context["sample_fn"]
            self.condition_dim = config.condition.dim
            self.round_batch_size = config.generate.images_per_identity
            self.identity = {"random_networks": True}
            per_identity = config.data.images_per_train_identity
            count = config.data.num_train_identities * per_identity
            training = np.random.default_rng(3).normal(size=(count, config.encoder.embedding_dim))
            training /= np.linalg.norm(training, axis=1, keepdims=True)
            labels = np.arange(count, dtype=np.int32) // per_identity
            self.use_training_images(TrainingImages(training.astype(np.float32), labels))

    return RandomGenerationModels()


def generation(config, mesh, budget: Budget, peak, context) -> dict[str, Any]:
    import tqdm

    from diffusion_jax.tasks.generation.shard_drawing import Throughput, draw_shards

    del peak
    models = random_generation_models(config, mesh, context)
    generate = config.generate
    per_shard = generate.identities_per_shard
    # Identities for far more shards than the budget allows; drawing stops at the deadline.
    generate.num_identities = per_shard * 1000
    identities = np.random.default_rng(2).normal(
        size=(generate.num_identities, config.condition.dim)
    )
    identities = (identities / np.linalg.norm(identities, axis=1, keepdims=True)).astype(np.float32)

    def run(shards, seconds: float, max_shards: int) -> tuple[Throughput, float, list]:
        throughput = Throughput()
        completed = []
        deadline = time.perf_counter() + seconds
        start = time.perf_counter()
        with tqdm.tqdm(total=0, disable=True) as progress:
            for shard, records, kept in draw_shards(
                config, models, identities, shards, throughput, progress
            ):
                completed.append((shard, records, kept))
                if time.perf_counter() > deadline or len(completed) >= max_shards:
                    break
        return throughput, time.perf_counter() - start, completed

    start = time.perf_counter()
    run([0], float("inf"), 1)  # warm-up: compiles the embeddings (the sampler is compiled)
    warmup_s = time.perf_counter() - start
    max_shards = 3 if context["quick"] else 1000
    throughput, seconds, completed = run(
        list(range(1, generate.num_identities // per_shard)),
        budget.timing_s("generation"),
        max_shards,
    )
    records = [record for _, shard_records, _ in completed for record in shard_records]
    kept = sum(len(shard_kept) for _, _, shard_kept in completed)
    denoiser_s = throughput.batches * context["sample_s"]
    return {
        "batch": generate.batch_size,
        "images_per_identity": generate.images_per_identity,
        "max_resample_rounds": generate.max_resample_rounds,
        "images_drawn": throughput.images_drawn,
        "batches": throughput.batches,
        "rounds_judged": throughput.rounds_judged,
        "shards_completed": len(completed),
        "seconds": seconds,
        "warmup_s": warmup_s,
        "images_per_s": throughput.images_drawn / seconds,
        "kept_fraction_of_completed_shards": kept / max(1, len(records)),
        "sampler_batch_s": context["sample_s"],
        "share_outside_denoiser": 1.0 - denoiser_s / seconds,
        "device_wait_s": throughput.device_wait_seconds,
        "random_networks": True,
    }


def encoder_train_step(config, mesh, budget: Budget, peak, context) -> dict[str, Any]:
    import jax

    from diffusion_jax.core import parallel
    from diffusion_jax.core.training import state as state_lib
    from diffusion_jax.core.training.step import training_program
    from diffusion_jax.tasks.recognition.encoder_training import encoder_builder, make_margin_loss

    del context
    num_devices = mesh.devices.size
    train_config = config.encoder.train
    batch_size = round_up(train_config.batch_size, num_devices)
    num_classes = config.data.num_train_identities
    build_model = encoder_builder(config, num_classes)
    program = training_program(build_model, make_margin_loss(), train_config, mesh)
    jitted = program.step
    rng = jax.random.key(config.encoder.seed)
    state = state_lib.init_train_state(build_model, program.optimizer, mesh, rng)
    num_params = state_lib.count_params(state.params)
    data = np.random.default_rng(3)
    side = config.encoder.input_resolution
    batch = parallel.global_batch(
        {
            "image": data.uniform(-1, 1, (batch_size, side, side, 3)).astype(np.float32),
            "label": data.integers(0, num_classes, batch_size).astype(np.int32),
        },
        mesh,
    )
    start = time.perf_counter()
    compiled = jitted.lower(state, batch, rng, {}).compile()
    compile_s = time.perf_counter() - start
    holder = [state]

    def step():
        holder[0], metrics = compiled(holder[0], batch, rng, {})
        return metrics["loss"]

    seconds, calls = median_call_seconds(
        step, budget.timing_s("encoder_train_step"), budget.max_calls
    )
    holder.clear()  # the last state: freed before the next section
    del state
    images_per_s = batch_size / seconds
    flops = flops_per_image(compiled, num_devices, batch_size)
    return {
        "architecture": config.encoder.architecture,
        "input_resolution": side,
        "num_classes": num_classes,
        "num_params": num_params,
        "compute_dtype": "float32",
        "mfu_against": "the bf16 dense peak",
        "batch": batch_size,
        "images_per_s": images_per_s,
        "step_s": seconds,
        "timed_calls": calls,
        "compile_s": compile_s,
        "gflop_per_image": flops / 1e9,
        **utilisation(flops, images_per_s, peak),
    }


SECTION_FUNCTIONS = {
    "diffusion_train_step": diffusion_train_step,
    "sampler": sampler,
    "generation": generation,
    "encoder_train_step": encoder_train_step,
}


# ----------------------------------------------------------------------------------------------
# Driver.


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes: a check that everything runs (e.g. on a CPU)",
    )
    parser.add_argument(
        "--time_budget_s",
        type=float,
        default=480.0,
        help="wall-clock budget of the whole suite, seconds",
    )
    parser.add_argument(
        "--reserve_s",
        type=float,
        default=20.0,
        help="a section is skipped when less than this is left",
    )
    parser.add_argument("--output", help="also write the JSON record here")
    args = parser.parse_args(argv)
    if args.time_budget_s <= 0 or args.reserve_s < 0:
        parser.error("--time_budget_s must be positive, --reserve_s non-negative")
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    budget = Budget(args.time_budget_s, args.reserve_s, args.quick)
    import jax

    from diffusion_jax.core import parallel

    config = suite_config(args.quick)
    mesh = parallel.make_mesh(config.mesh)
    device = jax.devices()[0]
    spec = peak_for_device_kind(device.device_kind)
    num_devices = mesh.devices.size
    peak = None if spec is None else spec.peak_bf16_flops * num_devices
    results: dict[str, Any] = {
        "device_kind": device.device_kind,
        "device_count": num_devices,
        "peak_bf16_tflops": None if peak is None else peak / 1e12,
        "peak_source": None if spec is None else spec.source,
        "sections": {},
    }
    context: dict[str, Any] = {"quick": args.quick}
    for name in SECTIONS[:-1]:
        if budget.left() < args.reserve_s or (name == "generation" and "sample_fn" not in context):
            results["sections"][name] = {
                "skipped": "time budget"
                if budget.left() < args.reserve_s
                else "the sampler section did not run"
            }
            continue
        started = time.perf_counter()
        print(f"{name} ...", file=sys.stderr, flush=True)
        report = SECTION_FUNCTIONS[name](config, mesh, budget, peak, context)
        report["section_s"] = time.perf_counter() - started
        report["memory_after"] = memory_now()
        results["sections"][name] = report
    results["sections"]["memory"] = memory_now()
    results["wall_s"] = time.perf_counter() - budget.start
    results["within_budget"] = results["wall_s"] <= args.time_budget_s
    settings = {
        "quick": args.quick,
        "time_budget_s": args.time_budget_s,
        "reserve_s": args.reserve_s,
        "preset": "base (quick: shrunk)" if args.quick else "base",
        "model": config.model.to_dict(),
        "resolution": config.data.resolution,
        "train_batch_size": config.train.batch_size,
        "sample": {key: config.sample[key] for key in ("sampler", "num_steps", "guidance_scale")},
        "generate": {
            key: config.generate[key]
            for key in (
                "batch_size",
                "images_per_identity",
                "identities_per_shard",
                "max_resample_rounds",
                "min_judge_similarity",
                "max_duplicate_similarity",
                "max_training_image_similarity",
            )
        },
        "encoder": {
            "architecture": config.encoder.architecture,
            "input_resolution": config.encoder.input_resolution,
            "batch_size": config.encoder.train.batch_size,
        },
    }
    write_benchmark_json(args.output, "accelerator_suite", rounded(results), settings)


if __name__ == "__main__":
    main(sys.argv[1:])
