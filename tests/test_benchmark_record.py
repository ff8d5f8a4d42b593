"""The benchmarks' JSON record: its fields, the commit and machine filled in, a file round trip."""

import datetime
import json
import os
import re

import jax

from diffusion_jax import benchmark_record

ARGV = ["benchmarks/unet_throughput.py", "--sizes=demo", "--note=two words"]


def test_record_has_the_format_fields(capsys):
    results, settings = {"images_per_s": {"forward": 12.5}}, {"sizes": ["demo"], "batch": None}
    record = benchmark_record.write_benchmark_json(None, "unet_throughput", results, settings, ARGV)

    assert list(record) == [
        "format",
        "benchmark",
        "date",
        "commit",
        "command",
        "machine",
        "settings",
        "results",
    ]
    assert record["format"] == 1
    assert record["benchmark"] == "unet_throughput"
    assert record["results"] == results and record["settings"] == settings
    date = datetime.datetime.fromisoformat(record["date"])
    assert date.utcoffset() == datetime.timedelta(0)
    assert abs(datetime.datetime.now(datetime.UTC) - date) < datetime.timedelta(hours=1)
    assert record["command"] == "benchmarks/unet_throughput.py --sizes=demo '--note=two words'"
    # Printed as JSON, the whole record.
    assert json.loads(capsys.readouterr().out) == record


def test_commit_and_machine_are_filled_in():
    record = benchmark_record.benchmark_record("name", {}, {})

    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", record["commit"]), record["commit"]
    machine = record["machine"]
    assert set(machine) >= {
        "cpu_model",
        "cpu_cores",
        "platform",
        "python",
        "jax",
        "jaxlib",
        "device_kind",
        "device_count",
        "backend",
    }
    assert machine["jax"] == jax.__version__
    assert machine["jaxlib"] not in ("", "unknown")
    assert machine["cpu_model"] and machine["cpu_cores"] == os.cpu_count()
    assert machine["device_kind"] == jax.devices()[0].device_kind
    assert machine["device_count"] == jax.device_count()
    assert machine["backend"] == jax.default_backend()


def test_commit_is_unknown_outside_a_git_checkout(monkeypatch, tmp_path):
    monkeypatch.setattr(benchmark_record, "PACKAGE_DIR", tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert benchmark_record.git_commit() == "unknown"


def test_written_file_round_trips_through_json(tmp_path, capsys):
    path = tmp_path / "results" / "record.json"  # the folder does not exist yet
    results = {"sizes": {"demo": {"images_per_s": 3.25, "timed_calls": 10}}}
    record = benchmark_record.write_benchmark_json(
        path, "encoder_throughput", results, {"quick": True}, ARGV
    )

    assert json.loads(path.read_text()) == record
    assert json.loads(capsys.readouterr().out) == record


def test_numpy_values_are_written_as_numbers_and_lists(tmp_path, capsys):
    import numpy as np

    path = tmp_path / "record.json"
    benchmark_record.write_benchmark_json(
        str(path), "x", {"rate": np.float32(1.5), "steps": np.arange(3)}, {}, ARGV
    )
    assert json.loads(path.read_text())["results"] == {"rate": 1.5, "steps": [0, 1, 2]}
