"""`--mode=generate`: a synthetic face-recognition dataset of new identities.

    1. identities   worker 0 chooses `num_identities` identities (`identity_sources`: separated
                    from each other and from the training identities) and writes the plan and
                    the identities (`manifest`); the other workers wait for them and check that
                    their own config and networks give the same plan.
    2. shards       identities are cut into shards of `identities_per_shard` consecutive labels;
                    shard s belongs to worker s mod task_count (`worker_index`). For the shards
                    it owns that have no record yet, a worker draws `images_per_identity` images
                    per identity, image k of identity i from its own key (`image_seeds`), judges
                    them (`image_filter`) and redraws the rejected ones with the next attempt up
                    to `max_resample_rounds` times, in full batches across shards
                    (`shard_drawing`); as each shard completes it stages the kept images in every
                    format (`dataset_writers`), moves them into place and writes its record.
    3. manifest     the worker that finds every shard complete writes the dataset-level files
                    (`dataset_writers.finalize`, `dataset_figures`) and `manifest.json`, under
                    an OS file lock, once; then it deletes the RecordIO shard fragments that
                    `train.rec` was assembled from.

A worker killed at any point (even SIGKILL) leaves only files under temporary names or the
complete files of a shard without its record; running it again redoes that shard and writes the
same bytes, so the dataset equals that of an uninterrupted run. Sampling is batched
(`generate.batch_size` images, split over the local devices) and pipelined: the next batch is
queued on the device before the previous one is judged and written.
"""

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import io
import os
import shutil
import time

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging

from diffusion_jax.core import parallel
from diffusion_jax.core.fingerprint import file_sha256
from diffusion_jax.tasks.generation import dataset_writers
from diffusion_jax.tasks.generation import manifest
from diffusion_jax.tasks.generation.dataset_figures import write_dataset_figures
from diffusion_jax.tasks.generation.generation_models import GenerationModels, ensure_judge
from diffusion_jax.tasks.generation.sphere_sampling import max_similarity_to
from diffusion_jax.tasks.generation.identity_sources import choose_identities
from diffusion_jax.tasks.generation.shard_drawing import Throughput, draw_shards
from diffusion_jax.tasks.generation.training_identities import cached_identity_centres
from diffusion_jax.tasks.generation.worker_index import Worker, find_worker

# config.generate fields that say who runs the job and where, not what it makes.
WORKER_FIELDS = ("output_dir", "task_index", "task_count", "identities_timeout_minutes",
                 "judge_encoder")
SAMPLER_FIELDS = ("sampler", "num_steps", "eta", "guidance_scale", "clip_x0", "use_ema")
_POLL_SECONDS = 5.0


def num_shards(generate_config: ml_collections.ConfigDict) -> int:
    return dataset_writers.shard_count(
        generate_config.num_identities, generate_config.identities_per_shard
    )


def shard_labels(generate_config: ml_collections.ConfigDict, shard: int) -> range:
    """The identity labels of `shard`: a block of consecutive labels."""
    return dataset_writers.shard_labels(
        shard, generate_config.identities_per_shard, generate_config.num_identities
    )


def dataset_plan(config: ml_collections.ConfigDict, models: GenerationModels) -> dict:
    """What defines the dataset (module `manifest`), without the identities' description."""
    generate = {
        key: value for key, value in config.generate.to_dict().items() if key not in WORKER_FIELDS
    }
    plan = {
        "format_version": manifest.FORMAT_VERSION,
        "generate": generate,
        "sample": {field: config.sample[field] for field in SAMPLER_FIELDS},
        "diffusion": config.diffusion.to_dict(),
        "resolution": config.data.resolution,
        "networks": models.identity,
        "platform": jax.devices()[0].platform,  # other hardware may round differently
    }
    return manifest.as_json(plan)


# ----------------------------------------------------------------------------------- identities


def _choose_and_write_identities(
    config: ml_collections.ConfigDict, workdir: str, out_dir: str, models: GenerationModels,
    plan: dict,
) -> None:
    centres = cached_identity_centres(
        config, models.conditioning, models.identity["conditioning_encoder"],
        cache_dir=os.path.join(workdir, "cache"),
    )
    identities, description = choose_identities(
        config.generate,
        dim=config.condition.dim,
        training_centres=centres,
        conditioning=models.conditioning,
        resolution=config.data.resolution,
        draw_unconditional=models.draw_unconditional,
    )
    nearest, _ = max_similarity_to(identities, centres)
    buffer = io.BytesIO()
    np.save(buffer, identities.astype(np.float32))
    identities_path = os.path.join(out_dir, manifest.IDENTITIES_FILE)
    manifest.write_bytes_atomically(identities_path, buffer.getvalue())
    description.update(
        file=manifest.IDENTITIES_FILE,
        sha256=file_sha256(identities_path),
        training_identities=len(centres),
        max_similarity_to_training_identity=float(nearest.max()),
    )
    manifest.write_json_atomically(
        os.path.join(out_dir, manifest.PLAN_FILE), {**plan, "identities": description}
    )
    logging.info("Chose %d identities (%s); nearest training identity at cos %.3f.",
                 len(identities), description["source"], nearest.max())


