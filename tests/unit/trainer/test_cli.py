"""The `vft` console script as a user runs it: real subprocesses, real exit codes (and the same
commands in-process where another interpreter start adds nothing). Only the commands that start
no Ray cluster (`vft validate`, `vft ls`); `vft train` runs are in
tests/integration/test_cli_train.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from trainer.cli import app

ROOT = Path(__file__).resolve().parents[3]
VFT = [sys.executable, "-m", "trainer.cli"]


def run_vft(*args, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*VFT, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kwargs
    )


def test_validate_prints_the_resolved_config(digits_dir):
    result = run_vft(
        "validate",
        ROOT / "configs/digits.yaml",
        f"data.train={digits_dir}/train",
        f"data.val={digits_dir}/val",
        "optim.lr=3e-4",
        "train.epochs=5",
    )
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["optim"]["lr"] == 3e-4 and resolved["train"]["epochs"] == 5
    assert resolved["train"]["monitor"] == "val/top1" and resolved["train"]["mode"] == "max"
    assert resolved["run"]["name"] == "digits"


def test_ls_lists_registered_names():
    models = run_vft("ls", "models", "resnet1[08]")
    assert models.returncode == 0
    row = next(line for line in models.stdout.splitlines() if " resnet18 " in line)
    assert "timm" in row and "torchvision" in row
    assert "vit_base_patch16_224" not in models.stdout
    optimizers = CliRunner().invoke(app, ["ls", "optimizers"]).stdout.split()
    assert {"sgd", "adam", "adamw", "lamb"} <= set(optimizers)
    schedulers = CliRunner().invoke(app, ["ls", "schedulers"]).stdout.split()
    assert set(schedulers) == {"constant", "cosine", "cyclic", "multistep", "onecycle", "plateau", "step"}
    torchvision_only = CliRunner().invoke(app, ["ls", "models", "resnet1[08]", "--source", "torchvision"])
    rows = [line for line in torchvision_only.stdout.splitlines() if " resnet1" in line]
    assert rows and all("torchvision" in row for row in rows)
    assert not any(" resnet10t " in row for row in rows)  # timm's alone
    hf = CliRunner().invoke(app, ["ls", "models", "--source", "hf"])
    assert hf.exit_code == 0 and "Hub id" in hf.stdout
    lines = {line.split(":")[0].strip(): line for line in hf.stdout.splitlines() if ":" in line}
    assert " vit," in lines["classification"] and "segformer" in lines["segmentation"]


def test_errors_print_paths_and_hints_with_brackets_verbatim(tmp_path):
    """`error: ...` is not read as console markup: a path like `runs[2]/x.yaml` keeps its brackets."""
    missing = tmp_path / "runs[2]" / "config[gpu].yaml"
    result = CliRunner().invoke(app, ["validate", str(missing)])
    assert result.exit_code == 2
    assert str(missing) in result.output
