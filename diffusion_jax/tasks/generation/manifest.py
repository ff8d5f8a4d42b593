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
                                 decision, and the identity-folder path of a kept image), counts,
                                 and the SHA-256 of every file the shard wrote
    OUT/<format files>           see `dataset_writers`
    OUT/figures/                 see `dataset_figures`
    OUT/manifest.json            written once every shard is complete: the plan, counts, the
                                 SHA-256 of every shard record and of every dataset-level file

Every JSON file is written to `NAME.partial` and renamed (`write_json_atomically`), so a file
under its final name is always complete; contents hold no timestamps, so the same config gives
the same bytes. A shard's files are staged in `shards/shard_SSSSS.partial/` and moved into place
before its record is written.
"""

import json
import os
from typing import Any

import ml_collections

from diffusion_jax.core.fingerprint import file_sha256

PLAN_FILE = "generation.json"
IDENTITIES_FILE = "identities.npy"
MANIFEST_FILE = "manifest.json"
SHARDS_DIR = "shards"
FORMAT_VERSION = 1


def output_directory(config: ml_collections.ConfigDict, workdir: str) -> str:
    """`config.generate.output_dir`, else WORKDIR/generated."""
    directory = config.generate.output_dir or os.path.join(workdir, "generated")
    return os.path.abspath(os.path.expanduser(directory))


def shard_name(shard: int) -> str:
    return f"shard_{shard:05d}"


def shard_record_path(out_dir: str, shard: int) -> str:
    return os.path.join(out_dir, SHARDS_DIR, f"{shard_name(shard)}.json")


def staging_dir(out_dir: str, shard: int) -> str:
    return os.path.join(out_dir, SHARDS_DIR, f"{shard_name(shard)}.partial")


def json_bytes(value: Any) -> bytes:
    """The canonical serialisation: sorted keys, indented, UTF-8, trailing newline."""
    return (json.dumps(value, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()


def as_json(value: Any) -> Any:
    """`value` as it reads back from its JSON (tuples become lists), for comparisons."""
    return json.loads(json_bytes(value))


def write_bytes_atomically(path: str, data: bytes) -> None:
    """Writes `path.partial`, flushes it to disk and renames it to `path`."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = f"{path}.partial"
    with open(partial, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)


def write_json_atomically(path: str, value: Any) -> None:
    write_bytes_atomically(path, json_bytes(value))


def read_json(path: str) -> Any:
    """The JSON at `path`; a file that does not parse is reported by name."""
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def read_shard_record(out_dir: str, shard: int) -> dict | None:
    """The record of a complete shard, or None when the shard is not complete."""
    path = shard_record_path(out_dir, shard)
    return read_json(path) if os.path.isfile(path) else None


def count_decisions(images: list[dict]) -> dict[str, int]:
    """{decision: number of judged images} over image decision records."""
    counts: dict[str, int] = {}
    for image in images:
        counts[image["decision"]] = counts.get(image["decision"], 0) + 1
    return dict(sorted(counts.items()))


def build_manifest(
    plan: dict, records: list[dict], dataset_files: dict[str, str], out_dir: str
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
            "files": len(dataset_files) + sum(len(record["files"]) for record in records),
        },
        "shards": {
            os.path.relpath(shard_record_path(out_dir, record["shard"]), out_dir): file_sha256(
                shard_record_path(out_dir, record["shard"])
            )
            for record in records
        },
        "files": dict(sorted(dataset_files.items())),
    }
