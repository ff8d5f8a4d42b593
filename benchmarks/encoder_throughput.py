"""Throughput of the identity encoder (IResNet) in JAX, and of a PyTorch twin doing the same work,
measured in the same run; prints JSON.

Each size is a preset of configs/faces.py, with its `config.encoder` (architecture, input
resolution, margin head and scale, optimiser settings). Two phases are measured per size and
framework, on the same batch of images at the encoder's input resolution (so neither side
resizes) and, for training, the same labels over NUM_CLASSES identities:

    embed       unit-norm embeddings of a batch, eval mode, no mirror flip.
                JAX: `recognition.embeddings.EmbeddingExtractor(flip=False)` on a mesh of the local
                devices. Twin: `diffusion_jax.torch_twins.iresnet` in eval mode under
                `torch.inference_mode`, then L2 normalisation.
    train_step  one optimiser step of the encoder and its margin-softmax head.
                JAX: the project's shared step, `core.training.step.make_train_step` over
                `encoder_builder(config, NUM_CLASSES)` and `make_margin_loss()`, jitted by
                `jit_train_step` (gradient clipping, AdamW, EMA, metrics included).
                Twin: the torch IResNet in train mode, a normalised-weight margin head with the
                preset's margins and scale, cross entropy, global-norm clipping and AdamW with the
                preset's learning rate and weight decay.

Reported per phase: images/s, GFLOP per image from XLA's cost analysis (of the JAX program; the
twin does the same arithmetic), compile time, peak resident memory, and jax/torch ratios. Each
measurement runs in a fresh process, so its peak resident memory is its own and JAX's and
PyTorch's thread pools never compete for the cores. The timing helpers are those of
`unet_throughput.py`. The report is a `diffusion_jax.benchmark_record` (commit, machine, command
line, settings, results).

    python benchmarks/encoder_throughput.py --quick
    python benchmarks/encoder_throughput.py --sizes=demo,base
    python benchmarks/encoder_throughput.py --sizes=base --batch=32 --output=/tmp/encoder.json
"""

import argparse
import importlib.metadata
import importlib.util
import math
import os
import pathlib
import sys
import time
from typing import Any

import ml_collections
import numpy as np

# unet_throughput.py sits beside this script, and Python looks for modules first in the directory
# of the script it runs (spawned workers too: they start with the parent's module path).
from presets import shrink_for_quick
from unet_throughput import (
    by_metric,
    images_per_second,
    in_fresh_process,
    load_preset,
    peak_rss_mb,
    rounded,
)

from diffusion_jax.benchmark_record import write_benchmark_json

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PHASES = ("embed", "train_step")
NUM_CLASSES = 200  # identities of the margin head (the demo preset's training identities)
# On a CPU the default batch is the preset's encoder batch, capped at the pixels of 16 images of
# 112x112 (demo: 64 at 32x32, base: 16).
CPU_BATCH_PIXELS = 16 * 112 * 112
DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "encoder_throughput_cpu2.json"


