"""The Ray Serve application: one deployment, `VftModel`, with a FastAPI ingress.

`serving.app:build_app` is the import path a RayService (or `serve run`) uses; its args are
`ServeArgs` (run_dir and backend at least). Per request: the body's size and type are checked
before reading it whole, the image's header before decoding it (pixels, format), then the
task's handler (`Task.serve_handler`) prepares the input from the checkpoint's meta.json,
`@serve.batch` gathers concurrent requests into one backend call, and the handler turns each
output into the answer: classification the top-k labels, detection boxes in the image's pixels,
segmentation a PNG mask (base64) at the image's size with per-class pixel fractions, instance
segmentation one COCO RLE mask, box and score per object.
`/v1/predict/batch` runs each of several images the same way (they meet in `@serve.batch`) and
answers them in order, each with its own status. Bad input is answered (400, 413, 415), never
raised; anything unexpected is a 500 carrying the request's id (its traceback logged once) and
the replica goes on serving; a full queue is answered 503 with Retry-After by Serve itself
(`max_queued_requests`). With the model on a GPU (`decode: auto | gpu`), a classifier's
request JPEGs are only read and header-checked on the decode threads; `@serve.batch` gathers
them and they are decoded and preprocessed together on the GPU, as `data.decode: gpu` does in
training.
"""

import asyncio
import logging
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import metrics as serve_metrics
from ray.serve.config import BackpressureConfig
from ray.serve.context import _get_serve_request_context  # how Serve's logging docs read the id

from serving.bodies import BATCH_BODY, RequestError, batch_images, image_bytes
from serving.runtime.base import Backend, BackendError
from serving.runtime.registry import backend_names, create_backend
from serving.runtime.rundir import fetch_run_dir, read_run_meta
from trainer.components.device_decode import Encoded, read_encoded
from trainer.components.images import open_image
from trainer.errors import BadImageError, ImageTooLargeError, UnsupportedFormatError
from trainer.tasks.base import task_of

DEPLOYMENT_NAME = "VftModel"
logger = logging.getLogger("ray.serve")
BackendName = Literal[tuple(backend_names())]  # the runtime registry's names

api = FastAPI(
    title="vft model server",
    description="Predictions from a model fine-tuned with vft. POST an image to /v1/predict.",
    version="1",
)


