"""The launch scripts of launch/: their syntax, their rendered job specs, what their dry runs would
run, their errors for missing options, the scripts they hand to the nodes (run here with stand-ins
for srun and gcloud), and a real run of launch/local.sh whose processes join jax.distributed.

No test needs the network or a cloud tool: every test puts stand-ins for gcloud, kubectl, sbatch,
srun and docker first on PATH, and those that must not be called fail loudly."""

import ast
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time

import pytest
import yaml

from diffusion_jax.tasks.generation.worker_index import find_worker
from tests.helpers import REPO_ROOT

LAUNCH_DIR = os.path.join(REPO_ROOT, "launch")
SHELL_SCRIPTS = sorted(name for name in os.listdir(LAUNCH_DIR) if name.endswith((".sh", ".sbatch")))
ENTRY_SCRIPTS = ["local.sh", "slurm.sh", "tpu_pod.sh", "cloud_generate.sh"]
CLOUD_TOOLS = ["gcloud", "gsutil", "kubectl", "sbatch", "srun", "docker"]
# Variables the scripts read as defaults: the tests give every value explicitly.
INHERITED_PREFIXES = ("SBATCH_", "SLURM_", "CLOUDSDK_", "DJ_")
INHERITED = {"IMAGE", "VIRTUAL_ENV", "JAX_COORDINATOR_PORT", "XLA_FLAGS", "PYTHON"}