def _check_plan(saved: dict, plan: dict, path: str) -> None:
    differing = [
        f"{key}: {path} has {saved.get(key)!r}, this worker has {plan.get(key)!r}"
        for key in sorted((set(plan) | set(saved)) - {"identities"})
        if saved.get(key) != plan.get(key)
    ]
    if differing:
        raise ValueError(
            f"{os.path.dirname(path)} holds a dataset of another config or other networks; "
            "use another config.generate.output_dir or the same config:\n  "
            + "\n  ".join(differing)
        )


def load_identities(
    config: ml_collections.ConfigDict, workdir: str, out_dir: str, models: GenerationModels,
    worker: Worker,
) -> tuple[np.ndarray, dict]:
    """The dataset's identities [N, D] and its saved plan; worker 0 makes them if missing."""
    plan = dataset_plan(config, models)
    plan_path = os.path.join(out_dir, manifest.PLAN_FILE)
    if worker.index == 0 and not os.path.isfile(plan_path):
        _choose_and_write_identities(config, workdir, out_dir, models, plan)
    deadline = time.monotonic() + 60 * config.generate.identities_timeout_minutes
    while not os.path.isfile(plan_path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker 0 wrote no {plan_path} within "
                               f"{config.generate.identities_timeout_minutes} minutes")
        logging.log_every_n_seconds(logging.INFO, "Waiting for worker 0 to write %s.", 60,
                                    plan_path)
        time.sleep(_POLL_SECONDS)
    saved = manifest.read_json(plan_path)
    _check_plan(saved, plan, plan_path)
    identities_path = os.path.join(out_dir, manifest.IDENTITIES_FILE)
    if file_sha256(identities_path) != saved["identities"]["sha256"]:
        raise ValueError(f"{identities_path} does not match the hash in {plan_path}")
    return np.load(identities_path), saved


# ------------------------------------------------------------------------------------- shards


def _encode_all(generate_config, kept: dict[tuple[int, int], np.ndarray]):
    """The kept images as `dataset_writers.ShardImage`s in (identity, image index) order,
    encoded by a thread pool (PIL releases the GIL)."""
    order = sorted(kept)

    def encode(key):
        return dataset_writers.encode_image(
            kept[key], image_format=generate_config.image_format,
            jpeg_quality=generate_config.jpeg_quality,
        )

    with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        encoded = list(pool.map(encode, order))
    return [
        dataset_writers.ShardImage(label=i, image_index=k, encoded=data)
        for (i, k), data in zip(order, encoded)
    ]


def write_shard(
    config: ml_collections.ConfigDict, out_dir: str, shard: int, records: list[dict],
    kept: dict[tuple[int, int], np.ndarray],
) -> dict:
    """Stages the shard's files, moves them into place and writes its record (the commit)."""
    generate = config.generate
    staging = manifest.staging_dir(out_dir, shard)
    shutil.rmtree(staging, ignore_errors=True)  # an earlier attempt's
    os.makedirs(staging)
    relative_paths = dataset_writers.write_shard(
        formats=tuple(generate.formats),
        staging_dir=staging,
        shard=shard,
        num_shards=num_shards(generate),
        identities_per_shard=generate.identities_per_shard,
        num_identities=generate.num_identities,
        image_format=generate.image_format,
        resolution=config.data.resolution,
        images=_encode_all(generate, kept),
    )
    # RecordIO fragments are inputs of `finalize`, deleted once the manifest is written.
    files = {
        path: file_sha256(os.path.join(staging, path))
        for path in relative_paths
        if not path.startswith(dataset_writers.FRAGMENT_DIR + "/")
    }
    for path in relative_paths:
        destination = os.path.join(out_dir, path)
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        os.replace(os.path.join(staging, path), destination)
    labels = shard_labels(generate, shard)
    record = {
        "shard": shard,
        "identities": [labels.start, labels.stop],
        "counts": manifest.count_decisions(records),
        "images": records,
        "files": files,
    }
    manifest.write_json_atomically(manifest.shard_record_path(out_dir, shard), record)
    shutil.rmtree(staging)
    return record


# ----------------------------------------------------------------------------------- manifest


