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
                    (`dataset_writers.finalize`, `dataset_figures`) and `manifest.json`, last;
                    then it deletes the RecordIO shard fragments that `train.rec` was assembled
                    from. Independent workers (array jobs, batch tasks) return once their own
                    shards are written; the processes of one jax.distributed job (the pipeline
                    with --distributed) wait for each other's (`wait_for_dataset`), since the
                    next stage needs the whole dataset.

The commit protocol depends on where OUT lies (`core.paths`):

- a local directory (POSIX rename and `fcntl.flock`): a shard's files are staged in
  `shards/shard_S.partial/`, moved into place with a rename, then its record is written (to a
  `.partial` name and renamed), the commit marker. Finalizing runs under an OS file lock
  (`shards/.finalize.lock`), once: the worker that takes the lock and finds no manifest writes
  the dataset-level files, then the manifest, then deletes the fragments.
- an object store (`gs://`; no rename, no lock, but each object is written atomically): a
  shard's files are written straight to their final names, then its record. A shard without its
  record is redone and overwrites the same names with the same bytes, so a reader that trusts
  only recorded shards never sees a mix. Finalizing takes no lock: it is deterministic (every
  worker would write the same bytes, each file in one upload), the manifest is written last and
  the fragments are deleted only once it exists, so concurrent finalizers are harmless; one that
  finds the manifest present, or the fragments gone under it (another finalizer finished), returns
  the manifest.

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
import hashlib
import io
import os
import time

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging

from diffusion_jax.core import parallel, paths, stages
from diffusion_jax.core.fingerprint import file_sha256
from diffusion_jax.core.run_layout import RunLayout
from diffusion_jax.tasks.data.sources import input_pipeline
from diffusion_jax.tasks.generation import dataset_writers, manifest
from diffusion_jax.tasks.generation.dataset_figures import write_dataset_figures
from diffusion_jax.tasks.generation.generation_models import GenerationModels
from diffusion_jax.tasks.generation.identity_sources import choose_identities
from diffusion_jax.tasks.generation.shard_drawing import Throughput, draw_shards
from diffusion_jax.tasks.generation.sphere_sampling import max_similarity_to
from diffusion_jax.tasks.generation.style_sources import STYLE_FIELDS, style_source_for_generation
from diffusion_jax.tasks.generation.training_identities import cached_identity_centres
from diffusion_jax.tasks.generation.training_images import (
    cached_training_images,
    training_images_for_generation,
)
from diffusion_jax.tasks.generation.worker_index import Worker, find_worker

