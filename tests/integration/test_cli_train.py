"""`vft train` as a user runs it: real subprocesses (and the same command in-process where a
new interpreter adds nothing), real exit codes, a real local Ray cluster."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tracking_tools import steps, tracked_run
from train_tools import SMALL_MODEL
from typer.testing import CliRunner

from trainer.cli import app
from trainer.components.runlog import read_metrics_csv

ROOT = Path(__file__).resolve().parents[2]
VFT = [sys.executable, "-m", "trainer.cli"]


def run_vft(*args, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*VFT, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kwargs
    )


def test_bad_config_exits_2_without_creating_the_run_dir(digits_dir, tmp_path):
    base = [
        "train",
        ROOT / "configs/digits.yaml",
        f"data.train={digits_dir}/train",
        f"data.val={digits_dir}/val",
        f"run.storage={tmp_path}",
        "--name",
        "bad",
    ]
    cases = {
        "optim.lr=-1": "optim.lr",
        "optim.lrr=0.1": "optim.lrr: unknown key",
        "train.precision=fp8": "'bf16', 'fp16' or 'fp32'",
        "model.name=resnet18x": "model.name",
        "data.train=/no/such/folder": "data.train",
    }
    first, *others = cases.items()
    result = run_vft(*base, first[0])  # one real process: exit status and stderr as a shell sees them
    assert result.returncode == 2 and first[1] in result.stderr, result.stderr
    for override, expected in others:  # the rest in this process (the same command, no interpreter start)
        result = CliRunner().invoke(app, [str(a) for a in [*base, override]])
        assert result.exit_code == 2, (override, result.output)
        assert expected in result.output, (override, result.output)
    assert not (tmp_path / "bad").exists()
    missing = CliRunner().invoke(app, ["train", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "nope.yaml" in missing.output


def test_interrupted_run_resumes_from_its_saved_epoch(ray_cluster, digits_dir, tmp_path):
    """Ctrl-C on a real `vft train` process (its own local cluster), then the same command again
    (in this process, on the session's cluster: resuming reads the run dir, not the cluster)."""
    args = [
        "train",
        ROOT / "configs/digits.yaml",
        f"data.train={digits_dir}/train",
        f"data.val={digits_dir}/val",
        f"run.storage={tmp_path}",
        "train.epochs=4",
        SMALL_MODEL,
        "--name",
        "resume",
        "--quiet",
    ]
    run_dir = tmp_path / "resume"
    first = subprocess.Popen(
        [*VFT, *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        if len(read_metrics_csv(str(run_dir / "metrics.csv"))) >= 1:
            break
        time.sleep(0.5)
    assert first.poll() is None, f"run ended before it could be interrupted:\n{first.stdout.read()}"
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C
    try:
        first.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    before = read_metrics_csv(str(run_dir / "metrics.csv"))
    assert 1 <= len(before) < 4, before  # stopped early (the local cluster's shutdown takes seconds)
    # 130 and the resume hint; 1 when the same SIGINT stopped the local cluster under the driver first
    output = first.stdout.read()
    assert first.returncode == 130 and "the same command resumes" in output or first.returncode == 1, output

    second = CliRunner().invoke(app, [str(a) for a in args])
    assert second.exit_code == 0, second.output
    assert f"after epoch {len(before)}" in second.output
    after = read_metrics_csv(str(run_dir / "metrics.csv"))
    assert [row["epoch"] for row in after] == [1, 2, 3, 4]
    assert after[: len(before)] == before  # finished epochs were not run again
    # one MLflow run (the session's server) continued by the resume, each epoch logged once
    client, run = tracked_run(run_dir)
    assert run.info.status == "FINISHED"
    assert steps(client, run.info.run_id, "epoch") == [(e, float(e)) for e in (1, 2, 3, 4)]
    same_dir = client.search_runs([run.info.experiment_id], f"tags.`vft.run_dir` = '{run_dir}'")
    assert [r.info.run_id for r in same_dir] == [run.info.run_id]


def test_unusable_datasets_exit_2_before_any_cluster_starts(digits_dir, tmp_path):
    extra = tmp_path / "val"
    shutil.copytree(digits_dir / "val", extra)
    (extra / "3").rename(extra / "three")
    base = ["train", ROOT / "configs/digits.yaml", f"run.storage={tmp_path}", "--name", "data"]
    result = run_vft(*base, f"data.train={digits_dir}/train", f"data.val={extra}")
    assert result.returncode == 2 and "data.val" in result.stderr and "three" in result.stderr
    single = tmp_path / "single"
    shutil.copytree(digits_dir / "train" / "1", single / "1")
    result = CliRunner().invoke(app, [str(a) for a in [*base, f"data.train={single}", "data.val=null"]])
    assert result.exit_code == 2 and "at least 2" in result.output
    assert not (tmp_path / "data").exists()
