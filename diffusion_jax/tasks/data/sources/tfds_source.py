"""A grain source over a TFDS dataset that the user has prepared locally, read by name.

`TfdsNamedSource("lfw", "train", "/data/tfds", resolution=112, policy="resize")` opens the
dataset with `tfds.data_source(name, split=..., data_dir=..., download=False)`: nothing is ever
downloaded or prepared. The dataset must be prepared in a random-access format (ArrayRecord, as
`tfds build lfw --file_format=array_record --data_dir=/data/tfds` writes it); a name that is not
prepared in data_dir, unknown, malformed or of a version that is not there, or prepared as
TFRecord, is refused with a `BadInputError` naming both. A record that cannot be read (a damaged
ArrayRecord file) names the dataset and the record (`prepared_records`).

Images are read still encoded (TFDS's `Image` feature stores PNG or JPEG bytes) and decoded by
`image_decoding.decode_image`, so a TFDS dataset gets the same safety checks, colour conversion
and square-cropping policy as every other source of faces. data_dir may be local or a `gs://` URL
(TFDS reads it through epath).

Labels are contiguous integers 0 .. num_identities - 1:
- a `ClassLabel` feature gives its integer, and num_identities is its number of classes;
- a `Text` feature (LFW's "label" is the person's name) is mapped by the sorted names (Python
  string order), so the same dataset always gives the same labels. Finding the names costs one
  pass over the split, reading every record's bytes without decoding its image, when the source
  is first opened; the labels are then kept beside the dataset (`record_label_cache`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from diffusion_jax.core import paths
from diffusion_jax.core.bad_input import BadInputError
from diffusion_jax.tasks.data.sources import image_decoding, prepared_records, record_label_cache

# Records read per call while scanning the labels: bounds the memory held by encoded images.
_LABEL_SCAN_CHUNK = 1024


def _open_prepared_builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """The builder of `name` in data_dir, refused unless prepared in a random-access format."""
    dataset = f"TFDS dataset {name!r} in data_dir={data_dir!r}"
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise BadInputError(
            dataset, "neither prepared there nor a known TFDS dataset name"
        ) from None
    except (AssertionError, ValueError) as error:  # a malformed name, a version not there
        raise BadInputError(dataset, f"cannot be opened: {str(error).splitlines()[0]}") from None
    if not builder.is_prepared():
        raise BadInputError(
            dataset,
            "not prepared there (nothing is downloaded): prepare it first, e.g. "
            f"`tfds build {name} --data_dir={data_dir} --file_format=array_record`",
        )
    file_format = builder.info.file_format
    if file_format not in tfds.core.FileFormat.with_random_access():
        raise BadInputError(
            dataset,
            f"prepared as {file_format.value}, which has no random access: prepare it again "
            "with --file_format=array_record",
        )
    return builder


def _feature(
    features: tfds.features.FeaturesDict, key: str, argument: str, kinds: tuple[type, ...]
):
    if key not in features:
        raise ValueError(f"{argument}={key!r} is not a feature of the dataset: {sorted(features)}")
    feature = features[key]
    if not isinstance(feature, kinds):
        expected = " or ".join(kind.__name__ for kind in kinds)
        raise ValueError(f"{argument}={key!r} must be a {expected} feature, got {feature!r}")
    return feature


class TfdsNamedSource:
    """A grain random-access source of {"image": uint8 [R, R, 3], "label": int32} over split
    `split` of the locally prepared TFDS dataset `name` (see the module doc), in stored order.

    Attributes:
      num_identities: the number of labels, which are 0 .. num_identities - 1.
      identity_names: for a Text label, the name of each label (sorted); else None.
    """

    def __init__(
        self,
        name: str,
        split: str,
        data_dir: str | os.PathLike,
        *,
        resolution: int,
        policy: str = "resize",
        image_key: str = "image",
        label_key: str = "label",
    ):
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
            raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
        if policy not in image_decoding.POLICIES:
            raise ValueError(f"policy must be one of {image_decoding.POLICIES}, got {policy!r}")
        data_dir = str(paths.resolve(data_dir))
        builder = _open_prepared_builder(name, data_dir)
        _feature(builder.info.features, image_key, "image_key", (tfds.features.Image,))
        label = _feature(
            builder.info.features,
            label_key,
            "label_key",
            (tfds.features.ClassLabel, tfds.features.Text),
        )
        self._where = f"TFDS {name}/{split} in {data_dir}"
        self._records = tfds.data_source(
            name,
            split=split,
            data_dir=data_dir,
            download=False,
            decoders={image_key: tfds.decode.SkipDecoding()},  # decode_image decodes the bytes
        )
        self._resolution, self._policy = resolution, policy
        self._image_key, self._label_key = image_key, label_key
        self._dataset_dir, self._split = builder.data_dir, split
        self._label_is_text = isinstance(label, tfds.features.Text)
        if not self._label_is_text:
            self.identity_names = None
            self.num_identities = label.num_classes
            self._label_of_name = None
            self._record_labels = None  # read on first use of record_labels
        else:
            cached = self._cached_labels()
            self._record_labels = cached.labels
            self.identity_names = cached.names
            self.num_identities = len(self.identity_names)
            self._label_of_name = {name: label for label, name in enumerate(self.identity_names)}

    def _cached_labels(self) -> record_label_cache.RecordLabels:
        return record_label_cache.load_or_scan(
            self._dataset_dir, self._split, self._label_key, len(self), self._scan_labels
        )

    def _scan_labels(self) -> record_label_cache.RecordLabels:
        stored = self._stored_labels()
        if self._label_is_text:
            names = [name.decode("utf-8") for name in stored]
            identity_names = tuple(sorted(set(names)))
            label_of_name = {name: label for label, name in enumerate(identity_names)}
            return record_label_cache.RecordLabels(
                labels=np.asarray([label_of_name[name] for name in names], np.int32),
                names=identity_names,
            )
        return record_label_cache.RecordLabels(labels=np.asarray(stored, np.int32))

    def _stored_labels(self) -> list:
        """The label feature of every record, as stored (one pass, images left encoded)."""
        return [
            record[self._label_key]
            for start in range(0, len(self), _LABEL_SCAN_CHUNK)
            for record in self._records.__getitems__(
                range(start, min(start + _LABEL_SCAN_CHUNK, len(self)))
            )
        ]

    def _label(self, stored) -> np.int32:
        if self._label_of_name is None:
            return np.int32(stored)
        return np.int32(self._label_of_name[stored.decode("utf-8")])

    @property
    def record_labels(self) -> np.ndarray:
        """The label of every record, int32 [len(self)]. A Text label has read them when the
        source was opened, a ClassLabel reads them on first use: from the label cache beside the
        dataset, else in one pass with images left encoded (`record_label_cache`)."""
        if self._record_labels is None:
            self._record_labels = self._cached_labels().labels
        return self._record_labels

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        record = prepared_records.read_record(self._records, index, self._where)
        image = image_decoding.decode_image(
            record[self._image_key],
            resolution=self._resolution,
            policy=self._policy,
            source=f"{self._where} (record {index})",
        )
        return {"image": image, "label": self._label(record[self._label_key])}

    def first_index_of_labels(self, labels: Sequence[int]) -> np.ndarray:
        """The index of the first record of each of `labels`, int64 [len(labels)]."""
        labels = np.asarray(labels)
        present, first_index = np.unique(self.record_labels, return_index=True)
        missing = np.setdiff1d(labels, present)
        if labels.ndim != 1 or missing.size:
            raise ValueError(
                f"labels must be a 1-D sequence of labels that have records in {self._where}, "
                f"got {labels.tolist()} (without records: {missing.tolist()})"
            )
        return first_index[np.searchsorted(present, labels)]

    def __repr__(self) -> str:
        return (
            f"TfdsNamedSource({self._where}, resolution={self._resolution}, "
            f"policy={self._policy!r})"
        )
