"""Shared test setup: LLVM's lowest optimisation level and a persistent XLA compilation cache, so
the suite spends less on compiling, and with pytest-xdist (`-n 2`) each module's tests on one
worker, so a module's expensive fixtures (a trained model, a generated dataset, a pipeline run) are
built once, not once per worker."""

import os

# The tests compile hundreds of small programs that then run for milliseconds, so compiling is what
# they pay for: at LLVM's optimisation level 0 they compile faster (docs/tests.md). Set before JAX
# starts its backend, here and in every process the tests start (tests/helpers.py), since the level
# can change the last bit of a result and tests compare processes' results bit for bit. The main
# job and the benchmarks keep XLA's defaults.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

import jax  # noqa: E402

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
