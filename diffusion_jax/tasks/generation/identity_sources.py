"""Where a generated dataset's identities come from (`config.generate.identity_source`).

    random         unit vectors drawn uniformly on the conditioning encoder's sphere
                   (`sphere_sampling.sample_separated_identities`);
    gaussian       unit vectors y / |y|, y ~ N(mean, covariance) of the training identities'
                   centres, `candidates_per_identity` candidates per identity wanted: identities
                   in the part of the sphere real faces occupy (`gaussian_candidates`);
    unconditional  the conditioning encoder's embeddings of unconditional samples of the diffusion
                   model (guidance scale 0), `candidates_per_identity` candidates per identity
                   wanted, so identities look like faces the model can draw;
    images         its embeddings of the image files under `identity_images` (any depth, sorted
                   by path; a local directory or a `gs://` URL), one candidate per file:
                   identities borrowed from a given image set.

Whatever the source, the identities are the first candidates, in candidate order, that keep
cos <= `max_identity_similarity` to every identity kept before them and cos <=
`max_training_similarity` to every training identity's centre (the leakage check;
`training_identities`). The result is a function of the config, the models and the seed.
"""

from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from absl import logging

from diffusion_jax.core import paths
from diffusion_jax.tasks.data.sources import image_decoding
from diffusion_jax.tasks.generation import image_seeds, sphere_sampling
from diffusion_jax.tasks.recognition.embeddings import EmbeddingExtractor

IDENTITY_SOURCES = ("random", "gaussian", "unconditional", "images")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

# draw(keys [B]) -> unconditional images [B, H, W, 3] in [-1, 1]
UnconditionalDraw = Callable[[jax.Array], jax.Array]


def list_image_files(root: str) -> list[str]:
    """Paths of the image files under `root`, relative to it, sorted."""
    root = str(paths.Path(root).expanduser())
    if not paths.Path(root).is_dir():
        raise ValueError(f"config.generate.identity_images={root!r} is not a directory")
    found = [
        path
        for path in paths.relative_files(root)
        if path.rsplit("/", 1)[-1].lower().endswith(IMAGE_SUFFIXES)
    ]
    if not found:
        raise ValueError(f"config.generate.identity_images={root!r} holds no {IMAGE_SUFFIXES} file")
    return found


def _image_candidates(
    generate_config: ml_collections.ConfigDict, resolution: int, conditioning: EmbeddingExtractor
) -> tuple[np.ndarray, list[str]]:
    root = paths.Path(generate_config.identity_images).expanduser()
    relative_paths = list_image_files(str(root))
    images = []
    for path in relative_paths:
        images.append(
            image_decoding.decode_image(
                (root / path).read_bytes(), resolution=resolution, source=str(root / path)
            )
        )
    embeddings = conditioning.embed_arrays(np.stack(images), description="Identity images")
    return embeddings, relative_paths


def _unconditional_candidates(
    generate_config: ml_collections.ConfigDict,
    draw: UnconditionalDraw,
    conditioning: EmbeddingExtractor,
) -> np.ndarray:
    num = generate_config.num_identities * generate_config.candidates_per_identity
    batch = generate_config.batch_size
    embeddings = []
    for start in range(0, num, batch):
        keys = image_seeds.candidate_keys(generate_config.seed, start, batch)
        embeddings.append(np.asarray(conditioning(draw(keys))))
        logging.log_every_n_seconds(
            logging.INFO, "Unconditional candidates: %d of %d", 30, start + batch, num
        )
    return np.concatenate(embeddings)[:num]


def gaussian_candidates(centres: np.ndarray, num: int, seed: int) -> np.ndarray:
    """`num` unit vectors y / |y| with y ~ N(m, S), m and S the mean and covariance of the rows
    of `centres` [n, D] (n >= 2): y = m + (centres - m)^T z / sqrt(n - 1), z ~ N(0, I_n), which
    has exactly that covariance without decomposing it. float32 [num, D], a function of seed."""
    centres = np.asarray(centres, np.float64)
    if centres.ndim != 2 or len(centres) < 2:
        raise ValueError(
            f"the gaussian identity source needs at least 2 training identity centres, got "
            f"an array of shape {centres.shape}"
        )
    mean = centres.mean(axis=0)
    z = np.random.default_rng(seed).standard_normal((num, len(centres)))
    samples = mean + z @ (centres - mean) / np.sqrt(len(centres) - 1)
    return (samples / np.linalg.norm(samples, axis=1, keepdims=True)).astype(np.float32)


def choose_identities(
    generate_config: ml_collections.ConfigDict,
    *,
    dim: int,
    training_centres: np.ndarray,
    conditioning: EmbeddingExtractor,
    resolution: int,
    draw_unconditional: UnconditionalDraw,
) -> tuple[np.ndarray, dict]:
    """The identities float32 [num_identities, dim] and a JSON description of how they were
    chosen: the source, the number of candidates, the indices of the chosen ones (gaussian: rows of
    `gaussian_candidates`; unconditional: candidate c was drawn from `image_seeds.candidate_keys`;
    images: the sorted file list) and for `images` the chosen files."""
    source = generate_config.identity_source
    thresholds = {
        "max_similarity": generate_config.max_identity_similarity,
        "references": training_centres,
        "max_reference_similarity": generate_config.max_training_similarity,
    }
    num = generate_config.num_identities
    if source == "random":
        identities, drawn = sphere_sampling.sample_separated_identities(
            num, dim, seed=generate_config.seed, **thresholds
        )
        return identities, {"source": source, "candidates": drawn}
    if source in ("gaussian", "unconditional"):
        if source == "gaussian":
            candidates = gaussian_candidates(
                training_centres,
                num * generate_config.candidates_per_identity,
                generate_config.seed,
            )
        else:
            candidates = _unconditional_candidates(
                generate_config, draw_unconditional, conditioning
            )
        chosen = sphere_sampling.select_separated(candidates, num, **thresholds)
        return candidates[chosen], {
            "source": source,
            "candidates": len(candidates),
            "candidate_indices": chosen.tolist(),
        }
    if source == "images":
        candidates, image_paths = _image_candidates(generate_config, resolution, conditioning)
        chosen = sphere_sampling.select_separated(candidates, num, **thresholds)
        return candidates[chosen], {
            "source": source,
            "candidates": len(candidates),
            "candidate_indices": chosen.tolist(),
            "images": [image_paths[index] for index in chosen],
        }
    raise ValueError(
        f"config.generate.identity_source={source!r} is not one of {list(IDENTITY_SOURCES)}"
    )
