"""The Ray Serve app on a real local Ray cluster, over real HTTP on 127.0.0.1: predictions
equal PyTorch's, requests are batched, bad input gets its status and the server keeps serving,
a bounded load test, backpressure (503 + Retry-After), other backends, and `vft serve` /
`vft predict` as a user runs them."""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from hypothesis import given
from local_ray import clean_env, free_ports, metric_total, wait_for_metric
from PIL import Image
from request_bodies import PROPERTY_SETTINGS, check_answer, image_bodies, post_body
from typer.testing import CliRunner

from serving.app import ServeArgs, build_app, build_local_app
from trainer.cli import app
from trainer.components.preprocess import Preprocessing, eval_transform
from trainer.tasks.base import model_from_checkpoint

ROOT = Path(__file__).resolve().parents[2]
BODY_LIMIT = 1 << 20


@pytest.fixture(scope="module")
def server(exported_run, ray_cluster):
    from ray import serve

    run_dir, _ = exported_run
    port = free_ports(1)[0]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {
        "run_dir": str(run_dir),
        "backend": "onnx",
        "max_batch_size": 16,
        "batch_wait_timeout_s": 0.02,
        "max_body_bytes": BODY_LIMIT,
        "max_batch_images": 8,
    }
    serve.run(build_app(args), name="vft", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(scope="module")
def val_images(digits_dir) -> list[Path]:
    return sorted((digits_dir / "val").rglob("*.png"))


def post_image(
    url: str, data: bytes, content_type: str = "image/png", session=None, **kw
) -> requests.Response:
    return (session or requests).post(
        f"{url}/v1/predict", data=data, headers={"content-type": content_type}, timeout=60, **kw
    )


def assert_serving(url: str, image: Path) -> None:
    response = post_image(url, image.read_bytes())
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] == image.parent.name


def torch_reference(run_dir: Path, images: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    model, meta = model_from_checkpoint(run_dir / "best")
    transform = eval_transform(Preprocessing.from_meta(meta["preprocessing"]))
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in images])
    with torch.inference_mode():
        probs = model(batch).softmax(1).numpy()
    return probs.argmax(1), probs.max(1)


def test_served_predictions_equal_the_pytorch_model(server, exported_run, val_images):
    run_dir, _ = exported_run
    images = val_images[::18]
    index, score = torch_reference(run_dir, images)
    for i, path in enumerate(images):
        response = post_image(server, path.read_bytes())
        assert response.status_code == 200, response.text
        top = response.json()["predictions"]
        assert len(top) == 5 and top[0]["score"] >= top[1]["score"]
        assert top[0]["index"] == index[i], path
        assert top[0]["score"] == pytest.approx(float(score[i]), abs=1e-4)
    assert sum(int(path.parent.name == str(i)) for path, i in zip(images, index, strict=True)) >= 0.9 * len(
        images
    )


def test_metadata_health_and_docs(server, exported_run):
    run_dir, _ = exported_run
    meta = json.loads((run_dir / "best" / "meta.json").read_text())
    info = requests.get(f"{server}/v1/model", timeout=10).json()
    assert info["classes"] == meta["classes"] and info["backend"] == "onnx"
    assert info["preprocessing"] == meta["preprocessing"]
    assert "onnxruntime" in info["runtime"]
    assert requests.get(f"{server}/healthz", timeout=10).json() == {"status": "ok"}
    assert requests.get(f"{server}/docs", timeout=10).status_code == 200
    paths = requests.get(f"{server}/openapi.json", timeout=10).json()["paths"]
    assert "/v1/predict" in paths
    batch = paths["/v1/predict/batch"]["post"]["requestBody"]["content"]
    assert set(batch) == {"multipart/form-data", "application/json"}


def test_a_batch_request_answers_every_image_in_order(server, val_images):
    """Multipart and JSON batches: each image's answer equals its single-image answer, a bad image
    gets its own 4xx without failing the others, and the limits refuse the whole request."""
    import base64

    paths = [val_images[0], val_images[-1], val_images[5]]
    singles = [post_image(server, p.read_bytes()).json() for p in paths]
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in paths]
    files.insert(1, ("file", ("bad.png", b"not an image", "image/png")))
    response = requests.post(f"{server}/v1/predict/batch", files=files, timeout=60)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [(r["index"], r["status"]) for r in results] == [(0, 200), (1, 400), (2, 200), (3, 200)]
    assert "error" in results[1]
    for single, result in zip(singles, [results[0], *results[2:]], strict=True):
        assert [p["label"] for p in result["predictions"]] == [p["label"] for p in single["predictions"]]
        assert result["predictions"][0]["score"] == pytest.approx(single["predictions"][0]["score"], abs=1e-5)
    images = [base64.b64encode(p.read_bytes()).decode() for p in paths] + ["%%%"]
    response = requests.post(f"{server}/v1/predict/batch", json={"images": images}, timeout=60)
    assert [r["status"] for r in response.json()["results"]] == [200, 200, 200, 400]
    too_many = requests.post(f"{server}/v1/predict/batch", json={"images": images * 3}, timeout=60)
    assert too_many.status_code == 413 and "12 images exceed the limit of 8" in too_many.json()["error"]
    assert post_image(server, paths[0].read_bytes()).status_code == 200


