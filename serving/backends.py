"""Inference backends by registered name, each built from a run directory: `torch` (the
checkpoint itself), `onnx` and `int8` (ONNX Runtime over RUN_DIR/export/model.onnx and
model.int8.onnx) and `tensorrt` (an engine from RUN_DIR/export/tensorrt/ built for this GPU
and TensorRT version). For classification and segmentation a backend maps a float32 NCHW
batch, already preprocessed with the checkpoint's meta.json, to float32 logits (N, C) or
(N, C, H, W). Detection backends (`torch`, `onnx`) map a list of (3, H, W) float images in
[0, 1], any sizes, to one (boxes, labels, scores) per image, boxes in the image's pixels."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from trainer.components import checkpoint as ckpt
from trainer.registry import Registry

BACKENDS = Registry("backend", __name__)
DETECTION_BACKENDS = Registry("detection backend", __name__)
EXPORT_DIR = "export"
ONNX_FILE, INT8_FILE, PLAN_FILE = "model.onnx", "model.int8.onnx", "model.plan"
INPUT_NAME, OUTPUT_NAME = "input", "logits"
DETECTION_INPUT, DETECTION_OUTPUTS = "image", ("boxes", "labels", "scores")


class BackendError(RuntimeError):
    """A backend that cannot be built here (missing export, missing runtime or GPU)."""


def export_path(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir, EXPORT_DIR, name)


def checkpoint_dir(run_dir: str | Path) -> Path:
    """RUN_DIR/best, or a checkpoint folder given directly."""
    run_dir = Path(run_dir)
    best = run_dir / "best"
    if (best / ckpt.META_FILE).is_file():
        return best
    if (run_dir / ckpt.META_FILE).is_file():
        return run_dir
    raise BackendError(f"{run_dir}: no best/meta.json (is it a run directory of `vft train`?)")


SERVED_TASKS = ("classification", "segmentation", "detection")


def read_run_meta(
    run_dir: str | Path, tasks: tuple[str, ...] = SERVED_TASKS, what: str = "export and serving"
) -> dict:
    meta = ckpt.read_meta(checkpoint_dir(run_dir))
    if meta.get("task", "classification") not in tasks:
        raise BackendError(f"{run_dir}: a {meta['task']} run; {what} cover {', '.join(tasks)}")
    return meta


def fetch_run_dir(uri: str) -> Path:
    """A run directory as a local path. From object storage (s3://, gs://) best/ (without the
    resume state) and export/ are copied to a temporary folder that lives with the process."""
    if not ckpt.is_remote(uri):
        return Path(uri)
    import pyarrow.fs as pafs

    local = Path(tempfile.mkdtemp(prefix="vft-serve-"))
    fs, root = pafs.FileSystem.from_uri(uri)
    for sub in ("best", EXPORT_DIR):
        selector = pafs.FileSelector(f"{root}/{sub}", allow_not_found=True, recursive=True)
        for info in fs.get_file_info(selector):
            if info.type != pafs.FileType.File or info.base_name == ckpt.STATE_FILE:
                continue
            dest = local / sub / info.path[len(root) + len(sub) + 2 :]
            dest.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(info.path) as src:
                dest.write_bytes(src.read())
    return local


BACKEND_FILES = {"onnx": ONNX_FILE, "int8": INT8_FILE}


def check_servable(run_dir: str | Path, backend: str) -> None:
    """Fail before any cluster starts: a checkpoint, the backend's export, its runtime."""
    if ckpt.is_remote(str(run_dir)):
        return
    meta = read_run_meta(run_dir)
    try:
        backends_for(meta["task"]).get(backend)
    except KeyError as exc:  # e.g. int8 for a detector
        raise BackendError(f"--backend: {exc.args[0]}") from None
    name = BACKEND_FILES.get(backend)
    if name and not export_path(run_dir, name).is_file():
        raise BackendError(f"{export_path(run_dir, name)}: not found; run `vft export {run_dir}` first")
    if backend == "tensorrt" and (reason := tensorrt_unavailable()):
        raise BackendError(f"tensorrt backend: {reason}")


def backends_for(task: str) -> Registry:
    return DETECTION_BACKENDS if task == "detection" else BACKENDS


def create_backend(name: str, run_dir: str | Path, threads: int | None = None, task: str = "classification"):
    return backends_for(task).get(name)(Path(run_dir), threads)


# ----------------------------------------------------------------------------- torch


@BACKENDS.register("torch")
class TorchBackend:
    """The checkpoint in PyTorch: bf16 autocast and channels_last on a GPU, fp32 on CPU."""

    def __init__(self, run_dir: Path, threads: int | None = None):
        import torch

        from trainer.tasks.base import model_from_checkpoint

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model, _ = model_from_checkpoint(checkpoint_dir(run_dir))
        self.format = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.format)
        self.name = f"torch ({self.device.type}{', bf16' if self.device.type == 'cuda' else ''})"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch, gpu = self.torch, self.device.type == "cuda"
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=gpu):
            # to the device first, then channels_last there (a CPU-side permute costs more)
            x = torch.from_numpy(batch).to(self.device).contiguous(memory_format=self.format)
            out = self.model(x)
            out = out["out"] if isinstance(out, dict) else out  # torchvision segmenters
            return out.float().cpu().numpy()


