"""`--mode=validate_dataset`: a generated dataset checked against its manifest.

Checks that the manifest exists (else says how many shard records are present), that every
shard record and every file the manifest and the records list is present with its SHA-256, that
the counts add up (each record's decisions, the kept images against the manifest's counts and
against the TFDS and RecordIO datasets' lengths), and that the identity folders hold no file the
records do not list (no duplicates, no leftovers). Every problem found is reported, naming the
file; the summary is printed as JSON. The dataset may be local or on an object store (`gs://`,
`core.paths`).
"""

import json

import ml_collections
import tensorflow_datasets as tfds
from absl import logging

from diffusion_jax.core import paths
from diffusion_jax.core.bad_input import BadInputError
from diffusion_jax.core.fingerprint import file_sha256
from diffusion_jax.core.run_layout import RunLayout
from diffusion_jax.tasks.data.sources.recordio import RecordIOReader
from diffusion_jax.tasks.generation import dataset_writers, manifest


class InvalidDatasetError(BadInputError):
    """The dataset in `source` does not match its manifest; `str(error)` is `message`, which
    names the dataset and lists every problem."""

    def __init__(self, source: str, message: str):
        super().__init__(source, message)
        self.args = (message,)


def _check_files(out_dir: str, files: dict[str, str], problems: list[str]) -> None:
    for path, expected in files.items():
        full_path = paths.Path(out_dir) / path
        if not full_path.is_file():
            problems.append(f"{full_path} is missing")
        elif file_sha256(full_path) != expected:
            problems.append(f"{full_path} does not match its SHA-256 {expected[:12]}...")


def _unlisted_folder_images(out_dir: str, listed: set[str]) -> list[str]:
    found = {
        f"{dataset_writers.FOLDERS_DIR}/{path}"
        for path in paths.relative_files(paths.Path(out_dir) / dataset_writers.FOLDERS_DIR)
    }
    return sorted(found - listed)


def validate(out_dir: str) -> dict:
    """The summary of a valid dataset in `out_dir`; raises InvalidDatasetError otherwise."""
    manifest_path = paths.Path(out_dir) / manifest.MANIFEST_FILE
    if not manifest_path.is_file():
        shards_dir = paths.Path(out_dir) / manifest.SHARDS_DIR
        present = (
            len([path for path in shards_dir.iterdir() if path.name.endswith(".json")])
            if shards_dir.is_dir()
            else 0
        )
        raise InvalidDatasetError(
            out_dir,
            f"{manifest_path} does not exist: the dataset is not complete ({present} shard "
            "records present); run --mode=generate again to finish it",
        )
    contents = paths.read_json(manifest_path)
    problems: list[str] = []
    _check_files(out_dir, contents["shards"], problems)
    _check_files(out_dir, contents["files"], problems)
    kept, listed_folder_images, shard_files = 0, set(), 0
    for path in contents["shards"]:
        if not (paths.Path(out_dir) / path).is_file():
            continue
        record = paths.read_json(paths.Path(out_dir) / path)
        _check_files(out_dir, record["files"], problems)
        shard_files += len(record["files"])
        if manifest.count_decisions(record["images"]) != record["counts"]:
            problems.append(f"{path}: its counts do not add up to its image decisions")
        for image in record["images"]:
            if image["decision"] == "kept":
                kept += 1
                if "path" in image:
                    listed_folder_images.add(image["path"])
                    if image["path"] not in record["files"]:
                        problems.append(f"{path}: {image['path']} is kept but not in its files")
    counts = contents["counts"]
    if kept != counts["images"]:
        problems.append(
            f"the shard records keep {kept} images, the manifest counts {counts['images']}"
        )
    if shard_files + len(contents["files"]) != counts["files"]:
        problems.append(
            f"{shard_files + len(contents['files'])} files are listed, the manifest "
            f"counts {counts['files']}"
        )
    formats = contents["plan"]["generate"]["formats"]
    if "folders" in formats:
        unlisted = _unlisted_folder_images(out_dir, listed_folder_images)
        problems += [
            f"{paths.Path(out_dir) / path} is not in any shard record" for path in unlisted[:20]
        ]
    lengths = {}
    if "tfds" in formats:
        tfds_dir = paths.Path(out_dir) / dataset_writers.TFDS_DIR
        lengths["tfds"] = tfds.builder_from_directory(tfds_dir).info.splits["train"].num_examples
    if "recordio" in formats:
        rec_path = paths.Path(out_dir) / dataset_writers.RECORDIO_REC
        lengths["recordio"] = len(RecordIOReader(str(rec_path)))
    problems += [
        f"the {name} dataset holds {length} images, the manifest counts {kept}"
        for name, length in lengths.items()
        if length != kept
    ]
    if problems:
        raise InvalidDatasetError(
            out_dir,
            f"{out_dir} does not match its manifest ({len(problems)} problems):\n  "
            + "\n  ".join(problems),
        )
    return {
        "out_dir": out_dir,
        "valid": True,
        **counts,
        "formats": formats,
        "format_lengths": lengths,
    }


def validate_generated_dataset(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """--mode=validate_dataset on `config.generate.output_dir` (default WORKDIR/generated)."""
    summary = validate(str(RunLayout.from_config(workdir, config).generated))
    logging.info("Valid dataset: %s", summary)
    print(json.dumps(summary, indent=1))
    return summary
