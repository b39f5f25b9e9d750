"""The replica's request path without a cluster: `VftModel`'s own class (what Serve runs in each
replica) with a real classification handler on a stand-in backend, called with ASGI requests.
The HTTP tests against a running Serve app are in tests/integration/test_serving.py; here the
faults are injected on purpose: a handler that raises where nothing should."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from starlette.requests import Request

from serving.app import ServeArgs, VftModel
from serving.bodies import RequestError, batch_images
from trainer.tasks.classification.serve import ClassificationHandler

META = {
    "classes": ["cat", "dog"],
    "multilabel": False,
    "preprocessing": {
        "input_size": 16, "resize_size": 16, "interpolation": "bilinear",
        "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "crop_pct": 1.0,
    },
}  # fmt: skip


def png(size=(20, 12), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def request(body: bytes, content_type: str, path: str = "/v1/predict") -> Request:
    scope = {
        "type": "http", "method": "POST", "path": path, "query_string": b"",
        "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    sent = {"done": False}

    async def receive() -> dict:
        if sent["done"]:
            return {"type": "http.disconnect"}
        sent["done"] = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


def multipart(*files: bytes) -> tuple[bytes, str]:
    boundary = "vftboundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{i}.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for i, data in enumerate(files)
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class Metric:
    def inc(self, tags=None):
        pass

    def observe(self, value):
        pass


class FailingOnce(ClassificationHandler):
    """The real handler, whose first `prepare` hits a bug."""

    failed = False

    def prepare(self, image):
        if not self.failed:
            FailingOnce.failed = True
            raise RuntimeError("an unexpected bug")
        return super().prepare(image)


def replica(handler_class=ClassificationHandler, **args):
    """VftModel's own class (under Serve's ASGI wrapper), with a backend that scores class 1
    highest. Outside a replica `@serve.batch` cannot run: each image is its own batch."""
    cls = VftModel.func_or_class.__bases__[0]
    model = cls.__new__(cls)
    model.args = ServeArgs(run_dir="unused", **args)
    model.meta = META
    model.handler = handler_class(META, top_k=2)
    model.backend = lambda batch: np.tile(np.array([[0.0, 3.0]], np.float32), (len(batch), 1))
    model.decode_pool = ThreadPoolExecutor(2)
    model.infer_pool = ThreadPoolExecutor(1)
    model.batch_sizes, model.statuses = Counter(), Counter()
    model.batch_metric = model.status_metric = Metric()

    async def infer(image):
        return model.handler.run(model.backend, [image])[0]

    model.infer = infer
    return model


def answer(response) -> tuple[int, dict]:
    return response.status_code, json.loads(response.body)


def test_an_unexpected_error_is_a_500_with_a_request_id_logged_once_and_the_replica_serves_on(caplog):
    FailingOnce.failed = False
    model = replica(FailingOnce)

    async def two_requests():
        first = await model.predict(request(png(), "image/png"))
        second = await model.predict(request(png(), "image/png"))
        return answer(first), answer(second)

    with caplog.at_level(logging.ERROR, logger="ray.serve"):
        (status, body), (status2, body2) = asyncio.run(two_requests())
    assert status == 500 and body["request_id"] and "request_id" in body["error"]
    failures = [r for r in caplog.records if r.exc_info]
    assert len(failures) == 1 and body["request_id"] in failures[0].getMessage()
    assert "an unexpected bug" in str(failures[0].exc_info[1])
    assert status2 == 200 and body2["predictions"][0]["label"] == "dog"
    assert model.statuses == Counter({500: 1, 200: 1})


def test_a_batch_answers_each_image_in_order_and_a_bad_one_fails_alone():
    model = replica()
    body, content_type = multipart(png(), b"not an image", png((4000, 3)), b"")
    status, out = answer(asyncio.run(model.predict_batch(request(body, content_type, "/v1/predict/batch"))))
    assert status == 200
    results = out["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3]
    assert [r["status"] for r in results] == [200, 400, 200, 400]
    assert results[0]["predictions"][0]["label"] == "dog" and results[2]["predictions"][0]["score"] > 0.9
    assert "error" in results[1] and "empty" in results[3]["error"]


def test_a_json_batch_decodes_base64_and_refuses_what_is_not():
    model = replica(max_body_bytes=2048)
    images = [base64.b64encode(png()).decode(), "***", 7, base64.b64encode(b"x" * 4096).decode()]
    body = json.dumps({"images": images}).encode()
    response = asyncio.run(model.predict_batch(request(body, "application/json", "/v1/predict/batch")))
    status, out = answer(response)
    assert status == 200
    assert [r["status"] for r in out["results"]] == [200, 400, 400, 413]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (json.dumps({"images": ["a"] * 9}).encode(), "application/json", 413, "9 images exceed the limit"),
        (json.dumps({"images": []}).encode(), "application/json", 400, "no images"),
        (json.dumps(["a"]).encode(), "application/json", 400, '{"images"'),
        (b"{not json", "application/json", 400, "not JSON"),
        (png(), "image/png", 415, "content type 'image/png'"),
        (b"x" * 5000, "application/json", 413, "exceeds the limit of 4096"),
    ],
)
def test_a_batch_request_is_refused_whole_with_the_reason(body, content_type, status, message):
    with pytest.raises(RequestError) as caught:
        asyncio.run(batch_images(request(body, content_type, "/v1/predict/batch"), 8, 2048, 4096))
    assert caught.value.status == status and message in str(caught.value)


def test_too_many_multipart_files_are_refused():
    body, content_type = multipart(*[png()] * 3)
    with pytest.raises(RequestError) as caught:
        asyncio.run(batch_images(request(body, content_type), 2, 10**6, 10**7))
    assert caught.value.status == 413
