"""The Ray Serve application: one deployment, `VftModel`, with a FastAPI ingress.

`serving.app:build_app` is the import path a RayService (or `serve run`) uses; its args are
`ServeArgs` (run_dir and backend at least). Per request: the body's size and type are checked
before reading it whole, the image's header before decoding it (pixels, format), then the
task's handler prepares the input from the checkpoint's meta.json, `@serve.batch` gathers
concurrent requests into one backend call, and the handler turns each output into the answer:
classification the top-k labels, detection boxes in the image's pixels, segmentation a PNG mask
(base64) at the image's size with per-class pixel fractions. Bad input is answered (400, 413,
415), never raised; a full queue is answered 503 with Retry-After by Serve itself
(`max_queued_requests`).
"""

import asyncio
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.config import BackpressureConfig

DEPLOYMENT_NAME = "VftModel"
RAW_TYPES = ("image/", "application/octet-stream")

api = FastAPI(
    title="vft model server",
    description="Predictions from a model fine-tuned with vft. POST an image to /v1/predict.",
    version="1",
)


class ServeArgs(BaseModel):
    """Application arguments (the `args` of a Serve config, or `vft serve` options)."""

    model_config = ConfigDict(extra="forbid")

    run_dir: str
    backend: Literal["onnx", "int8", "tensorrt", "torch"] = "onnx"
    max_batch_size: int = Field(32, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(0.01, ge=0.0, le=5.0)
    max_body_bytes: int = Field(20 * 2**20, ge=1024)
    max_pixels: int = Field(40_000_000, ge=1)
    allowed_formats: list[str] = ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"]
    top_k: int = Field(5, ge=1)
    score_threshold: float = Field(0.25, ge=0.0, le=1.0, description="detection: least box score returned")
    threads: int | None = Field(None, ge=1, description="intra-op threads of the backend")
    decode_threads: int = Field(4, ge=1, le=64, description="threads decoding and preprocessing images")


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def read_limited(request: Request, limit: int) -> bytes:
    """The raw body, refused (413) past `limit` bytes: from Content-Length when it is sent,
    otherwise while streaming."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body of {declared} bytes exceeds the limit of {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, f"body exceeds the limit of {limit} bytes")
    return bytes(body)


async def image_bytes(request: Request, limit: int) -> bytes:
    """The image from a raw image body or the multipart field `file`."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
            raise RequestError(413, f"body of {declared} bytes exceeds the limit of {limit}")
        form = await request.form(max_files=1, max_fields=8, max_part_size=limit)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise RequestError(400, "multipart body has no file field named 'file'")
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise RequestError(413, f"file exceeds the limit of {limit} bytes")
    elif content_type.startswith(RAW_TYPES):
        data = await read_limited(request, limit)
    else:
        raise RequestError(
            415, f"content type '{content_type or 'none'}': send an image/* body or multipart field 'file'"
        )
    if not data:
        raise RequestError(400, "empty body")
    return data


def classification_answer(scores: np.ndarray, meta: dict, top_k: int) -> dict:
    """Softmax (sigmoid for multilabel) over the logits, top k: label, index, score."""
    if meta["multilabel"]:
        probs = 1.0 / (1.0 + np.exp(-scores))
    else:
        shifted = np.exp(scores - scores.max())
        probs = shifted / shifted.sum()
    order = np.argsort(-probs)[: min(top_k, len(probs))]
    classes = meta["classes"]
    return {"predictions": [{"label": classes[i], "index": int(i), "score": float(probs[i])} for i in order]}


class ClassificationHandler:
    """Eval preprocessing (resize, centre crop, normalise); top-k labels."""

    def __init__(self, meta: dict, args: ServeArgs):
        from trainer.components.preprocess import Preprocessing, eval_transform

        self.meta, self.args = meta, args
        self.transform = eval_transform(Preprocessing.from_meta(meta["preprocessing"]))
        self.size = int(meta["preprocessing"]["input_size"])

    def prepare(self, image) -> tuple[np.ndarray, tuple[int, int]]:
        return self.transform(image).numpy(), image.size

    def run(self, backend, inputs: list[np.ndarray]) -> list:
        return list(backend(np.stack(inputs)))

    def answer(self, output, size: tuple[int, int]) -> dict:
        return classification_answer(output, self.meta, self.args.top_k)

    def health_input(self) -> list[np.ndarray]:
        return [np.zeros((3, self.size, self.size), np.float32)]


class SegmentationHandler(ClassificationHandler):
    """The whole image resized to the model's input size and normalised; the logits resized
    back to the image's size (bilinear), argmax, a PNG of class indices."""

    def __init__(self, meta: dict, args: ServeArgs):
        import torch
        from torchvision.transforms import v2 as T

        super().__init__(meta, args)
        p = meta["preprocessing"]
        resize = T.Resize((self.size, self.size), antialias=True)
        scale = T.ToDtype(torch.float32, scale=True)
        self.transform = T.Compose([T.ToImage(), resize, scale, T.Normalize(p["mean"], p["std"])])

    def answer(self, output: np.ndarray, size: tuple[int, int]) -> dict:
        import base64
        import io

        import torch
        import torch.nn.functional as F
        from PIL import Image

        width, height = size
        logits = torch.from_numpy(output)[None]
        if logits.shape[1] * width * height <= 64_000_000:  # else upsample the labels, not the logits
            mask = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False).argmax(
                1
            )[0]
        else:
            small = logits.argmax(1, keepdim=True).float()
            mask = F.interpolate(small, size=(height, width), mode="nearest")[0, 0].long()
        counts = torch.bincount(mask.flatten(), minlength=len(self.meta["classes"])).tolist()
        png = io.BytesIO()
        Image.fromarray(mask.to(torch.uint8).numpy(), mode="L").save(png, format="PNG")
        return {
            "mask_png": base64.b64encode(png.getvalue()).decode(),
            "width": width,
            "height": height,
            "classes": self.meta["classes"],
            "fractions": {c: n / (width * height) for c, n in zip(self.meta["classes"], counts, strict=True)},
        }


