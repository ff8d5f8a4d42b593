"""A model saved as a directory: its weights (Orbax) and a JSON description written last.

    DIR/<description file>  {"format_version": N, "architecture": {...}, <fields of the kind>,
                             "weights_sha256": "..."}
    DIR/weights/            Orbax checkpoint of the model's nnx.State

`architecture` holds the keyword arguments of the model's class, so the model is rebuilt exactly.
The description is written last, by process 0, once the weights are complete: a directory
without it is an interrupted save and is refused. `weights_sha256`
(`fingerprint.array_tree_sha256` of the state) identifies the weights in caches and manifests.

Weights that do not fit the architecture are refused, on saving and on loading, with a message
that names every parameter missing, left over or of another shape, with both shapes (the stored
shapes are read from the checkpoint's metadata before anything is restored).

`recognition.encoder_store` and `latent.autoencoder_store` each fix one `ModelStore`: the name of
the description file, its format version and the model class.

DIR may be a local path or a `gs://` URL (`core.paths`; Orbax writes and reads either): the
description is one atomic write (a rename locally, one upload on an object store), and as it is
written after the weights, it is the commit marker on both.
"""

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from diffusion_jax.core import paths
from diffusion_jax.core.bad_input import BadInputError
from diffusion_jax.core.fingerprint import array_tree_sha256

WEIGHTS_DIR = "weights"
# Longer lists of parameters are cut short in error messages.
_PARAMETERS_SHOWN = 8


