"""A workdir on Cloud Storage: the `test` preset's pipeline through generation (the encoder, the
judge, the diffusion model and the generated dataset), then `--mode=validate_dataset`, with
`--workdir=gs://...` served by a local emulator (`tests/gcs_emulator.py`), equals the same run
with a local workdir: the same exported weights and the same dataset, byte for byte."""

import os
import subprocess
import sys

import pytest

from diffusion_jax.core import paths
from tests import gcs_emulator
from tests.helpers import REPO_ROOT, run_main_job

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

BUCKET = "diffusion-jax-test"
OVERRIDES = {"condition.source": "encoder", "generate.identities_per_shard": 3}


@pytest.fixture(scope="module")
def emulator_environment():
    pytest.importorskip("gcp_storage_emulator")
    pytest.importorskip("gcsfs")
    with gcs_emulator.running_emulator(BUCKET) as endpoint:
        yield gcs_emulator.client_environment(endpoint)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, prepared_data_dir) -> str:
    workdir = str(tmp_path_factory.mktemp("local_workdir"))
    run_main_job("test", workdir, prepared_data_dir, OVERRIDES, timeout=1200, stages="generate")
    return workdir


@pytest.fixture(scope="module")
def gcs_run(emulator_environment, prepared_data_dir, tmp_path_factory) -> str:
    """The run on gs://, copied back to a local directory once it is done."""
    workdir = f"gs://{BUCKET}/runs/test"
    run_main_job(
        "test",
        workdir,
        prepared_data_dir,
        OVERRIDES,
        timeout=1200,
        stages="generate",
        environment=emulator_environment,
    )
    run_main_job(
        "test",
        workdir,
        prepared_data_dir,
        OVERRIDES,
        mode="validate_dataset",
        environment=emulator_environment,
    )
    copy = tmp_path_factory.mktemp("gcs_workdir_copy")
    download = (
        "import sys\n"
        "from diffusion_jax.core import paths\n"
        "source, target = paths.Path(sys.argv[1]), paths.Path(sys.argv[2])\n"
        "for name in paths.relative_files(source):\n"
        "    (target / name).parent.mkdir(parents=True, exist_ok=True)\n"
        "    (target / name).write_bytes((source / name).read_bytes())\n"
    )
    subprocess.run(
        [sys.executable, "-c", download, workdir, str(copy)],
        cwd=REPO_ROOT,
        check=True,
        env={**os.environ, **emulator_environment},
        timeout=300,
    )
    return str(copy)


def test_the_generated_dataset_on_gcs_equals_the_local_one_byte_for_byte(local_run, gcs_run):
    local, remote = paths.Path(local_run) / "generated", paths.Path(gcs_run) / "generated"
    # The local protocol's lock file is the one file an object store has no use for.
    names = [name for name in paths.relative_files(local) if name != "shards/.finalize.lock"]
    assert "manifest.json" in names and any(name.endswith(".png") for name in names)
    assert paths.relative_files(remote) == names
    differing = [
        name for name in names if (local / name).read_bytes() != (remote / name).read_bytes()
    ]
    assert differing == []


def test_the_exports_and_stage_records_are_on_gcs_with_the_local_weights(local_run, gcs_run):
    for export in ("encoder/model", "judge/encoder/model"):
        local = paths.read_json(paths.Path(local_run) / export / "encoder.json")
        remote = paths.read_json(paths.Path(gcs_run) / export / "encoder.json")
        assert remote["weights_sha256"] == local["weights_sha256"]
        assert remote["provenance"]["trained_in"].startswith(f"gs://{BUCKET}/runs/test/")
    for stage in ("encoder", "judge", "diffusion", "generate"):
        local = paths.read_json(paths.Path(local_run) / "pipeline" / f"{stage}.json")
        remote = paths.read_json(paths.Path(gcs_run) / "pipeline" / f"{stage}.json")
        assert remote["fingerprint"] == local["fingerprint"]
    steps = sorted(path.name for path in (paths.Path(gcs_run) / "checkpoints").iterdir())
    assert steps == sorted(path.name for path in (paths.Path(local_run) / "checkpoints").iterdir())


def test_nothing_of_the_gcs_run_lands_on_the_local_disk(gcs_run):
    # os.path.abspath("gs://b/run") is "<cwd>/gs:/b/run": where a slipped path would write.
    assert not os.path.exists(os.path.join(REPO_ROOT, "gs:"))
