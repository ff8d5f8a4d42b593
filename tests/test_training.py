"""Training end to end on the `test` preset: the CLI, resumption, non-finite losses, sampling."""

import glob
import json
import os
import signal

import jax
import numpy as np
import pytest

from diffusion_jax.apps import sample as sample_mode
from diffusion_jax.core import parallel
from diffusion_jax.core.preemption import Preempted
from diffusion_jax.core.training import loop
from diffusion_jax.core.training import state as state_lib
from diffusion_jax.core.training import step as step_module
from diffusion_jax.core.training.checkpointing import Checkpointer
from diffusion_jax.tasks.conditional_diffusion import diffusion_training
from diffusion_jax.tasks.conditional_diffusion.denoiser import unet_builder
from diffusion_jax.tasks.data.sources import input_pipeline
from diffusion_jax.tasks.recognition.encoder_training import encoder_builder, make_margin_loss
from tests.helpers import run_main_job, tiny_config

# A run of the main job in a subprocess (module fixture) and in-process training runs.
pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def restore_params(workdir: str, config, step: int | None = None):
    optimizer, _ = state_lib.make_optimizer(config.train)
    abstract = state_lib.abstract_train_state(unet_builder(config), optimizer)
    mesh = parallel.make_mesh(config.mesh)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    state = checkpointer.restore(abstract, parallel.state_shardings(mesh, abstract), step=step)
    checkpointer.close()
    return state


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, prepared_data_dir):
    """One uninterrupted run of the main job through its command line (6 steps)."""
    workdir = str(tmp_path_factory.mktemp("cli_run"))
    run_main_job("test", workdir, prepared_data_dir)
    return workdir


def test_main_job_leaves_config_checkpoints_events_and_figures(cli_run):
    with open(os.path.join(cli_run, "config.json")) as f:
        assert json.load(f)["train"]["num_steps"] == tiny_config().train.num_steps
    checkpointer = Checkpointer(os.path.join(cli_run, "checkpoints"), read_only=True)
    assert checkpointer.all_steps() == [3, 6]  # every 3 steps, keep 3
    assert glob.glob(os.path.join(cli_run, "events.out.tfevents.*"))
    for name in ("forward_process", "x0_estimates", "reverse_process", "identities"):
        path = os.path.join(cli_run, "figures", f"{name}.png")
        assert os.path.getsize(path) > 1000, path


def test_interrupted_run_resumes_to_the_same_parameters(
    cli_run, tmp_path, prepared_data_dir, monkeypatch
):
    config = tiny_config(data_dir=prepared_data_dir)
    workdir = str(tmp_path)

    real_jit_train_step = step_module.jit_train_step  # what `training_program` jits with

    def crashing_jit_train_step(*args, **kwargs):
        step_fn = real_jit_train_step(*args, **kwargs)
        calls = {"n": 0}

        def step(*step_args):
            calls["n"] += 1
            if calls["n"] == 5:
                raise RuntimeError("simulated preemption")
            return step_fn(*step_args)

        return step

    monkeypatch.setattr(step_module, "jit_train_step", crashing_jit_train_step)
    with pytest.raises(RuntimeError, match="simulated preemption"):
        diffusion_training.train_and_evaluate(config, workdir)
    monkeypatch.setattr(step_module, "jit_train_step", real_jit_train_step)
    assert Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True).all_steps() == [3]

    resumed = diffusion_training.train_and_evaluate(config, workdir)
    assert int(resumed.step) == config.train.num_steps
    uninterrupted = restore_params(cli_run, config)
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(uninterrupted.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(resumed.ema_params), jax.tree.leaves(uninterrupted.ema_params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    tmp_path, prepared_data_dir, monkeypatch
):
    config = tiny_config(data_dir=prepared_data_dir)
    real_make_iterator = diffusion_training.input_pipeline.make_train_iterator

    class PoisonAfter:
        """Yields real batches, then images full of NaN from the 5th batch on."""

        def __init__(self, iterator):
            self.iterator, self.count = iterator, 0

        def __next__(self):
            batch = dict(next(self.iterator))
            self.count += 1
            if self.count >= 5:
                batch["image"] = np.full_like(batch["image"], np.nan)
            return batch

        def __getattr__(self, name):  # get_state / set_state for the checkpoint
            return getattr(self.iterator, name)

    monkeypatch.setattr(
        diffusion_training.input_pipeline,
        "make_train_iterator",
        lambda *a, **k: PoisonAfter(real_make_iterator(*a, **k)),
    )
    with pytest.raises(loop.NonFiniteLossError, match="last good checkpoint is step 3"):
        diffusion_training.train_and_evaluate(config, str(tmp_path))
    assert Checkpointer(os.path.join(tmp_path, "checkpoints"), read_only=True).all_steps() == [3]


def test_sample_mode_writes_samples_and_refuses_a_different_model(cli_run, prepared_data_dir):
    config = tiny_config(data_dir=prepared_data_dir)
    out_dir = sample_mode.run(config, cli_run)
    assert out_dir.endswith("step_6")
    for label in config.sample.identities:
        files = sorted(os.listdir(os.path.join(out_dir, f"identity_{label}")))
        assert len(files) == config.sample.samples_per_identity
    assert os.path.exists(os.path.join(out_dir, "identities.png"))

    other = tiny_config(data_dir=prepared_data_dir)
    other.model.base_channels = 24
    with pytest.raises(ValueError, match="model.base_channels: checkpoint has 16, config has 24"):
        sample_mode.run(other, cli_run)


def test_a_sigterm_late_in_a_step_still_saves_the_step_training_stops_at(
    tmp_path, prepared_data_dir
):
    """SIGTERM arriving after the step's save decision (here: from the per-step hook) must not
    stop training unsaved: the next step is taken, saved, and training stops there."""
    config = tiny_config(data_dir=prepared_data_dir)
    config.encoder.train.num_steps = 50
    config.encoder.train.checkpoint_every_steps = 100

    def send_sigterm(step, state, writer):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    task = loop.TrainingTask(
        name="preempted encoder",
        config=config,
        train_config=config.encoder.train,
        build_model=encoder_builder(config, input_pipeline.num_train_identities(config.data)),
        loss_fn=make_margin_loss(),
        data_iterator=input_pipeline.make_train_iterator(
            config.data, global_batch_size=config.encoder.train.batch_size, seed=0
        ),
        on_step=send_sigterm,
        every_steps=1,
    )
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted, match=r"preempted encoder after saving step 4 "):
        loop.run_training(task, str(tmp_path), parallel.make_mesh(config.mesh), jax.random.key(0))
    assert Checkpointer(os.path.join(tmp_path, "checkpoints"), read_only=True).all_steps() == [4]
    assert signal.getsignal(signal.SIGTERM) is before  # the loop's handler is removed again
