"""TFDS builders of the procedural faces benchmark (ArrayRecord files, random access).

`procedural_faces` holds identity-labelled images in two splits:

- `train`: identities 0 .. num_train_identities - 1, images_per_train_identity images each;
- `heldout`: identities HELDOUT_IDENTITY_OFFSET + j for j < num_heldout_identities, never
  seen in training; numbered apart so that growing the training set leaves them unchanged.

Features: image (PNG), label (contiguous 0 .. K - 1 within the split, in identity order),
identity (the global identity index, what `procedural_faces.sample_identities` takes) and
image_index (what `sample_nuisance` takes). Records are stored identity by identity.

`procedural_face_pairs` holds one split, `pairs`: LFW-style verification pairs over the held-out
images (`verification_pairs`), with features image_a, image_b, is_same, fold, and the identity
and image_index of both images. TFDS gives one feature set per dataset, hence two builders
sharing one config.

Preparing either writes the listing of its files beside them and cleans up after a killed
preparation; reusing one checks it (`prepared_files`). Prepared datasets load without this
module: `tfds.builder_from_directory(builder.data_dir)` or `tfds.data_source(...)`, decoded with
NumPy and PIL.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from diffusion_jax.tasks.data.faces import procedural_faces
from diffusion_jax.tasks.data.sources import prepared_files
from diffusion_jax.tasks.data.sources.image_decoding import encode_png
from diffusion_jax.tasks.data.verification import verification_pairs

HELDOUT_IDENTITY_OFFSET = 1_000_000
_RENDER_CHUNK = 8 * procedural_faces.RENDER_BATCH_SIZE


@dataclasses.dataclass(kw_only=True)
class ProceduralFacesConfig(tfds.core.BuilderConfig):
    """Sizes, resolution and seed of a procedural faces dataset; the name encodes them all.

    The defaults are the CPU demo: 200 x 20 training images, 50 x 12 held-out images at 64x64,
    and 15 matched + 15 mismatched pairs per fold (each fold's 5 identities x 12 images cover
    60 = 4 x 15 images, so no image repeats within a fold).
    """

    name: str = ""
    version: str = "1.0.0"
    resolution: int = 64
    seed: int = 0
    num_train_identities: int = 200
    images_per_train_identity: int = 20
    num_heldout_identities: int = 50
    images_per_heldout_identity: int = 12
    pairs_per_fold: int = 15

    def __post_init__(self):
        positive = (
            "num_train_identities",
            "images_per_train_identity",
            "num_heldout_identities",
            "images_per_heldout_identity",
            "pairs_per_fold",
        )
        for field in ("resolution", "seed", *positive):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{field} must be an integer, got {value!r}")
            if field in positive and value < 1:
                raise ValueError(f"{field} must be >= 1, got {value}")
        low, high = procedural_faces.MIN_RESOLUTION, procedural_faces.MAX_RESOLUTION
        if not low <= self.resolution <= high:
            raise ValueError(f"resolution must lie in [{low}, {high}], got {self.resolution}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must lie in [0, 2**32), got {self.seed}")
        if self.num_train_identities > HELDOUT_IDENTITY_OFFSET:
            raise ValueError(
                f"num_train_identities must be <= {HELDOUT_IDENTITY_OFFSET} (the first held-out "
                f"identity), got {self.num_train_identities}"
            )
        if self.num_heldout_identities < 2 * verification_pairs.NUM_FOLDS:
            raise ValueError(
                f"num_heldout_identities must be >= {2 * verification_pairs.NUM_FOLDS} (two "
                f"identities per verification fold), got {self.num_heldout_identities}"
            )
        if self.images_per_heldout_identity < 2:
            raise ValueError(
                "images_per_heldout_identity must be >= 2 to form matched pairs, got "
                f"{self.images_per_heldout_identity}"
            )
        self.name = self.name or (
            f"r{self.resolution}_seed{self.seed}"
            f"_train{self.num_train_identities}x{self.images_per_train_identity}"
            f"_heldout{self.num_heldout_identities}x{self.images_per_heldout_identity}"
            f"_pairs{self.pairs_per_fold}"
        )

    @property
    def train_identities(self) -> np.ndarray:
        return np.arange(self.num_train_identities)

    @property
    def heldout_identities(self) -> np.ndarray:
        return HELDOUT_IDENTITY_OFFSET + np.arange(self.num_heldout_identities)


def _render_identities(
    config: ProceduralFacesConfig, identity_ids: np.ndarray, images_per_identity: int
) -> Iterator[tuple[int, int, int, bytes]]:
    """(label, identity, image_index, PNG) of every image, identity by identity, rendered in
    chunks of `_RENDER_CHUNK` images."""
    labels = np.repeat(np.arange(len(identity_ids)), images_per_identity)
    identities = np.repeat(identity_ids, images_per_identity)
    image_indices = np.tile(np.arange(images_per_identity), len(identity_ids))
    for start in range(0, len(labels), _RENDER_CHUNK):
        chunk = slice(start, start + _RENDER_CHUNK)
        images = procedural_faces.render_faces(
            config.seed, identities[chunk], image_indices[chunk], config.resolution
        )
        pngs = [encode_png(image) for image in images]
        yield from zip(
            labels[chunk].tolist(), identities[chunk].tolist(), image_indices[chunk].tolist(), pngs
        )


class _ProceduralBuilder(
    prepared_files.ListedPreparation, tfds.core.GeneratorBasedBuilder, skip_registration=True
):
    """Common set-up: ArrayRecord files by default, a listed preparation (`prepared_files`), and
    a config given by value is matched to the predefined config of the same name (TFDS rejects
    equal-named copies)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [ProceduralFacesConfig()]

    def __init__(
        self,
        *,
        config: str | ProceduralFacesConfig | None = None,
        file_format="array_record",
        **kwargs,
    ):
        if isinstance(config, ProceduralFacesConfig) and config.name in self.builder_configs:
            predefined = self.builder_configs[config.name]
            if predefined != config:
                raise ValueError(
                    f"config {config} differs from the predefined config of the same name, "
                    f"{predefined}"
                )
            config = predefined
        super().__init__(config=config, file_format=file_format, **kwargs)

    def _image_feature(self) -> tfds.features.Image:
        resolution = self.builder_config.resolution
        return tfds.features.Image(shape=(resolution, resolution, 3), encoding_format="png")


