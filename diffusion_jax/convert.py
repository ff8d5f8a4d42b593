"""Converts weights made elsewhere into diffusion_jax's formats; one subcommand per source.

    python -m diffusion_jax.convert arcface_torch --checkpoint backbone.pth --output DIR \
        [--architecture iresnet50] [--input_resolution 112] [--embedding_dim 512]

arcface_torch: an insightface `arcface_torch` IResNet (.pt/.pth state dict or training
checkpoint, or .safetensors) -> an identity-encoder directory (`recognition.encoder_store`),
whose provenance records the source file, its SHA-256 and "converted_from": "arcface_torch".
The architecture is recognised from the state dict when --architecture is not given.

    python -m diffusion_jax.convert autoencoder_kl --model_dir sd-vae-ft-mse --output DIR \
        [--weights FILE]

autoencoder_kl: a diffusers `AutoencoderKL` directory (config.json and
diffusion_pytorch_model.safetensors, or the --weights file) -> an autoencoder directory
(`latent.autoencoder_store`) whose latent scale is config.json's `scaling_factor` and whose
provenance records the source directory, the weights file and its SHA-256, and the config.

Inputs and outputs may be local paths or `gs://` URLs (`core.paths`).
"""

import argparse
from collections.abc import Sequence

import jax
from flax import nnx

from diffusion_jax.core import paths
from diffusion_jax.core.fingerprint import file_sha256
from diffusion_jax.core.models.iresnet import IRESNET_NAMES, iresnet_architecture
from diffusion_jax.tasks.convert.arcface_torch import (
    convert_arcface_state_dict,
    infer_arcface_architecture,
)
from diffusion_jax.tasks.convert.autoencoder_kl import (
    DIFFUSERS_WEIGHTS,
    convert_autoencoder_kl_state_dict,
    from_diffusers_config,
    read_diffusers_config,
)
from diffusion_jax.tasks.convert.tensor_files import load_tensors
from diffusion_jax.tasks.latent.autoencoder_store import save_autoencoder
from diffusion_jax.tasks.recognition.encoder_store import save_encoder


def convert_arcface_torch(args: argparse.Namespace) -> None:
    """The `arcface_torch` subcommand: checkpoint file -> encoder directory."""
    output = str(paths.resolve(args.output))
    if paths.is_nonempty_dir(output):
        raise SystemExit(f"--output {output} is not empty; refusing to overwrite it.")
    tensors = load_tensors(args.checkpoint)
    name = args.architecture or infer_arcface_architecture(tensors)
    if name is None:
        raise SystemExit(
            f"Could not recognise the IResNet in {args.checkpoint}; pass --architecture "
            f"(one of {IRESNET_NAMES})."
        )
    architecture = iresnet_architecture(
        name, input_resolution=args.input_resolution, embedding_dim=args.embedding_dim
    )
    model = convert_arcface_state_dict(tensors, architecture)
    provenance = {
        "converted_from": "arcface_torch",
        "source": str(paths.resolve(args.checkpoint)),
        "source_sha256": file_sha256(args.checkpoint),
        "architecture_name": name,
    }
    save_encoder(output, model, architecture, provenance=provenance)
    num_parameters = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    print(
        f"Converted {args.checkpoint}: {name} at {args.input_resolution}x{args.input_resolution}, "
        f"{num_parameters:,} parameters -> {output}"
    )


def convert_autoencoder_kl(args: argparse.Namespace) -> None:
    """The `autoencoder_kl` subcommand: diffusers AutoencoderKL directory -> autoencoder dir."""
    output = str(paths.resolve(args.output))
    if paths.is_nonempty_dir(output):
        raise SystemExit(f"--output {output} is not empty; refusing to overwrite it.")
    model_dir = str(paths.resolve(args.model_dir))
    config = read_diffusers_config(model_dir)
    architecture, latent_scale = from_diffusers_config(config)
    weights = str(paths.resolve(args.weights or paths.Path(model_dir) / DIFFUSERS_WEIGHTS))
    model = convert_autoencoder_kl_state_dict(load_tensors(weights), architecture)
    provenance = {
        "converted_from": "diffusers AutoencoderKL",
        "source": model_dir,
        "weights_file": weights,
        "source_sha256": file_sha256(weights),
        "diffusers_config": config,
    }
    save_autoencoder(output, model, architecture, latent_scale=latent_scale, provenance=provenance)
    num_parameters = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    print(
        f"Converted {model_dir}: {num_parameters:,} parameters, downsampling factor "
        f"{model.downsampling_factor}, {model.latent_channels} latent channels, latent scale "
        f"{latent_scale} -> {output}"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m diffusion_jax.convert",
        description="Convert weights made elsewhere into diffusion_jax's formats.",
    )
    subcommands = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")

    arcface = subcommands.add_parser(
        "arcface_torch",
        help="an insightface arcface_torch IResNet -> an identity-encoder directory",
        description="Convert an insightface arcface_torch IResNet checkpoint (.pt, .pth or "
        ".safetensors) into an identity-encoder directory.",
    )
    arcface.add_argument("--checkpoint", required=True, help="the .pt/.pth/.safetensors file")
    arcface.add_argument("--output", required=True, help="the encoder directory to create")
    arcface.add_argument(
        "--architecture",
        choices=IRESNET_NAMES,
        help="the IResNet variant; recognised from the checkpoint when left out",
    )
    arcface.add_argument("--input_resolution", type=int, default=112)
    arcface.add_argument("--embedding_dim", type=int, default=512)
    arcface.set_defaults(run=convert_arcface_torch)

    autoencoder = subcommands.add_parser(
        "autoencoder_kl",
        help="a diffusers AutoencoderKL (e.g. Stable Diffusion's VAE) -> an autoencoder directory",
        description="Convert a diffusers AutoencoderKL directory (config.json and "
        f"{DIFFUSERS_WEIGHTS}) into an autoencoder directory.",
    )
    autoencoder.add_argument(
        "--model_dir", required=True, help="the diffusers directory (a pipeline's vae/)"
    )
    autoencoder.add_argument("--output", required=True, help="the autoencoder directory to create")
    autoencoder.add_argument(
        "--weights",
        help=f"the .safetensors file to read instead of MODEL_DIR/{DIFFUSERS_WEIGHTS} "
        "(e.g. a diffusion_pytorch_model.fp16.safetensors variant)",
    )
    autoencoder.set_defaults(run=convert_autoencoder_kl)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError, ImportError) as error:  # bad input: the message names it
        raise SystemExit(f"error: {error}") from error


if __name__ == "__main__":
    main()
