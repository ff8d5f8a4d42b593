"""diffusion_jax: identity-conditioned face diffusion and synthetic face-recognition datasets.

Importing the package sets the project's XLA CPU options (`cpu_flags`) before JAX starts a
backend."""

from diffusion_jax import cpu_flags

cpu_flags.apply_cpu_flags()
