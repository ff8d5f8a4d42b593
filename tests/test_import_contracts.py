"""The layer contract of `.importlinter` holds for the package, and a reverse import breaks it: a
copy of the package where a core module imports an app fails `lint-imports`, naming the import."""

import os
import shutil
import subprocess
import sys

from tests.helpers import REPO_ROOT

LINT_IMPORTS = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def lint_imports(package_parent: str) -> subprocess.CompletedProcess:
    """`lint-imports` with the repository's contract, on the package found in `package_parent`."""
    environment = {**os.environ, "PYTHONPATH": package_parent}
    return subprocess.run(
        [LINT_IMPORTS, "--config", os.path.join(REPO_ROOT, ".importlinter"), "--no-cache"],
        cwd=package_parent,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_package_keeps_its_layer_and_acyclic_contracts():
    result = lint_imports(REPO_ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout


def test_a_core_module_importing_an_app_breaks_the_layers(tmp_path):
    shutil.copytree(
        os.path.join(REPO_ROOT, "diffusion_jax"),
        tmp_path / "diffusion_jax",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    paths_module = tmp_path / "diffusion_jax" / "core" / "paths.py"
    paths_module.write_text(
        paths_module.read_text() + "\nfrom diffusion_jax.apps import pipeline\n"
    )
    result = lint_imports(str(tmp_path))
    assert result.returncode != 0
    assert "diffusion_jax.core.paths -> diffusion_jax.apps.pipeline" in result.stdout
    assert "BROKEN" in result.stdout
