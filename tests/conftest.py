"""Shared test setup: a persistent XLA compilation cache, so reruns of the suite skip compiles, and
with pytest-xdist (`-n 2`) each module's tests on one worker, so a module's expensive fixtures
(a trained model, a generated dataset, a pipeline run) are built once, not once per worker."""

import os

import jax

_CACHE_DIR = os.environ.get(
    "DIFFUSION_JAX_TEST_CACHE", os.path.join(os.path.dirname(__file__), "..", ".jax_cache")
)
jax.config.update("jax_compilation_cache_dir", os.path.abspath(_CACHE_DIR))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


import pytest  # noqa: E402


def pytest_configure(config):
    if getattr(config.option, "dist", "no") == "load":  # what -n N chooses by default
        config.option.dist = "loadscope"


@pytest.fixture(scope="session")
def prepared_data_dir(tmp_path_factory) -> str:
    """A TFDS data dir holding the `test` preset's procedural faces, prepared once per session."""
    from diffusion_jax.tasks.data.sources import input_pipeline
    from tests.helpers import tiny_config

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    input_pipeline.ensure_prepared(tiny_config(data_dir).data)
    return data_dir
