"""Inference and serving benchmark: vft's runtimes against plain PyTorch, measured in one run.

CPU (default):
  * ONNX Runtime (vft export's model.onnx) / torch eager, at batch 1 and 32   (goal >= 1.3)
  * INT8 static QDQ / FP32 ONNX Runtime, at batch 32                          (goal >= 1.5)
  * Ray Serve end-to-end requests/s (real HTTP, JPEG bodies, 32 concurrent connections from
    `wrk`, a C load generator, when installed; else Python client threads) / the same decode,
    preprocess and backend pipeline in-process at batch 32                    (goal >= 0.7)
  * p50 / p99 latency through Ray Serve, under that load and for a single client
GPU (--device cuda, on a lent machine): vft's torch backend (bf16, channels_last) and, where
installed, TensorRT FP16 against plain fp32 torch eager, at batch 32 and 256; and a replica's
request decoding (`decode: gpu`: header checks, then batches of 32 JPEGs decoded and
preprocessed on the GPU) against the decode threads' path on one CPU core (Pillow), with the
largest difference between the two paths' model inputs (nvJPEG's pixels against libjpeg's).

The model is an untrained `--model` (default resnet18) at `--size` (default 224) with 10
classes: speed does not depend on the weights. INT8 is calibrated on generated images.
Prints one JSON object as its last line.

    python bench/serve.py [--model resnet18] [--size 224] [--seconds 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serving.app import ServeArgs, build_local_app  # noqa: E402
from serving.export.timing import images_per_second  # noqa: E402
from serving.export.to_int8 import quantize_int8  # noqa: E402
from serving.export.to_onnx import export_onnx  # noqa: E402
from serving.export.to_tensorrt import build_tensorrt  # noqa: E402
from serving.runtime.registry import create_backend  # noqa: E402
from serving.runtime.rundir import INT8_FILE, ONNX_FILE, export_path, read_run_meta  # noqa: E402
from serving.runtime.tensorrt_backend import tensorrt_unavailable  # noqa: E402
from trainer.components import checkpoint as ckpt  # noqa: E402
from trainer.components.deploy import OnnxGraph  # noqa: E402
from trainer.components.device_decode import read_encoded  # noqa: E402
from trainer.components.images import open_image  # noqa: E402
from trainer.components.models import create_model  # noqa: E402
from trainer.components.preprocess import Preprocessing  # noqa: E402
from trainer.tasks.base import task_of  # noqa: E402


def make_run_dir(root: Path, model_name: str, size: int, classes: int) -> tuple[Path, torch.nn.Module]:
    """A run directory as `vft train` leaves it (best/ with weights and meta.json)."""
    built = create_model(model_name, classes)
    prep = Preprocessing(size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear", 0.875)
    meta = ckpt.build_meta(
        task="classification", classes=[f"class{i}" for i in range(classes)], multilabel=False,
        model={"name": built.name, "source": built.source, "head": list(built.head)},
        preprocessing=prep.to_meta(), metrics={}, epoch=0,
        monitor={"metric": "val/top1", "mode": "max", "value": None}, training={},
    )  # fmt: skip
    run_dir = root / "run"
    ckpt.write_checkpoint(run_dir / "best", built.module.state_dict(), meta, {})
    return run_dir, built.module.eval()


def onnx_graph(run_dir: Path, model: torch.nn.Module) -> OnnxGraph:
    """The graph `vft export` exports for the run's task."""
    meta = read_run_meta(run_dir)
    return task_of(meta).onnx_graph(model, meta)


def export_formats(run_dir: Path, model: torch.nn.Module, size: int) -> None:
    graph = onnx_graph(run_dir, model)
    export_onnx(graph, export_path(run_dir, ONNX_FILE), opset=18)
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(16, 3, size, size)).astype(np.float32) for _ in range(4)]
    onnx_file, int8_file = export_path(run_dir, ONNX_FILE), export_path(run_dir, INT8_FILE)
    quantize_int8(onnx_file, int8_file, batches, "static", graph.inputs[0])