class ProceduralFaces(_ProceduralBuilder):
    """Identity-labelled procedural faces: splits `train` and `heldout` (see the module doc)."""

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Procedural faces (diffusion_jax.tasks.data.faces.procedural_faces) labelled by "
                "identity; train and held-out identities are disjoint."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": self._image_feature(),
                    "label": tfds.features.Scalar(np.int32),
                    "identity": tfds.features.Scalar(np.int32),
                    "image_index": tfds.features.Scalar(np.int32),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config = self.builder_config
        return {
            "train": self._generate_examples(
                config.train_identities, config.images_per_train_identity
            ),
            "heldout": self._generate_examples(
                config.heldout_identities, config.images_per_heldout_identity
            ),
        }

    def _generate_examples(self, identity_ids: np.ndarray, images_per_identity: int):
        for label, identity, image_index, image in _render_identities(
            self.builder_config, identity_ids, images_per_identity
        ):
            example = {
                "image": image,
                "label": label,
                "identity": identity,
                "image_index": image_index,
            }
            yield f"{identity}_{image_index}", example


class ProceduralFacePairs(_ProceduralBuilder):
    """LFW-style verification pairs over the held-out identities of `ProceduralFaces`: split
    `pairs`."""

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Verification pairs over the held-out procedural faces: "
                f"{verification_pairs.NUM_FOLDS} identity-disjoint folds, each with pairs_per_fold "
                "matched then pairs_per_fold mismatched pairs."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image_a": self._image_feature(),
                    "image_b": self._image_feature(),
                    "is_same": tfds.features.Scalar(np.bool_),
                    "fold": tfds.features.Scalar(np.int32),
                    "identity_a": tfds.features.Scalar(np.int32),
                    "identity_b": tfds.features.Scalar(np.int32),
                    "image_index_a": tfds.features.Scalar(np.int32),
                    "image_index_b": tfds.features.Scalar(np.int32),
                }
            ),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        return {"pairs": self._generate_examples()}

    def _generate_examples(self):
        config = self.builder_config
        rendered = list(
            _render_identities(
                config, config.heldout_identities, config.images_per_heldout_identity
            )
        )
        labels = np.array([label for label, *_ in rendered])
        pairs = verification_pairs.make_verification_pairs(
            labels, pairs_per_fold=config.pairs_per_fold, seed=config.seed
        )
        for number, (a, b, is_same, fold) in enumerate(
            zip(pairs.index_a, pairs.index_b, pairs.is_same, pairs.fold)
        ):
            _, identity_a, image_index_a, image_a = rendered[a]
            _, identity_b, image_index_b, image_b = rendered[b]
            example = {
                "image_a": image_a,
                "image_b": image_b,
                "is_same": is_same,
                "fold": fold,
                "identity_a": identity_a,
                "identity_b": identity_b,
                "image_index_a": image_index_a,
                "image_index_b": image_index_b,
            }
            yield number, example
