"""Throughput of the UNet in JAX and of its PyTorch twin, measured in the same run; prints JSON.

For each model size: sampling-forward and train-step (forward, backward, AdamW update on an MSE
loss) images/s, GFLOP per image from XLA's cost analysis, achieved GFLOP/s against a float32
matmul peak measured in this run, compile time, peak memory, and the jax/torch ratios.

Each measurement runs in a fresh process, so its peak resident memory is its own and JAX's and
PyTorch's thread pools never compete for the cores.

    python benchmarks/unet_throughput.py --quick
    python benchmarks/unet_throughput.py --sizes=demo,base --batch=16 --iterations=10
"""

import argparse
import concurrent.futures
import importlib.util
import json
import multiprocessing
import os
import pathlib
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

SIZES: dict[str, dict[str, Any]] = {
    # ~1.6M parameters: the laptop demo.
    "demo": dict(
        image_size=32,
        base_channels=32,
        channel_mults=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        head_channels=32,
        dropout=0.1,
        cross_attention=True,
        num_cond_tokens=4,
        num_groups=32,
    ),
    # ~99M parameters: ADM's 64x64 shape.
    "base": dict(
        image_size=64,
        base_channels=128,
        channel_mults=(1, 2, 3, 4),
        num_res_blocks=2,
        attention_resolutions=(16, 8),
        head_channels=64,
        dropout=0.1,
        cross_attention=True,
        num_cond_tokens=4,
        num_groups=32,
    ),
}
DEFAULT_BATCH = {"demo": 32, "base": 8}
NUM_TIMESTEPS = 1000
LEARNING_RATE = 1e-4
COND_DIM = 512


def make_batch(config: dict[str, Any], batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random NHWC images, timesteps, unit conditions (a quarter masked) and target noise."""
    rng = np.random.default_rng(seed)
    size = config["image_size"]
    cond = rng.normal(size=(batch_size, COND_DIM)).astype(np.float32)
    return {
        "x": rng.normal(size=(batch_size, size, size, 3)).astype(np.float32),
        "t": rng.integers(0, NUM_TIMESTEPS, size=batch_size).astype(np.int32),
        "cond": cond / np.linalg.norm(cond, axis=-1, keepdims=True),
        "cond_mask": rng.random(batch_size) >= 0.25,
        "target": rng.normal(size=(batch_size, size, size, 3)).astype(np.float32),
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def images_per_second(
    run_once: Callable[[], None], batch_size: int, iterations: int, warmup: int
) -> float:
    """batch_size / the median time of one call; the median shrugs off other load on the machine."""
    for _ in range(warmup):
        run_once()
    seconds = []
    for _ in range(iterations):
        start = time.perf_counter()
        run_once()
        seconds.append(time.perf_counter() - start)
    return batch_size / float(np.median(seconds))


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
# JAX.


def matmul_peak_gflops(n: int, repeats: int = 5) -> dict[str, Any]:
    """Best float32 [n, n] @ [n, n] rate: 2 n^3 FLOPs per product."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
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
        "device": f"{device.platform}:{device.device_kind}",
        "jax_version": jax.__version__,
    }


def build_jax_train_step(model, learning_rate: float):
    """The benchmarked train step, built in this one place: MSE on the prediction, AdamW.

    Returns (step, state): step(*state, batch, dropout_key) -> (*new_state, loss), jitted with
    the state donated.
    """
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    model.train()
    graphdef, params = nnx.split(model, nnx.Param)
    optimizer = optax.adamw(learning_rate)

    def step(params, opt_state, batch, dropout_key):
        def loss_fn(params):
            network = nnx.merge(graphdef, params)
            prediction = network(
                batch["x"],
                batch["t"],
                batch["cond"],
                batch["cond_mask"],
                rngs=nnx.Rngs(dropout=dropout_key),
            )
            return jnp.mean((prediction - batch["target"]) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1)), (params, optimizer.init(params))


def measure_jax(
    config: dict[str, Any], batch_size: int, iterations: int, warmup: int
) -> dict[str, Any]:
    import jax
    from flax import nnx

    from diffusion_jax.models.unet import UNet

    model = UNet(**config, cond_dim=COND_DIM, rngs=nnx.Rngs(0))
    batch = jax.device_put(make_batch(config, batch_size))
    num_params = sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))

    model.eval()
    eval_graphdef, params = nnx.split(model, nnx.Param)

    def forward(params, batch):
        network = nnx.merge(eval_graphdef, params)
        return network(batch["x"], batch["t"], batch["cond"], batch["cond_mask"])

    start = time.perf_counter()
    forward_compiled = jax.jit(forward).lower(params, batch).compile()
    forward_compile_s = time.perf_counter() - start
    forward_ips = images_per_second(
        lambda: forward_compiled(params, batch).block_until_ready(), batch_size, iterations, warmup
    )

    step, state = build_jax_train_step(model, LEARNING_RATE)
    key = jax.random.key(0)
    start = time.perf_counter()
    step_compiled = step.lower(*state, batch, key).compile()
    train_compile_s = time.perf_counter() - start

    def train_once():
        nonlocal state
        *state, loss = step_compiled(*state, batch, key)
        loss.block_until_ready()

    train_ips = images_per_second(train_once, batch_size, iterations, warmup)
    memory_stats = jax.devices()[0].memory_stats() or {}
    return {
        "num_params": int(num_params),
        "gflop_per_image": {
            "forward": forward_compiled.cost_analysis()["flops"] / batch_size / 1e9,
            "train_step": step_compiled.cost_analysis()["flops"] / batch_size / 1e9,
        },
        "forward_images_per_s": forward_ips,
        "train_images_per_s": train_ips,
        "compile_s": {"forward": forward_compile_s, "train_step": train_compile_s},
        "xla_temp_mb": {
            "forward": forward_compiled.memory_analysis().temp_size_in_bytes / 2**20,
            "train_step": step_compiled.memory_analysis().temp_size_in_bytes / 2**20,
        },
        "device_peak_mb": memory_stats.get("peak_bytes_in_use", 0) / 2**20 or None,
        "peak_rss_mb": peak_rss_mb(),
    }


