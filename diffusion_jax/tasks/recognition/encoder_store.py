"""An identity encoder on disk, written by `--mode=train_encoder` or by `diffusion_jax.convert`.

    DIR/encoder.json   {"format_version": 1, "architecture": {...}, "provenance": {...},
                        "weights_sha256": "..."}
    DIR/weights/       Orbax checkpoint of the IResNet's state (nnx.Param and nnx.BatchStat)

`architecture` holds the keyword arguments of `IResNet` (see
`core.models.iresnet.iresnet_architecture`), so the network is rebuilt exactly; `provenance` says
where the weights came from (a training run and its step, or a converted file and its hash).
encoder.json is written last: a directory without it is an interrupted save and is refused.
`weights_sha256` (`fingerprint.array_tree_sha256` of the state) identifies the weights in caches and
manifests. The layout is `model_store.ModelStore`'s, which also refuses weights that do not fit the
architecture, naming the parameters. DIR may be local or a `gs://` URL (`core.paths`).
"""

import dataclasses
from typing import Any

from diffusion_jax.core import paths
from diffusion_jax.core.model_store import ModelStore
from diffusion_jax.core.models.iresnet import IResNet

FORMAT_VERSION = 1
ENCODER_JSON = "encoder.json"

_STORE = ModelStore(
    description_file=ENCODER_JSON,
    format_version=FORMAT_VERSION,
    model_class=IResNet,
    written_by="Encoders are written by --mode=train_encoder and by "
    "`python -m diffusion_jax.convert`.",
)


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
    return _STORE.is_complete(directory)


def save_encoder(
    directory: str, model: IResNet, architecture: dict[str, Any], *, provenance: dict[str, Any]
) -> str:
    """Writes `model` to `directory` (which must not hold anything yet); returns the weights hash.

    Every process must call it (Orbax writes the shards each process holds); process 0 writes
    encoder.json once the weights are complete.
    """
    return _STORE.save(directory, model, architecture, {"provenance": provenance})


def read_description(directory: str) -> dict[str, Any]:
    """The contents of DIR/encoder.json, checked for completeness and format version."""
    return _STORE.read_description(directory)


def load_encoder(directory: str) -> LoadedEncoder:
    """Rebuilds the encoder saved in `directory`, in eval mode, on the first local device."""
    model, description = _STORE.load(directory)
    model.eval()
    return LoadedEncoder(
        model=model,
        architecture=description["architecture"],
        provenance=description.get("provenance", {}),
        weights_sha256=description["weights_sha256"],
        directory=str(paths.resolve(directory)),
    )
