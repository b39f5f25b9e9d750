"""`vft export`, `vft serve`, `vft predict`, `vft eval` (registered through the `vft.commands`
entry points).

Exit codes as everywhere: 0 success, 1 failed (a parity gate with --check, a server error),
2 bad usage or input (no such run, no export yet, a format this machine cannot build).
"""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
from enum import Enum
from pathlib import Path
from typing import Annotated

import ray
import torch
import typer
from ray import serve as ray_serve
from rich import box
from rich.console import Console
from rich.table import Table

from serving.app import DEPLOYMENT_NAME, ServeArgs, build_local_app
from serving.client import predict_files, wait_until_up
from serving.evaluate.base import EvalError, EvalOptions, parse_domains
from serving.evaluate.pipeline import evaluate_run
from serving.export.base import EXPORTERS, ExportOptions, Thresholds, parse_formats
from serving.export.pipeline import export_run
from serving.runtime.registry import backend_names, check_servable
from serving.runtime.rundir import fetch_run_dir
from trainer.components import checkpoint as ckpt
from trainer.components.model_registry import is_model_uri, model_version, promote, register_export
from trainer.components.robustness import ATTACKS, list_corruptions
from trainer.components.tracking import first_line
from trainer.console import err, fail
from trainer.driver import init_ray
from trainer.errors import VftError

out = Console(width=None if sys.stdout.isatty() else 120)  # tables stay whole in logs
TRACKING_HELP = (
    "MLflow registry of a models:/ URI (default: $MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db)"
)
Backend = Enum("Backend", {name: name for name in backend_names()}, type=str)  # the runtime registry's names


