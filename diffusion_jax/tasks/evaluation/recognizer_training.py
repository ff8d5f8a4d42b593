"""Face recognisers that test the claim: the encoder's recipe trained on a chosen dataset.

`train_recognizer(config, workdir, name, data_config)` trains `config.encoder`'s architecture,
margin head and training section (optimiser, batch size; steps: `config.recognizer.num_steps`
when positive) with seed `config.recognizer.seed` on `data_config`, in
WORKDIR/recognizers/<name>/encoder, and exports it to
WORKDIR/recognizers/<name>/encoder/model (`encoder_training`, which resumes an interrupted run and
never retrains a complete one). The pipeline trains `synthetic` on the generated dataset and
`real` on the real training data (`real_data_config`: as many images per identity as were
generated) with one recipe, so the only difference is the data; `recognizer.num_identities` and
`recognizer.images_per_identity` fix both sets to the same shape instead
(`check_same_identities` refuses a set that has fewer identities), and `recognizer.max_shift` and
`color_jitter` augment both sets' images alike.

`--mode=train_recognizer` trains `config.recognizer.name` on `config.recognizer.data_source` /
`data_path` (default: `config.data`), e.g. on a dataset generated elsewhere.
"""

import ml_collections

from diffusion_jax.core import paths
from diffusion_jax.core.run_layout import RunLayout
from diffusion_jax.tasks.data.sources import input_pipeline
from diffusion_jax.tasks.generation import dataset_writers
from diffusion_jax.tasks.recognition.encoder_training import train_encoder


def _apply_recognizer_section(
    data: ml_collections.ConfigDict, recognizer: ml_collections.ConfigDict
) -> None:
    """Edits a recogniser's training set as `config.recognizer` asks: its augmentation
    (`max_shift`, `color_jitter`: both recognisers alike) and sizes (`num_identities`,
    `images_per_identity`)."""
    data.max_shift = recognizer.max_shift
    data.color_jitter = recognizer.color_jitter
    if recognizer.num_identities > 0:
        data.max_identities = recognizer.num_identities
    if recognizer.images_per_identity > 0:
        data.max_images_per_identity = recognizer.images_per_identity


def generated_data_config(
    config: ml_collections.ConfigDict, out_dir: str
) -> ml_collections.ConfigDict:
    """`config.data` reading a generated dataset in `out_dir`: its RecordIO file when written
    (read in place), else its identity folders (prepared once into the data dir); cut to
    `recognizer.num_identities` / `images_per_identity` when set."""
    data = ml_collections.ConfigDict(config.data.to_dict())
    data.max_identities = data.max_images_per_identity = -1
    formats = config.generate.formats
    out_dir = paths.Path(out_dir)
    if "recordio" in formats:
        data.source, data.path = "recordio", str(out_dir / dataset_writers.RECORDIO_REC)
    elif "folders" in formats:
        data.source, data.path = "image_folder", str(out_dir / dataset_writers.FOLDERS_DIR)
    else:
        data.source, data.path = "tfds", dataset_writers.TFDS_NAME
        data.data_dir = str(out_dir / paths.Path(dataset_writers.TFDS_DIR).parent.parent)
    _apply_recognizer_section(data, config.recognizer)
    return data


def real_data_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config.data`, cut to the first `generate.images_per_identity` images of each identity
    when `recognizer.match_images_per_identity`, or to `recognizer.num_identities` /
    `images_per_identity` when set."""
    data = ml_collections.ConfigDict(config.data.to_dict())
    if config.recognizer.match_images_per_identity:
        limits = (config.generate.images_per_identity, data.max_images_per_identity)
        data.max_images_per_identity = min(limit for limit in limits if limit > 0)
    _apply_recognizer_section(data, config.recognizer)
    return data


def check_same_identities(
    config: ml_collections.ConfigDict, data_configs: dict[str, ml_collections.ConfigDict]
) -> None:
    """Refuses `recognizer.num_identities` larger than a training set {name: data config}."""
    wanted = config.recognizer.num_identities
    if wanted <= 0:
        return
    for name, data in data_configs.items():
        available = input_pipeline.num_train_identities(
            ml_collections.ConfigDict({**data.to_dict(), "max_identities": -1})
        )
        if available < wanted:
            raise ValueError(
                f"config.recognizer.num_identities={wanted} but the {name} training set "
                f"({data.source} {data.path or data.data_dir!r}) has {available} identities"
            )


def train_recognizer(
    config: ml_collections.ConfigDict,
    workdir: str,
    name: str,
    data_config: ml_collections.ConfigDict,
) -> str:
    """Trains the recogniser `name` on `data_config`; returns its export directory (raises
    `preemption.Preempted` when SIGTERM stopped it; a rerun resumes)."""
    recipe = ml_collections.ConfigDict(config.to_dict())
    recipe.data = ml_collections.ConfigDict(data_config.to_dict())
    recipe.encoder.seed = config.recognizer.seed
    if config.recognizer.num_steps > 0:
        recipe.encoder.train.num_steps = config.recognizer.num_steps
    return train_encoder(recipe, RunLayout.from_config(workdir, config).recognizer(name))


def claim_recognizer_name(config: ml_collections.ConfigDict, kind: str, seed: int) -> str:
    """The recogniser of `kind` ("real" or "synthetic") trained with `seed`: plain `kind` for
    `recognizer.seed` (the recognizers stage's), `<kind>_seed<S>` for the report's spread seeds."""
    return kind if seed == config.recognizer.seed else f"{kind}_seed{seed}"


def train_claim_recognizers(
    config: ml_collections.ConfigDict, workdir: str, seed: int
) -> dict[str, str]:
    """Trains the claim's pair with `seed`, one recipe on two sets: `synthetic` on the generated
    dataset and `real` on the real training data; returns {kind: export directory}. Complete
    recognisers are not retrained."""
    layout = RunLayout.from_config(workdir, config)
    data = {
        "synthetic": generated_data_config(config, str(layout.generated)),
        "real": real_data_config(config),
    }
    check_same_identities(config, data)
    seeded = ml_collections.ConfigDict(config.to_dict())
    seeded.recognizer.seed = seed
    return {
        kind: train_recognizer(
            seeded, workdir, claim_recognizer_name(config, kind, seed), data[kind]
        )
        for kind in ("synthetic", "real")
    }


def train_recognizer_mode(config: ml_collections.ConfigDict, workdir: str) -> str:
    """--mode=train_recognizer (module docstring)."""
    data = ml_collections.ConfigDict(config.data.to_dict())
    if config.recognizer.data_source:
        data.source = config.recognizer.data_source
        data.path = config.recognizer.data_path
        data.data_dir = config.recognizer.data_dir or data.data_dir
    return train_recognizer(config, workdir, config.recognizer.name, data)
