"""The demo's own diffusion train step (latent space, the preset's batch) timed in this process;
run it with and without an XLA option to compare:

    python docs/experiments/2026-12-06-cpu-kernels/latent_step_ab.py [STEPS]
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce \
        python docs/experiments/2026-12-06-cpu-kernels/latent_step_ab.py [STEPS]

(Recorded at b52982d, where importing the package added that option unless
DIFFUSION_JAX_CPU_FLAGS=0; the two commands above do the same today.)

Prints one JSON line: XLA_FLAGS, the batch, the median seconds per step and images/s."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "benchmarks"))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import presets  # noqa: E402

from diffusion_jax.core import parallel  # noqa: E402
from diffusion_jax.core.diffusion.schedules import schedule_from_config  # noqa: E402
from diffusion_jax.core.training import state as state_lib  # noqa: E402
from diffusion_jax.core.training.step import training_program  # noqa: E402
from diffusion_jax.tasks.conditional_diffusion.denoiser import (  # noqa: E402
    make_diffusion_loss,
    unet_builder,
)
from diffusion_jax.tasks.latent.diffusion_space import diffusion_shape  # noqa: E402

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 20
config = presets.load_preset("demo")
side, channels = diffusion_shape(config)
batch_size = config.train.batch_size
rng = np.random.default_rng(0)
cond = rng.normal(size=(batch_size, config.condition.dim)).astype(np.float32)
batch = {
    "x0": rng.normal(size=(batch_size, side, side, channels)).astype(np.float32),
    "cond": cond / np.linalg.norm(cond, axis=-1, keepdims=True),
}
schedule = schedule_from_config(config.diffusion.beta_schedule, config.diffusion.num_timesteps)
mesh = parallel.make_mesh(config.mesh)
program = training_program(
    unet_builder(config), make_diffusion_loss(schedule, config), config.train, mesh
)
key = jax.random.key(0)
state = state_lib.init_train_state(unet_builder(config), program.optimizer, mesh, key)
args = [state, parallel.global_batch(batch, mesh), key, {}]
compiled = program.step.lower(*args).compile()
times = []
for step in range(steps + 3):
    start = time.perf_counter()
    outputs = jax.block_until_ready(compiled(*args))
    args[0] = outputs[0]
    if step >= 3:
        times.append(time.perf_counter() - start)
median = float(np.median(times))
print(
    json.dumps(
        {
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "shape": [batch_size, side, side, channels],
            "steps": steps,
            "median_s": round(median, 4),
            "images_per_s": round(batch_size / median, 1),
        }
    )
)
