"""`vft submit --to k8s` against an HTTP test double of the Kubernetes API server.

No API server can run on this machine (no kind/k3s, no container engine), so tests/kube_double.py
stands in for one: it records every request the kubernetes client sends and plays back the
RayJob/RayService status the KubeRay operator would write. Everything else is real: the CLI,
the helm binary rendering the chart, and the kubernetes client making HTTP calls.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from chart_tools import ROOT, template
from kube_double import KubeDouble, KubeServer
from typer.testing import CliRunner

from trainer.cli import app

CONFIG = ROOT / "configs" / "digits.yaml"
RUNNING = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}
SUCCEEDED = {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}
FAILED = {
    "jobDeploymentStatus": "Failed",
    "jobStatus": "FAILED",
    "reason": "AppFailed",
    "message": "Job entrypoint command failed with exit code 1",
}


def vft(*args: str):
    return CliRunner().invoke(app, list(args))


def rendered(workload: str, name: str, namespace: str = "ml", extra: list[str] = ()) -> list[dict]:
    """The chart rendered by helm directly, independently of `vft submit`."""
    docs = template(
        release=f"{name}-{workload}",
        namespace=namespace,
        sets=[f"workload={workload}", f"run.name={name}"],
        extra=["--set-file", f"configFile={CONFIG}", *extra],
    )
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
    return docs


def by_kind(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs}


@pytest.fixture
def kube(tmp_path):
    def start(**kwargs) -> tuple[KubeDouble, KubeServer]:
        double = KubeDouble(**kwargs)
        server = KubeServer(double, tmp_path)
        server.__enter__()
        servers.append(server)
        return double, server

    servers: list[KubeServer] = []
    yield start
    for server in servers:
        server.__exit__()


def submit_args(server: KubeServer, *args: str) -> list[str]:
    return ["submit", *args, "--kubeconfig", str(server.kubeconfig), "--poll-interval", "0.01"]


def test_train_creates_the_rendered_chart_and_succeeds(kube):
    double, server = kube(statuses=[{"jobDeploymentStatus": "Initializing"}, RUNNING, SUCCEEDED])
    result = vft(*submit_args(server, "train", str(CONFIG), "--name", "digits"))
    assert result.exit_code == 0, result.output

    created = double.created()
    assert [d["kind"] for d in created] == ["ServiceAccount", "NetworkPolicy", "ConfigMap", "RayJob"]
    assert by_kind(created) == by_kind(rendered("train", "digits"))  # namespace "ml" from the context
    paths = [(r.method, r.path) for r in double.requests]
    assert ("POST", "/api/v1/namespaces/ml/configmaps") in paths
    assert ("POST", "/apis/ray.io/v1/namespaces/ml/rayjobs") in paths
    assert ("GET", "/apis/ray.io/v1/namespaces/ml/rayjobs/digits-train-vft") in paths
    assert all(r.headers.get("authorization") == f"Bearer {server.TOKEN}" for r in double.requests)
    assert double.gets == 3  # watched until Complete
    assert "Complete (job SUCCEEDED)" in result.output


def test_failed_rayjob_exits_non_zero(kube, tmp_path):
    """Run as a real process so that the exit status itself is checked."""
    double, server = kube(statuses=[RUNNING, FAILED])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "trainer.cli",
        *submit_args(server, "train", str(CONFIG), "--namespace", "team-a"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Job entrypoint command failed" in proc.stderr
    job = by_kind(double.created())["RayJob"]
    assert job["metadata"]["namespace"] == "team-a"
    assert job == by_kind(rendered("train", "digits", namespace="team-a"))["RayJob"]


def test_follow_streams_the_driver_logs(kube):
    double, server = kube(
        statuses=[RUNNING, RUNNING, RUNNING, SUCCEEDED], pod_log="epoch   1/6  val/top1 0.91\n"
    )
    result = vft(*submit_args(server, "train", str(CONFIG), "--follow"))
    assert result.exit_code == 0, result.output
    assert "epoch   1/6  val/top1 0.91" in result.output
    log_requests = [r for r in double.requests if r.path.endswith("/log")]
    assert log_requests and "follow=true" in log_requests[0].query
    pods = next(r for r in double.requests if r.path == "/api/v1/namespaces/ml/pods")
    assert "job-name%3Ddigits-train-vft" in pods.query


def test_serve_creates_a_rayservice_and_waits_until_ready(kube):
    initializing = {"conditions": [{"type": "Ready", "status": "False", "reason": "Initializing"}]}
    ready = {"conditions": [{"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints"}]}
    double, server = kube(statuses=[initializing, ready])
    sets = ["--set", "serve.backend=int8", "--set", "podDisruptionBudget.enabled=true"]
    sets += ["--set", "metrics.podMonitor.enabled=true"]
    sets += ["--set", "networkPolicy.metricsFrom[0].podSelector.matchLabels.app=prometheus"]
    result = vft(*submit_args(server, "serve", str(CONFIG), *sets))
    assert result.exit_code == 0, result.output
    created, expected = double.created(), rendered("serve", "digits", extra=sets)
    key = lambda doc: (doc["kind"], doc["metadata"]["name"])  # noqa: E731
    assert sorted(created, key=key) == sorted(expected, key=key)
    assert {d["kind"] for d in created} >= {"PodDisruptionBudget", "PodMonitor"}
    serve_config = yaml.safe_load(by_kind(created)["RayService"]["spec"]["serveConfigV2"])
    args = serve_config["applications"][0]["args"]
    assert (args["run_dir"], args["backend"]) == ("/mnt/vft/runs/digits", "int8")


def test_serve_that_never_gets_ready_fails(kube):
    timeout = {"conditions": [{"type": "Ready", "status": "False", "reason": "InitializingTimeout"}]}
    double, server = kube(statuses=[timeout])
    result = vft(*submit_args(server, "serve", str(CONFIG)))
    assert result.exit_code == 1


def test_an_existing_rayjob_is_reported_and_the_configmap_replaced(kube):
    double, server = kube(existing={("ConfigMap", "digits-train-vft"), ("RayJob", "digits-train-vft")})
    result = vft(*submit_args(server, "train", str(CONFIG)))
    assert result.exit_code == 2
    assert "RayJob ml/digits-train-vft already exists" in result.output
    methods = {(r.method, r.path) for r in double.requests}
    assert ("PUT", "/api/v1/namespaces/ml/configmaps/digits-train-vft") in methods


def test_watch_timeout_exits_1(kube):
    double, server = kube(statuses=[RUNNING])
    result = vft(*submit_args(server, "train", str(CONFIG), "--timeout", "0.2"))
    assert result.exit_code == 1
    assert "--timeout" in result.output


def test_dry_run_prints_the_yaml_and_calls_nothing(kube, tmp_path):
    double, server = kube()
    space = tmp_path / "space.yaml"
    space.write_text(
        "metric: val/top1\nmode: max\nnum_samples: 4\nparams:\n  optim.lr: {loguniform: [1.0e-4, 1.0e-2]}\n"
    )
    result = vft(
        *submit_args(server, "tune", str(CONFIG), "--space", str(space), "--dry-run", "--namespace", "ml")
    )
    assert result.exit_code == 0, result.output
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    expected = by_kind(rendered("tune", "digits", extra=["--set-file", f"tune.spaceFile={space}"]))
    assert by_kind(docs) == expected
    assert yaml.safe_load(expected["ConfigMap"]["data"]["space.yaml"])["max_concurrent_trials"] == 2
    assert double.requests == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", str(CONFIG), "model.nam=resnet18"], "model.nam: unknown key"),
        (["train", str(CONFIG), "optim.lr=-1"], "optim.lr"),
        (["train", "missing.yaml"], "missing.yaml: config file not found"),
        (["tune", str(CONFIG)], "--space"),
        (["train", str(CONFIG), "--space", str(CONFIG)], "--space"),
        (["train", str(CONFIG), "--set", "workers.gpusPerPod=two"], "/workers/gpusPerPod"),
        (["train", str(CONFIG), "--set", "workers.replicas=-1"], "/workers/replicas"),
        (["train", str(CONFIG), "train.epochs=1;reboot"], "override 'train.epochs=1;reboot'"),
        (["train", str(CONFIG), "--name", "a b"], "run.name 'a b'"),
        (["train", str(CONFIG), "--to", "ray"], "--address"),
        (["train", str(CONFIG), "-f", "nope.yaml"], "--values nope.yaml"),
        (["train", str(CONFIG), "--chart", str(ROOT / "k8s")], "is not a Helm chart"),
    ],
)
def test_bad_input_exits_2_naming_the_field(kube, args, message):
    double, server = kube()
    result = vft(*submit_args(server, *args))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert double.requests == []


def test_ray_dry_run_prints_the_same_entrypoint():
    result = CliRunner().invoke(
        app,
        ["submit", "train", str(CONFIG), "--to", "ray", "--address", "http://127.0.0.1:8265", "--dry-run"],
    )
    assert result.exit_code == 0, result.output
    plan = yaml.safe_load(result.stdout)
    job = by_kind(rendered("train", "digits"))["RayJob"]
    assert plan["entrypoint"] == job["spec"]["entrypoint"].replace("/config/config.yaml", "config.yaml")
    assert plan["working_dir"]["config.yaml"].strip() == CONFIG.read_text().strip()


def test_missing_kubeconfig_exits_2(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    result = vft("submit", "train", str(CONFIG), "--kubeconfig", str(tmp_path / "nope"), "--namespace", "ml")
    assert result.exit_code == 2
    assert "--kubeconfig" in result.output


def test_cluster_paths_are_not_checked_here_but_the_rest_of_the_config_is():
    """Data and weights paths name files on the cluster: `vft submit` passes them on unchecked
    and as written; every other config error still exits 2 before anything is rendered."""
    args = ["submit", "train", str(CONFIG), "--to", "ray", "--address", "http://127.0.0.1:8265", "--dry-run"]
    cluster_paths = [
        "data.train=/mnt/data/train",
        "data.val=/mnt/data/val",
        "model.weights=/mnt/w.safetensors",
    ]
    result = vft(*args, *cluster_paths)
    assert result.exit_code == 0, result.output
    assert "data.train=/mnt/data/train" in yaml.safe_load(result.stdout)["entrypoint"]
    result = vft(*args, *cluster_paths, "optim.lr=-1")
    assert result.exit_code == 2 and "optim.lr" in result.output
