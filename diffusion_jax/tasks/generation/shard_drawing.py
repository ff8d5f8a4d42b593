"""Drawing and judging the images of a worker's shards, as one stream of full batches.

Jobs (identity i, image index k, attempt a) wait in one first-in-first-out queue. Every sampler
call takes the next `batch_size` jobs, whichever shards they belong to; a new shard's first-round
jobs join the queue whenever it holds less than a batch, so batches are full except, at most,
the worker's last ones. Batch b + 1 is queued on the device before batch b's results are read,
and the rounds batch b completes are judged only after batch b + 2 is queued: their embeddings
run behind batch b + 1 (on a one-stream device), so the device never waits for the host's
judging, nor the host for a sampler batch to read embeddings queued behind it.

Judging goes identity by identity and round by round (`image_filter`): once all of an
identity's images of a round are back, they are embedded by the judge as one batch of their own
and each one's nearest real training image is found (`GenerationModels.embed_round`,
`training_images`), judged in image order, and the rejected ones are queued for
the next round (attempt a + 1), up to `max_resample_rounds` redraws. The decisions and the
records' similarities therefore do not depend on how jobs were batched, nor on which other
shards share the worker: they are the same bits.
At the tail, once no shard is left to admit, a batch that would not be full waits for the rounds
in flight to be judged, so their redraws fill it.
A shard is done when none of its identities has a job left; `draw_shards` then yields its
decision records (identity by identity, each in judging order) and its kept images.

With a style source (`style_sources`, `GenerationModels.use_style_source`), every image starts
from its own real style image, chosen from its (seed, identity, image index, attempt) alone, and
its record names that image and its judge cosine to the style image's identity.

An image's noise depends on its key alone (`image_seeds`), and its uint8 pixels are the same in
whatever sampler batch and row it is drawn (tested: the rounding to uint8 absorbs the last-bit
differences a row's position can make in float32).
"""

import collections
import dataclasses
import time
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
import tqdm

from diffusion_jax.tasks.generation import dataset_writers
from diffusion_jax.tasks.generation.generation_models import GenerationModels
from diffusion_jax.tasks.generation.image_filter import IdentityFilter
from diffusion_jax.tasks.generation.image_seeds import image_keys


@dataclasses.dataclass(frozen=True)
class ImageJob:
    identity: int
    image_index: int
    attempt: int


@dataclasses.dataclass
class Throughput:
    """What a worker did and where its time went."""

    images_drawn: int = 0
    images_kept: int = 0
    batches: int = 0  # sampler calls of batch_size images, padding included
    rounds_judged: int = 0  # embed_round calls: one per identity and round
    shard_seconds: float = 0.0  # drawing, judging and writing shards
    device_wait_seconds: float = 0.0  # blocked on the device (sampling, decoding, embedding)
    write_seconds: float = 0.0  # encoding, writing, hashing and moving files

    def to_json(self, seconds: float) -> dict:
        return {
            **dataclasses.asdict(self),
            "seconds": seconds,
            "drawn_per_second": self.images_drawn / max(seconds, 1e-9),
            "kept_per_second": self.images_kept / max(seconds, 1e-9),
        }


def dispatch(
    models: GenerationModels,
    identities: np.ndarray,
    seed: int,
    jobs: list[ImageJob],
    batch_size: int,
) -> jax.Array:
    """Queues the images of `jobs` on the device, padded to `batch_size` with copies of the
    first job (one compilation for every batch); each starts from its style image when the
    models have a style source (`style_sources`)."""
    padded = jobs + [jobs[0]] * (batch_size - len(jobs))
    columns = np.asarray([(job.identity, job.image_index, job.attempt) for job in padded]).T
    keys = image_keys(seed, *columns)
    if models.style_source is None:
        return models.draw(identities[columns[0]], keys)
    style_images = models.style_source.images(models.style_source.indices(*columns))
    return models.draw(identities[columns[0]], keys, style_images)


def regenerate_image(
    models: GenerationModels,
    identities: np.ndarray,
    generate_config: ml_collections.ConfigDict,
    job: ImageJob,
) -> np.ndarray:
    """The image of `job` drawn alone (in an otherwise padded batch): equal to its copy in the
    dataset, since its noise depends on its key only."""
    return np.asarray(
        dispatch(models, identities, generate_config.seed, [job], generate_config.batch_size)
    )[0]