# ----------------------------------------------------------------------------------------------
# PyTorch twin.


def measure_torch(
    config: dict[str, Any], batch_size: int, iterations: int, warmup: int, threads: int
) -> dict[str, Any]:
    import torch
    from torch_unet import TorchUNet

    torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = TorchUNet(**config, cond_dim=COND_DIM).to(device)
    batch = {
        name: torch.from_numpy(value).to(device)
        for name, value in make_batch(config, batch_size).items()
    }
    for name in ("x", "target"):
        batch[name] = batch[name].permute(0, 3, 1, 2).contiguous()
    inputs = (batch["x"], batch["t"], batch["cond"], batch["cond_mask"])

    model.eval()

    def forward_once():
        with torch.inference_mode():
            model(*inputs)
        synchronize()

    forward_ips = images_per_second(forward_once, batch_size, iterations, warmup)

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)

    def train_once():
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(*inputs), batch["target"])
        loss.backward()
        optimizer.step()
        synchronize()

    train_ips = images_per_second(train_once, batch_size, iterations, warmup)
    return {
        "num_params": sum(p.numel() for p in model.parameters()),
        "forward_images_per_s": forward_ips,
        "train_images_per_s": train_ips,
        "device": str(device),
        "threads": threads,
        "torch_version": torch.__version__,
        "peak_rss_mb": peak_rss_mb(),
    }


# ----------------------------------------------------------------------------------------------
# Driver.


def in_fresh_process(fn: Callable[..., dict[str, Any]], *args) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def add_achieved_rates(
    result: dict[str, Any], gflop_per_image: dict[str, float], peak: float
) -> None:
    for phase, key in (("forward", "forward_images_per_s"), ("train_step", "train_images_per_s")):
        achieved = gflop_per_image[phase] * result[key]
        result.setdefault("achieved_gflops", {})[phase] = achieved
        result.setdefault("fraction_of_matmul_peak", {})[phase] = achieved / peak


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="demo,base", help=f"comma-separated, from {sorted(SIZES)}"
    )
    parser.add_argument("--batch", type=int, help=f"batch size (default per size: {DEFAULT_BATCH})")
    parser.add_argument("--iterations", type=int, default=10, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    parser.add_argument("--matmul-size", type=int, default=4096, help="n of the peak matmul")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch twin")
    parser.add_argument(
        "--quick", action="store_true", help="demo size, batch 4, 2 iterations, 1 warmup"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.batch, args.iterations, args.warmup = "demo", 4, 2, 1
        args.matmul_size = 1024
    args.sizes = args.sizes.split(",")
    unknown = [size for size in args.sizes if size not in SIZES]
    if unknown:
        parser.error(
            f"--sizes={','.join(args.sizes)}: unknown {unknown}; choose from {sorted(SIZES)}"
        )
    for name in ("batch", "iterations", "matmul_size", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')}={value} must be positive")
    if args.warmup < 0:
        parser.error(f"--warmup={args.warmup} must be non-negative")
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with_torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    peak = in_fresh_process(matmul_peak_gflops, args.matmul_size)
    report: dict[str, Any] = {
        "matmul_peak": peak,
        "cpu_count": os.cpu_count(),
        "iterations": args.iterations,
        "sizes": {},
    }
    for size in args.sizes:
        config = SIZES[size]
        batch_size = args.batch or DEFAULT_BATCH[size]
        jax_result = in_fresh_process(measure_jax, config, batch_size, args.iterations, args.warmup)
        gflop_per_image = jax_result.pop("gflop_per_image")
        add_achieved_rates(jax_result, gflop_per_image, peak["gflops"])
        entry = {
            "config": config,
            "batch": batch_size,
            "num_params": jax_result.pop("num_params"),
            "gflop_per_image": gflop_per_image,
            "jax": jax_result,
        }
        if with_torch:
            torch_result = in_fresh_process(
                measure_torch, config, batch_size, args.iterations, args.warmup, args.threads
            )
            torch_params = torch_result.pop("num_params")
            assert torch_params == entry["num_params"], (
                f"the torch twin has {torch_params} parameters, the JAX UNet {entry['num_params']}"
            )
            add_achieved_rates(torch_result, gflop_per_image, peak["gflops"])
            entry["torch"] = torch_result
            entry["jax_over_torch"] = {
                phase: jax_result[key] / torch_result[key]
                for phase, key in (
                    ("forward", "forward_images_per_s"),
                    ("train_step", "train_images_per_s"),
                )
            }
        report["sizes"][size] = entry
    print(json.dumps(rounded(report), indent=2))


if __name__ == "__main__":
    # Runs from a checkout without installing the package; spawned workers inherit sys.path.
    sys.path.insert(1, str(pathlib.Path(__file__).resolve().parents[1]))
    main(sys.argv[1:])
