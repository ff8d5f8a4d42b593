"""diffusion_jax: identity-conditioned face diffusion and synthetic face-recognition datasets."""