# config.generate fields that say who runs the job and where, not what it makes.
WORKER_FIELDS = (
    "output_dir",
    "task_index",
    "task_count",
    "identities_timeout_minutes",
    "dataset_timeout_minutes",
    "judge_encoder",
)
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
    if generate.get("style_source", "none") == "none":  # the plan of a dataset without style
        generate = {key: value for key, value in generate.items() if key not in STYLE_FIELDS}
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
    config: ml_collections.ConfigDict,
    workdir: str,
    out_dir: str,
    models: GenerationModels,
    plan: dict,
) -> None:
    centres = cached_identity_centres(
        config,
        models.conditioning,
        models.identity["conditioning_encoder"],
        cache_dir=RunLayout.from_config(workdir, config).cache,
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
    # The image-level leakage check's training images under the judge, cached before the plan
    # so that every worker finds them once it finds the plan.
    training_images = cached_training_images(
        config,
        models.judge,
        models.identity["judge_encoder"],
        cache_dir=RunLayout.from_config(workdir, config).cache,
    )
    buffer = io.BytesIO()
    np.save(buffer, identities.astype(np.float32))
    identities_path = paths.Path(out_dir) / manifest.IDENTITIES_FILE
    paths.write_bytes_atomically(identities_path, buffer.getvalue())
    description.update(
        file=manifest.IDENTITIES_FILE,
        sha256=file_sha256(identities_path),
        training_identities=len(centres),
        training_images={"count": len(training_images), "sha256": training_images.sha256},
        max_similarity_to_training_identity=float(nearest.max()),
    )
    paths.write_json_atomically(
        paths.Path(out_dir) / manifest.PLAN_FILE, {**plan, "identities": description}
    )
    logging.info(
        "Chose %d identities (%s); nearest training identity at cos %.3f.",
        len(identities),
        description["source"],
        nearest.max(),
    )


def _check_plan(saved: dict, plan: dict, path: paths.Path) -> None:
    differing = [
        f"{key}: {path} has {saved.get(key)!r}, this worker has {plan.get(key)!r}"
        for key in sorted((set(plan) | set(saved)) - {"identities"})
        if saved.get(key) != plan.get(key)
    ]
    if differing:
        raise ValueError(
            f"{path.parent} holds a dataset of another config or other networks; "
            "use another config.generate.output_dir or the same config:\n  "
            + "\n  ".join(differing)
        )


def load_identities(
    config: ml_collections.ConfigDict,
    workdir: str,
    out_dir: str,
    models: GenerationModels,
    worker: Worker,
) -> tuple[np.ndarray, dict]:
    """The dataset's identities [N, D] and its saved plan; worker 0 makes them if missing."""
    plan = dataset_plan(config, models)
    plan_path = paths.Path(out_dir) / manifest.PLAN_FILE
    if worker.index == 0 and not plan_path.is_file():
        _choose_and_write_identities(config, workdir, out_dir, models, plan)
    timeout_minutes = config.generate.identities_timeout_minutes
    deadline = time.monotonic() + 60 * timeout_minutes
    while not plan_path.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"Worker {worker.index} of {worker.count} waited {timeout_minutes:g} minutes "
                f"(config.generate.identities_timeout_minutes) for worker 0 to choose the "
                f"identities and the leakage centres and write {plan_path}, in vain. Worker 0 "
                "has stopped, is stuck, or writes elsewhere (config.generate.output_dir): see "
                "its log, then run the job again."
            )
        logging.log_every_n_seconds(
            logging.INFO, "Waiting for worker 0 to write %s.", 60, plan_path
        )
        time.sleep(_POLL_SECONDS)
    saved = paths.read_json(plan_path)
    _check_plan(saved, plan, plan_path)
    identities_path = paths.Path(out_dir) / manifest.IDENTITIES_FILE
    data = identities_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != saved["identities"]["sha256"]:
        raise ValueError(f"{identities_path} does not match the hash in {plan_path}")
    return np.load(io.BytesIO(data)), saved


# ------------------------------------------------------------------------------------- shards


def _encode_all(generate_config, kept: dict[tuple[int, int], np.ndarray]):
    """The kept images as `dataset_writers.ShardImage`s in (identity, image index) order,
    encoded by a thread pool (PIL releases the GIL)."""
    order = sorted(kept)

    def encode(key):
        return dataset_writers.encode_image(
            kept[key],
            image_format=generate_config.image_format,
            jpeg_quality=generate_config.jpeg_quality,
        )

    with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        encoded = list(pool.map(encode, order))
    return [
        dataset_writers.ShardImage(label=i, image_index=k, encoded=data)
        for (i, k), data in zip(order, encoded)
    ]


def write_shard(
    config: ml_collections.ConfigDict,
    out_dir: str,
    shard: int,
    records: list[dict],
    kept: dict[tuple[int, int], np.ndarray],
) -> dict:
    """Writes the shard's files (locally: staged, then moved into place; on an object store: at
    their final names) and then its record, the commit (module docstring)."""
    generate = config.generate
    if paths.is_url(out_dir):
        staging = paths.Path(out_dir)  # written in place; the record commits them
    else:
        staging = manifest.staging_dir(out_dir, shard)
        paths.remove_tree(staging)  # an earlier attempt's
        staging.mkdir(parents=True)
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
        path: file_sha256(staging / path)
        for path in relative_paths
        if not path.startswith(dataset_writers.FRAGMENT_DIR + "/")
    }
    if not paths.is_url(out_dir):
        for path in relative_paths:
            paths.move(staging / path, paths.Path(out_dir) / path)
    labels = shard_labels(generate, shard)
    record = {
        "shard": shard,
        "identities": [labels.start, labels.stop],
        "counts": manifest.count_decisions(records),
        "images": records,
        "files": files,
    }
    record_path = manifest.shard_record_path(out_dir, shard)
    paths.write_json_atomically(record_path, record)
    if not paths.is_url(out_dir):
        paths.remove_tree(staging)
        # A worker killed while writing this record left its temporary file; the shard is this
        # worker's alone, so no other writer can be using one.
        for leftover in record_path.parent.glob(f".{record_path.name}.*.partial"):
            leftover.unlink()
    return record


