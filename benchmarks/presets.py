"""The presets of configs/faces.py for the benchmarks, loaded by path as `--config` loads them
(configs/ is a folder of config files, not a package). Benchmarks run as scripts, so their own
folder is on `sys.path` and `from presets import load_preset` finds this module."""

import importlib.util
import pathlib

import ml_collections

FACES_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "faces.py"


def load_preset(preset: str) -> ml_collections.ConfigDict:
    """`configs/faces.py:<preset>`, e.g. "demo" or "base,pixel"."""
    spec = importlib.util.spec_from_file_location("faces_config", FACES_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)
