"""The identity encoder and the diffusion model conditioned on it, from one run of the main job:
it trains the encoder (long enough to separate the `test` preset's identities), exports it, then
trains the diffusion model on its embeddings. The tests check what the encoder learnt, the export
and its reuse, the conditions, and the modes `evaluate_encoder` and `sample` (called in-process
through `main.MODES`, as the command line dispatches them)."""

import copy
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from diffusion_jax.core import parallel
from diffusion_jax.core.fingerprint import array_tree_sha256
from diffusion_jax.core.models.iresnet import IResNet
from diffusion_jax.core.run_layout import RunLayout
from diffusion_jax.core.training import state as state_lib
from diffusion_jax.core.training.checkpointing import Checkpointer
from diffusion_jax.main import MODES
from diffusion_jax.tasks.conditional_diffusion.identity_conditions import identity_conditions
from diffusion_jax.tasks.data.sources import input_pipeline
from diffusion_jax.tasks.data.sources.image_decoding import to_model_range
from diffusion_jax.tasks.evaluation import verification_sets
from diffusion_jax.tasks.recognition import encoder_store, encoder_training
from diffusion_jax.tasks.recognition.embeddings import EmbeddingExtractor
from tests.helpers import run_main_job, tiny_config

# Every test reads one run of the main job in a subprocess (module fixture `run`).
pytestmark = [pytest.mark.slow, pytest.mark.e2e]

# The `test` preset's encoder (iresnet_small at 32x32, CosFace head) trained long enough to
# separate the preset's 8 training identities: 40 steps at batch 16, 20 epochs of its 32 images.
ENCODER_STEPS = 40
OVERRIDES = {
    "condition.source": "encoder",
    "encoder.train.batch_size": 16,
    "encoder.train.num_steps": ENCODER_STEPS,
    "encoder.train.learning_rate": 2e-3,
    "encoder.train.warmup_steps": 5,
    "encoder.train.log_every_steps": 20,
    "encoder.train.checkpoint_every_steps": 20,
}


def run_config(data_dir: str):
    """The config of the main job's run below."""
    config = tiny_config(data_dir)
    config.update_from_flattened_dict(OVERRIDES)
    return config


@pytest.fixture(scope="module")
def run(tmp_path_factory, prepared_data_dir):
    """(config, workdir) of one run of the main job: the encoder (40 steps), then the diffusion
    model (6 steps). It shares the tests' persistent compilation cache."""
    workdir = str(tmp_path_factory.mktemp("encoder_conditioned"))
    run_main_job("test", workdir, prepared_data_dir, OVERRIDES, stages="diffusion")
    return run_config(prepared_data_dir), workdir


def encoder_directory(workdir: str) -> str:
    return os.path.join(workdir, "encoder", "model")


@nnx.jit
def raw_embeddings(model: IResNet, images: jax.Array) -> jax.Array:
    return model(images)


