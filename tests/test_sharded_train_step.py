"""The train step on 4 simulated CPU devices matches the single-device step.

Runs in a subprocess because the device count must be fixed before JAX starts.
"""

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT, xla_flags_with

# A subprocess with 4 virtual CPU devices compiles and runs the sharded step: minutes on 2 cores.
pytestmark = pytest.mark.slow

SCRIPT = r"""
import jax, numpy as np
from ml_collections import ConfigDict
from diffusion_jax.core import parallel
from diffusion_jax.core.diffusion.schedules import schedule_from_config
from diffusion_jax.core.training import state as state_lib
from diffusion_jax.tasks.conditional_diffusion.denoiser import make_diffusion_loss, unet_builder
from diffusion_jax.core.training.step import jit_train_step, make_train_step
from tests.helpers import tiny_config

assert jax.device_count() == 4, jax.devices()
config = tiny_config()
config.model.dropout = 0.1  # dropout masks must not depend on the sharding either
optimizer, learning_rate = state_lib.make_optimizer(config.train)
schedule = schedule_from_config(config.diffusion.beta_schedule, config.diffusion.num_timesteps)
build_model = unet_builder(config)
graphdef = state_lib.model_graphdef(build_model)
loss_fn = make_diffusion_loss(schedule, config)
step_fn = make_train_step(graphdef, loss_fn, optimizer, learning_rate, config.train.ema_decay)
abstract = state_lib.abstract_train_state(build_model, optimizer)
data_rng = np.random.default_rng(0)
r = config.data.resolution
batches = [
    {"x0": data_rng.uniform(-1, 1, (8, r, r, 3)).astype(np.float32),
     "cond": data_rng.normal(size=(8, config.condition.dim)).astype(np.float32)}
    for _ in range(3)
]

def train(mesh):
    shardings = parallel.state_shardings(mesh, abstract)
    init = jax.jit(state_lib.make_init_fn(build_model, optimizer), out_shardings=shardings)
    state = init(jax.random.key(0))
    step = jit_train_step(step_fn, mesh, shardings)
    for batch in batches:
        state, metrics = step(state, parallel.global_batch(batch, mesh), jax.random.key(1), {})
    return jax.device_get(state.params), float(metrics["loss"])

meshes = {
    "1 device": parallel.make_mesh(ConfigDict({"data": 1, "fsdp": 1}), jax.devices()[:1]),
    "data=4": parallel.make_mesh(ConfigDict({"data": 4, "fsdp": 1})),
    "data=2 x fsdp=2": parallel.make_mesh(ConfigDict({"data": 2, "fsdp": 2})),
}
reference, reference_loss = train(meshes.pop("1 device"))
for name, mesh in meshes.items():
    params, loss = train(mesh)
    np.testing.assert_allclose(loss, reference_loss, rtol=1e-5, err_msg=name)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5, err_msg=name)
print("MATCH")
"""


def test_train_step_on_four_devices_matches_one_device():
    env = dict(os.environ, XLA_FLAGS=xla_flags_with("--xla_force_host_platform_device_count=4"))
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "MATCH" in result.stdout
