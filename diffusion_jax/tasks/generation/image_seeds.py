"""The noise of every generated image comes from its own key, so any image can be drawn alone.

    key(i, k, a) = fold_in(fold_in(fold_in(key(seed), i), k), a)

for identity index i, image index k within the identity and attempt a (0 for the first draw,
r for the r-th redraw of a filtered-out image). The sampler receives one such key per example
(`sampling.make_sample_fn` with a batch of keys), so an image does not depend on which other
images share its batch, on the batch size's padding, or on the worker that draws it.

Unconditional candidates for identities (`identity_sources`) use a stream of their own,
key(c) = fold_in(fold_in(key(seed), 2^32 - 1), c) for candidate c, which no identity index
reaches.
"""

import jax
import numpy as np


def image_keys(
    seed: int, identities: np.ndarray, images: np.ndarray, attempts: np.ndarray
) -> jax.Array:
    """The keys [B] of the images (identities[b], images[b], attempts[b]), each int [B]."""
    root = jax.random.key(seed)

    def key(identity, image, attempt):
        return jax.random.fold_in(
            jax.random.fold_in(jax.random.fold_in(root, identity), image), attempt
        )

    columns = (np.asarray(column, np.uint32) for column in (identities, images, attempts))
    return jax.vmap(key)(*columns)


_CANDIDATE_STREAM = np.uint32(2**32 - 1)


def candidate_keys(seed: int, start: int, count: int) -> jax.Array:
    """The keys [count] of unconditional candidates start .. start + count - 1."""
    root = jax.random.fold_in(jax.random.key(seed), _CANDIDATE_STREAM)
    indices = np.arange(start, start + count, dtype=np.uint32)
    return jax.vmap(lambda index: jax.random.fold_in(root, index))(indices)
