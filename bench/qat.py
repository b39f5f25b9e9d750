"""Quantization-aware training against post-training INT8, through vft's own commands on a local
Ray cluster (2 DDP workers): a model whose post-training INT8 loses accuracy (MobileNetV3:
depthwise convolutions, hard-swish, squeeze-excite) is trained in FP32 on the digits, then given
the same few extra epochs twice from that run: once in FP32 (the baseline, exported to FP32 ONNX
and to ONNX Runtime's calibrated static INT8) and once quantization-aware (exported to INT8 with
its learned scales). Both INT8 models are measured against the FP32 baseline's accuracy.

    python bench/qat.py                                    # mobilenetv3_small_100, 32 px, 8 + 2 epochs
    python bench/qat.py --model efficientnet_b0 --epochs 10 --extra-epochs 3

The last line is one JSON object: ptq_drop = FP32 top-1 - post-training INT8 top-1, qat_drop =
FP32 top-1 - QAT INT8 top-1, qat_recovered_fraction = 1 - qat_drop / ptq_drop (goal >= 0.5 with
ptq_drop >= 0.01), int8_speed_ratio = QAT INT8 img/s / post-training INT8 img/s at batch 32
(goal ~1: the same kind of QDQ model).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.cli import app  # noqa: E402
from trainer.components.synthetic import digits  # noqa: E402


def vft(*args) -> None:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exit_code != 0:
        sys.exit(f"vft {' '.join(map(str, args))} failed ({result.exit_code}):\n{result.output}")


def train(data: Path, storage: Path, name: str, *overrides: str) -> Path:
    vft(
        "train", ROOT / "configs/digits.yaml", f"data.train={data}/train", f"data.val={data}/val",
        f"run.storage={storage}", "--name", name, "--quiet", *overrides,
    )  # fmt: skip
    return storage / name


def export(run: Path) -> dict:
    vft("export", run, "--format", "onnx,int8")
    return json.loads((run / "export" / "report.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mobilenetv3_small_100")
    parser.add_argument("--epochs", type=int, default=8, help="FP32 epochs before the comparison")
    parser.add_argument("--extra-epochs", type=int, default=2, help="then FP32 or QAT epochs from there")
    parser.add_argument("--lr", type=float, default=5e-4, help="learning rate of the extra epochs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vft-bench-qat-") as tmp:
        data, storage = Path(tmp, "digits"), Path(tmp, "runs")
        digits(data, size=32)
        model = f"model.name={args.model}"
        first = train(data, storage, "fp32", model, f"train.epochs={args.epochs}")
        extra = [model, f"model.weights={first}", f"train.epochs={args.extra_epochs}", f"optim.lr={args.lr}",
                 "schedule.warmup_epochs=0"]  # fmt: skip
        baseline = export(train(data, storage, "fp32_more", *extra))
        qat = export(train(data, storage, "qat", *extra, "qat.enabled=true"))

    fp32 = baseline["formats"]["onnx"]["value"]
    ptq, learned = baseline["formats"]["int8"], qat["formats"]["int8"]
    ptq_drop, qat_drop = fp32 - ptq["value"], fp32 - learned["value"]
    speed = learned["img_s_batch32"] / ptq["img_s_batch32"]
    print(f"{args.model}, digits at 32 px, {args.epochs} FP32 epochs, then {args.extra_epochs} more:")
    print(f"  FP32 ONNX top-1           {fp32:.4f}, {baseline['formats']['onnx']['img_s_batch32']:.0f} img/s")
    for name, r, drop in (("post-training INT8", ptq, ptq_drop), ("QAT INT8", learned, qat_drop)):
        print(f"  {name + ' top-1':25} {r['value']:.4f} (drop {drop:+.4f}), {r['img_s_batch32']:.0f} img/s")
    print(f"  QAT's own float model     {qat['torch']['value']:.4f}")
    recovered = 1.0 - qat_drop / ptq_drop if ptq_drop > 0 else None
    print(json.dumps({
        "model": args.model, "fp32_top1": fp32, "ptq_top1": ptq["value"], "qat_top1": learned["value"],
        "ptq_drop": ptq_drop, "qat_drop": qat_drop, "qat_recovered_fraction": recovered,
        "int8_speed_ratio": speed,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
