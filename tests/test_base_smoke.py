"""`benchmarks/base_smoke.sh`, the default command at `base` scale: its dry run is the default
config (no preset) with step counts, sizes and batches overridden and nothing that changes an
architecture; and every override is a key the config declares (the config loads with them)."""

import shlex
import subprocess

from tests.helpers import REPO_ROOT, load_config

ALLOWED_SUFFIXES = (
    "num_steps",
    "_every_steps",
    "batch_size",
    "identities",
    "per_identity",
    "per_train_identity",
    "per_heldout_identity",
    "pairs_per_fold",
    "data_dir",
    "identities_per_shard",
)


def dry_run_words() -> list[str]:
    result = subprocess.run(
        ["bash", "benchmarks/base_smoke.sh", "--dry-run", "--workdir=/tmp/w", "--data_dir=/tmp/d"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return shlex.split(result.stdout.strip().splitlines()[-1])


def test_the_smoke_command_is_the_default_config_with_steps_sizes_and_batches_only():
    words = dry_run_words()
    assert words[:4] == ["python", "-m", "diffusion_jax.main", "--config=configs/faces.py"]
    assert "--workdir=/tmp/w" in words and "--config.data.data_dir=/tmp/d" in words
    overrides = dict(
        word[len("--config.") :].split("=", 1) for word in words if word.startswith("--config.")
    )
    assert overrides and all(key.endswith(ALLOWED_SUFFIXES) for key in overrides), overrides
    config = load_config("base")
    # Every key exists, with a value of its type (a misspelt key would raise here).
    config.update_from_flattened_dict(
        {key: _parsed(config, key, value) for key, value in overrides.items()}
    )
    assert config.model.to_dict() == load_config("base").model.to_dict()


def _parsed(config, key: str, value: str):
    """`value` as the type of the config's current value at `key` (which must exist)."""
    current = config
    for part in key.split("."):
        current = current[part]
    if isinstance(current, tuple):
        return tuple(int(item) for item in value.strip("()").split(",") if item.strip())
    return type(current)(value)