# ----------------------------------------------------------------------------------- manifest


@contextlib.contextmanager
def _exclusive_lock(path: paths.Path):
    """An OS file lock, released when the process exits however it exits (local files only)."""
    with open(path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _write_dataset_files(
    config: ml_collections.ConfigDict, out_dir: str, plan: dict, records: list[dict]
) -> dict:
    """Writes the dataset-level files, then the manifest (last); returns the manifest."""
    generate = config.generate
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
    files = {path: file_sha256(paths.Path(out_dir) / path) for path in relative_paths}
    result = manifest.build_manifest(plan, records, files, out_dir)
    paths.write_json_atomically(paths.Path(out_dir) / manifest.MANIFEST_FILE, result)
    return result


def finalize_dataset(config: ml_collections.ConfigDict, out_dir: str, plan: dict) -> dict | None:
    """Writes the dataset-level files and the manifest once every shard is complete; returns
    the manifest, or None while shards are missing. Locally under an OS file lock, once; on an
    object store without a lock (module docstring)."""
    generate = config.generate
    records = [manifest.read_shard_record(out_dir, s) for s in range(num_shards(generate))]
    if any(record is None for record in records):
        return None
    manifest_path = paths.Path(out_dir) / manifest.MANIFEST_FILE
    on_object_store = paths.is_url(out_dir)
    lock = (
        contextlib.nullcontext()
        if on_object_store
        else _exclusive_lock(paths.Path(out_dir) / manifest.SHARDS_DIR / ".finalize.lock")
    )
    with lock:
        if manifest_path.is_file():
            dataset_writers.remove_shard_fragments(generate.formats, out_dir)  # if killed before
            return paths.read_json(manifest_path)
        try:
            result = _write_dataset_files(config, out_dir, plan, records)
        except Exception:
            # Object store: a concurrent finalizer wrote the manifest and deleted the fragments
            # this one was reading; its manifest is the one this one would have written.
            if on_object_store and manifest_path.is_file():
                return paths.read_json(manifest_path)
            raise
        dataset_writers.remove_shard_fragments(generate.formats, out_dir)
    logging.info("Wrote %s: %s", manifest_path, result["counts"])
    return result


def wait_for_dataset(
    config: ml_collections.ConfigDict, out_dir: str, plan: dict, worker: Worker
) -> dict:
    """Waits until every shard of the dataset has its record, finalizes it if no other worker
    has (`finalize_dataset`) and returns the manifest. For workers that run at the same time,
    the processes of one jax.distributed job: the next stage needs the whole dataset.

    Raises TimeoutError, naming the missing shards and the workers that own them, when no shard
    completes for `config.generate.dataset_timeout_minutes`.
    """
    timeout_minutes = config.generate.dataset_timeout_minutes
    missing = list(range(num_shards(config.generate)))
    deadline, poll_seconds = time.monotonic() + 60 * timeout_minutes, 0.5
    while True:
        still_missing = [s for s in missing if not manifest.shard_record_path(out_dir, s).exists()]
        if not still_missing:
            final = finalize_dataset(config, out_dir, plan)
            if final is not None:
                return final
        if len(still_missing) < len(missing):  # progress: the others are alive
            deadline = time.monotonic() + 60 * timeout_minutes
        missing = still_missing
        owners = sorted({s % worker.count for s in missing})
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"Worker {worker.index} of {worker.count} waited {timeout_minutes:g} minutes "
                f"(config.generate.dataset_timeout_minutes) for the other workers' shards of "
                f"{out_dir} and none completed: shards {missing} of workers {owners} are "
                "missing. Those workers have stopped or are stuck: see their logs, then run "
                "the job again (complete shards are kept)."
            )
        logging.log_every_n_seconds(
            logging.INFO,
            "Waiting for %d shards of workers %s to complete the dataset in %s.",
            60,
            len(missing),
            owners,
            out_dir,
        )
        time.sleep(poll_seconds)
        poll_seconds = min(2 * poll_seconds, _POLL_SECONDS)