@dataclasses.dataclass(frozen=True)
class _RoundInFlight:
    """An identity's completed round: its jobs and pixels, in image order, and their embeddings
    (judge, conditioning) as queued on the device."""

    identity: int
    jobs: list[ImageJob]
    pixels: np.ndarray
    embeddings: tuple[jax.Array, jax.Array]


class _Identity:
    """One identity's images in flight: its filter, its round's results, its decisions."""

    def __init__(self, count: int):
        self.waiting = count  # results of the current round not yet back
        self.results: dict[int, tuple] = {}  # image index -> (attempt, pixels)
        self.filter: IdentityFilter | None = None
        self.records: list[dict] = []
        self.kept: dict[int, np.ndarray] = {}


class _ShardDrawer:
    """The queue and the per-identity state of the module docstring."""

    def __init__(self, config, models, identities, shards, throughput, progress):
        self.generate = config.generate
        self.models, self.identities = models, identities
        self.throughput, self.progress = throughput, progress
        self.pending_shards = collections.deque(shards)
        self.queue: collections.deque[ImageJob] = collections.deque()
        self.in_progress: dict[int, _Identity] = {}
        self.shard_of: dict[int, int] = {}
        self.open_identities: dict[int, set[int]] = {}
        self.rounds_in_flight: list[_RoundInFlight] = []

    def _admit_shards(self) -> None:
        per_identity = self.generate.images_per_identity
        while len(self.queue) < self.generate.batch_size and self.pending_shards:
            shard = self.pending_shards.popleft()
            labels = dataset_writers.shard_labels(
                shard, self.generate.identities_per_shard, self.generate.num_identities
            )
            self.open_identities[shard] = set(labels)
            for identity in labels:
                self.in_progress[identity] = _Identity(per_identity)
                self.shard_of[identity] = shard
                self.queue.extend(ImageJob(identity, k, 0) for k in range(per_identity))

    def _record(
        self,
        job: ImageJob,
        decision: str,
        similarity: float,
        nearest: float,
        condition: np.ndarray,
        training: tuple[float, int, int],
        style: dict | None = None,
    ) -> dict:
        """`training`: the nearest real training image's judge cosine, index and label;
        `style`: the image's style source and style similarity, when it has one."""
        record = {
            "identity": job.identity,
            "image_index": job.image_index,
            "attempt": job.attempt,
            "seed": [self.generate.seed, job.identity, job.image_index, job.attempt],
            "judge_similarity": similarity,
            "nearest_kept_similarity": nearest,
            "condition_similarity": float(
                np.dot(condition.astype(np.float64), self.identities[job.identity])
            ),
            "decision": decision,
            "nearest_training_image_similarity": training[0],
            "nearest_training_image_index": training[1],
            "nearest_training_image_label": training[2],
            **(style or {}),
        }
        if decision == "kept" and "folders" in self.generate.formats:
            record["path"] = dataset_writers.folder_image_path(
                job.identity, job.image_index, self.generate.image_format
            )
        return record

    def _embed_round(self, identity: int) -> None:
        """Queues the embeddings of the identity's completed round, to be judged later."""
        state = self.in_progress[identity]
        indices = sorted(state.results)
        jobs = [ImageJob(identity, k, state.results[k][0]) for k in indices]
        pixels = np.stack([state.results[k][1] for k in indices])
        state.results.clear()
        self.rounds_in_flight.append(
            _RoundInFlight(identity, jobs, pixels, self.models.embed_round(pixels))
        )

    def _style(self, job: ImageJob, judge: np.ndarray) -> dict | None:
        """The image's style source {"index", "label"} and the judge cosine to that identity's
        centre (`style_sources`); None without a style source."""
        style_source = self.models.style_source
        if style_source is None:
            return None
        source = style_source.source(job.identity, job.image_index, job.attempt)
        return {
            "style_source": source,
            "style_similarity": style_source.similarity(judge, source["label"]),
        }

    def _judge_round(self, round_: _RoundInFlight) -> list[ImageJob]:
        """Judges an identity's round in image order; returns the redraws."""
        state = self.in_progress[round_.identity]
        waited = time.perf_counter()
        judge, condition, training_similarity, training_index, training_label = (
            np.asarray(e)[: len(round_.jobs)] for e in round_.embeddings
        )
        self.throughput.device_wait_seconds += time.perf_counter() - waited
        self.throughput.rounds_judged += 1
        if state.filter is None:  # the first round: the filter's reference
            state.filter = IdentityFilter(
                judge,
                min_similarity=self.generate.min_judge_similarity,
                max_duplicate_similarity=self.generate.max_duplicate_similarity,
                max_training_image_similarity=self.generate.max_training_image_similarity,
                max_style_similarity=(
                    None if self.models.style_source is None else self.generate.max_style_similarity
                ),
            )
        redraws = []
        for row, job in enumerate(round_.jobs):
            training = (
                float(training_similarity[row]),
                int(training_index[row]),
                int(training_label[row]),
            )
            style = self._style(job, judge[row])
            decision, similarity, nearest = state.filter.decide(
                judge[row],
                job.image_index,
                job.attempt,
                training[0],
                None if style is None else style["style_similarity"],
            )
            state.records.append(
                self._record(job, decision, similarity, nearest, condition[row], training, style)
            )
            if decision == "kept":
                state.kept[job.image_index] = round_.pixels[row]
            elif job.attempt < self.generate.max_resample_rounds:
                redraws.append(ImageJob(job.identity, job.image_index, job.attempt + 1))
        state.waiting = len(redraws)
        return redraws

    def _judge_rounds_in_flight(self) -> Iterator[tuple]:
        """Judges the rounds queued so far; yields (shard, records, kept) of every shard
        completed."""
        rounds, self.rounds_in_flight = self.rounds_in_flight, []
        for round_ in rounds:
            redraws = self._judge_round(round_)
            if redraws:
                self.queue.extend(redraws)
                self.progress.total += len(redraws)
                continue
            shard = self.shard_of.pop(round_.identity)
            self.open_identities[shard].discard(round_.identity)
            if not self.open_identities[shard]:
                del self.open_identities[shard]
                yield self._finish(shard)

    def _receive(self, jobs: list[ImageJob], result: jax.Array) -> None:
        """Takes a batch's images and queues the embeddings of every round they complete."""
        waited = time.perf_counter()
        pixels = np.asarray(result)
        self.throughput.device_wait_seconds += time.perf_counter() - waited
        self.throughput.images_drawn += len(jobs)
        self.throughput.batches += 1
        self.progress.update(len(jobs))
        for row, job in enumerate(jobs):
            state = self.in_progress[job.identity]
            state.results[job.image_index] = (job.attempt, pixels[row])
            state.waiting -= 1
            if not state.waiting:
                self._embed_round(job.identity)

    def _finish(self, shard: int) -> tuple[int, list[dict], dict[tuple[int, int], np.ndarray]]:
        labels = dataset_writers.shard_labels(
            shard, self.generate.identities_per_shard, self.generate.num_identities
        )
        records, kept = [], {}
        for identity in labels:
            state = self.in_progress.pop(identity)
            records += state.records
            kept.update({(identity, k): pixels for k, pixels in state.kept.items()})
        return shard, records, kept

    def run(self) -> Iterator[tuple[int, list[dict], dict[tuple[int, int], np.ndarray]]]:
        in_flight = None
        while True:
            self._admit_shards()
            if len(self.queue) < self.generate.batch_size and not self.pending_shards:
                # The tail: no shard is left to fill the batch, so let the redraws of the rounds
                # in flight join it rather than wait for a batch of their own.
                yield from self._judge_rounds_in_flight()
            count = min(self.generate.batch_size, len(self.queue))
            batch = [self.queue.popleft() for _ in range(count)]
            queued = None
            if batch:
                queued = (
                    batch,
                    dispatch(
                        self.models,
                        self.identities,
                        self.generate.seed,
                        batch,
                        self.generate.batch_size,
                    ),
                )
            yield from self._judge_rounds_in_flight()  # the rounds the batch before completed
            if in_flight is not None:
                self._receive(*in_flight)
            in_flight = queued
            if in_flight is None and not self.queue and not self.rounds_in_flight:
                return  # nothing drawn, judged, queued or left to admit


def draw_shards(
    config: ml_collections.ConfigDict,
    models: GenerationModels,
    identities: np.ndarray,
    shards: list[int],
    throughput: Throughput,
    progress: tqdm.tqdm,
) -> Iterator[tuple[int, list[dict], dict[tuple[int, int], np.ndarray]]]:
    """(shard, decision records, {(identity, image index): pixels} of the kept images) for each
    of `shards` as it completes (not necessarily in order), per the module docstring."""
    yield from _ShardDrawer(config, models, identities, shards, throughput, progress).run()
