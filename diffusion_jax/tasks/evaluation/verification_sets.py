"""Verification pairs as decoded image arrays, from any of the formats the field ships.

Each loader returns `VerificationSet`: images_a and images_b uint8 [N, R, R, 3] decoded with
the training images' policy (`image_decoding`), is_same bool [N], and fold int [N] in 0..9.

  from_verification_bin   InsightFace's lfw.bin / cfp_fp.bin / agedb_30.bin. The files carry
                          no folds; insightface's evaluation splits the pairs in file order into
                          10 contiguous folds (sklearn's KFold without shuffling), and so do we.
  from_lfw_pairs          LFW's pairs.txt over an identity folder; folds from the file.
  from_procedural         the embedded faces' held-out pairs (`procedural_face_pairs`).
  from_heldout_images     pairs drawn afresh over the embedded faces' held-out images, at any
                          number of pairs per fold (`verification_pairs`), over all held-out
                          identities or over one part of them (`heldout_identity_parts`): the
                          validation part, on which settings are chosen, or the test part, which
                          is reported and never tuned on.
"""

import dataclasses

import ml_collections
import numpy as np

from diffusion_jax.core import paths
from diffusion_jax.core.bad_input import BadInputError
from diffusion_jax.tasks.data.sources import input_pipeline
from diffusion_jax.tasks.data.sources.image_decoding import decode_image
from diffusion_jax.tasks.data.verification import lfw_pairs, verification_bin, verification_pairs

NUM_FOLDS = 10
HELDOUT_PARTS = ("validation", "test")
_PART_SPLIT_STREAM = 0x5E7  # separates the split's random stream from the renderer's


@dataclasses.dataclass(frozen=True)
class VerificationSet:
    images_a: np.ndarray  # uint8 [N, R, R, 3]
    images_b: np.ndarray  # uint8 [N, R, R, 3]
    is_same: np.ndarray  # bool [N]
    fold: np.ndarray  # int32 [N]

    def __len__(self) -> int:
        return len(self.is_same)


def contiguous_folds(num_pairs: int, num_folds: int = NUM_FOLDS) -> np.ndarray:
    """Fold of each pair when `num_pairs` are cut in file order into `num_folds` blocks whose
    sizes differ by at most one, the first ones larger (sklearn's KFold(shuffle=False))."""
    if num_pairs < num_folds:
        raise ValueError(f"{num_pairs} pairs cannot be split into {num_folds} folds")
    sizes = np.full(num_folds, num_pairs // num_folds)
    sizes[: num_pairs % num_folds] += 1
    return np.repeat(np.arange(num_folds, dtype=np.int32), sizes)


def from_verification_bin(path: str, *, resolution: int, policy: str = "resize") -> VerificationSet:
    """Decodes an InsightFace verification .bin (read with its restricted unpickler); one with
    fewer pairs than folds is refused naming it."""
    contents = verification_bin.read_verification_bin(path)
    if len(contents.is_same) < NUM_FOLDS:
        raise BadInputError(
            path, f"{len(contents.is_same)} pairs cannot be split into {NUM_FOLDS} folds"
        )
    images = np.stack(
        [
            decode_image(encoded, resolution=resolution, policy=policy, source=f"{path} image {i}")
            for i, encoded in enumerate(contents.images)
        ]
    )
    return VerificationSet(
        images_a=images[0::2],
        images_b=images[1::2],
        is_same=np.asarray(contents.is_same, bool),
        fold=contiguous_folds(len(contents.is_same)),
    )


def from_lfw_pairs(
    pairs_path: str, image_root: str, *, resolution: int, policy: str = "resize"
) -> VerificationSet:
    """Decodes the pairs of an LFW-layout pairs.txt over `image_root`."""
    pairs = lfw_pairs.read_lfw_pairs(pairs_path, image_root)

    def load(path: str) -> np.ndarray:
        data = paths.Path(path).read_bytes()
        return decode_image(data, resolution=resolution, policy=policy, source=str(path))

    return VerificationSet(
        images_a=np.stack([load(pair.path_a) for pair in pairs]),
        images_b=np.stack([load(pair.path_b) for pair in pairs]),
        is_same=np.asarray([pair.is_same for pair in pairs], bool),
        fold=np.asarray([pair.fold for pair in pairs], np.int32),
    )


def from_procedural(data_config: ml_collections.ConfigDict) -> VerificationSet:
    """The held-out pairs of the embedded procedural faces of `data_config`."""
    pairs = input_pipeline.load_split_arrays(data_config, "pairs")
    return VerificationSet(
        images_a=pairs["image_a"],
        images_b=pairs["image_b"],
        is_same=pairs["is_same"].astype(bool),
        fold=pairs["fold"].astype(np.int32),
    )


def heldout_identity_parts(
    labels: np.ndarray, *, data_seed: int, validation_fraction: float
) -> dict[str, np.ndarray]:
    """{"validation": identities, "test": identities}: the distinct held-out `labels` split by
    identity, round(validation_fraction * n) of them to validation, after a permutation drawn
    from `data_seed` alone, so the split is fixed by the data: no evaluation seed, recogniser or
    verification set moves an identity from one part to the other. Both parts sorted."""
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(
            f"config.evaluate.validation_fraction must be in (0, 1), got {validation_fraction}"
        )
    identities = np.unique(labels)
    num_validation = round(validation_fraction * len(identities))
    if not 0 < num_validation < len(identities):
        raise ValueError(
            f"{len(identities)} held-out identities cannot be split into a validation and a test "
            f"part with config.evaluate.validation_fraction={validation_fraction}"
        )
    order = np.random.default_rng([data_seed, _PART_SPLIT_STREAM]).permutation(identities)
    return {
        "validation": np.sort(order[:num_validation]),
        "test": np.sort(order[num_validation:]),
    }


def from_heldout_images(
    data_config: ml_collections.ConfigDict,
    *,
    pairs_per_fold: int,
    seed: int,
    part: str | None = None,
    validation_fraction: float = 0.5,
) -> VerificationSet:
    """`pairs_per_fold` matched and as many mismatched pairs per fold over the held-out images
    of the embedded faces (`make_verification_pairs`, identity-disjoint folds): the identities of
    `from_procedural`, with as many pairs as wanted (images repeat across pairs once a fold's
    pairs outnumber its images). More pairs shrink the part of the accuracy's variance that
    comes from which pairs are drawn, not the part that comes from which identities are held out.

    `part` ("validation" or "test") draws the pairs over that part's identities only
    (`heldout_identity_parts` with `validation_fraction`); None over all of them."""
    heldout = input_pipeline.load_split_arrays(data_config, "heldout")
    if part is not None:
        if part not in HELDOUT_PARTS:
            raise ValueError(f"part must be one of {HELDOUT_PARTS} or None, got {part!r}")
        identities = heldout_identity_parts(
            heldout["label"], data_seed=data_config.seed, validation_fraction=validation_fraction
        )[part]
        keep = np.isin(heldout["label"], identities)
        heldout = {"image": heldout["image"][keep], "label": heldout["label"][keep]}
    pairs = verification_pairs.make_verification_pairs(
        heldout["label"], pairs_per_fold=pairs_per_fold, seed=seed, num_folds=NUM_FOLDS
    )
    return VerificationSet(
        images_a=heldout["image"][pairs.index_a],
        images_b=heldout["image"][pairs.index_b],
        is_same=pairs.is_same.astype(bool),
        fold=pairs.fold,
    )