def jpeg_bodies(size: int, n: int = 64) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(1)
    bodies = []
    for _ in range(n):
        pixels = rng.integers(0, 256, (size * 5 // 4, size * 5 // 4, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=90)
        bodies.append(buf.getvalue())
    return bodies


def runtime_ratios(run_dir: Path, model: torch.nn.Module, size: int, seconds: float) -> dict:
    def eager(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(batch)).numpy()

    threads = torch.get_num_threads()  # the same for every runtime
    onnx, int8 = create_backend("onnx", run_dir, threads), create_backend("int8", run_dir, threads)
    x32 = np.random.default_rng(0).normal(size=(32, 3, size, size)).astype(np.float32)
    rates = {}
    for name, fn in (("torch", eager), ("onnx", onnx), ("int8", int8)):
        for batch in (1, 32):
            rates[f"{name}_b{batch}"] = images_per_second(fn, x32[:batch], seconds)
            print(f"{name:6s} batch {batch:3d}: {rates[f'{name}_b{batch}']:8.1f} img/s", flush=True)
    return {
        "img_s": {k: round(v, 1) for k, v in rates.items()},
        "onnx_vs_torch_b1": rates["onnx_b1"] / rates["torch_b1"],
        "onnx_vs_torch_b32": rates["onnx_b32"] / rates["torch_b32"],
        "int8_vs_onnx_b32": rates["int8_b32"] / rates["onnx_b32"],
        "direct_onnx_b32": rates["onnx_b32"],
    }


def load(url: str, bodies: list[bytes], clients: int, seconds: float) -> tuple[float, list[float], int]:
    """`clients` threads posting JPEGs for `seconds`: (requests/s, latencies in s, failures)."""
    import requests

    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(k: int) -> None:
        with requests.Session() as session:
            i = k
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                body = bodies[i % len(bodies)]
                r = session.post(url, data=body, headers={"content-type": "image/jpeg"}, timeout=60)
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    failures[0] += r.status_code != 200
                i += clients

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(latencies) / (time.perf_counter() - start), latencies, failures[0]


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "image/jpeg"
local bodies = {}
for line in io.lines("%s") do
  local f = io.open(line, "rb"); bodies[#bodies + 1] = f:read("*all"); f:close()
end
local i = 0
request = function()
  i = i + 1
  return wrk.format(nil, nil, nil, bodies[i %% #bodies + 1])
end
"""


def wrk_load(url: str, bodies: list[bytes], clients: int, seconds: float) -> dict:
    """`wrk` (a C load generator: the client takes little of the CPU it measures) posting the
    JPEGs from `clients` connections on one thread: requests/s, p50/p99 ms, non-2xx responses."""
    import re
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, body in enumerate(bodies):
            paths.append(Path(tmp) / f"{i}.jpg")
            paths[-1].write_bytes(body)
        (Path(tmp) / "bodies.txt").write_text("\n".join(map(str, paths)) + "\n")
        (Path(tmp) / "post.lua").write_text(WRK_SCRIPT % (Path(tmp) / "bodies.txt"))
        cmd = ["wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "60s",
               "-s", str(Path(tmp) / "post.lua"), url]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    def ms(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return round(float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit], 1)

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "req_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": ms("50%"),
        "p99_ms": ms("99%"),
        "failures": int(errors.group(1)) if errors else 0,
    }


def percentile_ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000, 1)


def pipeline_rate(run_dir: Path, bodies: list[bytes], seconds: float) -> float:
    """Requests/s of the serving pipeline called in-process, without Ray Serve or HTTP: decode and
    preprocess each body, the backend at batch 32, answers (the replica's handler, same code)."""
    meta = read_run_meta(run_dir)
    handler = task_of(meta).serve_handler(meta, top_k=5, score_threshold=0.25)
    backend = create_backend("onnx", run_dir, torch.get_num_threads())

    def answer(chunk: list[bytes]) -> list[dict]:
        prepared = [handler.prepare(open_image(body)) for body in chunk]
        outputs = handler.run(backend, [inputs for inputs, _ in prepared])
        return [handler.answer(out, size) for out, (_, size) in zip(outputs, prepared, strict=True)]

    answer(bodies[:32])
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += len(answer([bodies[(done + i) % len(bodies)] for i in range(32)]))
    return done / (time.perf_counter() - start)


def serve_ratio(run_dir: Path, size: int, seconds: float, direct: float) -> dict:
    import ray
    from ray import serve

    ray.init(address="local", num_cpus=4, log_to_driver=False, configure_logging=False)
    port = 18000 + np.random.default_rng().integers(0, 1000)
    serve.start(http_options={"host": "127.0.0.1", "port": int(port)})
    args = ServeArgs(run_dir=str(run_dir), backend="onnx", max_batch_size=32,
                     threads=torch.get_num_threads())  # fmt: skip
    options = {"max_ongoing_requests": 64, "ray_actor_options": {"num_cpus": 1}}
    serve.run(build_local_app(args, 1, None, options), name="bench", route_prefix="/")
    url = f"http://127.0.0.1:{port}/v1/predict"
    bodies = jpeg_bodies(size)
    pipeline = pipeline_rate(run_dir, bodies, seconds)
    load(url, bodies, 32, 1.0)  # warm-up
    if shutil.which("wrk"):
        loaded, single = wrk_load(url, bodies, 32, seconds * 2), wrk_load(url, bodies, 1, seconds)
        client = "wrk"
    else:  # Python client threads: they take CPU from the server they measure
        print("wrk is not installed (make bench installs it): measuring with Python client threads")
        rate, latencies, failures = load(url, bodies, 32, seconds * 2)
        _, ones, _ = load(url, bodies, 1, seconds)
        loaded = {"req_s": rate, "failures": failures,
                  "p50_ms": percentile_ms(latencies, 50), "p99_ms": percentile_ms(latencies, 99)}  # fmt: skip
        single = {"p50_ms": percentile_ms(ones, 50), "p99_ms": percentile_ms(ones, 99)}
        client = "python threads"
    rate = loaded["req_s"]
    import requests

    sizes = requests.get(url.replace("/v1/predict", "/v1/stats"), timeout=10).json()["batch_sizes"]
    serve.shutdown()
    ray.shutdown()
    mean_batch = sum(int(k) * v for k, v in sizes.items()) / max(1, sum(sizes.values()))
    print(f"serve: {rate:.1f} req/s (32 clients by {client}, mean batch {mean_batch:.1f}); in-process "
          f"pipeline: {pipeline:.1f} req/s; model alone: {direct:.1f} img/s (batch 32)")  # fmt: skip
    return {
        "load_client": client,
        "serve_req_s": round(rate, 1),
        "pipeline_req_s": round(pipeline, 1),
        "serve_vs_pipeline_b32": rate / pipeline,
        "serve_vs_model_b32": rate / direct,
        "serve_failures": loaded["failures"],
        "serve_mean_batch": round(mean_batch, 1),
        "p50_ms_32_clients": loaded["p50_ms"],
        "p99_ms_32_clients": loaded["p99_ms"],
        "p50_ms_1_client": single["p50_ms"],
        "p99_ms_1_client": single["p99_ms"],
    }


def gpu_ratios(run_dir: Path, model: torch.nn.Module, size: int, seconds: float) -> dict:
    model = model.cuda()

    def eager(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(torch.from_numpy(batch).cuda())
            return out.cpu().numpy()

    backends = {"torch_fp32_eager": eager, "vft_torch_bf16": create_backend("torch", run_dir)}
    if tensorrt_unavailable() is None:
        graph = onnx_graph(run_dir, model.cpu())
        export_onnx(graph, export_path(run_dir, ONNX_FILE), opset=18)
        model.cuda()
        build_tensorrt(run_dir, "fp16", 256)
        backends["tensorrt_fp16"] = create_backend("tensorrt", run_dir)
    else:
        print(f"tensorrt: {tensorrt_unavailable()}")
    result: dict = {"gpu": torch.cuda.get_device_name(), "img_s": {}}
    x = np.random.default_rng(0).normal(size=(256, 3, size, size)).astype(np.float32)
    for batch in (32, 256):
        for name, fn in backends.items():
            rate = images_per_second(fn, x[:batch], seconds)
            result["img_s"][f"{name}_b{batch}"] = round(rate, 1)
            print(f"{name:18s} batch {batch:3d}: {rate:9.1f} img/s", flush=True)
        base = result["img_s"][f"torch_fp32_eager_b{batch}"]
        for name in backends:
            if name != "torch_fp32_eager":
                result[f"{name}_vs_fp32_b{batch}"] = round(result["img_s"][f"{name}_b{batch}"] / base, 3)
    return result


def request_decoding(run_dir: Path, size: int, seconds: float) -> dict:
    """img/s of a classifier replica's two decode paths, model input only (no backend)."""
    meta = read_run_meta(run_dir)
    handler = task_of(meta).serve_handler(meta, 5, 0.25)
    bodies = jpeg_bodies(size * 2, 64)  # larger than the input: the resize is part of the work
    echo = lambda batch: batch  # noqa: E731 - the model input itself

    def cpu(n: int) -> np.ndarray:
        return np.stack([handler.prepare(open_image(bodies[i % len(bodies)]))[0] for i in range(n)])

    def gpu(n: int) -> np.ndarray:
        items = [read_encoded("request body", source=bodies[i % len(bodies)]) for i in range(n)]
        return np.stack(handler.run_encoded(echo, items, torch.device("cuda")))

    def rate(fn, n: int) -> float:
        fn(n)  # warm-up
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            fn(n)
            done += n
        return done / (time.perf_counter() - start)

    torch.set_num_threads(1)
    cpu_rate, gpu_rate = rate(cpu, 8), rate(gpu, 32)
    diff = float(np.abs(cpu(len(bodies)) - gpu(len(bodies))).max())
    print(f"request decoding: one CPU core {cpu_rate:.1f} img/s, GPU batch 32 {gpu_rate:.1f} img/s")
    print(f"request decoding: largest difference of the model inputs {diff}")
    return {
        "request_decode_gpu_img_s": round(gpu_rate, 1),
        "request_decode_cpu_core_img_s": round(cpu_rate, 1),
        "request_decode_gpu_vs_cpu_core": round(gpu_rate / cpu_rate, 2),
        "request_decode_max_abs_diff": diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--no-serve", action="store_true", help="skip the Ray Serve measurement")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir, model = make_run_dir(Path(tmp), args.model, args.size, 10)
        figures: dict = {"bench": "serve", "device": args.device, "model": args.model, "size": args.size}
        if args.device == "cuda":
            figures.update(gpu_ratios(run_dir, model, args.size, args.seconds))
            figures.update(request_decoding(run_dir, args.size, args.seconds))
        else:
            export_formats(run_dir, model, args.size)
            figures["threads"] = torch.get_num_threads()
            figures.update(runtime_ratios(run_dir, model, args.size, args.seconds))
            if not args.no_serve:
                figures.update(serve_ratio(run_dir, args.size, args.seconds, figures["direct_onnx_b32"]))
    rounded = {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}
    print(json.dumps(rounded))


if __name__ == "__main__":
    main()
