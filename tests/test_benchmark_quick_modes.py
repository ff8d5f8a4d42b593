"""benchmarks/run_quick.py, the runner of every benchmark's quick mode (CI runs it after the tests),
without running any: every file of benchmarks/ is registered, a new script fails the runner, the
records it accepts and refuses; and benchmarks/presets.py's quick sizes keep what runs."""

import importlib
import json
import shutil
import sys

import pytest

from tests.helpers import REPO_ROOT, load_config

BENCHMARKS = REPO_ROOT + "/benchmarks"


@pytest.fixture(scope="module")
def modules():
    sys.path.insert(0, BENCHMARKS)
    try:
        yield importlib.import_module("run_quick"), importlib.import_module("presets")
    finally:
        sys.path.remove(BENCHMARKS)


def test_every_file_of_benchmarks_has_a_quick_mode_or_a_reason(modules):
    run_quick, _ = modules
    assert run_quick.unregistered() == ([], [])
    for script, quick in run_quick.QUICK_MODES.items():
        source = (run_quick.BENCHMARKS / script).read_text()
        assert "--quick" in quick.args and "quick" in source, script
        assert any("{json}" in arg for arg in quick.args), f"{script} writes no JSON"


def test_a_new_script_without_a_quick_mode_fails_the_runner(modules, tmp_path, monkeypatch, capsys):
    run_quick, _ = modules
    for name in [*run_quick.QUICK_MODES, *run_quick.HELPERS]:
        shutil.copy(run_quick.BENCHMARKS / name, tmp_path / name)
    (tmp_path / "new_benchmark.py").write_text("print('no quick mode')\n")
    (tmp_path / "README.md").write_text("not a script\n")
    monkeypatch.setattr(run_quick, "BENCHMARKS", tmp_path)
    assert run_quick.main([]) == 1
    assert (
        "FAIL  new_benchmark.py: a file of benchmarks/ with no quick mode"
        in capsys.readouterr().out
    )
    (tmp_path / "new_benchmark.py").unlink()
    (tmp_path / "memory_table.py").unlink()
    assert run_quick.main([]) == 1
    assert "memory_table.py: registered in benchmarks/run_quick.py but missing" in (
        capsys.readouterr().out
    )


def _record(**changes) -> dict:
    record = {
        "format": 1,
        "benchmark": "memory_table",
        "date": "2026-01-01T00:00:00+00:00",
        "commit": "unknown",
        "command": "benchmarks/memory_table.py --quick",
        "machine": {},
        "settings": {"quick": True},
        "results": {"presets": {}},
    }
    record.update(changes)
    return record


def test_records_are_checked(modules, tmp_path):
    run_quick, _ = modules
    quick = run_quick.QUICK_MODES["memory_table.py"]
    path = tmp_path / "record.json"
    path.write_text(json.dumps(_record()))
    run_quick.check_record("memory_table.py", path, quick)
    for changes, message in [
        ({"benchmark": "unet_throughput"}, "expected 'memory_table'"),
        ({"settings": {"quick": False}}, "settings.quick"),
        ({"results": {}}, "no results"),
        ({"format": 2}, "format 2"),
    ]:
        path.write_text(json.dumps(_record(**changes)))
        with pytest.raises(AssertionError, match=message):
            run_quick.check_record("memory_table.py", path, quick)


def test_the_unet_check_wants_the_twin_on_the_presets_sampler(modules):
    run_quick, _ = modules
    check = run_quick.QUICK_MODES["unet_throughput.py"].check
    sizes = {"demo": {"sampler": {"jax": "dpm_solver_pp_2m", "torch": "dpm_solver_pp_2m"}}}
    check({"settings": {"with_torch": True}, "results": {"sizes": sizes}})
    sizes["demo"]["sampler"]["torch"] = "ddim"
    with pytest.raises(AssertionError):
        check({"settings": {"with_torch": True}, "results": {"sizes": sizes}})


@pytest.mark.parametrize("preset", ["demo", "base", "large", "demo,pixel", "base,latent"])
def test_quick_sizes_keep_what_runs_and_are_flags_the_config_takes(modules, preset):
    _, presets = modules
    config = presets.shrink_for_quick(load_config(preset))
    original = load_config(preset)
    for key in ("sampler", "guidance_scale", "eta", "clip_x0"):
        assert config.sample[key] == original.sample[key], key
    assert config.diffusion.to_dict() == original.diffusion.to_dict()
    assert config.model.stem == original.model.stem and config.model.dtype == original.model.dtype
    assert config.encoder.head == original.encoder.head and config.mesh == original.mesh
    # The flags name keys the config declares, with values of their type, and give this config.
    flattened = {}
    for flag in presets.quick_overrides(preset):
        key, value = flag[len("--config.") :].split("=", 1)
        current = original
        for part in key.split("."):
            current = current[part]
        flattened[key] = eval(value) if isinstance(current, tuple) else type(current)(value)
    original.update_from_flattened_dict(flattened)
    assert original.to_dict() == config.to_dict()


def test_unet_throughput_measures_the_phases_asked_for_and_refuses_unknown_ones(modules, capsys):
    unet_throughput = importlib.import_module("unet_throughput")
    args = unet_throughput.parse_args(["--sizes=demo", "--phases=forward,train_step", "--no-torch"])
    assert args.phases == ["forward", "train_step"]
    assert unet_throughput.parse_args(["--no-torch"]).phases == list(unet_throughput.PHASES)
    with pytest.raises(SystemExit):
        unet_throughput.parse_args(["--phases=forward,backward", "--no-torch"])
    assert "--phases=forward,backward: choose among forward,train_step,sample" in (
        capsys.readouterr().err
    )
