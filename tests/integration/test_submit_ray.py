"""The chart's training entrypoint runs for real: `vft submit train --to ray` renders the chart,
takes the RayJob's entrypoint and the ConfigMap's files, and submits them with Ray's
JobSubmissionClient to a local `ray start --head` cluster with token authentication."""

from __future__ import annotations

import json
import shlex
import subprocess

import pytest
import yaml
from chart_tools import ROOT, template
from local_ray import VENV_BIN, clean_env, start
from train_tools import SMALL_MODEL

CONFIG = ROOT / "configs" / "digits.yaml"
TINY = [
    SMALL_MODEL,
    "data.img_size=32",
    "train.epochs=1",
    "data.num_workers=0",
    "data.batch_size=16",
]
CPU_CLUSTER = ["--set", "workers.gpusPerPod=0", "--set", "workers.replicas=1"]


@pytest.fixture(scope="module")
def cluster():
    ray = start()
    yield ray
    ray.stop()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from trainer.components.synthetic import shapes_classification

    root = tmp_path_factory.mktemp("shapes")
    shapes_classification(root, 40, 20, 32, 0)
    return root


def vft_submit(cluster, storage, *args: str, token: str | None = "cluster", timeout: float = 240):
    env = clean_env(HOME=str(storage))  # no ~/.ray/auth_token to fall back on
    if token is not None:
        env["RAY_AUTH_TOKEN"] = cluster.token if token == "cluster" else token
    cmd = [
        str(VENV_BIN / "vft"),
        "submit",
        "train",
        str(CONFIG),
        "--to",
        "ray",
        "--address",
        cluster.dashboard,
    ]
    cmd += [*CPU_CLUSTER, "--set", f"storage.mountPath={storage}", "--poll-interval", "0.5", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=storage, timeout=timeout)


def test_job_api_refuses_requests_without_the_token(cluster):
    assert cluster.get("/api/jobs/", None) == 401
    assert cluster.get("/api/jobs/", "not-the-token") == 403
    assert cluster.get("/api/jobs/", cluster.token) == 200


def test_rendered_training_entrypoint_runs_on_a_token_cluster(cluster, dataset, tmp_path):
    data = [f"data.train={dataset / 'train'}", f"data.val={dataset / 'val'}"]
    proc = vft_submit(cluster, tmp_path, "--name", "tiny", "--follow", *data, *TINY)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SUCCEEDED" in proc.stderr
    assert "epoch   1/1" in proc.stdout  # --follow streamed the driver's logs
    run_dir = tmp_path / "runs" / "tiny"
    assert (run_dir / "best" / "model.safetensors").is_file()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["scaling"]["num_workers"] == 1

    # What ran is the chart's RayJob entrypoint, its /config/ mount made the job's working dir.
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(cluster.dashboard, headers={"Authorization": f"Bearer {cluster.token}"})
    (job,) = [j for j in client.list_jobs() if j.metadata.get("vft.run") == "tiny-train-vft"]
    sets = ["workload=train", "run.name=tiny", "workers.gpusPerPod=0", "workers.replicas=1"]
    sets.append(f"storage.mountPath={tmp_path}")
    docs = template(
        release="tiny-train", sets=sets, extra=["--set-json", f"run.overrides={json.dumps(data + TINY)}"]
    )
    (rayjob,) = [d for d in docs if d["kind"] == "RayJob"]
    expected = [a.removeprefix("/config/") for a in shlex.split(rayjob["spec"]["entrypoint"])]
    assert shlex.split(job.entrypoint) == expected
    assert expected[:3] == ["vft", "train", "config.yaml"]
    assert f"run.storage={tmp_path}/runs" in expected


def test_a_failing_job_exits_1(cluster, tmp_path):
    missing = tmp_path / "no-such-dataset"
    proc = vft_submit(
        cluster, tmp_path, "--name", "broken", f"data.train={missing}", f"data.val={missing}", *TINY
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "FAILED" in proc.stderr


def test_submission_with_a_wrong_token_is_refused(cluster, tmp_path):
    """Exit 2 naming the refusal (a missing token's 401 is checked on the API itself above)."""
    proc = vft_submit(cluster, tmp_path, token="wrong-token", timeout=120)
    assert proc.returncode == 2
    assert "Forbidden" in proc.stderr or "403" in proc.stderr, proc.stderr


def test_serve_config_goes_to_the_serve_api_and_a_failed_app_exits_1(cluster, tmp_path):
    """The RayService's serveConfigV2 is deployed through Ray Serve's REST API with the token;
    an application that cannot start (no run directory there) ends in exit code 1."""
    from local_ray import free_ports

    (port,) = free_ports(1)
    env = clean_env(HOME=str(tmp_path), RAY_AUTH_TOKEN=cluster.token)
    cmd = [
        str(VENV_BIN / "vft"),
        "submit",
        "serve",
        str(CONFIG),
        "--to",
        "ray",
        "--address",
        cluster.dashboard,
    ]
    cmd += ["--set", f"serve.port={port}", "--set", "serve.gpusPerReplica=0", "--set", "workers.gpusPerPod=0"]
    cmd += ["--set", f"serve.modelUri={tmp_path}/no-such-run", "--timeout", "180", "--poll-interval", "0.5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "deployed vft" in proc.stderr
    assert "Serve application vft failed" in proc.stderr or "--timeout" in proc.stderr
