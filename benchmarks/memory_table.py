"""Per-device memory, FLOPs per image and the largest batch that fits, for each preset's diffusion
train step on a given accelerator and device count; and how long a dataset of generated images
would take there. Prints the tables, then the JSON record (`--output`: also written there).

The train step is built exactly as training builds it (`core.training.loop.run_training`): the
abstract train state (`state.abstract_train_state`, `jax.eval_shape`, nothing allocated), its
shardings over a (data, fsdp) mesh (`core.parallel`), `make_train_step` over the preset's UNet
and diffusion loss, jitted by `jit_train_step` (state donated). The mesh of a target is the
preset's `config.mesh` over its device count: `base` is data parallel (fsdp=1), `large` shards
parameters over fsdp=4 (on fewer devices than the preset's fsdp, over the largest divisor of the
device count; `--fsdp` overrides, -1: over all devices).

Per device, for each preset and target (device kind x count):

    state        parameters, EMA parameters, optimiser state (AdamW mu and nu, clipping's and
                 the schedule's counters) and the step: the abstract state's leaves, each
                 divided over the shards of its sharding. EXACT (what XLA allocates for them).
    encoder      the conditioning encoder's weights, replicated, which training keeps on the
                 device to embed each batch (config.condition.source == "encoder"). EXACT.
    batch        the step's inputs per image: x_0 and the condition (float32). EXACT.
    temp         XLA's temporary buffers of the step: gradients, optimiser temporaries, the
                 parameters all-gathered over fsdp, and the activations the backward pass
                 keeps. Read from `compiled.memory_analysis()` of the step compiled for the
                 LOCAL backend at `--calibration_batches` images per device (default 4 and
                 16), fitted by a line  temp(b) = fixed + b x per_image  (least squares, with
                 its largest residual, when given more than two), and evaluated at the
                 preset's batch per device. The points should bracket the batches evaluated,
                 away from 1 and 2: XLA:CPU's temp for base is 0.77 and 0.98 GB at 1 and 2
                 images (0.21 GB per image), then 1.61, 5.36 and 20.31 GB at 4, 16 and 64
                 (0.312 GB per image; the line misses none of the three by more than 2 MB).
                 On a CPU-only machine this is XLA:CPU's buffer assignment (other fusion, no
                 cuDNN/TPU layouts): an ESTIMATE of the accelerator's, not its measurement.
    total        state + encoder + batch x b + temp(b) + the step's outputs not aliased to its
                 donated inputs (the metrics).
    max batch    the largest b with total(b) <= --memory_fraction x the device's memory, per
                 device and globally (x device count).

FLOPs per image are XLA's cost analysis of the compiled step (`compiled.cost_analysis()`, per
device): the per-image slope of the calibration compiles, forward + backward of one image (the
optimiser's per-step FLOPs excluded), and, for sampling, of the eval-mode UNet forward compiled
alone. The sampler runs that forward `num_steps` times per image, twice per step with
classifier-free guidance (guidance_scale not 0 or 1: conditional and unconditional in one batch
of 2B); DDPM takes all of the schedule's steps.

Time estimates (ESTIMATES from cited peaks and an ASSUMED utilisation, not measurements):

    images/s = device_count x peak bf16 FLOP/s x --mfu / (FLOPs per image)
    generate --dataset_images:  sampler FLOPs per image = forward FLOPs x passes per image;
        the judge's and the conditioning encoder's embeddings (2 x 11.7 GFLOP of iresnet50 per
        image, encoder_throughput_cpu2.json: 0.4% of a guided 50-step base sample) and redraws
        of rejected images (at most max_resample_rounds per image) are not counted.
    train one epoch over --dataset_images:  train-step FLOPs per image.

Peaks are the data sheets' dense bf16 rates (benchmarks/device_specs.py); --mfu defaults to 0.4,
an assumption (a UNet of this size in bf16 on these chips typically reaches 30-50%).

Compiling for many devices on a CPU: the script asks XLA for virtual host devices
(--xla_force_host_platform_device_count) before JAX starts. By default (`--compile_mesh=fsdp`)
each target's step is compiled on a mesh of its fsdp size alone (data=1): the per-device program
of the full mesh less the data-axis all-reduce of the gradients, whose buffers are the gradients
already counted in temp; base's calibration then serves every device count. `--compile_mesh=full`
compiles each target's whole mesh instead.

    python benchmarks/memory_table.py                                   # base,large; 4 targets
    python benchmarks/memory_table.py --presets=base --device_kind=h100 --device_count=1,8
    python benchmarks/memory_table.py --calibration_batches=4,16,64 \
        --output=benchmarks/results/memory_table_cpu2.json
    python benchmarks/memory_table.py --quick --output=/tmp/memory_table.json   # seconds

`--quick` is a check that it runs: the presets (default demo) shrunk to tiny sizes
(benchmarks/presets.py shrink_for_quick), one H100 and 8 (unless --device_kind is given), and
calibration compiles at 2 and 4 images per device; its numbers describe the tiny networks.
"""