def test_prometheus_counts_responses_by_status_and_images_per_batch(server, ray_metrics_url, val_images):
    """vft's series, as Ray's metrics agent exports them (what the chart's PodMonitors scrape):
    `vft_responses` by status and the `vft_batch_size` histogram: six requests one after another
    are six batches of one image. (Ray exports a histogram's `_sum` from its buckets, not the
    observed values, so the count and the buckets are what is checked.)"""
    ok, bad = (metric_total(ray_metrics_url, "ray_vft_responses_total", status=s) for s in ("200", "400"))
    ones = metric_total(ray_metrics_url, "ray_vft_batch_size_bucket", le="1.0")
    batches = metric_total(ray_metrics_url, "ray_vft_batch_size_count")
    for path in val_images[:6]:
        assert post_image(server, path.read_bytes()).status_code == 200
    assert post_image(server, b"not an image").status_code == 400
    wait_for_metric(ray_metrics_url, "ray_vft_responses_total", lambda n: n >= ok + 6, status="200")
    wait_for_metric(ray_metrics_url, "ray_vft_responses_total", lambda n: n >= bad + 1, status="400")
    wait_for_metric(ray_metrics_url, "ray_vft_batch_size_count", lambda n: n >= batches + 6)
    assert metric_total(ray_metrics_url, "ray_vft_batch_size_bucket", le="1.0") >= ones + 6


@PROPERTY_SETTINGS
@given(body=image_bodies())
def test_no_image_makes_the_server_answer_5xx(server, body):
    check_answer(post_body(server, body), body, "classification")


def test_multipart_upload_works(server, val_images):
    path = val_images[0]
    response = requests.post(
        f"{server}/v1/predict", files={"file": (path.name, path.read_bytes(), "image/png")}, timeout=30
    )
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] == path.parent.name


def test_concurrent_requests_are_batched(server, val_images):
    before = requests.get(f"{server}/v1/stats", timeout=10).json()["batch_sizes"]
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda p: post_image(server, p.read_bytes()).status_code, val_images[:64]))
    assert codes == [200] * 64
    after = requests.get(f"{server}/v1/stats", timeout=10).json()["batch_sizes"]
    new = {int(k): v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}
    assert sum(size * count for size, count in new.items()) == 64
    assert max(new) > 1, new


# ----------------------------------------------------------------------------- bad input


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (the data is one tiny row)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 3)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def digit(val_images: list[Path]) -> Image.Image:
    return Image.open(val_images[0]).convert("RGB")


