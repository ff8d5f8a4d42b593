"""Installs diffusion_jax: identity-conditioned diffusion for synthetic face-recognition data."""

import setuptools

INSTALL_REQUIRES = [
    "jax>=0.10,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.5,<0.3",
    "orbax-checkpoint>=0.12,<0.13",
    "ml-collections>=1.0,<2",
    "clu>=0.0.12,<0.1",
    "grain>=0.2.12,<0.3",
    "tensorflow-datasets>=4.9.9,<5",
    # TFDS's Image feature and clu's TensorBoard writer need TensorFlow; the CPU build is enough
    # because JAX does all the accelerator work (README.md, "Install").
    "tensorflow-cpu>=2.20,<2.22",
    "tensorboard>=2.20,<2.22",
    "array-record>=0.8,<0.9",
    # TFDS 4.9.10 imports it when building any dataset but does not declare it
    # (tensorflow/datasets#11212).
    "importlib_resources>=6",
    "einops>=0.8,<0.9",
    "numpy>=1.26,<3",
    "safetensors>=0.4,<1",
    "pillow>=10,<14",
    "matplotlib>=3.8,<4",
    "tqdm>=4.66,<5",
    "absl-py>=2.1,<3",
    # gs:// workdirs and datasets: etils.epath reaches Cloud Storage through fsspec/gcsfs (the
    # backend the emulator tests exercise; main selects it), Orbax lists buckets with
    # google-cloud-storage.
    "gcsfs>=2024.2",
    "google-cloud-storage>=2.14,<4",
]

EXTRAS_REQUIRE = {
    # The tests, the import-layer contract (.importlinter) and the linter, as .ci/run runs them.
    "test": [
        "pytest>=8,<9",
        "pytest-xdist>=3.5,<4",
        "import-linter>=2.1,<3",
        "ruff>=0.8,<1",
        # A local Cloud Storage server for the gs:// workdir tests (tests/gcs_emulator.py).
        "gcp-storage-emulator>=2024.8",
    ],
    # Accelerators: JAX's own builds for NVIDIA GPUs (CUDA 12 wheels, no system CUDA needed) and
    # for Cloud TPU VMs. The rest of the project is the same on every backend.
    "cuda12": ["jax[cuda12]>=0.10,<0.11"],
    "tpu": ["jax[tpu]>=0.10,<0.11"],
    # PyTorch twin of the UNet for benchmarks and, later, weight converters. Install the CPU wheel
    # first (`pip install torch==2.13.0`); any 2.x satisfies this range.
    "torch": ["torch>=2.4,<3"],
}

setuptools.setup(
    name="diffusion_jax",
    version="0.1.0",
    description="Identity-conditioned diffusion models in JAX/Flax for synthetic face-recognition datasets.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["diffusion_jax", "diffusion_jax.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