class ServeArgs(BaseModel):
    """Application arguments (the `args` of a Serve config, or `vft serve` options)."""

    model_config = ConfigDict(extra="forbid")

    run_dir: str = Field(description="run directory, its s3:// or gs:// URI, or models:/<name>@<alias>")
    tracking_uri: str | None = Field(
        None, description="MLflow registry of a models:/ URI (default $MLFLOW_TRACKING_URI)"
    )
    backend: BackendName = "onnx"
    max_batch_size: int = Field(32, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(
        0.1, ge=0.0, le=5.0, description="longest a batch waits for requests already being read or decoded"
    )
    max_body_bytes: int = Field(20 * 2**20, ge=1024, description="largest image (a single request's body)")
    max_batch_images: int = Field(64, ge=1, le=1024, description="most images per batch request")
    max_batch_bytes: int = Field(100 * 2**20, ge=1024, description="largest /v1/predict/batch body")
    max_pixels: int = Field(40_000_000, ge=1)
    allowed_formats: list[str] = ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"]
    top_k: int = Field(5, ge=1)
    score_threshold: float = Field(0.25, ge=0.0, le=1.0, description="boxes, objects: least score")
    threads: int | None = Field(None, ge=1, description="intra-op threads of the backend")
    decode_threads: int = Field(4, ge=1, le=64, description="threads decoding and preprocessing images")
    decode: Literal["auto", "cpu", "gpu"] = Field(
        "auto",
        description="where request images are decoded: gpu (in batches, nvJPEG) needs the model on a GPU; "
        "auto = gpu there for a classifier, else cpu",
    )


BAD_IMAGE_STATUS = {ImageTooLargeError: 413, UnsupportedFormatError: 415}  # other BadImageErrors: 400


def decode_device(mode: str, backend: Backend, handler) -> torch.device | None:
    """The GPU that decodes request images in batches, or None for the decode threads (Pillow)."""
    supported = hasattr(handler, "run_encoded")  # the task's handler preprocesses on a device
    if mode == "cpu" or (mode == "auto" and not (supported and backend.on_gpu())):
        return None
    if not backend.on_gpu():
        raise BackendError(f"decode: gpu needs the model on a GPU; {backend.name} runs on the CPU")
    if not supported:
        raise BackendError("decode: gpu decodes classification requests only; use decode: cpu or auto")
    return torch.device("cuda")


def request_id() -> str:
    """The id Ray Serve gave this request (its proxy returns it as `x-request-id`)."""
    return _get_serve_request_context().request_id or uuid.uuid4().hex


def internal_error() -> tuple[int, dict]:
    """A 500 for what should not happen, logged once with its traceback (call in an except block)."""
    rid = request_id()
    logger.exception("vft: request %s failed", rid)
    return 500, {"error": "internal error: the server logged it under this request_id", "request_id": rid}


def _finite(output) -> bool:
    """A logits array, or a detector's (boxes, labels, scores), holds only finite numbers."""
    return all(np.isfinite(part).all() for part in (output if isinstance(output, tuple) else (output,)))


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
        self.args = ServeArgs.model_validate(args)
        run_dir = fetch_run_dir(self.args.run_dir, self.args.tracking_uri)
        self.meta = read_run_meta(run_dir)
        self.backend = create_backend(self.args.backend, run_dir, self.args.threads)
        self.handler = task_of(self.meta).serve_handler(self.meta, self.args.top_k, self.args.score_threshold)
        self.decode_on = decode_device(self.args.decode, self.backend, self.handler)
        for batched in (self.infer, self.infer_encoded):
            batched.set_max_batch_size(self.args.max_batch_size)
            batched.set_batch_wait_timeout_s(self.args.batch_wait_timeout_s)
        # decoding runs on its own threads so that it never queues behind a batch's inference
        self.decode_pool = ThreadPoolExecutor(self.args.decode_threads, thread_name_prefix="vft-decode")
        self.infer_pool = ThreadPoolExecutor(1, thread_name_prefix="vft-infer")
        self.arriving = 0  # requests reading their body or being decoded: soon in a batch
        self.batch_sizes: Counter[int] = Counter()
        self.statuses: Counter[int] = Counter()
        self._metrics()

    def _metrics(self) -> None:
        """Prometheus metrics beside Serve's own (exported by Ray's metrics agent)."""
        self.batch_metric = serve_metrics.Histogram(
            "vft_batch_size", "Images per backend call", boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256]
        )
        self.status_metric = serve_metrics.Counter(
            "vft_responses", "Responses by status", tag_keys=("status",)
        )

    def prepare(self, data: bytes) -> tuple[np.ndarray, tuple[int, int]]:
        img = open_image(data, self.args.max_pixels, "request body", formats=self.args.allowed_formats)
        return self.handler.prepare(img)

    def read(self, data: bytes) -> Encoded:
        """Device decoding: the header checks, and the bytes (decoded here only when not a JPEG)."""
        return read_encoded("request body", self.args.max_pixels, data, self.args.allowed_formats)

    async def _run_batch(self, size: int, run, *args) -> list:
        """One backend call on the inference thread, counted by its number of images."""
        self.batch_sizes[size] += 1
        self.batch_metric.observe(size)
        return await asyncio.get_running_loop().run_in_executor(self.infer_pool, run, self.backend, *args)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def infer(self, images: list[np.ndarray]) -> list:
        return await self._run_batch(len(images), self.handler.run, images)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def infer_encoded(self, items: list[Encoded]) -> list:
        return await self._run_batch(len(items), self.handler.run_encoded, items, self.decode_on)

    async def _decoded(self, decode, data: bytes):
        """`decode(data)` on a decode thread, counted as arriving until it is done."""
        self.arriving += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.decode_pool, decode, data)
        finally:
            self.arriving -= 1

    async def _batched(self, batched, item):
        """`item` into `batched`'s next batch. That batch waits up to `batch_wait_timeout_s` only
        while other requests are arriving (reading their body or being decoded: they reach the
        queue within milliseconds); with none on the way it runs at once, so a lone request
        never waits for company that is not coming (Serve reads the wait when a batch starts)."""
        batched.set_batch_wait_timeout_s(self.args.batch_wait_timeout_s if self.arriving else 0.0)
        return await batched(item)

    def _answer(self, status: int, body: dict) -> JSONResponse:
        self.statuses[status] += 1
        self.status_metric.inc(tags={"status": str(status)})
        return JSONResponse(body, status_code=status)

    async def _predict_one(self, data: bytes | RequestError) -> tuple[int, dict]:
        """One image's (status, answer). Bad input is a 4xx naming the problem; anything else
        that goes wrong is a 500 with the request's id, its traceback logged once."""
        try:
            if isinstance(data, RequestError):
                raise data
            if self.decode_on is not None:
                item = await self._decoded(self.read, data)
                output, size = await self._batched(self.infer_encoded, item), item.size
                if isinstance(output, BadImageError):
                    raise output
            else:
                image, size = await self._decoded(self.prepare, data)
                output = await self._batched(self.infer, image)
            return 200, self.handler.answer(output, size)
        except RequestError as exc:
            return exc.status, {"error": str(exc)}
        except BadImageError as exc:
            return BAD_IMAGE_STATUS.get(type(exc), 400), {"error": str(exc)}
        except Exception:  # noqa: BLE001 - answered, so the replica keeps serving
            return internal_error()

    @api.post("/v1/predict", summary="Predict one image (raw image body or multipart field 'file')")
    async def predict(self, request: Request):
        self.arriving += 1
        try:
            data = await image_bytes(request, self.args.max_body_bytes)
        except RequestError as exc:
            return self._answer(exc.status, {"error": str(exc)})
        except Exception:  # noqa: BLE001 - e.g. the client went away mid-body
            return self._answer(*internal_error())
        finally:
            self.arriving -= 1
        return self._answer(*await self._predict_one(data))

    @api.post(
        "/v1/predict/batch",
        summary="Predict several images: multipart fields 'file', or JSON {\"images\": [base64, ...]}",
        description='Answers `{"results": [...]}` in the images\' order, each with its `index` and '
        "`status`: the single-image answer when 200, otherwise `error`. One bad image does not "
        "fail the others. Limits: `max_batch_images` per request, `max_batch_bytes` per body, "
        "`max_body_bytes` per image (413).",
        openapi_extra=BATCH_BODY,
    )
    async def predict_batch(self, request: Request):
        a = self.args
        try:
            items = await batch_images(request, a.max_batch_images, a.max_body_bytes, a.max_batch_bytes)
        except RequestError as exc:
            return self._answer(exc.status, {"error": str(exc)})
        except Exception:  # noqa: BLE001
            return self._answer(*internal_error())
        answers = await asyncio.gather(*(self._predict_one(item) for item in items))
        results = [{"index": i, "status": status, **body} for i, (status, body) in enumerate(answers)]
        return self._answer(200, {"results": results})

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
