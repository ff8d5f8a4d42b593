"""Throughput of the generation job (`--mode=generate`) for a trained demo model, per sampler,
and where its time goes; prints JSON.

For each sampler the job first runs once on one shard (compiling everything), then generates
`--identities` identities x the preset's images per identity into a fresh directory, and
reports from the job's own counters: images drawn and kept per second, and the time of the
shard loop (drawing, judging, writing). The same run then times each stage alone on the device
(median of `--repeats` calls): the denoiser (the sampler's reverse process
with classifier-free guidance) and the autoencoder's decoding on the job's batch, and the two
encoders' embeddings of one identity's round (`GenerationModels.embed_round`). From those:

    denoiser share   = batches x t(denoiser) / shard-loop seconds
    decode share     = batches x t(decode) / shard-loop seconds
    embedding share  = rounds judged x t(judge + conditioning embeddings) / shard-loop seconds
    host share       = the rest: filtering, PNG/TFDS/RecordIO encoding, writing, hashing, moving

and the share outside the denoiser, 1 - denoiser share. The stage timings and the job are
measured one after the other, so on a shared or throttling CPU the shares carry a few percent of
noise (a share can come out slightly negative). The job's own counter gives a second estimate
of the host's part: `host_share_from_job` = 1 - (seconds blocked waiting for the device) /
(shard-loop seconds). The peer is DDPM with all of the
schedule's steps, IDiff-Face's sampler, measured in the same run (on fewer images and a batch of
8, as it does 40 times the work per image): `speedup_vs_ddpm` is the ratio of images drawn per
second. The report is a `diffusion_jax.benchmark_record` (commit, machine, command line,
settings, results).

    python -m diffusion_jax.main --config=configs/faces.py:demo --workdir=runs/demo
    python benchmarks/generation_throughput.py --workdir=runs/demo
    python benchmarks/generation_throughput.py --quick --output=/tmp/generation.json   # seconds

`--quick` is a check that it runs without a trained run: it writes a workdir of its own (in a
temporary directory, or --workdir when given) holding what the diffusion, judge and, in latent
space, autoencoder stages leave, at the tiny sizes of benchmarks/presets.py shrink_for_quick and
with RANDOM weights, through the project's own stores (`encoder_store.save_encoder`,
`autoencoder_store.save_autoencoder`, a diffusion `Checkpointer` save of a freshly initialised
train state), and prepares a tiny procedural dataset beside it. The preset's samplers, space,
guidance and identity source are kept; the schedule has QUICK_TIMESTEPS steps (so that DDPM's
all-steps run is short), the similarity thresholds let every identity and image through (random
encoders embed all faces alike), 2 identities of 2 images in one shard per sampler, 1 repeat. Its
numbers time random networks at tiny sizes: they check the script, not the speed of anything.
"""

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import numpy as np
from presets import load_preset, shrink_for_quick

from diffusion_jax.benchmark_record import write_benchmark_json
from diffusion_jax.core import parallel
from diffusion_jax.tasks.generation import generation_job
from diffusion_jax.tasks.generation.generation_models import GenerationModels, judge_directory
from diffusion_jax.tasks.generation.image_seeds import image_keys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# --quick: the diffusion schedule's steps (DDPM samples with all of them).
QUICK_TIMESTEPS = 20
# --quick: the flags it sets (an explicit value on the command line wins).
QUICK_FLAGS = {
    "identities": 2,
    "identities_per_shard": 2,
    "images_per_identity": 2,
    "ddpm_identities": 1,
    "ddpm_images_per_identity": 2,
    "ddpm_batch_size": 8,
    "repeats": 1,
}


def preset_config(args):
    """The preset's config; with --quick, shrunk and pointed at the quick run's data."""
    config = load_preset(args.preset)
    if args.quick:
        shrink_for_quick(config)
        config.diffusion.num_timesteps = QUICK_TIMESTEPS
        config.data.data_dir = os.path.join(args.workdir, "tfds")
    return config