@dataclasses.dataclass(frozen=True)
class ModelStore:
    """The layout of one kind of model directory.

    description_file: the JSON file's name, e.g. "encoder.json".
    format_version: the version of that file this code writes and reads.
    model_class: builds the model from the architecture's keyword arguments and `rngs`.
    written_by: says what writes such directories, for the message that refuses a directory
        without a description.
    """

    description_file: str
    format_version: int
    model_class: Callable[..., nnx.Module]
    written_by: str

    def is_complete(self, directory: paths.PathLike) -> bool:
        """Whether `directory` holds a fully written model."""
        return (paths.resolve(directory) / self.description_file).is_file()

    def save(
        self,
        directory: paths.PathLike,
        model: nnx.Module,
        architecture: dict[str, Any],
        fields: dict[str, Any],
    ) -> str:
        """Writes `model` and its description (`architecture`, then `fields`) to `directory`, which
        must hold nothing yet but an interrupted save (weights without a description, e.g. of
        an export killed midway, which this save replaces); returns the weights hash.

        Every process must call it (Orbax writes the shards each process holds); process 0
        writes the description once the weights are complete.
        """
        directory = paths.resolve(directory)
        if self.is_complete(directory) or any(
            not entry.name.startswith(WEIGHTS_DIR)
            for entry in (directory.iterdir() if directory.is_dir() else ())
        ):
            raise FileExistsError(
                f"{directory} is not empty; refusing to overwrite it. Remove it or choose another "
                "output directory."
            )
        description = {"format_version": self.format_version, "architecture": architecture}
        description.update(fields)
        json.dumps(description)  # fails early, naming the value, if it is not JSON
        state = nnx.state(model)
        expected = _shapes(nnx.state(self._abstract_model(architecture)))
        if problems := _mismatches(_shapes(state), expected, stored_as="model"):
            raise ValueError(f"The model does not fit the architecture {architecture}: {problems}")
        description["weights_sha256"] = array_tree_sha256(state)
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(directory / WEIGHTS_DIR, state, force=True)  # over an interrupted one
            checkpointer.wait_until_finished()
        if jax.process_index() == 0:
            paths.write_bytes_atomically(
                directory / self.description_file,
                json.dumps(description, indent=2, sort_keys=True).encode(),
            )
        return description["weights_sha256"]

    def read_description(self, directory: paths.PathLike) -> dict[str, Any]:
        """The description in `directory`, checked for completeness, format version and the
        fields every kind has; raises BadInputError naming the directory or the file."""
        path = paths.resolve(directory) / self.description_file
        if not path.is_file():
            raise BadInputError(
                directory,
                f"no {self.description_file}: not a directory of this kind, or its save was "
                f"interrupted. {self.written_by}",
            )
        description = paths.read_json(path)
        if not isinstance(description, dict):
            raise BadInputError(path, f"expected a JSON object, got {type(description).__name__}")
        if description.get("format_version") != self.format_version:
            raise BadInputError(
                path,
                f"format_version {description.get('format_version')!r} is not "
                f"{self.format_version}, the one this version of diffusion_jax reads.",
            )
        if not isinstance(description.get("architecture"), dict):
            raise BadInputError(path, "lacks the object 'architecture' (the model's arguments)")
        if not isinstance(description.get("weights_sha256"), str):
            raise BadInputError(path, "lacks the string 'weights_sha256'")
        return description

    def load(self, directory: paths.PathLike) -> tuple[nnx.Module, dict[str, Any]]:
        """(the model saved in `directory`, on the first local device; its description)."""
        directory = paths.resolve(directory)
        description = self.read_description(directory)
        architecture = description["architecture"]
        description_path = directory / self.description_file
        try:
            graphdef, abstract_state = nnx.split(self._abstract_model(architecture))
        except (TypeError, ValueError) as error:
            raise BadInputError(
                description_path,
                f"the architecture {architecture} does not build the model: "
                f"{self.model_class.__name__}(**architecture) fails with {error}",
            ) from error
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract_state = jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
            abstract_state,
        )
        weights = directory / WEIGHTS_DIR
        with ocp.StandardCheckpointer() as checkpointer:
            stored = _shapes(checkpointer.metadata(weights).item_metadata)
            if problems := _mismatches(stored, _shapes(abstract_state), stored_as="checkpoint"):
                raise BadInputError(
                    weights,
                    f"do not fit the architecture in {description_path} ({architecture}): "
                    f"{problems}",
                )
            state = checkpointer.restore(weights, abstract_state)
        return nnx.merge(graphdef, state), description

    def _abstract_model(self, architecture: dict[str, Any]) -> nnx.Module:
        return nnx.eval_shape(lambda: self.model_class(**architecture, rngs=nnx.Rngs(0)))


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """Parameter name ('encoder.conv_in.kernel') -> shape, for an nnx.State or Orbax metadata."""
    shapes = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        # Both end each path with the nnx.Variable's `value`, which the name leaves out.
        name = jax.tree_util.keystr(path, simple=True, separator=".").removesuffix(".value")
        shapes[name] = tuple(leaf.shape)
    return shapes


def _mismatches(
    stored: Mapping[str, tuple[int, ...]],
    expected: Mapping[str, tuple[int, ...]],
    *,
    stored_as: str,
) -> str:
    """What differs between the `stored` parameter shapes (those of the `stored_as`, "model" or
    "checkpoint") and those the architecture builds; empty when nothing does."""
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    wrong_shapes = [
        f"{name}: {stored_as} {stored[name]}, architecture {expected[name]}"
        for name in sorted(set(stored) & set(expected))
        if stored[name] != expected[name]
    ]
    problems = []
    if missing:
        problems.append(f"missing from the {stored_as} ({len(missing)}): {_cut(missing, ', ')}")
    if unexpected:
        problems.append(f"not in the architecture ({len(unexpected)}): {_cut(unexpected, ', ')}")
    if wrong_shapes:
        problems.append(f"shape mismatches ({len(wrong_shapes)}): {_cut(wrong_shapes, '; ')}")
    return ". ".join(problems)


def _cut(items: list[str], separator: str) -> str:
    """The first _PARAMETERS_SHOWN items, joined."""
    shown = separator.join(items[:_PARAMETERS_SHOWN])
    return shown if len(items) <= _PARAMETERS_SHOWN else f"{shown}{separator}..."