class Decode(str, Enum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


class Int8Mode(str, Enum):
    static = "static"
    dynamic = "dynamic"


class TrtPrecision(str, Enum):
    fp16 = "fp16"
    int8 = "int8"


# ----------------------------------------------------------------------------- export


def export(
    run_dir: Annotated[
        str, typer.Argument(help="a run directory of `vft train` or `vft tune` (or its s3:// or gs:// URI)")
    ],
    formats: Annotated[
        str | None,
        typer.Option(
            "--format", help=f"comma-separated: {', '.join(EXPORTERS.names())} (default: the task's own)"
        ),
    ] = None,
    check: Annotated[bool, typer.Option(help="exit 1 when a parity threshold is exceeded")] = False,
    max_abs_diff: Annotated[float, typer.Option(help="ONNX FP32: largest |torch - onnx| output")] = 1e-3,
    min_agreement: Annotated[float, typer.Option(help="ONNX FP32: least top-1 agreement")] = 0.99,
    max_metric_drop: Annotated[float, typer.Option(help="INT8/TensorRT: largest metric drop")] = 0.01,
    opset: Annotated[int, typer.Option(min=17, help="ONNX opset")] = 18,
    int8_mode: Annotated[Int8Mode, typer.Option(help="static (QDQ, calibrated), dynamic")] = Int8Mode.static,
    calibration_images: Annotated[int, typer.Option(min=1, help="training images for INT8")] = 256,
    max_images: Annotated[int, typer.Option(min=1, help="validation images for the checks")] = 2000,
    data: Annotated[Path | None, typer.Option(help="validation images (default: the run's data.val)")] = None,
    trt_precision: Annotated[TrtPrecision, typer.Option(help="TensorRT precision")] = TrtPrecision.fp16,
    trt_max_batch: Annotated[int, typer.Option(min=1, help="TensorRT profile's largest batch")] = 32,
    register: Annotated[
        bool, typer.Option(help="register the export in MLflow's model registry (runs tracked with MLflow)")
    ] = True,
    model_name: Annotated[
        str | None, typer.Option(help="registered model name (default: the run's name)")
    ] = None,
) -> None:
    """Export the best checkpoint to ONNX / INT8 / TensorRT, checked against PyTorch on the
    validation images; writes RUN_DIR/export/ and report.json, and registers the export as a new
    version of the run's model in MLflow when the run was tracked there."""
    try:
        opts = ExportOptions(
            formats=parse_formats(formats) if formats else None,
            thresholds=Thresholds(max_abs_diff, min_agreement, max_metric_drop),
            opset=opset, int8_mode=int8_mode.value, calibration_images=calibration_images,
            max_images=max_images, data=data, trt_precision=trt_precision.value, trt_max_batch=trt_max_batch,
        )  # fmt: skip
        report = export_run(run_dir, opts)
    except VftError as exc:
        fail(str(exc), exc.exit_code)
    out.print(export_table(report))
    out.print(f"report: {ckpt.join(run_dir, 'export', 'report.json')}")
    unavailable = {f: r for f, r in report["formats"].items() if r["status"] == "unavailable"}
    for fmt, result in unavailable.items():
        err.print(f"{fmt}: not built: {result['reason']}", style="yellow", markup=False, highlight=False)
    if register:
        register_model(run_dir, report, model_name)
    if check and not report["passed"]:
        fail("parity check failed: " + "; ".join(
            f"{fmt}: {', '.join(r['failed'])}" for fmt, r in report["formats"].items() if r.get("failed")
        ), 1)  # fmt: skip
    if unavailable:
        raise typer.Exit(2)


def register_model(run_dir: str, report: dict, name: str | None) -> None:
    """A new registered version (the export files, parity results as tags); a registry that
    fails is a warning: the export is written."""
    try:
        uri = register_export(fetch_run_dir(run_dir), report, name)
    except Exception as exc:  # noqa: BLE001 - MLflow's errors, an unreachable server
        err.print(
            f"not registered in MLflow: {type(exc).__name__}: {first_line(exc)}", style="yellow", markup=False
        )
        return
    if uri:
        out.print(f"registered: {uri}  (serve it: vft serve {uri})", highlight=False)


COLUMNS = ("format", "status", "max|diff|", "agree", "metric", "delta", "img/s 1|32", "vs onnx")


def export_row(fmt: str, r: dict) -> list[str]:
    fmt = f"{fmt} (qat)" if r.get("mode") == "qat" else fmt
    if r["status"] == "unavailable":
        return [fmt, "[yellow]unavailable", *[""] * 6]
    status = "[green]passed" if r["status"] == "passed" else "[red]failed"
    return [
        fmt,
        status,
        f"{r.get('max_abs_diff', r.get('max_abs_box_diff', 0.0)):.1e}",
        f"{r.get('top1_agreement', r.get('count_agreement', 0.0)):.3f}",
        f"{r['value']:.4f}",
        f"{r['metric_delta']:+.4f}",
        _img_s(r),
        f"{r['speedup_vs_onnx_fp32']:.2f}x" if "speedup_vs_onnx_fp32" in r else "",
    ]


def _img_s(r: dict) -> str:
    """img/s at batch 1 | 32 (detectors: batch 1 only)."""
    return f"{r['img_s_batch1']:.0f}" + (f"|{r['img_s_batch32']:.0f}" if "img_s_batch32" in r else "")


def export_table(report: dict) -> Table:
    ref = report["torch"]
    title = f"vft export: {report['run_dir']} (epoch {report['epoch']}, {report['images']} images)"
    agree = (
        "images whose box count agrees" if "count_agreement" in str(report["formats"]) else "top-1 agreement"
    )
    caption = f"metric: {ref['metric']}; agree: {agree} with torch"
    table = Table(title=title, box=box.SIMPLE_HEAD, caption=caption, pad_edge=False)
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("format", "status") else "right", no_wrap=True)
    table.add_row("torch", "reference", "", "", f"{ref['value']:.4f}", "", _img_s(ref), "")
    for fmt, result in report["formats"].items():
        table.add_row(*export_row(fmt, result))
    return table


# ----------------------------------------------------------------------------- serve