# ----------------------------------------------------------------------------- ONNX Runtime


def onnx_session(path: Path, threads: int | None = None, cpu_only: bool = False):
    import onnxruntime as ort

    if not path.is_file():
        raise BackendError(f"{path}: not found; run `vft export {path.parent.parent}` first")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    # no busy-waiting between runs: a replica shares its CPUs with decoding and HTTP
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider",) if p in available and not cpu_only]
    return ort.InferenceSession(str(path), options, providers=[*providers, "CPUExecutionProvider"])


class OnnxBackend:
    file = ONNX_FILE
    cpu_only = False

    def __init__(self, run_dir: Path, threads: int | None = None):
        self.session = onnx_session(export_path(run_dir, self.file), threads, self.cpu_only)
        self.name = f"onnxruntime ({self.session.get_providers()[0]}, {self.file})"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(batch, np.float32)})[0]


BACKENDS.register("onnx")(OnnxBackend)


@BACKENDS.register("int8")
class Int8Backend(OnnxBackend):
    """The statically quantized (QDQ) model; its integer kernels are ONNX Runtime's CPU ones."""

    file = INT8_FILE
    cpu_only = True


# ----------------------------------------------------------------------------- detection


@DETECTION_BACKENDS.register("torch")
class DetectionTorchBackend(TorchBackend):
    """The detector in PyTorch; a list of images is one call (the model batches them)."""

    def __call__(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        torch, gpu = self.torch, self.device.type == "cuda"
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=gpu):
            outputs = self.model([torch.from_numpy(image).to(self.device) for image in images])
        numpy = [{k: v.float().cpu().numpy() for k, v in o.items()} for o in outputs]
        return [(o["boxes"], o["labels"].astype(np.int64), o["scores"]) for o in numpy]


@DETECTION_BACKENDS.register("onnx")
class DetectionOnnxBackend:
    """RUN_DIR/export/model.onnx (one image of any size per run) in ONNX Runtime."""

    def __init__(self, run_dir: Path, threads: int | None = None):
        self.session = onnx_session(export_path(run_dir, ONNX_FILE), threads)
        self.name = f"onnxruntime ({self.session.get_providers()[0]}, {ONNX_FILE})"

    def __call__(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        run = self.session.run
        return [tuple(run(list(DETECTION_OUTPUTS), {DETECTION_INPUT: np.ascontiguousarray(x, np.float32)}))
                for x in images]  # fmt: skip


# ----------------------------------------------------------------------------- TensorRT


def tensorrt_unavailable() -> str | None:
    """Why a TensorRT engine cannot be built or run here, or None when it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the `tensorrt` package is not installed (pip install 'vft[gpu]' on a CUDA machine)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return None


def engine_key(precision: str, min_batch: int, opt_batch: int, max_batch: int) -> str:
    """Engines only run on the GPU model and TensorRT version that built them: both are in the
    cache key, with the precision and the batch profile."""
    import tensorrt as trt
    import torch

    gpu = torch.cuda.get_device_name().replace(" ", "_").replace("/", "_")
    return f"{gpu}-trt{trt.__version__}-{precision}-b{min_batch}-{opt_batch}-{max_batch}"


def engine_cache(run_dir: Path) -> Path:
    return export_path(run_dir, "tensorrt")


@BACKENDS.register("tensorrt")
class TensorRTBackend:
    """Runs the engine in RUN_DIR/export/model.plan when its key (GPU, TensorRT version) matches
    this machine; otherwise any cached engine built here."""

    def __init__(self, run_dir: Path, threads: int | None = None):
        reason = tensorrt_unavailable()
        if reason:
            raise BackendError(f"tensorrt backend: {reason}")
        import tensorrt as trt
        import torch

        plan = self._find_engine(run_dir)
        self.torch = torch
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise BackendError(f"{plan}: TensorRT could not load the engine")
        self.context = self.engine.create_execution_context()
        self.name = f"tensorrt ({plan.name})"

    @staticmethod
    def _find_engine(run_dir: Path) -> Path:
        import tensorrt as trt
        import torch

        info = export_path(run_dir, PLAN_FILE + ".json")
        gpu = torch.cuda.get_device_name()
        if info.is_file():
            built = json.loads(info.read_text())
            if built.get("gpu") == gpu and built.get("tensorrt") == trt.__version__:
                return export_path(run_dir, PLAN_FILE)
        prefix = f"{gpu.replace(' ', '_').replace('/', '_')}-trt{trt.__version__}-"
        cached = sorted(engine_cache(run_dir).glob(f"{prefix}*.plan"), key=os.path.getmtime)
        if cached:
            return cached[-1]
        raise BackendError(
            f"{run_dir}: no TensorRT engine for {gpu} with TensorRT {trt.__version__}; "
            f"run `vft export {run_dir} --format tensorrt` on this machine"
        )

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).cuda()
        self.context.set_input_shape(INPUT_NAME, tuple(x.shape))
        out = torch.empty(tuple(self.context.get_tensor_shape(OUTPUT_NAME)), device="cuda")
        self.context.set_tensor_address(INPUT_NAME, x.data_ptr())
        self.context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return out.cpu().numpy()
