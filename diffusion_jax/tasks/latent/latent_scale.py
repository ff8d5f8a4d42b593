"""The scale that gives an autoencoder's latents unit variance before diffusion sees them.

Latent diffusion trains on z_diffusion = scale * z, with z sampled from the posterior q(z | x) of
training images and

    scale = 1 / std(z),   std over every element of every latent (batch, height, width, channels)

(Rombach et al. 2022, `scale_by_std`; Stable Diffusion v1's 0.18215 is this estimate for its
autoencoder). As there (`1 / z.flatten().std()` in PyTorch), the std is taken around the
latents' mean and with Bessel's correction, (n - 1) in the denominator; the mean is removed only
to estimate the spread, never from the latents, which diffusion sees unshifted. Decoding divides
by the same scale.

Latent-diffusion estimates it from its first training batch; `LatentMoments` estimates it from
any number of batches, holding (n, mean, M2 = sum (z - mean)^2) in float64 and merging batches
with the parallel update of Chan, Golub and LeVeque (1979):

    n = n_a + n_b,  delta = mean_b - mean_a,  mean = mean_a + delta n_b / n,
    M2 = M2_a + M2_b + delta^2 n_a n_b / n,

which, unlike sum(z^2) - n mean^2, loses no precision when the mean is large against the spread.
Each batch is copied to the host and reduced there in float64 (NumPy's pairwise sums); latents
are small, so the copy is cheap. The same merge combines the moments of several processes.
"""

import dataclasses
import math

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class LatentMoments:
    """Count, mean and sum of squared deviations of all latent elements seen so far (float64)."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    @classmethod
    def of(cls, latents: jax.Array | np.ndarray) -> "LatentMoments":
        """The moments of one batch of latents, any shape; raises on empty or non-finite input."""
        values = np.asarray(jax.device_get(latents), dtype=np.float64).ravel()
        if values.size == 0:
            raise ValueError(f"latents are empty (shape {np.shape(latents)})")
        if not np.all(np.isfinite(values)):
            bad = values.size - np.count_nonzero(np.isfinite(values))
            raise ValueError(f"latents hold {bad} non-finite values of {values.size}")
        mean = float(np.mean(values))
        return cls(count=values.size, mean=mean, m2=float(np.sum(np.square(values - mean))))

    def merge(self, other: "LatentMoments") -> "LatentMoments":
        """The moments of the union of both sets of latents (Chan et al.'s update)."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        count = self.count + other.count
        delta = other.mean - self.mean
        return LatentMoments(
            count=count,
            mean=self.mean + delta * other.count / count,
            m2=self.m2 + other.m2 + delta**2 * self.count * other.count / count,
        )

    def update(self, latents: jax.Array | np.ndarray) -> "LatentMoments":
        """These moments merged with those of one more batch."""
        return self.merge(LatentMoments.of(latents))

    def std(self) -> float:
        """The Bessel-corrected standard deviation sqrt(M2 / (n - 1)) of all elements seen."""
        if self.count < 2:
            raise ValueError(f"the std needs at least 2 latent elements, got {self.count}")
        return math.sqrt(self.m2 / (self.count - 1))

    def scale(self) -> float:
        """1 / std: the factor that gives the latents unit variance."""
        std = self.std()
        if std == 0.0:
            raise ValueError(f"all {self.count} latent elements equal {self.mean}: no scale")
        return 1.0 / std


def estimate_latent_scale(latents: jax.Array | np.ndarray) -> float:
    """1 / std of all elements of one array of posterior samples (see the module docstring)."""
    return LatentMoments.of(latents).scale()