def serve(
    run_dir: Annotated[
        str,
        typer.Argument(
            help="a run directory exported for onnx/int8/tensorrt, its s3:// URI, or a registered "
            "model: models:/<name>/<version> or models:/<name>@<alias>"
        ),
    ],
    backend: Annotated[Backend, typer.Option(help="inference backend")] = Backend["onnx"],
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port")] = 8000,
    replicas: Annotated[int, typer.Option(min=1, help="replicas (without --max-replicas)")] = 1,
    max_replicas: Annotated[int, typer.Option(min=0, help="autoscale 1..N replicas (0: off)")] = 0,
    max_batch_size: Annotated[int, typer.Option(min=1)] = 32,
    batch_wait_ms: Annotated[
        float,
        typer.Option(min=0, help="longest wait for requests still being read or decoded to join a batch"),
    ] = 100.0,
    decode: Annotated[
        Decode, typer.Option(help="request images: gpu decodes batches of JPEGs on the model's GPU")
    ] = Decode.auto,
    max_ongoing_requests: Annotated[int, typer.Option(min=1, help="per replica")] = 64,
    max_queued_requests: Annotated[int, typer.Option(help="beyond this, 503 (-1: no limit)")] = 256,
    cpus_per_replica: Annotated[float, typer.Option(min=0)] = 1.0,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: local cluster)")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="local cluster: Prometheus metrics port")] = None,
    score_threshold: Annotated[float, typer.Option(min=0, max=1, help="boxes, objects: least score")] = 0.25,
    tracking_uri: Annotated[str | None, typer.Option(help=TRACKING_HELP)] = None,
) -> None:
    """Serve RUN_DIR with Ray Serve: POST /v1/predict, GET /v1/model, /healthz, /docs. Ctrl-C stops."""
    remote = ckpt.is_remote(run_dir) or is_model_uri(run_dir)
    where = run_dir if remote else str(Path(run_dir).resolve())
    args = ServeArgs(run_dir=where, backend=backend.value, max_batch_size=max_batch_size,
                     batch_wait_timeout_s=batch_wait_ms / 1000, score_threshold=score_threshold,
                     decode=decode.value, tracking_uri=tracking_uri)  # fmt: skip
    if decode is Decode.gpu and address is None and not torch.cuda.is_available():
        fail("--decode gpu: this machine's local cluster has no GPU (use auto or cpu)", 2)
    try:
        if is_model_uri(run_dir):  # a registered version must exist; the replica downloads it
            model_version(run_dir, tracking_uri)
        else:
            check_servable(run_dir, backend.value)
    except VftError as exc:
        fail(str(exc), exc.exit_code)
    autoscaling = {"min_replicas": 1, "max_replicas": max_replicas} if max_replicas else None
    deployment = {
        "max_ongoing_requests": max_ongoing_requests,
        "max_queued_requests": max_queued_requests,
        "ray_actor_options": {"num_cpus": cpus_per_replica},
    }
    init_ray(address, **({"_metrics_export_port": metrics_port} if metrics_port else {}))
    ray_serve.start(http_options={"host": host, "port": port})
    app = build_local_app(args, replicas, autoscaling, deployment)
    ray_serve.run(app, name="vft", route_prefix="/")
    url = f"http://{host}:{port}"
    out.print(f"serving {run_dir} ({backend.value}) as {DEPLOYMENT_NAME} at {url}", highlight=False)
    routes = f"  POST {url}/v1/predict   GET {url}/v1/model   docs {url}/docs   Ctrl-C stops"
    out.print(routes, highlight=False)
    wait_for_stop()
    err.print("stopping")
    ray_serve.delete("vft")  # on a shared cluster (--address) only this app goes
    ray.shutdown()


def wait_for_stop() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass


# ----------------------------------------------------------------------------- predict


def predict(
    url: Annotated[str, typer.Argument(help="the server, e.g. http://127.0.0.1:8000")],
    images: Annotated[list[Path], typer.Argument(help="image files")],
    timeout: Annotated[float, typer.Option(help="seconds per request")] = 60.0,
    wait: Annotated[float, typer.Option(help="wait up to N seconds for the server to be up")] = 0.0,
    top: Annotated[int, typer.Option(min=0, help="print only the N best predictions (0: all)")] = 0,
    batch: Annotated[
        int, typer.Option(min=1, max=1024, help="images per request (> 1: POST /v1/predict/batch)")
    ] = 1,
) -> None:
    """POST images to a running server; print one JSON answer per image."""
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        fail(f"image not found: {', '.join(missing)}")
    if wait and not wait_until_up(url, wait):
        fail(f"{url}: no healthy server after {wait:.0f} s", 1)
    answers = predict_files(url, images, timeout, batch)
    for answer in answers:
        if top and "predictions" in answer.body:
            answer.body["predictions"] = answer.body["predictions"][:top]
        typer.echo(json.dumps(answer.to_json()))
    statuses = [a.status for a in answers]
    if any(s == 0 or s >= 500 for s in statuses):
        raise typer.Exit(1)
    if any(s != 200 for s in statuses):
        raise typer.Exit(2)


