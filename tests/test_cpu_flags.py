"""The project's XLA CPU options: added to XLA_FLAGS on import, never over the user's own."""

import os
import subprocess
import sys

from diffusion_jax import cpu_flags

OPTION = "--xla_cpu_experimental_ynn_fusion_type"


def test_missing_options_are_appended_and_the_users_are_kept():
    flags = ("--xla_a=1", "--xla_b=2")
    assert cpu_flags.with_cpu_flags("", flags) == "--xla_a=1 --xla_b=2"
    assert cpu_flags.with_cpu_flags("--xla_b=7 --other", flags) == "--xla_b=7 --other --xla_a=1"
    # Applying twice adds nothing more.
    once = cpu_flags.with_cpu_flags("", flags)
    assert cpu_flags.with_cpu_flags(once, flags) == once


def test_apply_sets_xla_flags_unless_turned_off():
    environ = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    cpu_flags.apply_cpu_flags(environ)
    assert environ["XLA_FLAGS"].split()[0] == "--xla_dump_to=/tmp/x"
    assert set(cpu_flags.CPU_XLA_FLAGS) <= set(environ["XLA_FLAGS"].split())
    off = {"XLA_FLAGS": "--xla_dump_to=/tmp/x", cpu_flags.DISABLE_VARIABLE: "0"}
    cpu_flags.apply_cpu_flags(off)
    assert off["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"


def _xla_flags_in_a_fresh_process(environ: dict[str, str]) -> str:
    """XLA_FLAGS as a new process sees it after importing the package and running a JAX op (an
    option XLA does not know would end that process)."""
    script = (
        "import diffusion_jax, os, jax.numpy as jnp; "
        "assert float(jnp.ones(3).sum()) == 3.0; print(os.environ.get('XLA_FLAGS', ''))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=environ, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def test_importing_the_package_sets_options_that_jax_accepts():
    environ = {k: v for k, v in os.environ.items() if k != cpu_flags.DISABLE_VARIABLE}
    environ.pop("XLA_FLAGS", None)
    assert _xla_flags_in_a_fresh_process(environ).split() == list(cpu_flags.CPU_XLA_FLAGS)
    environ["XLA_FLAGS"] = f"{OPTION}="
    assert _xla_flags_in_a_fresh_process(environ) == f"{OPTION}="
