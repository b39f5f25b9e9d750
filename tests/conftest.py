"""Shared fixtures: one local Ray cluster for the whole session (real Ray, oversubscribed
logical CPUs so 2-worker runs fit on a 2-core machine), generated datasets, and the trained runs
(digits, segmentation, detection) the integration tests share.

Every test outside tests/unit/ (that is, tests/integration/) is marked `integration`, so
`make test-fast` (`pytest -m "not integration"`) runs tests/unit/ alone; a test under tests/unit/
that asks for the Ray cluster, directly or through a trained run, fails collection, and one that
calls `ray.init` fails."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "tests" / "unit"
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
# Nothing is downloaded: the Hugging Face hub and datasets caches are this session's own folders,
# which the tests fill (tests/hf_tools.py), and a miss is an error, not a download. Set before
# anything imports huggingface_hub (which reads them once); the Ray cluster's workers inherit them.
_HF_HOME = Path(tempfile.mkdtemp(prefix="vft-tests-hf-"))
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_HOME=str(_HF_HOME),
    HF_HUB_CACHE=str(_HF_HOME / "hub"),
    HF_DATASETS_CACHE=str(_HF_HOME / "datasets"),
    HF_HUB_DISABLE_PROGRESS_BARS="1",
    HF_DATASETS_DISABLE_PROGRESS_BARS="1",
)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    misplaced = []
    for item in items:
        if not Path(item.path).is_relative_to(UNIT):
            # tests/integration/, and any test file not yet sorted into unit/ or integration/:
            # `make test-fast` runs tests/unit/ only
            item.add_marker(pytest.mark.integration)
        elif "ray_cluster" in item.fixturenames:
            misplaced.append(item.nodeid)
    if misplaced:
        raise pytest.UsageError(
            "tests under tests/unit/ must not start Ray (they use the ray_cluster fixture, directly or "
            "through a trained run); move them to tests/integration/:\n  " + "\n  ".join(misplaced)
        )


@pytest.fixture(autouse=True)
def _no_ray_in_unit_tests(request, monkeypatch):
    """Under tests/unit/, `ray.init` fails the test at once: a stub that no longer intercepts (a
    monkeypatched name the code stopped looking up) must not start a cluster and run a sweep."""
    if not Path(request.node.path).is_relative_to(UNIT):
        return
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("a unit test started Ray: move it to tests/integration/ or stub the call")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture(scope="session")
def ray_metrics_url() -> str:
    """Where the session cluster's metrics agent serves Prometheus text (what the chart's
    PodMonitors scrape on a pod), reporting every second instead of every ten."""
    from local_ray import free_ports

    return f"http://127.0.0.1:{free_ports(1)[0]}/metrics"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server for the session; MLFLOW_TRACKING_URI names it, so every run
    of the integration tests (in this process, the cluster's and subprocesses) is tracked there,
    as on a cluster whose chart sets tracking.uri."""
    from tracking_tools import start_mlflow_server

    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow"))
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = server.url
    yield server
    server.stop()
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture(scope="session")
def ray_cluster(ray_metrics_url, mlflow_server):
    import ray

    from trainer.driver import init_ray

    port = int(ray_metrics_url.rsplit(":", 1)[1].split("/")[0])
    # the embedded default's own local cluster, oversubscribed; its processes inherit
    # MLFLOW_TRACKING_URI (Tune trials track their runs from them)
    init_ray(num_cpus=4, _metrics_export_port=port, _system_config={"metrics_report_interval_ms": 1000})
    mlflow_server.wait_ready()  # started meanwhile
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    from trainer.components.synthetic import digits

    out = tmp_path_factory.mktemp("digits")
    digits(out, size=32)
    return out


@pytest.fixture(scope="module")
def small_coco(tmp_path_factory) -> Path:
    """A tiny COCO detection set (12 train, 4 val images of 48 px): read by the unit tests, damaged
    (in copies) by the `vft train` ones."""
    from trainer.tasks.detection.shapes import shapes_detection

    data = tmp_path_factory.mktemp("det_small")
    shapes_detection(data, n_train=12, n_val=4, size=48, seed=3)
    return data


@pytest.fixture(scope="session")
def digits_run(ray_cluster, digits_dir, tmp_path_factory) -> Path:
    """configs/digits.yaml trained once (2 DDP workers, 6 epochs): shared by the training,
    export and serving tests. Tests may add to it (export/) but never change best/."""
    from typer.testing import CliRunner

    from trainer.cli import app

    storage = tmp_path_factory.mktemp("runs")
    args = [
        "train", str(ROOT / "configs/digits.yaml"), f"data.train={digits_dir}/train",
        f"data.val={digits_dir}/val", f"run.storage={storage}", "--name", "digits", "--quiet",
        "track.backend=[mlflow,tensorboard]",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return storage / "digits"


@pytest.fixture(scope="session")
def exported_run(digits_run) -> tuple[Path, dict]:
    """`vft export --format onnx,int8 --check` of the digits run: (run dir, report)."""
    import json

    from typer.testing import CliRunner

    from trainer.cli import app

    result = CliRunner().invoke(app, ["export", str(digits_run), "--format", "onnx,int8", "--check"])
    assert result.exit_code == 0, result.output
    return digits_run, json.loads((digits_run / "export" / "report.json").read_text())


@pytest.fixture(scope="session")
def registered_digits(exported_run) -> str:
    """The version `vft export` registered for the digits run (the first export of it)."""
    from tracking_tools import tracked_run

    run_dir, _ = exported_run
    client, run = tracked_run(run_dir)
    versions = client.search_model_versions("name = 'digits'")
    mine = sorted(int(v.version) for v in versions if v.run_id == run.info.run_id)
    assert mine, [v.run_id for v in versions]
    return f"models:/digits/{mine[0]}"


def _vft(*args):
    from typer.testing import CliRunner

    from trainer.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="session")
def seg_run(ray_cluster, tmp_path_factory) -> Path:
    """configs/shapes_segmentation.yaml trained once on generated shapes (2 DDP workers, 7
    epochs of the config's 12: enough to pass the mIoU threshold, not to converge)."""
    from trainer.tasks.segmentation.shapes import shapes_segmentation

    data = tmp_path_factory.mktemp("shapes_seg")
    shapes_segmentation(data, n_train=400, n_val=80, size=64, seed=1)
    storage = tmp_path_factory.mktemp("runs")
    result = _vft(
        "train", ROOT / "configs/shapes_segmentation.yaml", f"data.train={data}/train",
        f"data.val={data}/val", f"run.storage={storage}", "train.epochs=7", "--quiet", "--name", "seg",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return storage / "seg"


@pytest.fixture(scope="session")
def det_run(ray_cluster, tmp_path_factory) -> Path:
    """configs/shapes_detection.yaml trained once (2 DDP workers, 4 epochs of the config's 12:
    above the mAP50 threshold, not converged) on shapes written by `vft data shapes --task
    detection` (COCO JSON)."""
    data = tmp_path_factory.mktemp("shapes_det")
    result = _vft(
        "data", "shapes", "--task", "detection", "--out", data, "--n-train", 240, "--n-val", 60, "--seed", 1
    )
    assert result.exit_code == 0, result.output
    storage = tmp_path_factory.mktemp("runs")
    result = _vft(
        "train", ROOT / "configs/shapes_detection.yaml", f"data.train={data}/train",
        f"data.val={data}/val", f"run.storage={storage}", "--quiet", "train.epochs=4", "--name", "det",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return storage / "det"