def write_quick_run(config, workdir: str) -> dict:
    """The stages' outputs that the generation job reads, with random weights (module
    docstring), written into `workdir` through the project's stores; returns what was written."""
    from flax import nnx

    from diffusion_jax.core.models.autoencoder import AutoencoderKL
    from diffusion_jax.core.models.iresnet import IResNet
    from diffusion_jax.core.run_layout import RunLayout
    from diffusion_jax.core.training import state as state_lib
    from diffusion_jax.core.training.checkpointing import Checkpointer
    from diffusion_jax.tasks.conditional_diffusion.denoiser import unet_builder
    from diffusion_jax.tasks.data.sources import input_pipeline
    from diffusion_jax.tasks.latent import autoencoder_store
    from diffusion_jax.tasks.latent.diffusion_space import configured_autoencoder_architecture
    from diffusion_jax.tasks.recognition import encoder_store
    from diffusion_jax.tasks.recognition.encoder_training import encoder_architecture

    layout = RunLayout.from_config(workdir, config)
    provenance = {"benchmark": "generation_throughput --quick", "weights": "random"}
    written = {}
    architecture = encoder_architecture(config.encoder)
    for name, seed in (("encoder", config.encoder.seed), ("judge", config.encoder.seed + 1)):
        directory = getattr(layout, name).export_dir
        model = IResNet(**architecture, rngs=nnx.Rngs(seed))
        encoder_store.save_encoder(str(directory), model, architecture, provenance=provenance)
        written[name] = str(directory)
    if config.diffusion.space == "latent":
        directory = layout.autoencoder.export_dir
        architecture = configured_autoencoder_architecture(config)
        model = AutoencoderKL(**architecture, rngs=nnx.Rngs(config.seed))
        autoencoder_store.save_autoencoder(
            str(directory), model, architecture, latent_scale=1.0, provenance=provenance
        )
        written["autoencoder"] = str(directory)
    mesh = parallel.make_mesh(config.mesh, jax.local_devices())
    optimizer, _ = state_lib.make_optimizer(config.train)
    state = state_lib.init_train_state(
        unet_builder(config), optimizer, mesh, jax.random.key(config.seed)
    )
    checkpointer = Checkpointer(layout.diffusion.checkpoints)
    checkpointer.save(0, state, config)
    checkpointer.close()
    written["diffusion"] = str(layout.diffusion.checkpoints)
    input_pipeline.ensure_prepared(config.data)
    return written


