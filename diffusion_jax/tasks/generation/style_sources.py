"""Style from real images: each generated image starts from a real training image, noised.

With `generate.style_source = "real"`, image k of identity i at attempt a does not start from
pure noise. Its sampler starts from a real training image y (in latent space its autoencoder
latent z_0 = s mu(y); in pixel space y itself, in [-1, 1] at the model's resolution) noised to
the level of `generate.style_strength` s (SDEdit, Meng et al. 2022):

    x_{t_k} = sqrt(abar_{t_k}) z_0 + sqrt(1 - abar_{t_k}) eps,

with eps the image's own x_T (the noise plain sampling would start from, `image_seeds`) and t_k
the first of the sampler's timesteps below s T (`core.diffusion.samplers.start_index`), and it
runs the rest of the reverse process conditioned on the new identity: pose, lighting, background
and expression come from y, the identity from the embedding. s = 0 runs no step and returns y's
reconstruction (pixel space: y; latent space: decode(encode(y))); s = 1 runs every step, from a
start that differs from plain sampling's x_T = eps by sqrt(abar_{t_0}) z_0 + (sqrt(1 -
abar_{t_0}) - 1) eps (t_0 = T - 1 with the default trailing spacing).

The style image of (i, k, a) is the training record

    index = Generator(PCG64(SeedSequence([seed mod 2^32, STREAM, i, k, a]))).integers(N)

of the N records of `input_pipeline.training_records(config.data)` (uniform over the records), a
function of (generate.seed, i, k, a) only: not of the batch, the shard or the worker. A redraw
(attempt a + 1) starts from another style image. Every training identity is another person than
a generated one, whose identities keep their distance from the training identities
(`generate.max_training_similarity`).

The style image's identity must not come through: the judge J embeds every generated image x,
and with c_l the judge centre of the style image's identity l (the renormalised sum of J over
l's training images; `judge_identity_centres`),

    style_similarity(x) = cos(J(x), c_l),

and x is rejected as "near_style_source" when style_similarity(x) > generate.max_style_similarity
(`image_filter`), redrawn like the other rejections and counted in the shard records and the
manifest. Every record of a styled dataset names its style source, {"index": position in the
training records, "label": its identity}, and its style_similarity.
"""

import ml_collections
import numpy as np

from diffusion_jax.tasks.data.sources import input_pipeline
from diffusion_jax.tasks.data.sources.image_decoding import to_model_range

STYLE_SOURCES = ("none", "real")
# config.generate's style fields; a plan without style leaves them out, as before they existed.
STYLE_FIELDS = ("style_source", "style_strength", "max_style_similarity")
_STREAM = 0x5354594C  # "STYL": keeps these draws apart from any other use of the seed


def style_indices(
    seed: int, identities: np.ndarray, images: np.ndarray, attempts: np.ndarray, count: int
) -> np.ndarray:
    """The style record index in [0, count) of each image (identities[b], images[b],
    attempts[b]), int64 [B] (module docstring)."""
    if count <= 0:
        raise ValueError("there are no training records to take a style from")
    columns = zip(
        *(np.asarray(column, np.int64).reshape(-1) for column in (identities, images, attempts))
    )
    return np.asarray(
        [
            np.random.Generator(
                np.random.PCG64(np.random.SeedSequence([seed % 2**32, _STREAM, i, k, a]))
            ).integers(count)
            for i, k, a in columns
        ],
        np.int64,
    )


def judge_identity_centres(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """c_l of the module docstring, float64 [max label + 1, D], from the judge's embeddings
    [M, D] of the training images and their labels [M]; a label without images keeps a zero
    row."""
    labels = np.asarray(labels, np.int64)
    sums = np.zeros((int(labels.max()) + 1, embeddings.shape[1]), np.float64)
    np.add.at(sums, labels, np.asarray(embeddings, np.float64))
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return sums / np.where(norms > 0, norms, 1.0)


class StyleSource:
    """The style images of a generation job: which training record each image starts from, its
    pixels, and the judge similarity to its identity (module docstring).

    records: random-access training records {"image": uint8 [R, R, 3], "label": int}, in the
        order of `input_pipeline.training_records`; labels: their labels, int [N];
        judge_centres: c_l per label [L, D] (`judge_identity_centres`); seed: generate.seed.
    """

    def __init__(self, records, labels: np.ndarray, judge_centres: np.ndarray, seed: int):
        self.records = records
        self.labels = np.asarray(labels, np.int64)
        if len(self.labels) != len(records):
            raise ValueError(
                f"{len(self.labels)} labels for {len(records)} training records: the judge's "
                "training embeddings are not those of these records"
            )
        self.judge_centres = np.asarray(judge_centres, np.float64)
        self.seed = seed

    def indices(self, identities, images, attempts) -> np.ndarray:
        """The style record index of each image, int64 [B]."""
        return style_indices(self.seed, identities, images, attempts, len(self.labels))

    def source(self, identity: int, image: int, attempt: int) -> dict:
        """{"index", "label"} of the image's style record, as the shard records name it."""
        index = int(self.indices([identity], [image], [attempt])[0])
        return {"index": index, "label": int(self.labels[index])}

    def images(self, indices: np.ndarray) -> np.ndarray:
        """The style images of `indices`, float32 [B, R, R, 3] in [-1, 1]."""
        return np.stack(
            [to_model_range(np.asarray(self.records[int(index)]["image"])) for index in indices]
        ).astype(np.float32)

    def similarity(self, judge_embedding: np.ndarray, label: int) -> float:
        """cos(J(x), c_label) of a judge embedding of a generated image."""
        embedding = np.asarray(judge_embedding, np.float64)
        centre = self.judge_centres[label]
        norm = max(np.linalg.norm(embedding) * np.linalg.norm(centre), 1e-12)
        return float(embedding @ centre / norm)


def style_source_for_generation(
    config: ml_collections.ConfigDict, judge_embeddings: np.ndarray, labels: np.ndarray
) -> StyleSource | None:
    """The job's `StyleSource` (None when `generate.style_source` is "none"), given the judge's
    embeddings of the training records [N, D] and their labels [N], in the order of
    `input_pipeline.training_records(config.data)` (`training_images.TrainingImages`)."""
    if config.generate.style_source == "none":
        return None
    return StyleSource(
        input_pipeline.training_records(config.data),
        labels,
        judge_identity_centres(judge_embeddings, labels),
        config.generate.seed,
    )
