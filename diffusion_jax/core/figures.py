"""The four pictures of a diffusion run, as small functions a notebook can call too.

Each `*_figure` function takes arrays (images in [-1, 1], NHWC) and returns a matplotlib Figure;
`save_figure` writes it as PNG (to a local path or a `gs://` URL, `core.paths`) and returns the
rendered RGB array (for TensorBoard).

  forward_process   rows of x_0 noised to x_t at evenly spaced t, up to x_T
  x0_estimates      for the same x_t, the model's estimate of x_0
  reverse_process   sampling trajectories from x_T (left) to the sample (right)
  identities        one row per conditioning identity, several samples each
"""

import io
from collections.abc import Sequence

import jax
import matplotlib

matplotlib.use("Agg")  # headless: figures are only ever written to files

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from diffusion_jax.core import paths  # noqa: E402


def evenly_spaced_timesteps(num_timesteps: int, num_columns: int) -> np.ndarray:
    """`num_columns` timesteps from 0 to T-1 inclusive, evenly spaced (the last column is x_T)."""
    return np.linspace(0, num_timesteps - 1, num_columns).round().astype(np.int32)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Maps [-1, 1] floats to [0, 255] uint8, clipping what lies outside."""
    return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(
        np.uint8
    )


def image_grid(
    images: np.ndarray,
    *,
    title: str,
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
) -> plt.Figure:
    """A figure of images [rows, columns, H, W, C] in [-1, 1], with optional axis labels."""
    images = to_uint8(images)
    rows, columns = images.shape[:2]
    cell = 0.9
    figure, axes = plt.subplots(
        rows, columns, figsize=(columns * cell + 0.8, rows * cell + 0.6), squeeze=False
    )
    for r in range(rows):
        for c in range(columns):
            axis = axes[r, c]
            axis.imshow(images[r, c], interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if r == 0 and column_labels is not None:
                axis.set_title(column_labels[c], fontsize=7)
            if c == 0 and row_labels is not None:
                axis.set_ylabel(row_labels[r], fontsize=7)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def forward_process_figure(x_t: np.ndarray, timesteps: np.ndarray) -> plt.Figure:
    """x_t [rows, len(timesteps), H, W, C]: each row one training image noised at `timesteps`."""
    return image_grid(
        x_t,
        title="Forward process q(x_t | x_0)",
        column_labels=[f"t={t}" for t in timesteps],
    )


def x0_estimates_figure(x0_hat: np.ndarray, timesteps: np.ndarray) -> plt.Figure:
    """x0_hat [rows, len(timesteps), H, W, C]: the model's estimate of x_0 from each x_t."""
    return image_grid(
        x0_hat,
        title="Model estimate of x_0 from x_t",
        column_labels=[f"t={t}" for t in timesteps],
    )


def reverse_process_figure(trajectory: np.ndarray, timesteps: np.ndarray) -> plt.Figure:
    """trajectory [rows, columns, H, W, C] from x_T (left) to the sample; `timesteps` per column."""
    labels = [f"t={t}" for t in timesteps[:-1]] + ["sample"]
    return image_grid(trajectory, title="Reverse process (sampling)", column_labels=labels)


def identities_figure(samples: np.ndarray, identity_labels: Sequence[int]) -> plt.Figure:
    """samples [identities, per_identity, H, W, C]: one row per conditioning identity."""
    return image_grid(
        samples,
        title="Samples per conditioning identity",
        row_labels=[f"id {label}" for label in identity_labels],
    )


def save_figure(figure: plt.Figure, path: paths.PathLike) -> np.ndarray:
    """Writes `figure` to `path` (PNG, in one atomic write), closes it and returns its pixels as
    uint8 RGB. With several processes every one computes the same figure and process 0 writes
    it (an object store takes about one write per second to one object)."""
    if jax.process_index() == 0:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110)
        paths.write_bytes_atomically(paths.resolve(path), buffer.getvalue())
    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    plt.close(figure)
    return pixels
