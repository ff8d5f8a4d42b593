"""The on-disk layout of a generated dataset, its per-shard records and its manifest.

    OUT/generation.json          the plan, written first by worker 0 and checked by every
                                 worker: the config fields that define the dataset, the
                                 networks' identities (diffusion step and parameter hash, encoder,
                                 judge and autoencoder weight hashes) and how the identities were
                                 chosen
    OUT/identities.npy           the identities' embeddings, float32 [N, D] (row = label)
    OUT/shards/shard_SSSSS.json  one per shard, written last, so its presence means the shard
                                 is complete: every image decision in judging order (identity,
                                 image index, attempt, seed, judge similarity, similarity to the
                                 nearest image kept before it, conditioning similarity,
                                 decision, the judge cosine, index and label of the nearest real
                                 training image (`training_images`), with style on its style
                                 source and style similarity (`style_sources`), and the
                                 identity-folder path of a kept image), counts, and the SHA-256
                                 of every file the shard wrote
    OUT/<format files>           see `dataset_writers`
    OUT/figures/                 see `dataset_figures`
    OUT/manifest.json            written once every shard is complete: the plan, counts (the
                                 decisions, e.g. "near_training_image" for the images the
                                 image-level leakage check rejected, and the kept images' nearest
                                 training image cosine: mean, p50, p90, p99, max), the SHA-256 of
                                 every shard record and of every dataset-level file

OUT may be a local path or a `gs://` URL (`core.paths`). Every JSON file is written atomically
(`paths.write_json_atomically`: locally to a temporary `.partial` file, flushed and renamed; on an
object store as one upload), so a file under its final name is always complete; contents hold no
timestamps, so the same config gives the same bytes. A shard's files are then committed by its
record, the dataset by its manifest (`generation_job` gives the protocol, local and object
store): locally a shard's files are staged in `shards/shard_SSSSS.partial/` and moved into place
before its record is written; on an object store they are written at their final names, then the
record.
"""

import json
from typing import Any

from diffusion_jax.core import paths
from diffusion_jax.core.fingerprint import file_sha256

# Re-exported: the canonical JSON and its atomic write and read live in `core.paths`.
from diffusion_jax.core.paths import (  # noqa: F401
    json_bytes,
    read_json,
    write_bytes_atomically,
    write_json_atomically,
)
from diffusion_jax.tasks.generation.training_images import similarity_summary

PLAN_FILE = "generation.json"
IDENTITIES_FILE = "identities.npy"
MANIFEST_FILE = "manifest.json"
SHARDS_DIR = "shards"
FORMAT_VERSION = 1


def shard_name(shard: int) -> str:
    return f"shard_{shard:05d}"


def shard_record_relative_path(shard: int) -> str:
    """The record of `shard`, relative to OUT."""
    return f"{SHARDS_DIR}/{shard_name(shard)}.json"


def shard_record_path(out_dir: paths.PathLike, shard: int) -> paths.Path:
    return paths.Path(out_dir) / shard_record_relative_path(shard)


def staging_dir(out_dir: paths.PathLike, shard: int) -> paths.Path:
    """Where a shard's files are staged before they are moved into OUT (local OUT only)."""
    return paths.Path(out_dir) / SHARDS_DIR / f"{shard_name(shard)}.partial"


def as_json(value: Any) -> Any:
    """`value` as it reads back from its JSON (tuples become lists), for comparisons."""
    return json.loads(json_bytes(value))


def read_shard_record(out_dir: paths.PathLike, shard: int) -> dict | None:
    """The record of a complete shard, or None when the shard is not complete."""
    return paths.read_json_if_exists(shard_record_path(out_dir, shard))


def count_decisions(images: list[dict]) -> dict[str, int]:
    """{decision: number of judged images} over image decision records."""
    counts: dict[str, int] = {}
    for image in images:
        counts[image["decision"]] = counts.get(image["decision"], 0) + 1
    return dict(sorted(counts.items()))


def build_manifest(
    plan: dict, records: list[dict], dataset_files: dict[str, str], out_dir: paths.PathLike
) -> dict:
    """The manifest of a dataset whose shard records are `records` (in shard order) and whose
    dataset-level files are {relative path: sha256}."""
    images = [image for record in records for image in record["images"]]
    kept = [image for image in images if image["decision"] == "kept"]
    per_identity = {}
    for image in kept:
        per_identity[image["identity"]] = per_identity.get(image["identity"], 0) + 1
    num_identities = plan["generate"]["num_identities"]
    return {
        "format_version": FORMAT_VERSION,
        "plan": plan,
        "counts": {
            "identities": num_identities,
            "identities_with_images": len(per_identity),
            "images": len(kept),
            "images_per_identity_min": min(per_identity.get(i, 0) for i in range(num_identities)),
            "images_per_identity_max": max(per_identity.values(), default=0),
            "judged_images": len(images),
            "decisions": count_decisions(images),
            # Shards written before it was recorded lack it: those images are not counted.
            "kept_nearest_training_image_similarity": similarity_summary(
                [image.get("nearest_training_image_similarity", float("nan")) for image in kept]
            ),
            "files": len(dataset_files) + sum(len(record["files"]) for record in records),
        },
        "shards": {
            shard_record_relative_path(record["shard"]): file_sha256(
                shard_record_path(out_dir, record["shard"])
            )
            for record in records
        },
        "files": dict(sorted(dataset_files.items())),
    }
