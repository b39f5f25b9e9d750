"""`vft eval` and its building blocks: corruptions, FGSM/PGD, ECE, cross-domain metrics, the
ONNX backend, reports and bad input (`train.robust_val` in the training loop: test_train_ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trainer.cli import app
from trainer.components import robustness as R
from trainer.components.synthetic import shifted_domain

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def vft(*args):
    return runner.invoke(app, [str(a) for a in args])


def eval_report(run_dir: Path, name: str, *args) -> dict:
    result = vft("eval", run_dir, "--name", name, *args)
    assert result.exit_code == 0, result.output
    return json.loads((run_dir / "eval" / name / "report.json").read_text())


def test_corruption_accuracy_falls_with_severity_and_reports_are_written(digits_run, digits_dir):
    report = eval_report(
        digits_run, "corrupt", "--data", digits_dir / "val", "--attacks", "none", "--max-images", "200"
    )
    c = report["corruptions"]
    by_severity = [c["by_severity"][str(s)] for s in R.SEVERITIES]
    assert by_severity[0] >= by_severity[2] >= by_severity[4], by_severity
    assert sum(by_severity[:2]) / 2 > sum(by_severity[3:]) / 2
    assert c["clean_top1"] == report["domains"]["val"]["top1"] >= 0.9
    assert set(c["top1"]) == set(R.list_corruptions())
    mean_acc = sum(c["per_corruption_top1"].values()) / len(c["per_corruption_top1"])
    assert c["mean_corruption_error"] == pytest.approx(1 - mean_acc)
    assert c["relative_drop"] == pytest.approx((c["clean_top1"] - mean_acc) / c["clean_top1"])
    out = digits_run / "eval" / "corrupt"
    for name in ("report.json", "report.md", "corruptions.png", "reliability.png", "confusion_matrix.png"):
        assert (out / name).stat().st_size > 100, name
    assert "| gaussian_noise |" in (out / "report.md").read_text()


def test_fgsm_at_eps_0_is_clean_accuracy_and_larger_eps_lowers_it(digits_run, digits_dir):
    report = eval_report(
        digits_run,
        "adv",
        "--data",
        digits_dir / "val",
        "--corruptions",
        "none",
        "--eps",
        "0,8",
        "--pgd-steps",
        "3",
        "--max-images",
        "200",
    )
    clean = report["domains"]["val"]["top1"]
    fgsm, pgd = report["adversarial"]["top1"]["fgsm"], report["adversarial"]["top1"]["pgd"]
    assert fgsm["0"] == clean and pgd["0"] == clean
    eps8 = f"{8 / 255:.6g}"
    assert fgsm[eps8] < clean - 0.05 and pgd[eps8] <= fgsm[eps8] + 0.02
    assert (digits_run / "eval" / "adv" / "adversarial.png").stat().st_size > 100


def test_a_shifted_domain_gets_its_own_metrics(digits_run, digits_dir, tmp_path):
    assert shifted_domain(digits_dir / "val", tmp_path / "shifted", seed=1) == 360
    report = eval_report(
        digits_run,
        "domains",
        "--data",
        digits_dir / "val",
        "--data",
        f"recoloured={tmp_path / 'shifted'}",
        "--corruptions",
        "none",
        "--attacks",
        "none",
    )
    domains = report["domains"]
    assert set(domains) == {"val", "recoloured"}
    assert domains["recoloured"]["images"] == 360 and len(domains["recoloured"]["per_class_acc"]) == 10
    assert domains["recoloured"]["top1"] < domains["val"]["top1"]
    assert report["worst_domain"] == "recoloured"
    assert sum(map(sum, domains["recoloured"]["confusion"])) == 360


def test_onnx_backend_matches_pytorch_clean_accuracy(exported_run, digits_dir):
    run_dir, _ = exported_run
    common = ["--data", digits_dir / "val", "--corruptions", "none", "--attacks", "none"]
    torch_report = eval_report(run_dir, "t", "--backend", "torch", *common)
    onnx_report = eval_report(run_dir, "o", "--backend", "onnx", *common)
    assert onnx_report["runtime"].startswith("onnxruntime")
    assert abs(onnx_report["domains"]["val"]["top1"] - torch_report["domains"]["val"]["top1"]) <= 0.003


def test_missing_or_empty_datasets_exit_2(digits_run, tmp_path):
    (tmp_path / "empty").mkdir()
    for data, message in ((tmp_path / "nope", "does not exist"), (tmp_path / "empty", "empty")):
        result = vft("eval", digits_run, "--data", data)
        assert result.exit_code == 2, result.output
        assert message in result.output and str(data.name) in result.output
    result = vft("eval", digits_run, "--data", tmp_path / "empty", "--corruptions", "fog")
    assert result.exit_code == 2 and "--corruptions: unknown fog" in result.output


# ----------------------------------------------------------------------------- robustness while training
