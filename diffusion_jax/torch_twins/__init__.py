"""PyTorch re-implementations of the project's networks, for converter tests and speed comparisons.

Each twin has the module and parameter names of the network's published PyTorch layout (or, for
the UNet, of the JAX model), so weights copy across and both compute the same function:

- `unet`: the denoiser `UNet`, with the work of the train step and of the deterministic samplers,
  DDIM and DPM-Solver++(2M) and (3M) (benchmarks/unet_throughput.py, tests/test_unet.py,
  tests/test_torch_twin_samplers.py).
- `iresnet`: insightface arcface_torch's IResNet (benchmarks/encoder_throughput.py,
  tests/test_convert_arcface.py, tests/test_iresnet.py).
- `autoencoder_kl`: diffusers' AutoencoderKL (tests/test_convert_autoencoder_kl.py).

They need the optional `torch` extra (`pip install -e .[torch]`); this package imports nothing
itself, so `import diffusion_jax.torch_twins` works without torch and each submodule imports it.

Import layer: the twins import nothing from the rest of diffusion_jax (only torch, numpy and
ml_collections), and nothing in diffusion_jax imports them; they sit beside the apps layer, used
only by tests and benchmarks.
"""
