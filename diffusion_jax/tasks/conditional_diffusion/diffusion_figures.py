"""Computes and writes the four figures of a diffusion model (see `figures` for the plots).

One sampler call draws every conditioning identity `samples_per_identity` times with the trajectory
kept, so the identity grid and the reverse-process rows come from a single compiled sampler.

In latent space the forward process, the x_0 estimates and the reverse process run on latents,
and every picture shows their decoding by the autoencoder (`DiffusionSpace.decode`).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from clu import metric_writers
from flax import nnx

from diffusion_jax.core import figures, paths
from diffusion_jax.core.diffusion.gaussian import q_sample
from diffusion_jax.core.diffusion.schedules import DiffusionSchedule
from diffusion_jax.tasks.conditional_diffusion import sample_functions
from diffusion_jax.tasks.latent.diffusion_space import DiffusionSpace

NUM_COLUMNS = 8


class DiffusionFigureWriter:
    """Writes the four figures of a model; its jitted sampler and x_0 estimator are built once,
    so periodic figures during training reuse one compilation each."""

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        schedule: DiffusionSchedule,
        config: ml_collections.ConfigDict,
        space: DiffusionSpace,
    ):
        self.schedule = schedule
        self.space = space
        self.samples_per_identity = config.sample.samples_per_identity
        self._x0_estimate = sample_functions.make_x0_estimate_fn(
            graphdef, schedule, config.diffusion.prediction_type
        )
        self._sample = sample_functions.make_sample_fn(
            graphdef, schedule, config, return_trajectory=True
        )

    def write(
        self,
        *,
        params: nnx.State,
        real_images: np.ndarray,
        real_conds: np.ndarray,
        identity_conds: np.ndarray,
        identity_labels: list[int],
        rng: jax.Array,
        out_dir: str,
        writer: metric_writers.MetricWriter | None = None,
        step: int = 0,
    ) -> tuple[dict[str, str], np.ndarray]:
        """Writes forward_process, x0_estimates, reverse_process and identities PNGs to `out_dir`.

        Args:
          real_images: [R, H, W, C] training images in [-1, 1], the rows of the forward figure.
          real_conds: [R, D] their conditions (for the model's x_0 estimates).
          identity_conds: [I, D] one condition per identity row of the identity figure.
        Returns:
          (figure name -> PNG path, the samples [I, samples_per_identity, H, W, C] in [-1, 1]).
        """
        schedule, to_pixels = self.schedule, self.space.decode
        noise_rng, sample_rng = jax.random.split(rng)
        timesteps = figures.evenly_spaced_timesteps(schedule.num_timesteps, NUM_COLUMNS)
        rows = real_images.shape[0]

        # x_t for every (row, column), one noise draw per row so columns differ only by t.
        real_x0 = self.space.encode_arrays(real_images)
        noise = jax.random.normal(noise_rng, real_x0.shape, jnp.float32)
        repeat = lambda a: jnp.repeat(jnp.asarray(a), NUM_COLUMNS, axis=0)  # noqa: E731
        t_flat = jnp.tile(jnp.asarray(timesteps), rows)
        x_t = q_sample(schedule, repeat(real_x0), t_flat, repeat(noise))
        x0_hat = self._x0_estimate(params, x_t, t_flat, repeat(real_conds))
        grid = lambda a: np.asarray(a).reshape(rows, NUM_COLUMNS, *a.shape[1:])  # noqa: E731

        per_identity = self.samples_per_identity
        conds = jnp.repeat(jnp.asarray(identity_conds), per_identity, axis=0)
        samples, trajectory = self._sample(params, conds, sample_rng)
        samples = np.asarray(to_pixels(samples))
        samples = samples.reshape(len(identity_labels), per_identity, *samples.shape[1:])

        # Reverse rows: the first sample of each identity; columns evenly spaced over the steps.
        steps = trajectory.x_t.shape[0]
        columns = np.linspace(0, steps - 1, NUM_COLUMNS).round().astype(int)
        first_of_each = np.arange(len(identity_labels)) * per_identity
        reverse = np.asarray(trajectory.x_t)[columns][:, first_of_each]
        reverse = np.asarray(to_pixels(reverse.reshape(-1, *reverse.shape[2:]))).reshape(
            NUM_COLUMNS, len(identity_labels), *samples.shape[2:]
        )
        reverse = np.swapaxes(reverse, 0, 1)
        step_timesteps = np.append(np.asarray(trajectory.t), 0)

        made = {
            "forward_process": figures.forward_process_figure(grid(to_pixels(x_t)), timesteps),
            "x0_estimates": figures.x0_estimates_figure(grid(to_pixels(x0_hat)), timesteps),
            "reverse_process": figures.reverse_process_figure(reverse, step_timesteps[columns]),
            "identities": figures.identities_figure(samples, identity_labels),
        }
        written, pixels = {}, {}
        for name, figure in made.items():
            written[name] = str(paths.Path(out_dir) / f"{name}.png")
            pixels[name] = figures.save_figure(figure, written[name])[None]
        if writer is not None:
            writer.write_images(step, {f"figures/{name}": image for name, image in pixels.items()})
        return written, samples
