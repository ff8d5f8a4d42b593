"""`--mode=evaluate`: verification accuracy of several face recognisers on the same pairs.

Each recogniser (an encoder directory) embeds the pairs of every set of
`config.evaluate.verification_sets` (the embedded held-out pairs, InsightFace `.bin` files such as
LFW, CFP-FP and AgeDB-30, or LFW `pairs.txt`), and is scored with insightface's 10-fold protocol,
the ROC, TAR@FAR and EER (`evaluation.verification`). The recognisers are
`config.recognizer.evaluate` ("NAME=DIR" or DIR entries), or every recogniser trained under
WORKDIR/recognizers. Writes WORKDIR/evaluation/report.json and roc.png.
"""

import json

import jax
import ml_collections
from absl import logging
from jax.sharding import Mesh

from diffusion_jax.core import parallel, paths
from diffusion_jax.core.figures import save_figure
from diffusion_jax.core.run_layout import RunLayout
from diffusion_jax.tasks.data.sources import input_pipeline
from diffusion_jax.tasks.evaluation.encoder_report import (
    load_verification_sets,
    pair_similarities,
    uses_heldout_identities,
)
from diffusion_jax.tasks.evaluation.verification import (
    VerificationResult,
    evaluate_verification,
    roc_figure,
)
from diffusion_jax.tasks.recognition import encoder_store
from diffusion_jax.tasks.recognition.embeddings import EmbeddingExtractor


def named_recognizers(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
    """{name: encoder directory} of the recognisers `--mode=evaluate` verifies."""
    layout = RunLayout.from_config(workdir, config)
    named = {}
    for entry in config.recognizer.evaluate:
        name, _, directory = entry.rpartition("=")
        directory = paths.resolve(directory)
        named[name or directory.name] = str(directory)
    if not named:
        trained = sorted(layout.recognizers.iterdir()) if layout.recognizers.is_dir() else []
        for name in (path.name for path in trained):
            if encoder_store.is_complete(layout.recognizer(name).export_dir):
                named[name] = str(layout.recognizer(name).export_dir)
    if not named:
        raise ValueError(
            "no recogniser to evaluate: set --config.recognizer.evaluate='(\"NAME=DIR\",)' or "
            f"train one with --mode=train_recognizer into {layout.recognizers}"
        )
    for name, directory in named.items():
        if not encoder_store.is_complete(directory):
            raise FileNotFoundError(f"recogniser {name!r}: {directory} holds no complete encoder")
    return named


def verify_recognizers(
    config: ml_collections.ConfigDict, recognizers: dict[str, str], mesh: Mesh
) -> dict[str, dict[str, VerificationResult]]:
    """{recogniser: {verification set: result}}."""
    results = {}
    for name, directory in recognizers.items():
        encoder = encoder_store.load_encoder(directory)
        extractor = EmbeddingExtractor(encoder.model, mesh, flip=config.evaluate.flip_embeddings)
        results[name] = {}
        for set_name, pairs in load_verification_sets(config, encoder.input_resolution).items():
            similarities = pair_similarities(extractor, pairs, config.evaluate.batch_size)
            result = evaluate_verification(similarities, pairs.is_same, pairs.fold)
            results[name][set_name] = result
            logging.info(
                "%s on %s: accuracy %.4f +- %.4f.",
                name,
                set_name,
                result.accuracy_mean,
                result.accuracy_std,
            )
    return results


def roc_of_all(results: dict[str, dict[str, VerificationResult]]):
    """One ROC figure with a curve per (recogniser, set)."""
    return roc_figure(
        {
            f"{name} / {set_name}": result
            for name, per_set in results.items()
            for set_name, result in per_set.items()
        }
    )


def verification_json(verification: dict) -> dict:
    """{recogniser: {set: result}} of `verify_recognizers` as JSON (as in report.json)."""
    return {
        name: {set_name: result.to_json() for set_name, result in per_set.items()}
        for name, per_set in verification.items()
    }


def evaluate_recognizers(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """--mode=evaluate (module docstring); returns the report's JSON."""
    if uses_heldout_identities(config.evaluate.verification_sets):
        input_pipeline.ensure_prepared(config.data)
    recognizers = named_recognizers(config, workdir)
    results = verify_recognizers(config, recognizers, parallel.make_mesh(config.mesh))
    report = {
        "recognizers": recognizers,
        "verification": verification_json(results),
    }
    if jax.process_index() == 0:
        out_dir = RunLayout.from_config(workdir, config).evaluation
        out_dir.mkdir(parents=True, exist_ok=True)
        save_figure(roc_of_all(results), out_dir / "roc.png")
        (out_dir / "report.json").write_text(json.dumps(report, indent=2))
        logging.info("Evaluation written to %s.", out_dir)
    return report
