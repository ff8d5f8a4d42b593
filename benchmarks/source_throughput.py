"""Decoded images/s of every training source through `input_pipeline.make_train_iterator`; writes
JSON.

One set of procedural faces (--identities x --images-per-identity, rendered at 112x112, the
common aligned-crop size, and saved as JPEG quality 95) is laid out in each format:

    procedural    the embedded TFDS dataset (PNG at the model's resolution), 64 only.
    image_folder  root/<identity>/<image>.jpg, prepared once into ArrayRecord (PNG at the model's
                  resolution): the one-off preparation time is reported as prepare_s.
    recordio      the same JPEGs in an InsightFace train.rec/train.idx (header record, identity
                  records), decoded at read time.
    tfds          the same JPEGs in a TFDS dataset read by name (`TfdsNamedSource`, Text labels),
                  decoded at read time; prepare_s is opening it (the label scan).

For each source, resolution and --worker-counts: the first batch is read untimed (it starts the
workers), then --batches batches of --batch-size are timed (horizontal flips on). For identity
folders and TFDS, cutting the source to half its identities (`data.max_identities`) is timed
twice, from no label cache (label_scan_s: every record read) and again (label_cache_s: the labels
read back from `record_label_cache`). Runs under absl, since grain's worker processes need
parsed flags. The report is a `diffusion_jax.benchmark_record` (commit, machine, command line,
settings, results).

    python benchmarks/source_throughput.py --output=benchmarks/results/source_throughput_cpu2.json
    python benchmarks/source_throughput.py --quick --output=/tmp/sources.json   # seconds

`--quick` is a check that it runs: every source at 64x64 only, 4 identities x 2 images, 1 timed
batch of 4, no grain workers (flags given explicitly still apply).
"""

import contextlib
import glob
import io
import json
import os
import sys
import tempfile
import time

import jax
import ml_collections
import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from absl import app, flags
from presets import load_preset

from diffusion_jax.benchmark_record import write_benchmark_json
from diffusion_jax.tasks.data.faces.procedural_faces import render_faces
from diffusion_jax.tasks.data.sources import input_pipeline, recordio

_OUTPUT = flags.DEFINE_string("output", None, "where to write the JSON (also printed)")
_IDENTITIES = flags.DEFINE_integer("identities", 50, "identities of the generated datasets")
_IMAGES_PER_IDENTITY = flags.DEFINE_integer("images_per_identity", 20, "images per identity")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "images per batch")
_BATCHES = flags.DEFINE_integer("batches", 10, "timed batches per measurement")
_WORKER_COUNTS = flags.DEFINE_list("worker_counts", ["0", "2"], "grain worker processes")
_QUICK = flags.DEFINE_bool("quick", False, "a check that it runs, in seconds (module docstring)")
# --quick: the values of the flags it sets, unless given on the command line.
QUICK_FLAGS = {
    "identities": 4,
    "images_per_identity": 2,
    "batch_size": 4,
    "batches": 1,
    "worker_counts": ["0"],
}

FACE_RESOLUTION = 112
TFDS_NAME = "benchmark_face_jpegs"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _demo_config() -> ml_collections.ConfigDict:
    """`configs/faces.py:demo`."""
    return load_preset("demo")


def _jpeg(pixels: np.ndarray) -> bytes:
    encoded = io.BytesIO()
    PIL.Image.fromarray(pixels).save(encoded, format="JPEG", quality=95)
    return encoded.getvalue()


def _face_jpegs() -> list[list[bytes]]:
    """JPEG faces, [identity][image]."""
    num_identities, per_identity = _IDENTITIES.value, _IMAGES_PER_IDENTITY.value
    identity_ids = np.repeat(np.arange(num_identities), per_identity)
    image_ids = np.tile(np.arange(per_identity), num_identities)
    pixels = render_faces(1, identity_ids, image_ids, FACE_RESOLUTION)
    jpegs = [_jpeg(image) for image in pixels]
    return [jpegs[i * per_identity : (i + 1) * per_identity] for i in range(num_identities)]


def _write_folders(faces: list[list[bytes]], root: str) -> None:
    for identity, images in enumerate(faces):
        folder = os.path.join(root, f"person_{identity:05d}")
        os.makedirs(folder)
        for index, encoded in enumerate(images):
            with open(os.path.join(folder, f"{index:03d}.jpg"), "wb") as file:
                file.write(encoded)


def _write_recordio(faces: list[list[bytes]], rec_path: str) -> None:
    """InsightFace layout (see `recordio`): header at key 0, images at keys 1 .. N, then one
    record per identity with its image key range."""
    num_images = sum(len(images) for images in faces)
    first_identity_key = num_images + 1
    header = recordio.IRHeader(2, [first_identity_key, first_identity_key + len(faces)], 0, 0)
    records, identity_records, key = [(0, recordio.pack_record(header, b""))], [], 1
    for identity, images in enumerate(faces):
        key_range = recordio.IRHeader(2, [key, key + len(images)], 0, 0)
        identity_key = first_identity_key + identity
        identity_records.append((identity_key, recordio.pack_record(key_range, b"")))
        for encoded in images:
            image_header = recordio.IRHeader(0, float(identity), key, 0)
            records.append((key, recordio.pack_record(image_header, encoded)))
            key += 1
    with open(rec_path, "wb") as rec_file, open(recordio.default_index_path(rec_path), "w") as idx:
        for key, record in records + identity_records:
            idx.write(recordio.format_index_line(key, rec_file.tell()))
            rec_file.write(recordio.frame_record(record))


