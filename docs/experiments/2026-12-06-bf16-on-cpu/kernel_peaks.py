"""GFLOP/s of one 2048^3 matmul and one 3x3 convolution (8x32x32x256 -> 256 channels) in float32
and bfloat16: JAX under each XLA CPU option set, and PyTorch (oneDNN), each in its own process.

    python docs/experiments/2026-12-06-bf16-on-cpu/kernel_peaks.py > kernel_peaks.json
"""

import json
import os
import subprocess
import sys
import time

OPTION_SETS = (
    "",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce",
)
N, BATCH, SIDE, CHANNELS = 2048, 8, 32, 256
MATMUL_FLOP = 2 * N**3
CONV_FLOP = 2 * BATCH * SIDE * SIDE * 9 * CHANNELS * CHANNELS


def rate(fn, flop: float, seconds: float = 3.0) -> float:
    fn()
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return round(flop * calls / (time.perf_counter() - start) / 1e9, 1)


def measure_jax() -> dict:
    import jax
    import jax.numpy as jnp

    out = {}
    for dtype in ("float32", "bfloat16"):
        a = jnp.ones((N, N), dtype)
        x = jnp.ones((BATCH, SIDE, SIDE, CHANNELS), dtype)
        w = jnp.ones((3, 3, CHANNELS, CHANNELS), dtype)
        matmul = jax.jit(lambda a: a @ a)
        conv = jax.jit(
            lambda x, w: jax.lax.conv_general_dilated(
                x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        )
        out[f"matmul_{dtype}"] = rate(lambda a=a, f=matmul: f(a).block_until_ready(), MATMUL_FLOP)
        out[f"conv_{dtype}"] = rate(lambda x=x, w=w, f=conv: f(x, w).block_until_ready(), CONV_FLOP)
    return out


def measure_torch() -> dict:
    import torch

    torch.set_num_threads(os.cpu_count())
    out = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        a = torch.ones(N, N, dtype=dtype)
        x = torch.ones(BATCH, CHANNELS, SIDE, SIDE, dtype=dtype).to(
            memory_format=torch.channels_last
        )
        conv = torch.nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1, bias=False).to(dtype)
        conv = conv.to(memory_format=torch.channels_last)
        with torch.inference_mode():
            out[f"matmul_{name}"] = rate(lambda a=a: a @ a, MATMUL_FLOP)
            out[f"conv_{name}"] = rate(lambda x=x, f=conv: f(x), CONV_FLOP)
    return out


def main() -> None:
    if len(sys.argv) > 1:  # a child: one framework
        print(json.dumps(measure_jax() if sys.argv[1] == "jax" else measure_torch()))
        return
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    results = {"commit": commit, "cpu_count": os.cpu_count(), "jax": {}, "torch": None}
    for flags in OPTION_SETS:
        child = subprocess.run(
            [sys.executable, __file__, "jax"],
            env={**os.environ, "XLA_FLAGS": flags},
            capture_output=True,
            text=True,
            check=True,
        )
        results["jax"][flags or "(XLA defaults)"] = json.loads(child.stdout)
    child = subprocess.run(
        [sys.executable, __file__, "torch"], capture_output=True, text=True, check=True
    )
    results["torch"] = json.loads(child.stdout)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