import argparse
import dataclasses
import math
import os
import pathlib
import sys
import time
from typing import Any

# device_specs.py sits beside this script (Python puts the script's directory on its path).
from device_specs import DEVICE_SPECS, DeviceSpec
from presets import load_preset, shrink_for_quick

from diffusion_jax.benchmark_record import write_benchmark_json

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# (device kind, device count): one H100, 8 H100s, a TPU v5e-16 slice (16 chips) and a TPU v4-32
# slice (32 TensorCores = 16 chips; JAX sees one device per v4 chip).
DEFAULT_TARGETS = (("h100", 1), ("h100", 8), ("tpu_v5e", 16), ("tpu_v4", 16))
TARGET_LABELS = {("tpu_v5e", 16): "TPU v5e-16", ("tpu_v4", 16): "TPU v4-32 (16 chips)"}


@dataclasses.dataclass(frozen=True)
class Target:
    kind: str
    count: int

    @property
    def spec(self) -> DeviceSpec:
        return DEVICE_SPECS[self.kind]

    @property
    def label(self) -> str:
        default = f"{self.count} x {self.spec.name}" if self.count > 1 else self.spec.name
        return TARGET_LABELS.get((self.kind, self.count), default)


def target_mesh(config, count: int, fsdp_override: int | None) -> tuple[int, int, str]:
    """(data, fsdp, note) of the preset's mesh over `count` devices (module docstring)."""
    fsdp = config.mesh.fsdp if fsdp_override is None else fsdp_override
    note = ""
    if fsdp == -1:
        fsdp = count
    if count % fsdp:
        adjusted = math.gcd(fsdp, count)
        note = f"the preset's fsdp={fsdp} does not divide {count} devices: fsdp={adjusted}"
        fsdp = adjusted
    if config.mesh.data not in (-1, count // fsdp) and fsdp_override is None:
        note = (note + "; " if note else "") + f"mesh.data={config.mesh.data} ignored"
    return count // fsdp, fsdp, note


def fit_line(points: list[tuple[int, float]]) -> tuple[float, float, float]:
    """Least-squares (intercept, slope, largest absolute residual) of y over x."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var_x = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / var_x
    intercept = mean_y - slope * mean_x
    residual = max(abs(y - intercept - slope * x) for x, y in points)
    return intercept, slope, residual


# ----------------------------------------------------------------------------------------------
# JAX (imported only in main, after XLA_FLAGS is set).


def abstract_train_state(config):
    """The preset's abstract train state (`jax.eval_shape`, no allocation)."""
    from diffusion_jax.core.training import state as state_lib
    from diffusion_jax.tasks.conditional_diffusion.denoiser import unet_builder

    optimizer, _ = state_lib.make_optimizer(config.train)
    return state_lib.abstract_train_state(unet_builder(config), optimizer)


def state_bytes_per_device(abstract_state, data: int, fsdp: int) -> dict[str, int]:
    """Bytes per device of each part of the train state in its shardings over a (data, fsdp)
    mesh, from `parallel.state_shardings` over an abstract mesh (no devices needed)."""
    import jax
    from jax.sharding import AbstractMesh, AxisType

    from diffusion_jax.core import parallel

    mesh = AbstractMesh((data, fsdp), parallel.DATA_AXES, axis_types=(AxisType.Auto, AxisType.Auto))
    shardings = parallel.state_shardings(mesh, abstract_state)

    def part_bytes(leaves, part_shardings) -> int:
        total = 0
        for leaf, sharding in zip(jax.tree.leaves(leaves), jax.tree.leaves(part_shardings)):
            total += math.prod(sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
        return total

    parts = {
        "params": (abstract_state.params, shardings.params),
        "ema_params": (abstract_state.ema_params, shardings.ema_params),
        "opt_state": (abstract_state.opt_state, shardings.opt_state),
        "step_and_model_state": (
            (abstract_state.step, abstract_state.model_state),
            (shardings.step, shardings.model_state),
        ),
    }
    result = {name: part_bytes(*pair) for name, pair in parts.items()}
    result["total"] = sum(result.values())
    return result


def encoder_weight_bytes(config) -> int:
    """Bytes of the conditioning encoder's weights (replicated), 0 without an encoder."""
    if config.condition.source != "encoder":
        return 0
    import jax
    from flax import nnx

    from diffusion_jax.core.models.iresnet import IResNet
    from diffusion_jax.tasks.recognition.encoder_training import encoder_architecture

    abstract = nnx.eval_shape(
        lambda: IResNet(**encoder_architecture(config.encoder), rngs=nnx.Rngs(0))
    )
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(nnx.state(abstract)))


def batch_bytes_per_image(config) -> int:
    from diffusion_jax.tasks.latent.diffusion_space import diffusion_shape

    side, channels = diffusion_shape(config)
    return 4 * (side * side * channels + config.condition.dim)


def compile_train_step(config, devices, data: int, fsdp: int, per_device_batch: int) -> dict:
    """Compiles the preset's train step as training does over a (data, fsdp) mesh of `devices`
    at `per_device_batch` images per device; XLA's memory and cost analyses (per device)."""
    import jax
    import jax.numpy as jnp
    import ml_collections

    from diffusion_jax.core import parallel
    from diffusion_jax.core.diffusion.schedules import schedule_from_config
    from diffusion_jax.core.training.step import training_program
    from diffusion_jax.tasks.conditional_diffusion.denoiser import make_diffusion_loss, unet_builder
    from diffusion_jax.tasks.latent.diffusion_space import diffusion_shape

    mesh = parallel.make_mesh(
        ml_collections.ConfigDict({"data": data, "fsdp": fsdp}), devices[: data * fsdp]
    )
    schedule = schedule_from_config(config.diffusion.beta_schedule, config.diffusion.num_timesteps)
    program = training_program(
        unet_builder(config), make_diffusion_loss(schedule, config), config.train, mesh
    )
    abstract_state, jitted = program.abstract_state, program.step
    global_batch = per_device_batch * data * fsdp
    side, channels = diffusion_shape(config)
    batch = {
        "x0": jax.ShapeDtypeStruct((global_batch, side, side, channels), jnp.float32),
        "cond": jax.ShapeDtypeStruct((global_batch, config.condition.dim), jnp.float32),
    }
    key = jax.eval_shape(lambda: jax.random.key(0))
    start = time.perf_counter()
    compiled = jitted.lower(abstract_state, batch, key, {}).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    return {
        "per_device_batch": per_device_batch,
        "mesh": {"data": data, "fsdp": fsdp},
        "argument_bytes": memory.argument_size_in_bytes,
        "output_bytes": memory.output_size_in_bytes,
        "alias_bytes": memory.alias_size_in_bytes,
        "temp_bytes": memory.temp_size_in_bytes,
        "flops": compiled.cost_analysis()["flops"],
        "compile_s": compile_s,
    }


def compile_forward(config, device, batch_size: int) -> dict:
    """The eval-mode UNet forward (one sampler network evaluation) on one device: FLOPs per
    image from XLA's cost analysis."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from diffusion_jax.tasks.conditional_diffusion.denoiser import unet_builder
    from diffusion_jax.tasks.latent.diffusion_space import diffusion_shape

    abstract_model = nnx.eval_shape(lambda: unet_builder(config)(nnx.Rngs(0)))
    graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)

    def forward(params, x_t, t, cond, cond_mask):
        model = nnx.merge(graphdef, params)
        model.eval()
        return model(x_t, t, cond, cond_mask)

    side, channels = diffusion_shape(config)
    args = (
        abstract_params,
        jax.ShapeDtypeStruct((batch_size, side, side, channels), jnp.float32),
        jax.ShapeDtypeStruct((batch_size,), jnp.int32),
        jax.ShapeDtypeStruct((batch_size, config.condition.dim), jnp.float32),
        jax.ShapeDtypeStruct((batch_size,), jnp.bool_),
    )
    start = time.perf_counter()
    with jax.default_device(device):
        compiled = jax.jit(forward).lower(*args).compile()
    return {
        "batch": batch_size,
        "flops_per_image": compiled.cost_analysis()["flops"] / batch_size,
        "compile_s": time.perf_counter() - start,
    }


def sampler_passes(config) -> dict[str, Any]:
    """UNet forward passes per sampled image under `config.sample`."""
    from diffusion_jax.tasks.conditional_diffusion.sample_functions import sampler_options

    steps = sampler_options(config.sample, config.diffusion.num_timesteps)["num_steps"]
    guided = config.sample.guidance_scale not in (0, 1)
    return {
        "sampler": config.sample.sampler,
        "num_steps": steps,
        "guidance_scale": config.sample.guidance_scale,
        "passes_per_image": steps * (2 if guided else 1),
    }


# ----------------------------------------------------------------------------------------------
# The table.


def calibrate(config, devices, data, fsdp, batches, log) -> dict:
    """Compiles at each calibration batch and fits temp and FLOPs by lines in the batch."""
    points = []
    for batch in batches:
        log(f"  compiling the train step: mesh data={data} fsdp={fsdp}, {batch} image(s)/device")
        points.append(compile_train_step(config, devices, data, fsdp, batch))
        log(f"    {points[-1]['compile_s']:.0f} s; temp {points[-1]['temp_bytes'] / 1e9:.3f} GB")
    temp_fixed, temp_per_image, temp_residual = fit_line(
        [(p["per_device_batch"], p["temp_bytes"]) for p in points]
    )
    flops_fixed, flops_per_image, _ = fit_line(
        [(p["per_device_batch"], p["flops"]) for p in points]
    )
    return {
        "compiles": points,
        "temp_fixed_bytes": temp_fixed,
        "temp_per_image_bytes": temp_per_image,
        "temp_fit_max_residual_bytes": temp_residual,
        "train_flops_per_image": flops_per_image,
        "train_flops_fixed_per_step": flops_fixed,
        # Outputs other than the donated state (the metrics), and arguments other than the
        # state and the batch (the key): tiny, but counted.
        "unaliased_output_bytes": points[0]["output_bytes"] - points[0]["alias_bytes"],
    }


def table_row(
    config,
    target,
    mesh,
    calibration,
    state_bytes,
    encoder_bytes,
    per_image_input,
    forward,
    passes,
    args,
) -> dict:
    data, fsdp, note = mesh
    spec = target.spec
    global_batch = config.train.batch_size
    per_device_batch = global_batch / target.count
    temp = calibration["temp_fixed_bytes"] + calibration["temp_per_image_bytes"] * per_device_batch
    activations = calibration["temp_per_image_bytes"] * per_device_batch
    fixed = (
        state_bytes["total"]
        + encoder_bytes
        + calibration["temp_fixed_bytes"]
        + calibration["unaliased_output_bytes"]
    )
    total = fixed + per_image_input * per_device_batch + activations
    usable = spec.memory_bytes * args.memory_fraction
    per_image = calibration["temp_per_image_bytes"] + per_image_input
    max_per_device = max(0, math.floor((usable - fixed) / per_image)) if per_image > 0 else None
    peak = spec.peak_bf16_flops * target.count
    sampler_flops = forward["flops_per_image"] * passes["passes_per_image"]
    generate_images_per_s = peak * args.mfu / sampler_flops
    train_images_per_s = peak * args.mfu / calibration["train_flops_per_image"]
    return {
        "target": target.label,
        "device_kind": target.kind,
        "device_count": target.count,
        "device_memory_bytes": spec.memory_bytes,
        "usable_memory_bytes": usable,
        "mesh": {"data": data, "fsdp": fsdp, "note": note},
        "global_batch": global_batch,
        "per_device_batch": per_device_batch,
        "per_device_bytes": {
            "params": state_bytes["params"],
            "ema_params": state_bytes["ema_params"],
            "opt_state": state_bytes["opt_state"],
            "step_and_model_state": state_bytes["step_and_model_state"],
            "state_total": state_bytes["total"],
            "conditioning_encoder": encoder_bytes,
            "batch_inputs": per_image_input * per_device_batch,
            "temp_fixed": calibration["temp_fixed_bytes"],
            "activations": activations,
            "temp": temp,
            "total": total,
        },
        "fits": total <= usable,
        "max_batch_per_device": max_per_device,
        "max_global_batch": None if max_per_device is None else max_per_device * target.count,
        "train_flops_per_image": calibration["train_flops_per_image"],
        "sampler_flops_per_image": sampler_flops,
        "estimates": {
            "kind": "estimate: cited peak x assumed MFU, not measured",
            "peak_bf16_flops_total": peak,
            "peak_source": spec.source,
            "mfu_assumed": args.mfu,
            "generate_images_per_s": generate_images_per_s,
            "generate_dataset_hours": args.dataset_images / generate_images_per_s / 3600,
            "train_images_per_s": train_images_per_s,
            "train_epoch_hours": args.dataset_images / train_images_per_s / 3600,
        },
    }


def gb(value: float) -> str:
    return f"{value / 1e9:.2f}"


def markdown_tables(results: dict, args) -> str:
    lines = []
    for preset, entry in results["presets"].items():
        lines += [
            f"### `{preset}`: {entry['num_params'] / 1e6:.1f}M parameters, "
            f"{entry['resolution']}x{entry['resolution']} {entry['space']}, global batch "
            f"{entry['global_batch']}",
            "",
            "| target | mesh (data x fsdp) | batch / device | params GB | EMA GB | optimiser GB "
            "| encoder GB | temp fixed GB | activations GB | total GB | fits | max batch / "
            "device (global) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in entry["targets"]:
            b = row["per_device_bytes"]
            mesh = row["mesh"]
            lines.append(
                f"| {row['target']} | {mesh['data']} x {mesh['fsdp']} | "
                f"{row['per_device_batch']:g} | {gb(b['params'])} | {gb(b['ema_params'])} | "
                f"{gb(b['opt_state'])} | {gb(b['conditioning_encoder'])} | "
                f"{gb(b['temp_fixed'])} | {gb(b['activations'])} | {gb(b['total'])} | "
                f"{'yes' if row['fits'] else 'no'} | {row['max_batch_per_device']} "
                f"({row['max_global_batch']}) |"
            )
        lines += [
            "",
            f"FLOPs per image: train step {entry['train_flops_per_image'] / 1e9:.4g} GFLOP "
            f"(forward + backward); UNet forward {entry['forward_flops_per_image'] / 1e9:.2f} "
            f"GFLOP x {entry['sampler']['passes_per_image']} passes "
            f"({entry['sampler']['sampler']}, {entry['sampler']['num_steps']} steps, guidance "
            f"{entry['sampler']['guidance_scale']}) = "
            f"{entry['sampler_flops_per_image'] / 1e9:,.4g} GFLOP per sampled image.",
            "",
            f"| target | peak bf16 PFLOP/s (cited) | generate img/s at {args.mfu:.0%} MFU "
            f"(assumed) | {args.dataset_images:,} images: hours | train img/s | one epoch: "
            "hours |",
            "|---|---|---|---|---|---|",
        ]
        for row in entry["targets"]:
            e = row["estimates"]
            lines.append(
                f"| {row['target']} | {e['peak_bf16_flops_total'] / 1e15:.2f} | "
                f"{e['generate_images_per_s']:,.0f} | {e['generate_dataset_hours']:.3g} | "
                f"{e['train_images_per_s']:,.0f} | {e['train_epoch_hours']:.3g} |"
            )
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Driver.


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--presets",
        default="base,large",
        help="comma-separated presets of configs/faces.py (PRESET[,SPACE])",
    )
    parser.add_argument(
        "--device_kind",
        choices=sorted(DEVICE_SPECS),
        help="one device kind (default: the four targets "
        + ", ".join(f"{k}:{c}" for k, c in DEFAULT_TARGETS)
        + ")",
    )
    parser.add_argument(
        "--device_count",
        default="1",
        help="comma-separated device counts of --device_kind (e.g. 1,8,16,32)",
    )
    parser.add_argument(
        "--fsdp", type=int, help="fsdp size of every target (default: the preset's mesh; -1: all)"
    )
    parser.add_argument(
        "--calibration_batches",
        default="4,16",
        help="images per device the step is compiled at (two or more)",
    )
    parser.add_argument(
        "--compile_mesh",
        choices=("fsdp", "full"),
        default="fsdp",
        help="compile on data=1 x fsdp devices (default) or the target's mesh",
    )
    parser.add_argument(
        "--memory_fraction",
        type=float,
        default=1.0,
        help="share of the device memory usable by the step",
    )
    parser.add_argument(
        "--mfu",
        type=float,
        default=0.4,
        help="ASSUMED model FLOP utilisation of the time estimates",
    )
    parser.add_argument(
        "--dataset_images",
        type=int,
        default=500_000,
        help="images of the dataset the time estimates are for",
    )
    parser.add_argument("--output", help="also write the JSON record here")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a check that it runs, in seconds: the presets (default demo) at tiny sizes, "
        "h100 x 1 and 8, calibration batches 2,4",
    )
    args = parser.parse_args(argv)
    if args.quick:
        if args.presets == parser.get_default("presets"):
            args.presets = "demo"
        if not args.device_kind:
            args.device_kind, args.device_count = "h100", "1,8"
        if args.calibration_batches == parser.get_default("calibration_batches"):
            args.calibration_batches = "2,4"
    # "base,large" -> base, large; "base,latent,large" -> "base,latent", large (a space name
    # joins the preset before it).
    presets = []
    for part in filter(None, args.presets.split(",")):
        if part in ("pixel", "latent") and presets:
            presets[-1] += "," + part
        else:
            presets.append(part)
    args.presets = presets
    if args.device_kind:
        counts = [int(c) for c in args.device_count.split(",")]
        if any(c < 1 for c in counts):
            parser.error(f"--device_count={args.device_count}: counts must be positive")
        args.targets = [Target(args.device_kind, c) for c in counts]
    else:
        args.targets = [Target(k, c) for k, c in DEFAULT_TARGETS]
    args.calibration_batches = sorted({int(b) for b in args.calibration_batches.split(",")})
    if len(args.calibration_batches) < 2 or args.calibration_batches[0] < 1:
        parser.error("--calibration_batches: two or more distinct positive batches")
    if not 0 < args.mfu <= 1 or not 0 < args.memory_fraction <= 1:
        parser.error("--mfu and --memory_fraction must lie in (0, 1]")
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    try:
        configs = {preset: load_preset(preset) for preset in args.presets}
    except ValueError as error:
        sys.exit(f"--presets: {error}")
    if args.quick:
        for config in configs.values():
            shrink_for_quick(config)
    meshes = {
        (preset, target): target_mesh(config, target.count, args.fsdp)
        for preset, config in configs.items()
        for target in args.targets
    }

    def compile_shape(mesh, target) -> tuple[int, int]:
        data, fsdp, _ = mesh
        return (1, fsdp) if args.compile_mesh == "fsdp" else (data, fsdp)

    needed = max(math.prod(compile_shape(meshes[key], key[1])) for key in meshes)
    flag = f"--xla_force_host_platform_device_count={needed}"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()

    import jax

    from diffusion_jax.core.training import state as state_lib

    backend = jax.default_backend()
    devices = jax.devices()
    if len(devices) < needed:  # an accelerator with fewer devices: compile on virtual CPUs
        devices = jax.devices("cpu")
        backend = "cpu"

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    results = {"compiled_for": backend, "presets": {}}
    for preset, config in configs.items():
        log(f"{preset}:")
        abstract_state = abstract_train_state(config)
        calibrations = {}
        for target in args.targets:
            shape = compile_shape(meshes[(preset, target)], target)
            if shape not in calibrations:
                calibrations[shape] = calibrate(
                    config, devices, *shape, args.calibration_batches, log
                )
        log("  compiling the UNet forward")
        forward = compile_forward(config, devices[0], 1)
        passes = sampler_passes(config)
        encoder_bytes = encoder_weight_bytes(config)
        per_image_input = batch_bytes_per_image(config)
        rows = []
        for target in args.targets:
            mesh = meshes[(preset, target)]
            calibration = calibrations[compile_shape(mesh, target)]
            rows.append(
                table_row(
                    config,
                    target,
                    mesh,
                    calibration,
                    state_bytes_per_device(abstract_state, mesh[0], mesh[1]),
                    encoder_bytes,
                    per_image_input,
                    forward,
                    passes,
                    args,
                )
            )
        first = calibrations[next(iter(calibrations))]
        results["presets"][preset] = {
            "num_params": state_lib.count_params(abstract_state.params),
            "resolution": config.data.resolution,
            "space": config.diffusion.space,
            "model_dtype": config.model.dtype,
            "global_batch": config.train.batch_size,
            "preset_mesh": config.mesh.to_dict(),
            "train_flops_per_image": first["train_flops_per_image"],
            "forward_flops_per_image": forward["flops_per_image"],
            "forward_compile_s": forward["compile_s"],
            "sampler": passes,
            "sampler_flops_per_image": forward["flops_per_image"] * passes["passes_per_image"],
            "calibrations": {
                f"data{shape[0]}_fsdp{shape[1]}": calibration
                for shape, calibration in calibrations.items()
            },
            "targets": rows,
        }
    results["notes"] = {
        "exact": "state (params, EMA, optimiser), conditioning-encoder weights and batch inputs: "
        "sums of the abstract leaves' shard sizes",
        "estimated": f"temp and activations: XLA:{backend.upper()} buffer assignment of the step "
        "compiled for this machine, fitted linearly in the batch"
        + (" -- an estimate of an accelerator's" if backend == "cpu" else ""),
        "time": "images/s and hours: cited dense bf16 peaks x the assumed MFU over XLA's FLOPs; "
        "not measured",
    }
    print(markdown_tables(results, args))
    settings = {
        "presets": list(configs),
        "targets": [dataclasses.asdict(t) for t in args.targets],
        "fsdp": args.fsdp,
        "calibration_batches": args.calibration_batches,
        "compile_mesh": args.compile_mesh,
        "memory_fraction": args.memory_fraction,
        "mfu_assumed": args.mfu,
        "dataset_images": args.dataset_images,
        "virtual_host_devices": needed,
        "quick": args.quick,
    }
    write_benchmark_json(args.output, "memory_table", results, settings)


if __name__ == "__main__":
    main(sys.argv[1:])
