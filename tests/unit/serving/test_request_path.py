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
import torch
from PIL import Image
from starlette.requests import Request

from serving.app import ServeArgs, VftModel, decode_device
from serving.bodies import RequestError, batch_images
from serving.runtime.base import BackendError
from trainer.components.device_decode import read_encoded
from trainer.components.images import open_image
from trainer.tasks.classification.serve import ClassificationHandler
from trainer.tasks.detection.serve import DetectionHandler

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
    model.decode_on = None  # decode threads (Pillow); a test may set a device

    model.arriving = 0
    model.infer = Batched(model, lambda image: model.handler.run(model.backend, [image])[0])
    model.infer_encoded = Batched(
        model, lambda item: model.handler.run_encoded(model.backend, [item], model.decode_on)[0]
    )
    return model


class Batched:
    """Stands in for a `@serve.batch` method: each item is its own batch; records the wait each
    batch was given and how many requests were still arriving when it was."""

    def __init__(self, model, run):
        self.model, self.run, self.waits, self.arriving = model, run, [], []
        self.wait = None

    def set_batch_wait_timeout_s(self, seconds: float) -> None:
        self.wait = seconds

    async def __call__(self, item):
        self.waits.append(self.wait)
        self.arriving.append(self.model.arriving)
        await asyncio.sleep(0.01)  # the batch's run: others may arrive meanwhile
        return self.run(item)


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


def jpeg(size=(40, 24), orientation: int = 1, mode: str = "RGB") -> bytes:
    image = Image.effect_noise(size, 60).convert(mode)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, exif=exif)
    return buffer.getvalue()


class Backend:
    def __init__(self, gpu: bool):
        self.gpu, self.name = gpu, "stand-in"

    def on_gpu(self) -> bool:
        return self.gpu


def test_request_images_decode_on_the_gpu_only_where_the_model_runs_and_the_task_can():
    classify, detect = ClassificationHandler(META, top_k=1), DetectionHandler.__new__(DetectionHandler)
    gpu, cpu = Backend(True), Backend(False)
    assert decode_device("auto", gpu, classify) == torch.device("cuda")
    assert decode_device("gpu", gpu, classify) == torch.device("cuda")
    assert decode_device("auto", cpu, classify) is None
    assert decode_device("auto", gpu, detect) is None  # detection decodes on the decode threads
    assert decode_device("cpu", gpu, classify) is None
    with pytest.raises(BackendError, match="decode: gpu needs the model on a GPU"):
        decode_device("gpu", cpu, classify)
    with pytest.raises(BackendError, match="decode: gpu decodes classification requests only"):
        decode_device("gpu", gpu, detect)


def test_device_decoding_preprocesses_a_batch_exactly_as_the_decode_threads_do():
    """The GPU path run on the CPU device (torchvision's decoder is libjpeg-turbo there, as
    Pillow's is): EXIF-rotated and grey JPEGs, a CMYK JPEG and a PNG (decoded while read), one
    batch; each image's model input equals the one-by-one CPU path's."""
    handler = ClassificationHandler(META, top_k=1)
    bodies = [jpeg(orientation=6), jpeg((30, 50), mode="L"), jpeg(mode="CMYK"), png((33, 21))]
    bodies.append(jpeg(orientation=3))
    pixels = lambda batch: batch.reshape(len(batch), -1)  # noqa: E731 - the backend echoes its input
    items = [read_encoded("request body", source=body) for body in bodies]
    assert [item.jpeg for item in items] == [True, True, False, False, True]
    on_device = handler.run_encoded(pixels, items, torch.device("cpu"))
    for body, got, item in zip(bodies, on_device, items, strict=True):
        image = open_image(body)
        want = handler.run(pixels, [handler.prepare(image)[0]])[0]
        assert np.abs(got - want).max() < 1e-5
        assert item.size == image.size


def test_with_device_decoding_a_bad_image_fails_alone_and_limits_still_hold():
    model = replica(max_pixels=100_000)
    model.decode_on = torch.device("cpu")
    broken = jpeg((64, 48))
    body, content_type = multipart(jpeg(), broken[: len(broken) // 2], png((500, 300)), b"GIF89a....")
    status, out = answer(asyncio.run(model.predict_batch(request(body, content_type, "/v1/predict/batch"))))
    assert status == 200
    assert [r["status"] for r in out["results"]] == [200, 400, 413, 400]
    assert out["results"][0]["predictions"][0]["label"] == "dog"
    assert "request body" in out["results"][1]["error"]
    tiff = io.BytesIO()
    Image.new("RGB", (8, 8)).save(tiff, format="TIFF")
    model.args = ServeArgs(run_dir="unused", allowed_formats=["JPEG", "PNG"])
    status, out = answer(asyncio.run(model.predict(request(tiff.getvalue(), "image/tiff"))))
    assert status == 415 and "TIFF" in out["error"]


def test_a_batch_waits_only_while_other_requests_are_arriving():
    """A lone request's batch starts at once; with others reading or decoding, a batch waits
    up to batch_wait_timeout_s for them."""
    model = replica(batch_wait_timeout_s=0.2)
    assert answer(asyncio.run(model.predict(request(png(), "image/png"))))[0] == 200
    assert model.infer.waits == [0.0] and model.infer.arriving == [0]

    async def burst():
        return await asyncio.gather(*(model.predict(request(png(), "image/png")) for _ in range(6)))

    assert [answer(r)[0] for r in asyncio.run(burst())] == [200] * 6
    waits, arriving = model.infer.waits[1:], model.infer.arriving[1:]
    assert all(w == (0.2 if a else 0.0) for w, a in zip(waits, arriving, strict=True))
    assert 0.2 in waits and waits[-1] == 0.0  # the last of the burst has nobody behind it
    assert model.arriving == 0