# ----------------------------------------------------------------------------- eval


def evaluate(
    run_dir: Annotated[str, typer.Argument(help="a run directory, exported for onnx/int8 (or its URI)")],
    data: Annotated[list[str], typer.Option(help="PATH or NAME=PATH; repeat for more domains")],
    backend: Annotated[Backend, typer.Option(help="torch (the checkpoint) or an export")] = Backend["torch"],
    name: Annotated[
        str | None, typer.Option(help="report name: RUN_DIR/eval/NAME (default: backend)")
    ] = None,
    corruptions: Annotated[str, typer.Option(help="comma-separated names, 'all' or 'none'")] = "all",
    severities: Annotated[str, typer.Option(help="comma-separated, 1..5")] = "1,2,3,4,5",
    eps: Annotated[str, typer.Option(help="L-inf budgets in 1/255 units, comma-separated")] = "0,1,2,4,8",
    attacks: Annotated[str, typer.Option(help="fgsm,pgd or 'none'")] = "fgsm,pgd",
    pgd_steps: Annotated[int, typer.Option(min=1)] = 10,
    max_images: Annotated[int, typer.Option(min=1, help="images per domain")] = 1000,
) -> None:
    """Robustness, adversarial, cross-domain and calibration report for a trained model."""
    try:
        named = {"all": list_corruptions(), "none": []}
        chosen = named[corruptions] if corruptions in named else split_list(corruptions, str)
        opts = EvalOptions(
            corruptions=tuple(chosen), severities=tuple(split_list(severities, int, "--severities")),
            eps=tuple(v / 255 for v in split_list(eps, float, "--eps")),
            attacks=() if attacks == "none" else tuple(split_list(attacks, str)), pgd_steps=pgd_steps,
            max_images=max_images,
        )  # fmt: skip
        bad = [a for a in opts.attacks if a not in ATTACKS] + [s for s in opts.severities if not 1 <= s <= 5]
        if bad:
            raise EvalError(f"--attacks/--severities: unknown {', '.join(map(str, bad))}")
        evaluation = evaluate_run(run_dir, parse_domains(data), backend.value, name or backend.value, opts)
    except VftError as exc:
        fail(str(exc), exc.exit_code)
    for title, header, rows in evaluation.tables:
        out.print(table_of(title, header, rows))
    out.print(f"report: {ckpt.join(run_dir, 'eval', evaluation.report['name'], 'report.md')}")


def split_list(text: str, kind, option: str = "") -> list:
    try:
        return [kind(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError:
        fail(f"{option}: cannot read '{text}' as a comma-separated list")


def table_of(title: str, header: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for i, column in enumerate(header):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


# ----------------------------------------------------------------------------- promote


def promote_model(
    name: Annotated[str, typer.Argument(help="registered model name (the run's name)")],
    version: Annotated[str, typer.Argument(help="its version, as `vft export` printed it")],
    alias: Annotated[str, typer.Option(help="alias to point at this version")] = "production",
    tracking_uri: Annotated[str | None, typer.Option(help=TRACKING_HELP)] = None,
) -> None:
    """Point an alias (default: production) at a registered version; `vft serve
    models:/NAME@ALIAS` then serves it."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", alias) or re.fullmatch(r"v\d+|latest", alias):
        fail(f"--alias: '{alias}' is not an alias (letters, digits, _ and -; not latest or v<number>)", 2)
    try:
        promote(name, version, alias, tracking_uri)
    except VftError as exc:
        fail(str(exc), exc.exit_code)
    out.print(f"models:/{name}@{alias} -> version {version}", highlight=False)