def median_seconds(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compiled already by the job; one more call to be sure
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def stage_seconds(models: GenerationModels, batch_size: int, dim: int, repeats: int) -> dict:
    """Median seconds of each stage alone: per sampler batch, and per round for the embeddings."""
    cond = np.random.default_rng(0).normal(size=(batch_size, dim)).astype(np.float32)
    cond /= np.linalg.norm(cond, axis=1, keepdims=True)
    cond = jax.device_put(cond, parallel.batch_sharding(models.mesh))
    indices = np.arange(batch_size)
    keys = jax.device_put(
        image_keys(0, indices, indices, indices), parallel.batch_sharding(models.mesh)
    )
    x0 = models.sample_fn(models.params, cond, keys)
    round_pixels = np.asarray(models.draw(cond, keys))[: models.round_batch_size]
    return {
        "denoiser": median_seconds(lambda: models.sample_fn(models.params, cond, keys), repeats),
        "decode": median_seconds(lambda: models.space.decode(x0), repeats)
        if models.space.is_latent
        else 0.0,
        "embedding": median_seconds(lambda: models.embed_round(round_pixels), repeats),
    }


def measure(args, sampler: str) -> dict:
    config = preset_config(args)
    config.sample.sampler = sampler
    if sampler == "ddpm":  # 40 times the work per image of 25 guided DDIM steps
        num_identities = args.ddpm_identities
        config.generate.images_per_identity = args.ddpm_images_per_identity
        config.generate.batch_size = args.ddpm_batch_size
        config.generate.identities_per_shard = 1
    else:
        num_identities = args.identities
        config.generate.images_per_identity = args.images_per_identity
        config.generate.identities_per_shard = args.identities_per_shard
    config.generate.num_identities = config.generate.identities_per_shard  # warm-up: one shard
    mesh = parallel.make_mesh(config.mesh, jax.local_devices())
    models = GenerationModels(config, args.workdir, judge_directory(config, args.workdir), mesh)
    with tempfile.TemporaryDirectory() as scratch:
        config.generate.output_dir = os.path.join(scratch, "warm_up")  # compiles everything
        generation_job.generate_dataset(config, args.workdir, models)
        config.generate.num_identities = num_identities
        config.generate.output_dir = os.path.join(scratch, "timed")
        summary = generation_job.generate_dataset(config, args.workdir, models)
    repeats = 1 if sampler == "ddpm" else args.repeats
    stages = stage_seconds(models, config.generate.batch_size, config.condition.dim, repeats)
    loop = summary["shard_seconds"]
    calls = {
        "denoiser": summary["batches"],
        "decode": summary["batches"],
        "embedding": summary["rounds_judged"],
    }
    shares = {name: calls[name] * seconds / loop for name, seconds in stages.items()}
    shares["host"] = 1.0 - sum(shares.values())
    return {
        "sampler": sampler,
        "num_steps": config.sample.num_steps
        if sampler != "ddpm"
        else config.diffusion.num_timesteps,
        "guidance_scale": config.sample.guidance_scale,
        "identities": num_identities,
        "images_drawn": summary["images_drawn"],
        "images_kept": summary["images_kept"],
        "batches": summary["batches"],
        "batch_size": config.generate.batch_size,
        "padding_fraction": 1
        - summary["images_drawn"] / (summary["batches"] * config.generate.batch_size),
        "shard_loop_seconds": loop,
        "drawn_per_second": summary["images_drawn"] / loop,
        "kept_per_second": summary["images_kept"] / loop,
        "rounds_judged": summary["rounds_judged"],
        "stage_seconds_per_call": stages,
        "time_shares": shares,
        "share_outside_denoiser": 1.0 - shares["denoiser"],
        "host_share_from_job": 1.0 - summary["device_wait_seconds"] / loop,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="runs/demo", help="a trained run of the preset")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--samplers", default="ddim,dpm_solver_pp_2m,ddpm")
    parser.add_argument("--identities", type=int, default=50)
    parser.add_argument("--ddpm_identities", type=int, default=2)
    parser.add_argument("--ddpm_images_per_identity", type=int, default=4)
    parser.add_argument("--ddpm_batch_size", type=int, default=8)
    parser.add_argument("--identities_per_shard", type=int, default=10)
    parser.add_argument("--images_per_identity", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default="")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a check that it runs, in seconds, on a tiny run with random weights that it "
        "writes itself (module docstring); --workdir: where (default: a temporary directory)",
    )
    args = parser.parse_args()
    if not args.quick:
        run(args)
        return
    for name, value in QUICK_FLAGS.items():
        if getattr(args, name) == parser.get_default(name):
            setattr(args, name, value)
    given_workdir = args.workdir != parser.get_default("workdir")
    with tempfile.TemporaryDirectory() as scratch:
        args.workdir = os.path.abspath(args.workdir) if given_workdir else scratch
        args.quick_run = write_quick_run(preset_config(args), args.workdir)
        run(args)


def run(args) -> None:
    results = []
    for sampler in args.samplers.split(","):
        results.append(measure(args, sampler))
        print(json.dumps(results[-1]), file=sys.stderr)
    ddpm = next((r for r in results if r["sampler"] == "ddpm"), None)
    for result in results:
        if ddpm is not None:
            result["speedup_vs_ddpm"] = result["drawn_per_second"] / ddpm["drawn_per_second"]
    settings = {key: value for key, value in vars(args).items() if key != "quick_run"}
    results = {"samplers": results}
    if args.quick:
        results["quick_run"] = {"random_weights": True, "written": args.quick_run}
    write_benchmark_json(args.output, "generation_throughput", results, settings=settings)


if __name__ == "__main__":
    main()