class BenchmarkFaceJpegs(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """The benchmark's JPEG faces as a TFDS dataset named TFDS_NAME, labelled like LFW (Text).

    Unregistered, as a dataset prepared elsewhere would be: `tfds.data_source` finds it by name
    among the prepared files of data_dir (and grain's workers need not unpickle this class).
    """

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, faces: list[list[bytes]] | None = None, **kwargs):
        self._faces = faces
        super().__init__(file_format="array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "label": tfds.features.Text(),
        }
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for identity, images in enumerate(self._faces):
            for index, encoded in enumerate(images):
                # A file object is stored as is: the JPEG bytes are not re-encoded.
                yield (
                    f"{identity}/{index}",
                    {
                        "image": io.BytesIO(encoded),
                        "label": f"person_{identity:05d}",
                    },
                )


def _throughput(data_config: ml_collections.ConfigDict) -> dict:
    """prepare_s (ensure_prepared), first_batch_s and decoded images/s after the first batch."""
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # TFDS reports its progress on stdout.
        input_pipeline.ensure_prepared(data_config)
    prepare_s = time.perf_counter() - start
    iterator = input_pipeline.make_train_iterator(
        data_config, global_batch_size=_BATCH_SIZE.value, seed=0
    )
    start = time.perf_counter()
    next(iterator)
    first_batch_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(_BATCHES.value):
        next(iterator)
    read_s = time.perf_counter() - start
    return {
        "prepare_s": round(prepare_s, 2),
        "first_batch_s": round(first_batch_s, 2),
        "decoded_images_per_s": round(_BATCH_SIZE.value * _BATCHES.value / read_s, 1),
    }


def _label_seconds(data_config: ml_collections.ConfigDict) -> dict:
    """Seconds of `input_pipeline.training_records` cut to half the identities: without a label
    cache (every label cache under data_dir deleted first), then with the one that call left."""
    for cache in glob.glob(
        os.path.join(data_config.data_dir, "**", "record_labels_*.npz"), recursive=True
    ):
        os.remove(cache)
    cut = ml_collections.ConfigDict(data_config.to_dict())
    cut.max_identities = _IDENTITIES.value // 2
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        input_pipeline.training_records(cut)
        seconds.append(time.perf_counter() - start)
    return {"label_scan_s": round(seconds[0], 3), "label_cache_s": round(seconds[1], 3)}


def main(argv: list[str]) -> None:
    del argv
    jax.config.update("jax_platforms", "cpu")
    if _QUICK.value:
        for name, value in QUICK_FLAGS.items():
            if not flags.FLAGS[name].present:
                flags.FLAGS[name].value = value
    with tempfile.TemporaryDirectory() as workdir:
        faces = _face_jpegs()
        folder_root = os.path.join(workdir, "faces")
        _write_folders(faces, folder_root)
        rec_path = os.path.join(workdir, "train.rec")
        _write_recordio(faces, rec_path)
        tfds_dir = os.path.join(workdir, "tfds_by_name")
        with contextlib.redirect_stdout(sys.stderr):
            BenchmarkFaceJpegs(faces=faces, data_dir=tfds_dir).download_and_prepare()

        sources = {
            "procedural": ("", os.path.join(workdir, "procedural"), (64,)),
            "image_folder": (folder_root, os.path.join(workdir, "prepared"), (64, 112)),
            "recordio": (rec_path, workdir, (64, 112)),
            "tfds": (TFDS_NAME, tfds_dir, (64, 112)),
        }
        if _QUICK.value:
            sources = {name: (*source[:2], (64,)) for name, source in sources.items()}
        measurements = []
        for source, (path, data_dir, resolutions) in sources.items():
            for resolution in resolutions:
                for worker_count in map(int, _WORKER_COUNTS.value):
                    config = _demo_config()
                    config.data.update(
                        source=source,
                        path=path,
                        data_dir=data_dir,
                        resolution=resolution,
                        worker_count=worker_count,
                        num_train_identities=_IDENTITIES.value,
                        images_per_train_identity=_IMAGES_PER_IDENTITY.value,
                        num_heldout_identities=20,
                        images_per_heldout_identity=2,
                        pairs_per_fold=1,
                    )
                    measurement = {
                        "source": source,
                        "resolution": resolution,
                        "worker_count": worker_count,
                        **_throughput(config.data),
                    }
                    if source in ("image_folder", "tfds") and worker_count == 0:
                        measurement.update(_label_seconds(config.data))
                    print(json.dumps(measurement), file=sys.stderr)
                    measurements.append(measurement)

    settings = {
        "identities": _IDENTITIES.value,
        "images_per_identity": _IMAGES_PER_IDENTITY.value,
        "stored_resolution": FACE_RESOLUTION,
        "batch_size": _BATCH_SIZE.value,
        "timed_batches": _BATCHES.value,
        "worker_counts": [int(count) for count in _WORKER_COUNTS.value],
        "quick": _QUICK.value,
    }
    results = {
        "images": _IDENTITIES.value * _IMAGES_PER_IDENTITY.value,
        "note": "prepare_s is paid once: a second worker_count reuses the prepared data",
        "measurements": measurements,
    }
    write_benchmark_json(_OUTPUT.value, "source_throughput", results, settings)


if __name__ == "__main__":
    app.run(main)