@contextlib.contextmanager
def _exclusive_lock(path: str):
    """An OS file lock, released when the process exits however it exits."""
    with open(path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def finalize_dataset(config: ml_collections.ConfigDict, out_dir: str, plan: dict) -> dict | None:
    """Writes the dataset-level files and the manifest once every shard is complete; returns
    the manifest, or None while shards are missing."""
    generate = config.generate
    records = [manifest.read_shard_record(out_dir, s) for s in range(num_shards(generate))]
    if any(record is None for record in records):
        return None
    manifest_path = os.path.join(out_dir, manifest.MANIFEST_FILE)
    with _exclusive_lock(os.path.join(out_dir, manifest.SHARDS_DIR, ".finalize.lock")):
        if os.path.isfile(manifest_path):
            dataset_writers.remove_shard_fragments(generate.formats, out_dir)  # if killed before
            return manifest.read_json(manifest_path)
        relative_paths = dataset_writers.finalize(
            formats=tuple(generate.formats),
            out_dir=out_dir,
            num_shards=len(records),
            num_identities=generate.num_identities,
            image_format=generate.image_format,
            resolution=config.data.resolution,
            shard_lengths=[record["counts"].get("kept", 0) for record in records],
        )
        relative_paths = list(relative_paths) + write_dataset_figures(out_dir, plan, records)
        relative_paths += [manifest.PLAN_FILE, manifest.IDENTITIES_FILE]
        files = {path: file_sha256(os.path.join(out_dir, path)) for path in relative_paths}
        result = manifest.build_manifest(plan, records, files, out_dir)
        manifest.write_json_atomically(manifest_path, result)
        dataset_writers.remove_shard_fragments(generate.formats, out_dir)
    logging.info("Wrote %s: %s", manifest_path, result["counts"])
    return result


# ---------------------------------------------------------------------------------------- job


def generate_dataset(
    config: ml_collections.ConfigDict, workdir: str, models: GenerationModels | None = None
) -> dict | None:
    """Runs this worker's share of the job of the module docstring; returns its throughput
    summary (with the manifest's counts once the dataset is complete), or None when SIGTERM
    stopped the judge's training. `models`: the networks, when already loaded (a benchmark
    reuses their compiled functions); by default they are loaded from `workdir`."""
    if config.condition.source != "encoder":
        raise ValueError(
            "--mode=generate needs a diffusion model conditioned on an identity encoder "
            f"(config.condition.source='encoder'), got {config.condition.source!r}"
        )
    started = time.perf_counter()
    workdir = os.path.abspath(os.path.expanduser(workdir))
    generate = config.generate
    out_dir = manifest.output_directory(config, workdir)
    worker = find_worker(generate.task_index, generate.task_count)
    logging.info("Worker %d of %d (from %s) generates into %s.", worker.index, worker.count,
                 worker.source, out_dir)
    judge_dir = ensure_judge(config, workdir, may_train=worker.count == 1)
    if judge_dir is None:
        return None
    if models is None:
        mesh = parallel.make_mesh(config.mesh, jax.local_devices())
        models = GenerationModels(config, workdir, judge_dir, mesh)
    os.makedirs(os.path.join(out_dir, manifest.SHARDS_DIR), exist_ok=True)
    identities, plan = load_identities(config, workdir, out_dir, models, worker)

    todo = [s for s in worker.shards(num_shards(generate))
            if manifest.read_shard_record(out_dir, s) is None]
    skipped = len(worker.shards(num_shards(generate))) - len(todo)
    if skipped:
        logging.info("%d of this worker's shards are complete already.", skipped)
    throughput = Throughput()
    planned = sum(len(shard_labels(generate, s)) for s in todo) * generate.images_per_identity
    shards_started = time.perf_counter()
    with tqdm.tqdm(total=planned, unit="img", desc=f"Worker {worker.index}/{worker.count}",
                   disable=planned == 0, smoothing=0.1) as progress:
        for shard, records, kept in draw_shards(config, models, identities, todo, throughput,
                                                progress):
            writing = time.perf_counter()
            write_shard(config, out_dir, shard, records, kept)
            throughput.write_seconds += time.perf_counter() - writing
            throughput.images_kept += len(kept)
            kept_fraction = throughput.images_kept / max(1, throughput.images_drawn)
            progress.set_postfix(kept=f"{kept_fraction:.0%}")
    throughput.shard_seconds = time.perf_counter() - shards_started
    final = finalize_dataset(config, out_dir, plan)
    summary = {
        "worker": dataclasses.asdict(worker),
        "out_dir": out_dir,
        "shards_written": todo,
        "shards_already_complete": skipped,
        **throughput.to_json(time.perf_counter() - started),
        "dataset_complete": final is not None,
    }
    if final is not None:
        summary["counts"] = final["counts"]
    logging.info("Generation summary: %s", summary)
    return summary