class DetectionHandler:
    """The decoded image as float [0, 1] at its own size (the detector resizes it); boxes come
    back in the image's pixels; those under `score_threshold` are left out."""

    def __init__(self, meta: dict, args: ServeArgs):
        from trainer.tasks.detection.task import detection_eval_transform

        self.meta, self.args = meta, args
        self.transform = detection_eval_transform()

    def prepare(self, image) -> tuple[np.ndarray, tuple[int, int]]:
        return self.transform(image).numpy(), image.size

    def run(self, backend, inputs: list[np.ndarray]) -> list:
        return backend(inputs)

    def answer(self, output, size: tuple[int, int]) -> dict:
        boxes, labels, scores = output
        classes, keep = self.meta["classes"], scores >= self.args.score_threshold
        detections = [
            {
                "label": classes[int(k) - 1],
                "index": int(k) - 1,
                "score": float(s),
                "box": [float(v) for v in b],
            }
            for b, k, s in zip(boxes[keep], labels[keep], scores[keep], strict=True)
        ]
        return {"detections": detections, "width": size[0], "height": size[1]}

    def health_input(self) -> list[np.ndarray]:
        return [np.zeros((3, 64, 64), np.float32)]


def _finite(output) -> bool:
    """A logits array, or a detector's (boxes, labels, scores), holds only finite numbers."""
    return all(np.isfinite(part).all() for part in (output if isinstance(output, tuple) else (output,)))


HANDLERS = {"classification": ClassificationHandler, "segmentation": SegmentationHandler,
            "detection": DetectionHandler}  # fmt: skip


