"""An identity encoder on disk, written by `--mode=train_encoder` or by `diffusion_jax.convert`.

    DIR/encoder.json   {"format_version": 1, "architecture": {...}, "provenance": {...},
                        "weights_sha256": "..."}
    DIR/weights/       Orbax checkpoint of the IResNet's state (nnx.Param and nnx.BatchStat)

`architecture` holds the keyword arguments of `IResNet` (see `models.iresnet.iresnet_architecture`),
so the network is rebuilt exactly; `provenance` says where the weights came from (a training run
and its step, or a converted file and its hash). encoder.json is written last: a directory without
it is an interrupted save and is refused. `weights_sha256` (`fingerprint.array_tree_sha256` of the
state) identifies the weights in caches and manifests.
"""

import dataclasses
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from diffusion_jax.fingerprint import array_tree_sha256
from diffusion_jax.models.iresnet import IResNet

FORMAT_VERSION = 1
ENCODER_JSON = "encoder.json"
WEIGHTS_DIR = "weights"


@dataclasses.dataclass(frozen=True)
class LoadedEncoder:
    model: IResNet  # in eval mode
    architecture: dict[str, Any]
    provenance: dict[str, Any]
    weights_sha256: str
    directory: str

    @property
    def embedding_dim(self) -> int:
        return int(self.architecture["embedding_dim"])

    @property
    def input_resolution(self) -> int:
        return int(self.architecture["input_resolution"])


def is_complete(directory: str) -> bool:
    """Whether `directory` holds a fully written encoder."""
    return os.path.isfile(os.path.join(os.path.expanduser(directory), ENCODER_JSON))


def save_encoder(
    directory: str, model: IResNet, architecture: dict[str, Any], *, provenance: dict[str, Any]
) -> str:
    """Writes `model` to `directory` (which must not hold anything yet); returns the weights hash.

    Every process must call it (Orbax writes the shards each process holds); process 0 writes
    encoder.json once the weights are complete.
    """
    directory = os.path.abspath(os.path.expanduser(directory))
    if os.path.isdir(directory) and os.listdir(directory):
        raise FileExistsError(
            f"{directory} is not empty; refusing to overwrite it. Remove it or choose another "
            "output directory."
        )
    json.dumps(architecture)  # fails early, naming the value, if it is not JSON
    state = nnx.state(model)
    weights_sha256 = array_tree_sha256(state)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(directory, WEIGHTS_DIR), state)
        checkpointer.wait_until_finished()
    if jax.process_index() == 0:
        description = {
            "format_version": FORMAT_VERSION,
            "architecture": architecture,
            "provenance": provenance,
            "weights_sha256": weights_sha256,
        }
        temporary = os.path.join(directory, ENCODER_JSON + ".tmp")
        with open(temporary, "w") as f:
            json.dump(description, f, indent=2, sort_keys=True)
        os.replace(temporary, os.path.join(directory, ENCODER_JSON))
    return weights_sha256


def read_description(directory: str) -> dict[str, Any]:
    """The contents of DIR/encoder.json, checked for completeness and format version."""
    description_path = os.path.join(os.path.abspath(os.path.expanduser(directory)), ENCODER_JSON)
    if not os.path.isfile(description_path):
        raise FileNotFoundError(
            f"No {ENCODER_JSON} in {directory}: not an encoder directory, or its save was "
            "interrupted. Encoders are written by --mode=train_encoder and by "
            "`python -m diffusion_jax.convert`."
        )
    with open(description_path) as f:
        description = json.load(f)
    if description.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{description_path}: format_version {description.get('format_version')!r} is not "
            f"{FORMAT_VERSION}, the one this version of diffusion_jax reads."
        )
    return description


def load_encoder(directory: str) -> LoadedEncoder:
    """Rebuilds the encoder saved in `directory`, in eval mode, on the first local device."""
    directory = os.path.abspath(os.path.expanduser(directory))
    description = read_description(directory)
    architecture = description["architecture"]
    abstract_model = nnx.eval_shape(lambda: IResNet(**architecture, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract_model)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract_state = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device), abstract_state
    )
    with ocp.StandardCheckpointer() as checkpointer:
        try:
            state = checkpointer.restore(os.path.join(directory, WEIGHTS_DIR), abstract_state)
        except (ValueError, KeyError) as error:
            raise ValueError(
                f"The weights in {directory}/{WEIGHTS_DIR} do not fit the architecture in "
                f"{directory}/{ENCODER_JSON} ({architecture}): {error}"
            ) from error
    model = nnx.merge(graphdef, state)
    model.eval()
    return LoadedEncoder(
        model=model,
        architecture=architecture,
        provenance=description.get("provenance", {}),
        weights_sha256=description["weights_sha256"],
        directory=directory,
    )