def normalise(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def separation(embeddings: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Mean genuine and impostor cosine similarity over all pairs of distinct images, and the
    accuracy of the nearest leave-one-out centroid (each image's own class centroid omits it)."""
    similarities = embeddings @ embeddings.T
    same = labels[:, None] == labels[None, :]
    distinct = ~np.eye(len(labels), dtype=bool)
    classes = np.unique(labels)
    sums = np.stack([embeddings[labels == label].sum(0) for label in classes])
    counts = np.array([np.sum(labels == label) for label in classes])
    correct = 0
    for embedding, label in zip(embeddings, labels):
        own = classes == label
        centroids = (sums - own[:, None] * embedding) / (counts - own)[:, None]
        correct += classes[np.argmax(normalise(centroids) @ embedding)] == label
    return {
        "genuine": float(similarities[same & distinct].mean()),
        "impostor": float(similarities[~same].mean()),
        "accuracy": correct / len(labels),
    }


# --------------------------------------------------------------------------- The encoder


def test_main_job_trains_the_encoder_then_the_diffusion_model_on_it(run):
    config, workdir = run
    with open(os.path.join(workdir, "config.json")) as f:  # the tests' config is the run's
        assert json.load(f) == json.loads(config.to_json_best_effort())
    export = encoder_directory(workdir)
    assert encoder_store.is_complete(export)
    assert encoder_store.read_description(export)["provenance"]["step"] == ENCODER_STEPS

    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    assert checkpointer.all_steps() == [3, 6]
    assert checkpointer.restore_config()["condition"]["source"] == "encoder"
    for name in ("forward_process", "x0_estimates", "reverse_process", "identities"):
        path = os.path.join(workdir, "figures", f"{name}.png")
        assert os.path.getsize(path) > 1000, path


def test_training_separates_identities_that_an_untrained_encoder_does_not(run):
    config, workdir = run
    mesh = parallel.make_mesh(config.mesh)
    untrained = IResNet(**encoder_training.encoder_architecture(config.encoder), rngs=nnx.Rngs(0))
    encoders = {
        "trained": encoder_store.load_encoder(encoder_directory(workdir)).model,
        "untrained": untrained,
    }
    result = {}
    for name, model in encoders.items():
        extractor = EmbeddingExtractor(model, mesh, flip=False)
        for split in ("train", "heldout"):
            arrays = input_pipeline.load_split_arrays(config.data, split)
            embeddings = extractor.embed_arrays(arrays["image"], batch_size=16)
            result[name, split] = separation(embeddings, arrays["label"])

    def gap(name: str, split: str) -> float:
        return result[name, split]["genuine"] - result[name, split]["impostor"]

    # Measured on the 2-core CPU: trained gap 0.98, accuracy 1.0; untrained gap 0.06, accuracy
    # 0.19 (chance: 1/8). With 8 identities the impostor mean can go no lower than -1/7.
    assert gap("trained", "train") > 0.6, result
    assert result["trained", "train"]["accuracy"] >= 0.9, result
    assert gap("untrained", "train") < 0.25, result
    assert result["untrained", "train"]["accuracy"] <= 0.5, result
    # Identities never seen in training separate too, less (measured 0.30 against 0.05).
    assert gap("trained", "heldout") > gap("untrained", "heldout") + 0.05, result


def test_export_is_the_final_checkpoint_backbone_with_its_provenance(run):
    config, workdir = run
    export = encoder_directory(workdir)
    description = encoder_store.read_description(export)
    assert description["architecture"] == encoder_training.encoder_architecture(config.encoder)
    assert description["provenance"] == {
        "trained_in": os.path.join(workdir, "encoder"),
        "step": ENCODER_STEPS,
        "num_training_identities": config.data.num_train_identities,
        "seed": config.encoder.seed,
        "data": config.data.to_dict(),
    }

    checkpointer = Checkpointer(os.path.join(workdir, "encoder", "checkpoints"), read_only=True)
    assert checkpointer.all_steps() == [20, 40]
    build = encoder_training.encoder_builder(config, config.data.num_train_identities)
    optimizer, _ = state_lib.make_optimizer(config.encoder.train)
    abstract = state_lib.abstract_train_state(build, optimizer)
    mesh = parallel.make_mesh(config.mesh)
    state = checkpointer.restore(abstract, parallel.state_shardings(mesh, abstract))
    checkpointer.close()
    model = nnx.merge(state_lib.model_graphdef(build), state.params, state.model_state)
    assert description["weights_sha256"] == array_tree_sha256(nnx.state(model.backbone))


def test_exported_batch_norm_statistics_were_trained(run):
    config, workdir = run
    architecture = encoder_training.encoder_architecture(config.encoder)
    initial = nnx.state(IResNet(**architecture, rngs=nnx.Rngs(0)), nnx.BatchStat)
    exported_model = encoder_store.load_encoder(encoder_directory(workdir)).model
    exported = nnx.state(exported_model, nnx.BatchStat)
    initial_leaves = jax.tree_util.tree_leaves_with_path(initial)
    exported_leaves = jax.tree_util.tree_leaves_with_path(exported)
    assert [path for path, _ in initial_leaves] == [path for path, _ in exported_leaves]
    # mean and var of iresnet_small's 25 BatchNorms: the stem's, 3 in each of its 6 blocks, the
    # 4 downsampling ones, bn2 and features.
    assert len(exported_leaves) == 2 * 25
    for (path, start), (_, end) in zip(initial_leaves, exported_leaves):
        assert not np.allclose(np.asarray(start), np.asarray(end)), jax.tree_util.keystr(path)


def test_a_complete_encoder_is_not_trained_again(run, monkeypatch):
    config, workdir = run
    description = os.path.join(encoder_directory(workdir), "encoder.json")
    modified = os.stat(description).st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("train_encoder trained a complete encoder again")

    monkeypatch.setattr(encoder_training, "run_training", fail)
    layout = RunLayout.from_config(workdir, config)
    assert encoder_training.train_encoder(config, layout.encoder) == encoder_directory(workdir)
    assert os.stat(description).st_mtime_ns == modified
    checkpoints = Checkpointer(os.path.join(workdir, "encoder", "checkpoints"), read_only=True)
    assert checkpoints.all_steps() == [20, 40]


def test_another_architecture_over_a_complete_encoder_is_refused_naming_both(run):
    config, workdir = run
    other = copy.deepcopy(config)
    other.encoder.embedding_dim = 16
    trained = encoder_store.read_description(encoder_directory(workdir))["architecture"]
    asked = encoder_training.encoder_architecture(other.encoder)
    with pytest.raises(ValueError) as error:
        encoder_training.train_encoder(other, RunLayout.from_config(workdir, other).encoder)
    assert f"has architecture {trained}" in str(error.value)
    assert f"asks for {asked}" in str(error.value)


# --------------------------------------------------------------------------- Conditioning on it


def test_diffusion_conditions_are_the_encoder_embeddings_of_the_images(run):
    config, workdir = run
    mesh = parallel.make_mesh(config.mesh)
    arrays = input_pipeline.load_split_arrays(config.data, "train")
    images = to_model_range(arrays["image"][: config.train.batch_size])
    labels = arrays["label"][: config.train.batch_size]

    conditions = identity_conditions(config, workdir, mesh)
    batch = parallel.global_batch({"image": images, "label": labels}, mesh)
    batch = conditions.prepare_batch(batch)
    encoder = encoder_store.load_encoder(encoder_directory(workdir)).model
    expected = normalise(np.asarray(raw_embeddings(encoder, images)))

    assert set(batch) == {"image", "cond"}
    np.testing.assert_array_equal(np.asarray(batch["image"]), images)
    np.testing.assert_allclose(np.asarray(batch["cond"]), expected, rtol=1e-5, atol=1e-6)
    of_images = conditions.of_images(images, labels)  # the figures' and samples' conditions
    np.testing.assert_allclose(of_images, expected, rtol=1e-5, atol=1e-6)


def test_an_encoder_whose_dimension_is_not_the_condition_dimension_is_refused(run, tmp_path):
    config, workdir = run
    other = copy.deepcopy(config)
    other.encoder.checkpoint = encoder_directory(workdir)
    other.condition.dim = 16
    with pytest.raises(ValueError, match="condition.dim is 16 .* embeds in 32 dimensions"):
        identity_conditions(other, str(tmp_path), parallel.make_mesh(other.mesh))


def test_evaluate_encoder_mode_reports_verification_and_identity_separation(run):
    config, workdir = run
    report = MODES["evaluate_encoder"](config, workdir)
    out_dir = os.path.join(workdir, "encoder_report")
    with open(os.path.join(out_dir, "report.json")) as f:
        assert json.load(f) == json.loads(json.dumps(report))
    for name in ("roc.png", "similarity_histograms.png"):
        assert os.path.getsize(os.path.join(out_dir, name)) > 1000, name

    export = encoder_directory(workdir)
    description = encoder_store.read_description(export)
    assert report["encoder"]["weights_sha256"] == description["weights_sha256"]
    heldout = report["verification"]["heldout"]
    pairs = 10 * config.data.pairs_per_fold  # genuine and impostor pairs each, over 10 folds
    assert (heldout["num_pairs"], heldout["num_genuine"], heldout["num_impostor"]) == (
        2 * pairs,
        pairs,
        pairs,
    )
    for key in ("accuracy_mean", "auc", "eer"):
        assert np.isfinite(heldout[key]) and 0.0 <= heldout[key] <= 1.0, (key, heldout[key])

    # The report scores flip-augmented embeddings (config.evaluate.flip_embeddings): its AUC is
    # the Mann-Whitney statistic of those pair similarities, computed here independently.
    extractor = EmbeddingExtractor(
        encoder_store.load_encoder(export).model, parallel.make_mesh(config.mesh), flip=True
    )
    pair_set = verification_sets.from_procedural(config.data)
    similarities = np.sum(
        extractor.embed_arrays(pair_set.images_a, batch_size=16)
        * extractor.embed_arrays(pair_set.images_b, batch_size=16),
        axis=-1,
    )
    genuine = similarities[pair_set.is_same][:, None]
    impostor = similarities[~pair_set.is_same][None, :]
    mann_whitney = np.mean((genuine > impostor) + 0.5 * (genuine == impostor))
    np.testing.assert_allclose(heldout["auc"], mann_whitney, atol=1e-9)

    identities = report["identities"]
    assert set(identities) == {"held-out identities", "training identities"}
    assert identities["held-out identities"]["num_identities"] == config.data.num_heldout_identities
    assert identities["training identities"]["num_embeddings"] == (
        config.data.num_train_identities * config.data.images_per_train_identity
    )


def test_sample_mode_smoke_on_the_encoder_conditioned_checkpoint(run):
    config, workdir = run
    out_dir = MODES["sample"](config, workdir)
    assert out_dir == os.path.join(workdir, "samples", "step_6")
    for label in config.sample.identities:
        files = sorted(os.listdir(os.path.join(out_dir, f"identity_{label}")))
        assert files == [f"{index:03d}.png" for index in range(config.sample.samples_per_identity)]
    assert os.path.getsize(os.path.join(out_dir, "identities.png")) > 1000


def test_evaluate_samples_mode_grades_samples_with_a_different_judge(run, tmp_path):
    config, workdir = run
    conditioning = encoder_store.load_encoder(encoder_directory(workdir))
    judge_model = IResNet(**conditioning.architecture, rngs=nnx.Rngs(123))  # other weights
    judge_directory = str(tmp_path / "judge")
    encoder_store.save_encoder(
        judge_directory, judge_model, conditioning.architecture, provenance={}
    )

    refused = copy.deepcopy(config)
    refused.evaluate.judge_encoder = encoder_directory(workdir)
    with pytest.raises(ValueError, match="conditioning encoder's weights"):
        MODES["evaluate_samples"](refused, workdir)

    judged = copy.deepcopy(config)
    judged.evaluate.judge_encoder = judge_directory
    report = MODES["evaluate_samples"](judged, workdir)
    out_dir = os.path.join(workdir, "sample_report")
    with open(os.path.join(out_dir, "identity_consistency.json")) as f:
        assert json.load(f) == json.loads(json.dumps(report))
    assert os.path.getsize(os.path.join(out_dir, "consistency_grid.png")) > 1000
    assert report["diffusion_step"] == config.train.num_steps
    assert report["num_identities"] == config.evaluate.consistency_identities
    assert report["samples_per_identity"] == config.evaluate.consistency_samples_per_identity
    for key in (
        "judge_similarity_mean",
        "judge_impostor_mean",
        "judge_real_genuine_mean",
        "condition_similarity_mean",
    ):
        assert -1.0 <= report[key] <= 1.0, (key, report[key])
    assert 0.0 <= report["judge_rank1"] <= 1.0
    evaluate = config.evaluate
    identities = evaluate.consistency_identities
    assert report["frechet_samples"] == identities * evaluate.consistency_samples_per_identity
    assert report["frechet_real_images"] == identities * evaluate.real_images_per_identity
    assert report["judge_frechet_distance"] > 0