@serve.deployment(
    name=DEPLOYMENT_NAME,
    max_ongoing_requests=64,
    max_queued_requests=256,
    backpressure_config=BackpressureConfig(status_code=503, retry_after_s=1),
    health_check_period_s=10,
    health_check_timeout_s=30,
)
@serve.ingress(api)
class VftModel:
    def __init__(self, args: dict):
        from serving.backends import create_backend, fetch_run_dir, read_run_meta

        self.args = ServeArgs.model_validate(args)
        run_dir = fetch_run_dir(self.args.run_dir)
        self.meta = read_run_meta(run_dir)
        task = self.meta.get("task", "classification")
        self.backend = create_backend(self.args.backend, run_dir, self.args.threads, task)
        self.handler = HANDLERS[task](self.meta, self.args)
        self.infer.set_max_batch_size(self.args.max_batch_size)
        self.infer.set_batch_wait_timeout_s(self.args.batch_wait_timeout_s)
        # decoding runs on its own threads so that it never queues behind a batch's inference
        self.decode_pool = ThreadPoolExecutor(self.args.decode_threads, thread_name_prefix="vft-decode")
        self.infer_pool = ThreadPoolExecutor(1, thread_name_prefix="vft-infer")
        self.batch_sizes: Counter[int] = Counter()
        self.statuses: Counter[int] = Counter()
        self._metrics()

    def _metrics(self) -> None:
        """Prometheus metrics beside Serve's own (exported by Ray's metrics agent)."""
        from ray.serve import metrics

        self.batch_metric = metrics.Histogram(
            "vft_batch_size", "Images per backend call", boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256]
        )
        self.status_metric = metrics.Counter("vft_responses", "Responses by status", tag_keys=("status",))

    def prepare(self, data: bytes) -> tuple[np.ndarray, tuple[int, int]]:
        from trainer.components.images import open_image

        img = open_image(data, self.args.max_pixels, "request body", formats=self.args.allowed_formats)
        return self.handler.prepare(img)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def infer(self, images: list[np.ndarray]) -> list:
        self.batch_sizes[len(images)] += 1
        self.batch_metric.observe(len(images))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.infer_pool, self.handler.run, self.backend, images)

    def _answer(self, status: int, body) -> JSONResponse:
        self.statuses[status] += 1
        self.status_metric.inc(tags={"status": str(status)})
        return body if isinstance(body, JSONResponse) else JSONResponse(body, status_code=status)

    @api.post("/v1/predict", summary="Predict one image (raw image body or multipart field 'file')")
    async def predict(self, request: Request):
        from trainer.errors import BadImageError, ImageTooLargeError, UnsupportedFormatError

        try:
            data = await image_bytes(request, self.args.max_body_bytes)
            image, size = await asyncio.get_running_loop().run_in_executor(
                self.decode_pool, self.prepare, data
            )
        except RequestError as exc:
            return self._answer(exc.status, error_response(exc.status, str(exc)))
        except ImageTooLargeError as exc:
            return self._answer(413, error_response(413, str(exc)))
        except UnsupportedFormatError as exc:
            return self._answer(415, error_response(415, str(exc)))
        except BadImageError as exc:
            return self._answer(400, error_response(400, str(exc)))
        output = await self.infer(image)
        return self._answer(200, self.handler.answer(output, size))

    @api.get("/v1/model", summary="The model's metadata (meta.json) and the serving backend")
    async def model_info(self) -> dict:
        meta = {k: v for k, v in self.meta.items() if k != "metrics"}
        scalars = {k: v for k, v in self.meta.get("metrics", {}).items() if isinstance(v, int | float)}
        return {**meta, "metrics": scalars, "backend": self.args.backend, "runtime": self.backend.name}

    @api.get("/v1/stats", summary="This replica's batch sizes and response statuses")
    async def stats(self) -> dict:
        return {
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
        }

    @api.get("/healthz", summary="Liveness")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    def check_health(self) -> None:
        """Serve's health check: a tiny inference must give finite outputs."""
        out = self.handler.run(self.backend, self.handler.health_input())
        if not all(_finite(o) for o in out):
            raise RuntimeError("health check: the backend returned non-finite outputs")


def build_app(args: dict | ServeArgs):
    """Application builder for `serving.app:build_app` (RayService import_path)."""
    parsed = args if isinstance(args, ServeArgs) else ServeArgs.model_validate(args)
    return VftModel.bind(parsed.model_dump())


def build_local_app(args: ServeArgs, replicas: int | None, autoscaling: dict | None, deployment: dict):
    """`vft serve`: the same deployment with options from the command line."""
    options = dict(deployment)
    if autoscaling:
        options["autoscaling_config"] = autoscaling
    elif replicas:
        options["num_replicas"] = replicas
    return VftModel.options(**options).bind(args.model_dump())