# ---------------------------------------------------------------------------------------- job


def generate_dataset(
    config: ml_collections.ConfigDict, workdir: str, models: GenerationModels | None = None
) -> dict:
    """Runs this worker's share of the job of the module docstring; returns its throughput
    summary (with the manifest's counts once the dataset is complete). `models`: the networks,
    when already loaded (a benchmark reuses their compiled functions); by default they are
    loaded from `workdir`, where the diffusion and judge stages must have left them."""
    if config.condition.source != "encoder":
        raise ValueError(
            "--mode=generate needs a diffusion model conditioned on an identity encoder "
            f"(config.condition.source='encoder'), got {config.condition.source!r}"
        )
    started = time.perf_counter()
    layout = RunLayout.from_config(workdir, config)
    workdir = str(layout.root)
    generate = config.generate
    out_dir = str(layout.generated)
    worker = find_worker(generate.task_index, generate.task_count)
    logging.info(
        "Worker %d of %d (from %s) generates into %s.",
        worker.index,
        worker.count,
        worker.source,
        out_dir,
    )
    if models is None:
        for stage in ("encoder", "diffusion", "judge"):
            stages.require(layout, config, stage)
        mesh = parallel.make_mesh(config.mesh, jax.local_devices())
        models = GenerationModels(config, workdir, str(layout.judge.export_dir), mesh)
    if worker.index == 0 or jax.process_count() > 1:
        # Worker 0 reads the training data for the leakage centres; the processes of one
        # jax.distributed job must all join the preparation (it synchronises them).
        input_pipeline.ensure_prepared(config.data)
    (paths.Path(out_dir) / manifest.SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    identities, plan = load_identities(config, workdir, out_dir, models, worker)
    training_images = training_images_for_generation(
        config,
        models.judge,
        models.identity["judge_encoder"],
        layout.cache,
        expected_sha256=plan["identities"].get("training_images", {}).get("sha256"),
    )
    models.use_training_images(training_images)
    models.use_style_source(  # None unless generate.style_source is "real"
        style_source_for_generation(config, training_images.embeddings, training_images.labels)
    )

    todo = [
        s
        for s in worker.shards(num_shards(generate))
        if manifest.read_shard_record(out_dir, s) is None
    ]
    skipped = len(worker.shards(num_shards(generate))) - len(todo)
    if skipped:
        logging.info("%d of this worker's shards are complete already.", skipped)
    throughput = Throughput()
    planned = sum(len(shard_labels(generate, s)) for s in todo) * generate.images_per_identity
    shards_started = time.perf_counter()
    with tqdm.tqdm(
        total=planned,
        unit="img",
        desc=f"Worker {worker.index}/{worker.count}",
        disable=planned == 0,
        smoothing=0.1,
    ) as progress:
        for shard, records, kept in draw_shards(
            config, models, identities, todo, throughput, progress
        ):
            writing = time.perf_counter()
            write_shard(config, out_dir, shard, records, kept)
            throughput.write_seconds += time.perf_counter() - writing
            throughput.images_kept += len(kept)
            kept_fraction = throughput.images_kept / max(1, throughput.images_drawn)
            progress.set_postfix(kept=f"{kept_fraction:.0%}")
    throughput.shard_seconds = time.perf_counter() - shards_started
    final = finalize_dataset(config, out_dir, plan)
    if final is None and worker.source == "jax" and worker.count > 1:
        final = wait_for_dataset(config, out_dir, plan, worker)
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
