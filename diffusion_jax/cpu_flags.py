"""The XLA CPU options this project runs with, set in XLA_FLAGS when the package is imported.

XLA reads XLA_FLAGS once, when JAX starts its first backend, so `diffusion_jax/__init__.py`
applies them before anything of the package can touch a device. Each option is added only when
XLA_FLAGS does not already name it, so a user's own setting wins:

    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= python -m diffusion_jax.main ...

turns the fusion off again, and DIFFUSION_JAX_CPU_FLAGS=0 leaves XLA_FLAGS untouched. The options
only change how XLA compiles for the CPU; a GPU or TPU run is unaffected.

Why these: they were the fastest of the options this jaxlib ships, measured against the PyTorch
twin of the same networks with benchmarks/unet_throughput.py and encoder_throughput.py
(docs/experiments/2026-12-06-cpu-kernels.md, which also lists what lost and by how much).
"""

import os

# YNNPACK (XNNPACK's successor inside XLA; this jaxlib already gives it the convolutions) also
# takes the dots and the elementwise and reduction fusions around them from XLA's own emitters.
CPU_XLA_FLAGS: tuple[str, ...] = ("--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce",)

DISABLE_VARIABLE = "DIFFUSION_JAX_CPU_FLAGS"


def _option_name(flag: str) -> str:
    return flag.split("=", 1)[0]


def with_cpu_flags(xla_flags: str, flags: tuple[str, ...] = CPU_XLA_FLAGS) -> str:
    """`xla_flags` with each of `flags` appended whose option it does not already set."""
    present = {_option_name(flag) for flag in xla_flags.split()}
    added = [flag for flag in flags if _option_name(flag) not in present]
    return " ".join(xla_flags.split() + added)


def apply_cpu_flags(environ: dict[str, str] = os.environ) -> None:
    """Sets XLA_FLAGS in `environ` to `with_cpu_flags(its value)`, unless DIFFUSION_JAX_CPU_FLAGS
    is "0"."""
    if environ.get(DISABLE_VARIABLE, "1") == "0":
        return
    environ["XLA_FLAGS"] = with_cpu_flags(environ.get("XLA_FLAGS", ""))