def bad_inputs(val_images: list[Path]) -> dict[str, tuple[dict, int]]:
    """name -> (requests.post keyword arguments, expected status)."""
    jpeg = encoded(digit(val_images), "JPEG", quality=95)
    raw = lambda data, kind="image/jpeg": {"data": data, "headers": {"content-type": kind}}  # noqa: E731
    wide = np.asarray(digit(val_images).convert("L"), np.uint16) * 257
    return {
        "truncated jpeg": (raw(jpeg[: len(jpeg) // 2]), 400),
        "non-image bytes": (raw(b"%PDF-1.7 definitely not an image" * 10), 400),
        "empty body": (raw(b""), 400),
        "wrong content type": (raw(jpeg, "text/plain"), 415),
        "json content type": (raw(b'{"image": 1}', "application/json"), 415),
        "50000x50000 png": (raw(png_declaring(50_000, 50_000), "image/png"), 413),
        # 48 MP: over the server's own 40-MP bound, under Pillow's 89-MP one (a 400 without it)
        "8000x6000 png": (raw(png_declaring(8_000, 6_000), "image/png"), 413),
        "over-limit body": (raw(os.urandom(BODY_LIMIT + 1)), 413),
        "over-limit multipart": (
            {"files": {"file": ("big.jpg", os.urandom(BODY_LIMIT + 10), "image/jpeg")}},
            413,
        ),
        "multipart without file": ({"files": {"image": ("a.jpg", jpeg, "image/jpeg")}}, 400),
        "multipart text field": ({"data": {"file": "not a file"}, "files": {"other": ("x", b"x")}}, 400),
        "disallowed format (ICO)": (raw(encoded(digit(val_images), "ICO"), "image/x-icon"), 415),
        "cmyk jpeg": (raw(encoded(digit(val_images).convert("CMYK"), "JPEG")), 200),
        "16-bit png": (raw(encoded(Image.fromarray(wide), "PNG"), "image/png"), 200),
    }


def test_bad_inputs_get_their_status_and_the_server_keeps_serving(server, val_images):
    for name, (kwargs, expected) in bad_inputs(val_images).items():
        response = requests.post(f"{server}/v1/predict", timeout=60, **kwargs)
        assert response.status_code == expected, f"{name}: {response.status_code} {response.text[:300]}"
        if expected == 200:
            assert response.json()["predictions"][0]["label"] == val_images[0].parent.name, name
        else:
            assert response.json()["error"], name
        assert_serving(server, val_images[1])


# ----------------------------------------------------------------------------- load and backpressure


def test_500_requests_from_16_clients_all_succeed(server, val_images):
    bodies = [p.read_bytes() for p in val_images]

    def client(k: int) -> list[int]:
        with requests.Session() as session:
            return [
                post_image(server, bodies[(k * 32 + i) % len(bodies)], session=session).status_code
                for i in range(32)
            ]

    with ThreadPoolExecutor(16) as pool:
        codes = [c for batch in pool.map(client, range(16)) for c in batch]
    assert len(codes) == 512
    assert codes.count(200) == 512, {c: codes.count(c) for c in set(codes)}


def test_a_full_queue_answers_503_and_held_requests_succeed(server, exported_run, val_images):
    from ray import serve

    run_dir, _ = exported_run
    args = ServeArgs(run_dir=str(run_dir), backend="onnx", max_batch_size=8, batch_wait_timeout_s=0.5)
    tiny = {"max_ongoing_requests": 1, "max_queued_requests": 1, "ray_actor_options": {"num_cpus": 0.1}}
    serve.run(build_local_app(args, 1, None, tiny), name="tiny", route_prefix="/tiny")
    try:
        body = val_images[0].read_bytes()
        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(lambda _: post_image(f"{server}/tiny", body), range(12)))
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 503}, codes
        assert codes.count(503) >= 1 and codes.count(200) >= 1, codes
        assert all(r.headers.get("retry-after") == "1" for r in responses if r.status_code == 503)
        assert all(r.json()["predictions"][0]["label"] == "0" for r in responses if r.status_code == 200)
        assert_serving(f"{server}/tiny", val_images[0])
    finally:
        serve.delete("tiny")


@pytest.mark.parametrize("backend", ["int8", "torch"])
def test_other_backends_serve_the_same_answers(server, exported_run, val_images, backend):
    from ray import serve

    run_dir, _ = exported_run
    args = ServeArgs(run_dir=str(run_dir), backend=backend)
    options = {"ray_actor_options": {"num_cpus": 0.1}}
    serve.run(build_local_app(args, 1, None, options), name=backend, route_prefix=f"/{backend}")
    try:
        images = val_images[::36]
        index, _ = torch_reference(run_dir, images)
        served = [
            post_image(f"{server}/{backend}", p.read_bytes()).json()["predictions"][0]["index"]
            for p in images
        ]
        agreement = np.mean(np.array(served) == index)
        assert agreement >= (1.0 if backend == "torch" else 0.9), (served, index)
        info = requests.get(f"{server}/{backend}/v1/model", timeout=10).json()
        assert info["backend"] == backend
    finally:
        serve.delete(backend)


# ----------------------------------------------------------------------------- the commands


def test_vft_serve_answers_vft_predict_and_stops_on_ctrl_c(registered_digits, val_images, tmp_path):
    """The export `vft export` registered, promoted to production and served by its alias (the
    replica downloads it from the session's MLflow server)."""
    promoted = CliRunner().invoke(app, ["promote", "digits", registered_digits.rsplit("/", 1)[1]])
    assert promoted.exit_code == 0, promoted.output
    port = free_ports(1)[0]
    env = clean_env()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trainer.cli",
            "serve",
            "models:/digits@production",
            "--port",
            str(port),
            "--cpus-per-replica",
            "0.5",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while f"127.0.0.1:{port}" not in (tmp_path / "serve.log").read_text():
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "vft serve did not start"
            time.sleep(0.5)
        images = [val_images[0], val_images[-1]]
        predicted = CliRunner().invoke(app, ["predict", f"http://127.0.0.1:{port}", *map(str, images)])
        assert predicted.exit_code == 0, predicted.output
        answers = [json.loads(line) for line in predicted.stdout.splitlines()]
        assert [a["predictions"][0]["label"] for a in answers] == [p.parent.name for p in images]
        assert all(a["status"] == 200 and a["image"] == str(p) for a, p in zip(answers, images, strict=True))
        batched = CliRunner().invoke(
            app, ["predict", f"http://127.0.0.1:{port}", "--batch", "2", *map(str, [*images, images[0]])]
        )
        assert batched.exit_code == 0, batched.output
        lines = [json.loads(line) for line in batched.stdout.splitlines()]
        assert [(a["image"], a["status"]) for a in lines] == [(str(p), 200) for p in [*images, images[0]]]
        assert [a["predictions"] for a in lines[:2]] == [a["predictions"] for a in answers]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, (tmp_path / "serve.log").read_text()
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_vft_predict_reports_unreachable_servers_and_missing_files(tmp_path, val_images):
    cmd = [sys.executable, "-m", "trainer.cli", "predict"]
    down = subprocess.run(
        [*cmd, f"http://127.0.0.1:{free_ports(1)[0]}", str(val_images[0])],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert down.returncode == 1 and "cannot reach" in down.stdout
    missing = CliRunner().invoke(app, ["predict", "http://127.0.0.1:9", str(tmp_path / "nope.png")])
    assert missing.exit_code == 2 and "nope.png" in missing.stderr