def default_batch_size(config: ml_collections.ConfigDict, platform: str) -> int:
    batch_size = config.encoder.train.batch_size
    if platform != "cpu":
        return batch_size
    return max(1, min(batch_size, CPU_BATCH_PIXELS // config.encoder.input_resolution**2))


def make_batch(config: ml_collections.ConfigDict, batch_size: int) -> dict[str, np.ndarray]:
    """NHWC images uniform in [-1, 1] at the encoder's input resolution, and labels."""
    rng = np.random.default_rng(config.seed)
    size = config.encoder.input_resolution
    return {
        "image": rng.uniform(-1, 1, size=(batch_size, size, size, 3)).astype(np.float32),
        "label": rng.integers(0, NUM_CLASSES, size=batch_size).astype(np.int32),
    }


def project_constants(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What the twin takes from diffusion_jax: the IResNet's architecture arguments, the head's
    margins (m1, m2, m3) and its cosine clip, and the platform JAX runs on. Computed once in a
    process of its own so that the PyTorch processes never import JAX."""
    import jax

    from diffusion_jax.core.models.margin_heads import COSINE_CLIP, margins_for
    from diffusion_jax.tasks.recognition.encoder_training import encoder_architecture

    encoder = config.encoder
    return {
        "architecture": encoder_architecture(encoder),
        "margins": margins_for(encoder.head, *(encoder.margins or (None,) * 3)),
        "cosine_clip": COSINE_CLIP,
        "platform": jax.devices()[0].platform,
    }


# ----------------------------------------------------------------------------------------------
# JAX: the project's own code.


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
    from diffusion_jax.core.models.iresnet import IResNet
    from diffusion_jax.core.training import state as state_lib
    from diffusion_jax.core.training.step import training_program
    from diffusion_jax.tasks.recognition.embeddings import EmbeddingExtractor
    from diffusion_jax.tasks.recognition.encoder_training import (
        encoder_architecture,
        encoder_builder,
        make_margin_loss,
    )

    mesh = parallel.make_mesh(config.mesh)
    batch = make_batch(config, batch_size)
    rng = jax.random.key(config.encoder.seed)
    if phase == "train_step":
        train_config = config.encoder.train
        build_model = encoder_builder(config, num_classes=NUM_CLASSES)
        program = training_program(build_model, make_margin_loss(), train_config, mesh)
        jitted = program.step
        state = state_lib.init_train_state(build_model, program.optimizer, mesh, rng)
        num_params = state_lib.count_params(state.params)
        args = [state, parallel.global_batch(batch, mesh), rng, {}]
    else:
        model = IResNet(**encoder_architecture(config.encoder), rngs=nnx.Rngs(rng))
        num_params = state_lib.count_params(nnx.state(model, nnx.Param))
        extractor = EmbeddingExtractor(model, mesh, flip=False)
        # The extractor's own jitted function, compiled ahead of time so that compilation is
        # timed apart and XLA's cost analysis can be read; `extractor(images)` calls the same.
        jitted = extractor.embed_sharded
        args = [extractor.weights, parallel.global_batch({"image": batch["image"]}, mesh)["image"]]

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
    return {
        "images_per_s": images_per_s,
        "timed_calls": timed_calls,
        "gflop_per_image": compiled.cost_analysis()["flops"] / batch_size / 1e9,
        "compile_s": compile_s,
        "xla_temp_mb": compiled.memory_analysis().temp_size_in_bytes / 2**20,
        "num_params": num_params,
        "peak_rss_mb": peak_rss_mb(),
    }


# ----------------------------------------------------------------------------------------------
# PyTorch twin.


def torch_margin_logits(
    cosines, labels, *, scale: float, margins: tuple[float, float, float], cosine_clip: float
):
    """`margin_heads.margin_logits` in torch: s * cos off target, s * (cos(m1 theta + m2)
    - m3) at the target, with the same fallback past theta_0 and the same cosine clip; for
    CosFace (m1 = 1, m2 = 0), s * (cos - m3) at the target without arccos."""
    import torch

    m1, m2, m3 = margins
    target = cosines.gather(1, labels[:, None])
    if m1 == 1.0 and m2 == 0.0:
        target_with_margin = target - m3
    else:
        theta = torch.acos(target.clamp(-1.0 + cosine_clip, 1.0 - cosine_clip))
        angle = m1 * theta + m2
        theta_0 = (math.pi - m2) / m1
        fallback = target - math.sin(theta_0) * (math.pi - theta_0)
        target_with_margin = torch.where(angle <= math.pi, torch.cos(angle), fallback) - m3
    return scale * cosines.scatter(1, labels[:, None], target_with_margin)


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
    """Times one phase of the twin (see the module docstring), on the inputs the JAX phase gets."""
    import torch
    import torch.nn.functional as F

    from diffusion_jax.torch_twins import iresnet as torch_iresnet

    torch.set_num_threads(threads)
    torch.manual_seed(config.encoder.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    encoder = config.encoder
    model = torch_iresnet.build(constants["architecture"]).to(device)
    batch = make_batch(config, batch_size)
    images = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).contiguous().to(device)
    labels = torch.from_numpy(batch["label"]).long().to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]

    if phase == "train_step":
        centres = torch.nn.Parameter(
            0.01 * torch.randn(encoder.embedding_dim, NUM_CLASSES, device=device)
        )
        trainable.append(centres)
        optimizer = torch.optim.AdamW(
            trainable,
            lr=encoder.train.learning_rate,
            betas=(0.9, 0.999),
            eps=1e-8,
            weight_decay=encoder.train.weight_decay,
        )
        model.train()

        def work():
            optimizer.zero_grad(set_to_none=True)
            embeddings = model(images)
            cosines = F.normalize(embeddings, dim=1) @ F.normalize(centres, dim=0)
            logits = torch_margin_logits(
                cosines,
                labels,
                scale=encoder.margin_scale,
                margins=constants["margins"],
                cosine_clip=constants["cosine_clip"],
            )
            loss = F.cross_entropy(logits, labels)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, encoder.train.grad_clip_norm)
            optimizer.step()
            # The metrics the JAX step returns (its learning rate is a schedule's value).
            accuracy = (cosines.detach().argmax(1) == labels).float().mean()
            return {"loss": loss.detach(), "grad_norm": grad_norm, "accuracy": accuracy}

    else:
        model.eval()

        def work():
            with torch.inference_mode():
                return F.normalize(model(images), dim=1)

    def run_once():
        work()
        synchronize()

    images_per_s, timed_calls = images_per_second(
        run_once, batch_size, iterations, warmup, budget_s
    )
    return {
        "images_per_s": images_per_s,
        "timed_calls": timed_calls,
        "num_params": sum(p.numel() for p in trainable),
        "peak_rss_mb": peak_rss_mb(),
    }


# ----------------------------------------------------------------------------------------------
# Driver.


def benchmark_preset(config: ml_collections.ConfigDict, args: argparse.Namespace) -> dict[str, Any]:
    """The report of one size: JAX's phases, then the twin's, each in a fresh process."""
    constants = in_fresh_process(project_constants, config)
    batch_size = args.batch or default_batch_size(config, constants["platform"])
    timing = (batch_size, args.iterations, args.warmup, args.budget_s)
    jax_result = by_metric(
        {phase: in_fresh_process(measure_jax, phase, config, *timing) for phase in PHASES}
    )
    gflop_per_image = jax_result.pop("gflop_per_image")
    num_params = jax_result.pop("num_params")
    entry = {
        "config": {
            "architecture": config.encoder.architecture,
            "input_resolution": config.encoder.input_resolution,
            "embedding_dim": config.encoder.embedding_dim,
            "head": config.encoder.head,
            "margins": list(constants["margins"]),
            "margin_scale": config.encoder.margin_scale,
            "num_classes": NUM_CLASSES,
            "train": {
                key: config.encoder.train[key]
                for key in ("learning_rate", "weight_decay", "grad_clip_norm", "ema_decay")
            },
        },
        "platform": constants["platform"],
        "batch": batch_size,
        "num_params": num_params,  # embed: the backbone; train_step: backbone + head
        "gflop_per_image": gflop_per_image,
        "jax": jax_result,
    }
    if args.with_torch:
        torch_result = by_metric(
            {
                phase: in_fresh_process(
                    measure_torch, phase, config, constants, *timing, args.threads
                )
                for phase in PHASES
            }
        )
        torch_params = torch_result.pop("num_params")
        assert torch_params == num_params, (
            f"the torch twin trains {torch_params} parameters, the JAX encoder {num_params}"
        )
        entry["torch"] = {
            "threads": args.threads,
            "torch_version": importlib.metadata.version("torch"),
            **torch_result,
        }
        entry["jax_over_torch"] = {
            phase: jax_result["images_per_s"][phase] / torch_result["images_per_s"][phase]
            for phase in PHASES
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
        help="batch size (default: the preset's config.encoder.train.batch_size; on a CPU at "
        f"most {CPU_BATCH_PIXELS} pixels, e.g. base: 16)",
    )
    parser.add_argument("--iterations", type=int, default=10, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    parser.add_argument(
        "--budget-s", type=float, default=60.0, help="seconds of calls after which timing stops"
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: the CPU count; --quick: 1)"
    )
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch twin")
    parser.add_argument(
        "--output",
        help=f"also write the JSON report to this file (default: {DEFAULT_OUTPUT}; with --quick, "
        "none; '' for none)",
    )
    parser.add_argument("--note", help="a remark stored in the report (e.g. other load)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a check that everything runs, in seconds: the presets of --sizes (default demo) "
        "shrunk to tiny sizes (benchmarks/presets.py shrink_for_quick: their encoder heads and "
        "optimisers kept), batch 8, 2 iterations, 1 warmup, a 5 s budget, 1 torch thread",
    )
    args = parser.parse_args(argv)
    # One torch thread in --quick: on a busy CPU (CI, another quick mode beside it) its thread
    # pool spins, and a tiny forward pass took 2 s with 2 threads, 3 ms with 1.
    if args.threads is None:
        args.threads = 1 if args.quick else os.cpu_count()
    if args.quick:
        if args.sizes == parser.get_default("sizes"):
            args.sizes = "demo"
        args.batch, args.iterations, args.warmup = args.batch or 8, 2, 1
        args.budget_s = min(args.budget_s, 5.0)
    if args.output is None:
        args.output = "" if args.quick else str(DEFAULT_OUTPUT)
    args.sizes = args.sizes.split(",")
    for name in ("batch", "iterations", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name}={value} must be positive")
    if args.warmup < 0:
        parser.error(f"--warmup={args.warmup} must be non-negative")
    if not args.budget_s > 0:
        parser.error(f"--budget-s={args.budget_s} must be positive")
    try:
        args.configs = {size: load_preset(size) for size in args.sizes}
    except ValueError as error:
        parser.error(f"--sizes={','.join(args.sizes)}: {error}")
    if args.quick:
        for config in args.configs.values():
            shrink_for_quick(config)
    args.with_torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    results = {
        "sizes": {size: benchmark_preset(config, args) for size, config in args.configs.items()}
    }
    settings = {
        "sizes": args.sizes,
        "batch": args.batch,
        "iterations": args.iterations,
        "warmup": args.warmup,
        "budget_s": args.budget_s,
        "threads": args.threads,
        "with_torch": args.with_torch,
        "quick": args.quick,
        **({"note": args.note} if args.note else {}),
    }
    # The record reads the machine now, so the parent takes JAX's backend only after the
    # measurements' processes are done.
    write_benchmark_json(args.output, "encoder_throughput", rounded(results), settings)


if __name__ == "__main__":
    main(sys.argv[1:])
