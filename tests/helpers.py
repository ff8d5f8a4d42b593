"""Helpers shared by the tests: the repo root and the `test` preset of configs/faces.py."""

import importlib.util
import os

import ml_collections

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(preset: str) -> ml_collections.ConfigDict:
    """`configs/faces.py:<preset>`, loaded the way `config_flags` loads it."""
    spec = importlib.util.spec_from_file_location("faces_config", os.path.join(REPO_ROOT, "configs", "faces.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


def tiny_config(data_dir: str | None = None) -> ml_collections.ConfigDict:
    config = load_config("test")
    if data_dir is not None:
        config.data.data_dir = data_dir
    return config