def write_executable(path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def tools(tmp_path):
    """A directory first on PATH whose cloud tools only record their calls (in calls.log) and
    fail, and the environment that uses it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.log"
    for tool in CLOUD_TOOLS:
        write_executable(
            bin_dir / tool,
            f'#!/bin/bash\necho "{tool} $*" >> "{calls}"\necho "stand-in {tool} called" >&2\n'
            "exit 97\n",
        )
    environ = {
        name: value
        for name, value in os.environ.items()
        if name not in INHERITED and not name.startswith(INHERITED_PREFIXES)
    }
    environ["PATH"] = f"{bin_dir}{os.pathsep}{environ['PATH']}"
    environ["TMPDIR"] = str(tmp_path)
    return bin_dir, calls, environ


def launch(script: str, *args: str, environ: dict, timeout: float = 60):
    return subprocess.run(
        ["bash", os.path.join(LAUNCH_DIR, script), *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )


def dry_run(script: str, *args: str, tools) -> str:
    """The standard output of `script args --dry-run`, which must succeed and call no tool."""
    _, calls, environ = tools
    args = list(args)
    args.insert(args.index("--") if "--" in args else len(args), "--dry-run")
    result = launch(script, *args, environ=environ)
    assert result.returncode == 0, result.stderr
    assert not calls.exists(), calls.read_text()
    return result.stdout


def here_document(output: str, delimiter: str) -> tuple[str, str]:
    """(the command line, the body) of the here-document `command <<'DELIMITER'` in `output`."""
    match = re.search(
        rf"^([^\n]*)<<'{delimiter}'\n(.*?)\n{delimiter}$", output, flags=re.MULTILINE | re.DOTALL
    )
    assert match, output
    return match.group(1), match.group(2)


# ------------------------------------------------------------------------------------- the files


@pytest.mark.parametrize("name", SHELL_SCRIPTS)
def test_every_script_passes_the_bash_syntax_check(name):
    result = subprocess.run(
        ["bash", "-n", os.path.join(LAUNCH_DIR, name)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_every_platform_has_its_files_and_the_entry_scripts_are_executable():
    assert set(SHELL_SCRIPTS) >= {
        "local.sh",
        "slurm.sh",
        "slurm_train.sbatch",
        "slurm_generate.sbatch",
        "tpu_pod.sh",
        "cloud_generate.sh",
    }
    for name in ENTRY_SCRIPTS:
        assert os.access(os.path.join(LAUNCH_DIR, name), os.X_OK), name
    for name in ("cloud_batch_generate.json", "k8s_generate_job.yaml", "Dockerfile"):
        assert os.path.isfile(os.path.join(LAUNCH_DIR, name)), name


def test_the_templates_parse_as_they_are():
    with open(os.path.join(LAUNCH_DIR, "cloud_batch_generate.json")) as file:
        batch = json.load(file)
    group = batch["taskGroups"][0]
    assert group["taskCount"] == "{{WORKERS}}"
    assert group["taskSpec"]["runnables"][0]["container"]["imageUri"] == "{{IMAGE}}"
    with open(os.path.join(LAUNCH_DIR, "k8s_generate_job.yaml")) as file:
        job = yaml.safe_load(file)
    assert job["kind"] == "Job"
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == "{{WORKERS}}"
    assert (
        "--config.generate.task_count={{WORKERS}}"
        in (job["spec"]["template"]["spec"]["containers"][0]["args"])
    )


def test_the_dockerfile_installs_the_cuda_extra_and_runs_the_main_job():
    with open(os.path.join(LAUNCH_DIR, "Dockerfile")) as file:
        dockerfile = file.read()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, flags=re.MULTILINE)
    assert 'RUN pip install -e ".[cuda12]"' in dockerfile
    assert 'ENTRYPOINT ["python", "-m", "diffusion_jax.main"]' in dockerfile
    with open(os.path.join(REPO_ROOT, "setup.py")) as file:
        tree = ast.parse(file.read())
    extras = next(
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and node.targets[0].id == "EXTRAS_REQUIRE"
    )
    assert {"cuda12", "tpu"} <= {key.value for key in extras.keys}


# ------------------------------------------------------------------------------ required values


@pytest.mark.parametrize(
    "script, args, missing",
    [
        ("local.sh", [], "missing N"),
        ("local.sh", ["0"], "N must be a positive integer"),
        ("slurm.sh", [], "the first argument must be train or generate"),
        ("slurm.sh", ["train", "--workdir=/shared/run"], "missing --partition"),
        ("slurm.sh", ["train", "--partition=my-partition"], "missing --workdir"),
        ("slurm.sh", ["generate", "--partition=p", "--workdir=/shared/run"], "missing --workers"),
        (
            "slurm.sh",
            ["train", "--partition=p", "--workdir=w", "--workers=2"],
            "--workers applies to generate",
        ),
        ("tpu_pod.sh", ["--zone=us-central2-b", "--workdir=gs://my-bucket/r"], "missing --project"),
        ("tpu_pod.sh", ["--project=my-project", "--workdir=gs://my-bucket/r"], "missing --zone"),
        ("tpu_pod.sh", ["--project=my-project", "--zone=z"], "missing --workdir"),
        (
            "tpu_pod.sh",
            ["--project=p", "--zone=z", "--workdir=/local/run"],
            "--workdir must be a gs://",
        ),
        (
            "cloud_generate.sh",
            ["batch", "--workdir=gs://b/r", "--workers=2", "--project=p", "--location=l"],
            "missing --image",
        ),
        (
            "cloud_generate.sh",
            ["batch", "--image=i", "--workdir=gs://b/r", "--workers=2", "--location=l"],
            "missing --project",
        ),
        (
            "cloud_generate.sh",
            ["batch", "--image=i", "--workdir=gs://b/r", "--workers=2", "--project=p"],
            "missing --location",
        ),
        ("cloud_generate.sh", ["k8s", "--image=i", "--workdir=gs://b/r"], "missing --workers"),
        ("cloud_generate.sh", ["k8s", "--image=i", "--workers=2"], "missing --workdir"),
        (
            "cloud_generate.sh",
            ["k8s", "--image=i", "--workdir=w", "--workers=2", "--project=p"],
            "--project applies to batch only",
        ),
    ],
)
def test_a_missing_or_wrong_value_is_a_clear_error(script, args, missing, tools):
    _, calls, environ = tools
    result = launch(script, *args, "--dry-run", environ=environ)
    assert result.returncode == 2
    assert f"{script}: error: {missing}" in result.stderr
    assert not calls.exists()


def test_required_values_may_come_from_the_environment(tools):
    _, _, environ = tools
    environ.update(SBATCH_PARTITION="my-partition", DJ_WORKDIR="/shared/run")
    result = launch("slurm.sh", "train", "--dry-run", environ=environ)
    assert result.returncode == 0, result.stderr
    assert "--partition=my-partition" in result.stdout
    assert "export DJ_WORKDIR=/shared/run" in result.stdout


# ------------------------------------------------------------------------------------------ SLURM


def run_rendered_sbatch(script: str, tools, tmp_path, **environ) -> subprocess.CompletedProcess:
    """Runs a rendered batch script as SLURM would, with an `srun` that prints its arguments."""
    bin_dir, _, base = tools
    write_executable(bin_dir / "srun", '#!/bin/bash\nprintf "%s\\n" "$@"\n')
    path = tmp_path / "rendered.sbatch"
    path.write_text(script)
    return subprocess.run(
        ["bash", str(path)],
        env={**base, "SLURM_JOB_ID": "77", **environ},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


def test_slurm_training_runs_one_distributed_process_per_gpu(tools, tmp_path):
    output = dry_run(
        "slurm.sh",
        "train",
        "--partition=my-partition",
        "--workdir=/shared/runs/my run",
        "--nodes=2",
        "--gpus-per-node=4",
        "--account=my-account",
        "--",
        "--config.train.batch_size=256",
        "--config.train.note=a b",
        tools=tools,
    )
    command, script = here_document(output, "SBATCH_SCRIPT")
    assert command.split() == [
        "sbatch",
        "--parsable",
        "--partition=my-partition",
        "--account=my-account",
        "--nodes=2",
        "--ntasks-per-node=4",
        "--gpus-per-node=4",
    ]
    result = run_rendered_sbatch(script, tools, tmp_path)
    assert result.returncode == 0, result.stderr
    # srun's arguments: srun starts SLURM_NTASKS copies of this command.
    assert result.stdout.splitlines()[1:] == [
        "--kill-on-bad-exit=1",
        "python",
        "-m",
        "diffusion_jax.main",
        "--config=configs/faces.py:large",
        "--workdir=/shared/runs/my run",
        "--mode=train",
        "--distributed",
        "--config.train.batch_size=256",
        "--config.train.note=a b",
    ]


def test_slurm_generation_is_an_array_of_independent_workers(tools, tmp_path):
    output = dry_run(
        "slurm.sh",
        "generate",
        "--partition=my-partition",
        "--workdir=/shared/runs/base",
        "--workers=8",
        "--parallel=3",
        "--output-dir=/shared/dataset",
        "--",
        "--config.generate.num_identities=1000",
        tools=tools,
    )
    command, script = here_document(output, "SBATCH_SCRIPT")
    assert "--array=0-7%3" in command.split()
    result = run_rendered_sbatch(
        script,
        tools,
        tmp_path,
        SLURM_ARRAY_TASK_ID="5",
        SLURM_ARRAY_TASK_MIN="0",
        SLURM_ARRAY_TASK_COUNT="8",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "worker 5" in lines[0] and "(8 tasks)" in lines[0]
    assert lines[1:] == [
        "--ntasks=1",
        "python",
        "-m",
        "diffusion_jax.main",
        "--config=configs/faces.py",
        "--workdir=/shared/runs/base",
        "--mode=generate",
        "--config.generate.output_dir=/shared/dataset",
        "--config.generate.num_identities=1000",
    ]
    # The array's variables are the generation job's worker index and count.
    worker = find_worker(
        environ={
            "SLURM_ARRAY_TASK_ID": "5",
            "SLURM_ARRAY_TASK_MIN": "0",
            "SLURM_ARRAY_TASK_COUNT": "8",
        }
    )
    assert (worker.index, worker.count) == (5, 8)

    outside_an_array = run_rendered_sbatch(script, tools, tmp_path)
    assert outside_an_array.returncode != 0
    assert "submit this script as a job array" in outside_an_array.stderr


# ----------------------------------------------------------------------------- Batch, Kubernetes


def test_cloud_batch_job_has_one_task_per_worker(tools):
    output = dry_run(
        "cloud_generate.sh",
        "batch",
        "--image=us-docker.pkg.dev/my-project/my-repo/dj:a&b",
        "--workdir=gs://my-bucket/runs/base",
        "--workers=8",
        "--parallelism=4",
        "--project=my-project",
        "--location=us-central1",
        "--spot",
        "--job-name=gen-1",
        '--output-dir=gs://my-bucket/data "v1"',
        "--",
        "--config.generate.seed=3",
        tools=tools,
    )
    command, spec = here_document(output, "SPEC")
    assert command.split() == [
        "gcloud",
        "batch",
        "jobs",
        "submit",
        "gen-1",
        "--project=my-project",
        "--location=us-central1",
        "--config=-",
    ]
    job = json.loads(spec)
    group = job["taskGroups"][0]
    assert (group["taskCount"], group["parallelism"], group["taskCountPerNode"]) == (8, 4, 1)
    container = group["taskSpec"]["runnables"][0]["container"]
    assert container["imageUri"] == "us-docker.pkg.dev/my-project/my-repo/dj:a&b"
    assert container["commands"] == [
        "--config=configs/faces.py",
        "--workdir=gs://my-bucket/runs/base",
        '--config.generate.output_dir=gs://my-bucket/data "v1"',
        "--config.generate.seed=3",
        "--mode=generate",
    ]
    assert job["allocationPolicy"]["instances"][0]["policy"]["provisioningModel"] == "SPOT"
    # Batch sets each task's BATCH_TASK_INDEX and BATCH_TASK_COUNT = taskCount.
    workers = [
        find_worker(environ={"BATCH_TASK_INDEX": str(i), "BATCH_TASK_COUNT": str(8)})
        for i in range(group["taskCount"])
    ]
    assert sorted(shard for worker in workers for shard in worker.shards(20)) == list(range(20))


def test_kubernetes_indexed_job_has_one_completion_per_worker(tools):
    output = dry_run(
        "cloud_generate.sh",
        "k8s",
        "--image=my-registry/diffusion_jax:latest",
        "--workdir=gs://my-bucket/runs/base",
        "--workers=6",
        "--namespace=my-namespace",
        "--",
        "--config.generate.note=it's \\ here",
        tools=tools,
    )
    command, spec = here_document(output, "SPEC")
    assert command.split() == ["kubectl", "--namespace=my-namespace", "apply", "-f", "-"]
    job = yaml.safe_load(spec)
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 6
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "my-registry/diffusion_jax:latest"
    assert container["args"] == [
        "--config=configs/faces.py",
        "--workdir=gs://my-bucket/runs/base",
        "--config.generate.task_count=6",
        "--config.generate.note=it's \\ here",
        "--mode=generate",
    ]
    # Pod i has JOB_COMPLETION_INDEX=i and the count from the flag: together, every shard.
    count = int(container["args"][2].rpartition("=")[2])
    workers = [
        find_worker(task_count=count, environ={"JOB_COMPLETION_INDEX": str(i)}) for i in range(6)
    ]
    assert [(w.index, w.count) for w in workers] == [(i, 6) for i in range(6)]
    assert sorted(shard for worker in workers for shard in worker.shards(13)) == list(range(13))


def test_kubernetes_replace_deletes_the_old_job_first(tools):
    output = dry_run(
        "cloud_generate.sh",
        "k8s",
        "--image=img",
        "--workdir=gs://my-bucket/r",
        "--workers=2",
        "--replace",
        tools=tools,
    )
    assert output.splitlines()[0].split() == [
        "kubectl",
        "delete",
        "job",
        "diffusion-jax-generate",
        "--ignore-not-found",
        "--wait=true",
    ]


# ------------------------------------------------------------------------------------------- TPU


TPU_ARGS = ["--project=my-project", "--zone=us-central2-b", "--workdir=gs://my-bucket/runs/large/"]


def test_tpu_pod_creates_installs_and_runs_on_every_worker(tools):
    output = dry_run("tpu_pod.sh", *TPU_ARGS, "--", "--config.train.batch_size=256", tools=tools)
    where = "--zone=us-central2-b --project=my-project"
    assert f"gcloud compute tpus tpu-vm describe diffusion-jax {where}" in output
    assert (
        f"gcloud compute tpus tpu-vm create diffusion-jax {where} "
        "--accelerator-type=v5litepod-16 --version=v2-alpha-tpuv5-lite" in output
    )
    assert "gcloud compute tpus tpu-vm scp " in output
    ssh_lines = [line for line in output.splitlines() if " tpu-vm ssh " in line]
    assert len(ssh_lines) == 3 and all("--worker=all" in line for line in ssh_lines)
    assert "pip install -q -e \\'.[tpu]\\'" in ssh_lines[0]  # as printf %q quotes it
    assert "--command=bash\\ ~/diffusion_jax_run.sh" in ssh_lines[1]
    assert (
        '"$HOME"/diffusion_jax_venv/bin/python -m diffusion_jax.main '
        "--config=configs/faces.py:large --workdir=gs://my-bucket/runs/large --mode=train "
        "--distributed --config.train.batch_size=256 " in output
    )
    assert "gcloud storage cp gs://my-bucket/runs/large/logs/\\* tpu_logs/diffusion-jax/" in output


def test_tpu_pod_spot_uses_a_queued_resource_and_repo_url_clones(tools):
    output = dry_run(
        "tpu_pod.sh",
        "up",
        *TPU_ARGS,
        "--spot",
        "--accelerator-type=v4-32",
        "--runtime-version=tpu-ubuntu2204-base",
        tools=tools,
    )
    assert (
        "gcloud compute tpus queued-resources create diffusion-jax --zone=us-central2-b "
        "--project=my-project --node-id=diffusion-jax --accelerator-type=v4-32 "
        "--runtime-version=tpu-ubuntu2204-base --spot" in output
    )
    assert "tpu-vm ssh" not in output  # `up` only
    output = dry_run(
        "tpu_pod.sh",
        "install",
        *TPU_ARGS,
        "--repo-url=https://example.com/me/diffusion_jax.git",
        "--ref=v1",
        tools=tools,
    )
    assert "git clone -q https://example.com/me/diffusion_jax.git ~/diffusion_jax" in output
    assert "checkout -q --detach v1" in output
    assert "tpu-vm scp" not in output


def test_tpu_worker_script_logs_copies_the_log_and_keeps_the_exit_status(tools, tmp_path):
    """The script each TPU worker runs, run here: a stand-in main job that prints its arguments
    and fails, and a gcloud that records the copy of the log to the bucket."""
    output = dry_run("tpu_pod.sh", "run", *TPU_ARGS, "--", "--x=1", tools=tools)
    script = "\n".join(line[4:] for line in output.splitlines() if line.startswith("#   "))
    bin_dir, calls, environ = tools
    home = tmp_path / "home"
    (home / "diffusion_jax").mkdir(parents=True)
    (home / "diffusion_jax_venv" / "bin").mkdir(parents=True)
    write_executable(
        home / "diffusion_jax_venv" / "bin" / "python",
        '#!/bin/bash\necho "main job: $*"\nexit 3\n',
    )
    write_executable(bin_dir / "gcloud", f'#!/bin/bash\necho "gcloud $*" >> "{calls}"\n')
    (tmp_path / "run.sh").write_text(script)
    result = subprocess.run(
        ["bash", str(tmp_path / "run.sh")],
        env={**environ, "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3, result.stderr
    log = (home / "diffusion_jax_run.log").read_text()
    assert log == (
        "main job: -m diffusion_jax.main --config=configs/faces.py:large "
        "--workdir=gs://my-bucket/runs/large --mode=train --distributed --x=1\n"
    )
    hostname = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    assert calls.read_text().splitlines() == [
        f"gcloud storage cp {home}/diffusion_jax_run.log "
        f"gs://my-bucket/runs/large/logs/{hostname}.log"
    ]


# ------------------------------------------------------------------------------------- local.sh


def local_environment(dry_run_output: str) -> list[dict[str, str]]:
    """Each process's variables, from `launch/local.sh --dry-run`."""
    return [
        dict(re.findall(r"(\w+)=(\S+)", line.partition("\\")[0]))
        for line in dry_run_output.splitlines()
        if line.startswith("env ")
    ]


def test_local_processes_get_the_variables_of_a_slurm_step(tools, monkeypatch):
    output = dry_run(
        "local.sh",
        "3",
        "--devices-per-process=4",
        "--port=62001",
        "--",
        "--config=configs/faces.py:demo",
        "--workdir=/tmp/my-run",
        tools=tools,
    )
    commands = [line.strip() for line in output.splitlines() if line.startswith("  ")]
    assert len(commands) == 3
    assert all(
        command.startswith(
            "python -m diffusion_jax.main --distributed --config=configs/faces.py:demo "
            "--workdir=/tmp/my-run > "
        )
        for command in commands
    )
    environments = local_environment(output)
    assert [e["SLURM_PROCID"] for e in environments] == ["0", "1", "2"]
    assert [e["SLURM_LOCALID"] for e in environments] == ["0", "1", "2"]
    for environment in environments:
        assert environment["SLURM_NTASKS"] == "3"
        assert environment["SLURM_STEP_NODELIST"] == "localhost"
        assert environment["JAX_PLATFORMS"] == "cpu"
        assert environment["XLA_FLAGS"] == "--xla_force_host_platform_device_count=4"
    # What JAX's own SLURM detection makes of them; the port from SLURM_JOB_ID agrees with the
    # JAX_COORDINATOR_PORT override.
    from jax._src.clusters import SlurmCluster

    for process_id, environment in enumerate(environments):
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        assert SlurmCluster.is_env_present()
        assert SlurmCluster.get_coordinator_address(None, None) == "localhost:62001"
        assert SlurmCluster.get_coordinator_address(None, environment["JAX_COORDINATOR_PORT"]) == (
            "localhost:62001"
        )
        assert (SlurmCluster.get_process_count(), SlurmCluster.get_process_id()) == (3, process_id)


def test_local_failure_stops_the_others_and_sets_the_exit_status(tools, tmp_path):
    _, _, environ = tools
    script = tmp_path / "fail.py"
    script.write_text(
        "import os, sys, time\n"
        "if os.environ['SLURM_PROCID'] == '1':\n"
        "    sys.exit(3)\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    result = launch(
        "local.sh",
        f"--python={sys.executable}",
        f"--script={script}",
        f"--log-dir={tmp_path / 'logs'}",
        "2",
        environ=environ,
    )
    assert result.returncode == 3, result.stderr
    assert time.monotonic() - started < 30  # process 0 was stopped, not waited for
    assert "process 1 exited with status 3" in result.stderr
    assert "process 0 exited with status 143" in result.stderr  # SIGTERM


def test_local_sigterm_reaches_every_process(tools, tmp_path):
    _, _, environ = tools
    script = tmp_path / "stop.py"
    script.write_text(
        "import os, signal, sys, time\n"
        "rank = os.environ['SLURM_PROCID']\n"
        "def stop(*_):\n"
        "    open(os.path.join(sys.argv[1], 'stopped_' + rank), 'w').close()\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "open(os.path.join(sys.argv[1], 'started_' + rank), 'w').close()\n"
        "time.sleep(60)\n"
    )
    launcher = subprocess.Popen(
        [
            "bash",
            os.path.join(LAUNCH_DIR, "local.sh"),
            f"--python={sys.executable}",
            f"--script={script}",
            f"--log-dir={tmp_path / 'logs'}",
            "2",
            "--",
            str(tmp_path),
        ],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not all((tmp_path / f"started_{i}").exists() for i in (0, 1)):
        assert time.monotonic() < deadline and launcher.poll() is None
        time.sleep(0.1)
    launcher.send_signal(signal.SIGTERM)
    _, stderr = launcher.communicate(timeout=30)
    assert launcher.returncode == 0, stderr
    assert (tmp_path / "stopped_0").exists() and (tmp_path / "stopped_1").exists()


def test_local_processes_join_one_jax_distributed_job(tools, tmp_path):
    """A real run: two processes with two CPU devices each call jax.distributed.initialize()
    without arguments and see one job of 2 processes and 4 devices."""
    _, _, environ = tools
    environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    script = tmp_path / "probe.py"
    script.write_text(
        "import jax\n"
        "jax.distributed.initialize()\n"
        "print('probe', jax.process_index(), jax.process_count(), jax.device_count(),\n"
        "      jax.local_device_count(), flush=True)\n"
        "jax.distributed.shutdown()\n"
    )
    log_dir = tmp_path / "logs"
    result = launch(
        "local.sh",
        f"--python={sys.executable}",
        f"--script={script}",
        f"--log-dir={log_dir}",
        "--devices-per-process=2",
        "2",
        environ=environ,
        timeout=120,
    )
    logs = [(log_dir / f"process_{i}.log").read_text() for i in (0, 1)]
    assert result.returncode == 0, result.stderr + "".join(logs)
    probes = [re.search(r"^probe (\d+) (\d+) (\d+) (\d+)$", log, re.MULTILINE) for log in logs]
    assert all(probes), logs
    assert [tuple(map(int, probe.groups())) for probe in probes] == [(0, 2, 4, 2), (1, 2, 4, 2)]
