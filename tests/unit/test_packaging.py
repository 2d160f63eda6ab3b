"""Packaging promises: every package is installed, configs travel with the install, and the
help path stays free of torch."""

from __future__ import annotations

import subprocess
import sys

import tomllib
from helpers import REPO


def test_every_package_under_modlab_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "modlab").rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages"
    assert {"modlab.cli", "modlab.conf"} <= listed


def test_no_top_level_cli_module_is_installed():
    out = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; print(u.find_spec('cli'))"],
        capture_output=True,
        text=True,
        cwd="/",
    )
    assert out.stdout.strip() == "None"


def test_help_path_imports_neither_torch_nor_hydra():
    code = (
        "import sys; from modlab.cli.main import main; main(['--help']); "
        "bad = [m for m in ('torch', 'lightning', 'hydra') if m in sys.modules]; assert not bad, bad"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert "train" in out.stdout and "eval" in out.stdout and "generate" in out.stdout


def test_conf_is_found_from_the_installed_package():
    code = "import modlab.cli.app as a, os; print(os.path.isfile(os.path.join(a.CONF_DIR, 'train.yaml')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.stdout.strip() == "True", out.stderr


def test_regular_install_elsewhere_finds_its_configs(tmp_path):
    """`pip install .` (not editable) into another directory still ships conf/ and cli/."""
    target = tmp_path / "site"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    assert not (target / "cli").exists()
    code = (
        "import modlab.cli.app as a, os, sys; assert a.CONF_DIR.startswith(sys.argv[1]), a.CONF_DIR; "
        "print(sorted(os.listdir(os.path.join(a.CONF_DIR, 'experiment'))))"
    )
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(target)], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "showo_dense.yaml" in out.stdout
