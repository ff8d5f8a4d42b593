"""benchmarks/kill_trainers.py: its plan (`--dry-run`: the commands, overrides and seeded kill
fractions), the log lines it watches, and how it compares final states. The run itself (minutes,
even with --quick) is not repeated here; its record is benchmarks/results/kill_trainers_cpu2.json.
"""

import importlib
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO_ROOT, load_config

SCRIPT = f"{REPO_ROOT}/benchmarks/kill_trainers.py"


@pytest.fixture(scope="module")
def kill_trainers():
    sys.path.insert(0, f"{REPO_ROOT}/benchmarks")
    try:
        yield importlib.import_module("kill_trainers")
    finally:
        sys.path.remove(f"{REPO_ROOT}/benchmarks")


def dry_run(*flags: str) -> dict:
    result = subprocess.run(
        [sys.executable, SCRIPT, "--dry-run", "--root=/tmp/k", *flags],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout)


PRESETS = {"tests/configs/unit.py": "test", "tests/configs/unit.py:latent": "test,latent"}
MODES = {"encoder": "train_encoder", "autoencoder": "train_autoencoder", "diffusion": "train"}


def test_the_plan_runs_each_trainer_with_overrides_the_config_declares():
    plan = dry_run()
    assert list(plan) == ["encoder", "autoencoder", "diffusion"]
    for name, trainer in plan.items():
        command = trainer["command"]
        assert command[1:3] == ["-m", "diffusion_jax.main"]
        flags = dict(word[2:].split("=", 1) for word in command[3:])
        assert flags["mode"] == MODES[name]
        assert flags["workdir"] == f"/tmp/k/{name}/reference/run"
        overrides = {k[len("config.") :]: v for k, v in flags.items() if k.startswith("config.")}
        section = {"encoder": "encoder.train", "autoencoder": "autoencoder.train"}.get(
            name, "train"
        )
        assert overrides[f"{section}.num_steps"] == str(trainer["steps"])
        assert overrides[f"{section}.log_every_steps"] == "1"  # every step is logged
        # Several checkpoints, with steps between them for kills to land on.
        assert 1 < trainer["checkpoint_every_steps"] < trainer["steps"] / 2
        config = load_config(PRESETS[flags["config"]])
        for key, value in overrides.items():  # every key exists, with a value of its type
            current = config
            for part in key.split("."):
                current = current[part]
            config.update_from_flattened_dict({key: type(current)(value)})
    assert plan["autoencoder"]["command"][-1].startswith("--config.encoder.checkpoint=/tmp/k/")


def test_kill_fractions_are_seeded_uniform_draws_and_quick_is_smaller():
    full, again, other = dry_run(), dry_run(), dry_run("--seed=1")
    assert full == again and full != other
    for trainer in full.values():
        assert len(trainer["kill_fractions"]) == 5
        assert all(0 <= fraction < 1 for fraction in trainer["kill_fractions"])
    quick = dry_run("--quick")
    for name, trainer in quick.items():
        assert len(trainer["kill_fractions"]) == 1
        assert trainer["kill_fractions"][0] == full[name]["kill_fractions"][0]
        assert trainer["steps"] < full[name]["steps"]


def test_the_log_lines_it_watches(kill_trainers):
    prefix = "I1206 05:10:00.123456 140 loop.py:112] "
    assert kill_trainers._PARAMETERS.search(prefix + "identity encoder: 123456 parameters.")
    resuming = kill_trainers._RESUMING.search(prefix + "diffusion: resuming from step 14.")
    assert resuming and resuming.group(1) == "14"
    step = kill_trainers._STEP.search(
        "I1206 05:10:00.1 140 logging_writer.py:48] [17] grad_norm=0.5, loss=0.25"
    )
    assert step and step.group(1) == "17"
    assert not kill_trainers._STEP.search(prefix + "[17] steps_per_sec=3.2")


def test_states_compare_bit_for_bit(kill_trainers):
    one = {"['params']['w']": np.float32([1.0, 2.0]), "['step']": np.int32(7)}
    same = {key: value.copy() for key, value in one.items()}
    assert kill_trainers.compare_states(one, same) == {"bit_identical": True, "arrays": 2}
    moved = {**same, "['params']['w']": np.float32([1.0, 2.0 + 2**-22])}
    result = kill_trainers.compare_states(one, moved)
    assert not result["bit_identical"] and result["differing_arrays"] == {
        "['params']['w']": pytest.approx(2**-22)
    }


def test_kills_are_drawn_over_what_remains_of_the_window(kill_trainers):
    # 100 steps: the first in 2 s, the other 99 in 9.9 s, then 1 s of saving and exporting.
    run = {"first_step_seconds": 2.0, "steps_seconds": 9.9, "tail_seconds": 1.0}
    assert kill_trainers.remaining_seconds(run, 100, 0) == pytest.approx(12.9)
    assert kill_trainers.remaining_seconds(run, 100, 50) == pytest.approx(2.0 + 4.9 + 1.0)
    assert kill_trainers.remaining_seconds(run, 100, 100) == pytest.approx(3.0)
