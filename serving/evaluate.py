"""`vft eval`: where does the model break before it ships?

(Detection and segmentation runs: see serving/taskeval.py.)

For the best checkpoint (backend `torch`) or an exported model (`onnx`, `int8`), on one or
more datasets (domains): per-domain metrics (top-1, per-class accuracy, confusion matrix, ECE)
and the worst domain; on the first domain, the corruption suite (metric per corruption and
severity, mean corruption error, relative drop from clean), adversarial accuracy per eps
(FGSM and PGD, L-inf, crafted with gradients of the PyTorch checkpoint and scored on the
chosen backend) and a reliability diagram. Written to RUN_DIR/eval/<name>/: report.json,
report.md and PNG plots.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from serving import backends as B
from serving.export import EvalSet, preprocessed_batches
from trainer.components import plots
from trainer.components import robustness as R

Predict = Callable[[torch.Tensor], torch.Tensor]
DEFAULT_EPS = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255)


class EvalError(ValueError):
    """Evaluation cannot start: bad data, run or option (exit code 2)."""


@dataclass
class EvalOptions:
    corruptions: tuple[str, ...] = field(default_factory=lambda: tuple(R.list_corruptions()))
    severities: tuple[int, ...] = R.SEVERITIES
    eps: tuple[float, ...] = DEFAULT_EPS
    attacks: tuple[str, ...] = ("fgsm", "pgd")
    pgd_steps: int = 10
    max_images: int = 1000
    batch_size: int = 64
    n_bins: int = 15
    seed: int = 0


# ----------------------------------------------------------------------------- inputs


def parse_domains(specs: list[str]) -> list[tuple[str, Path]]:
    """`PATH` or `NAME=PATH` items; names default to the folder's name and are unique."""
    domains: list[tuple[str, Path]] = []
    for spec in specs:
        name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        path = Path(path)
        name = name or path.name or "data"
        if name in {n for n, _ in domains}:
            name = f"{name}-{len(domains) + 1}"
        domains.append((name, path))
    if not domains:
        raise EvalError("--data: give at least one dataset")
    return domains


def load_domain(name: str, path: Path, meta: dict, opts: EvalOptions) -> EvalSet:
    from trainer.errors import DataError
    from trainer.tasks.classification.data import read_samples

    if not path.exists():
        raise EvalError(f"--data {name}: {path} does not exist")
    try:
        samples = read_samples(path)
    except DataError as exc:
        raise EvalError(f"--data {name}: {exc}") from exc
    if not len(samples):
        raise EvalError(f"--data {name}: {path} holds no images")
    order = np.random.default_rng(opts.seed).permutation(len(samples))
    try:
        return preprocessed_batches(
            samples.subset(order), meta["classes"], meta, opts.max_images, opts.batch_size
        )
    except DataError as exc:
        raise EvalError(f"--data {name}: {exc}") from exc


def make_predict(backend: str, run_dir: Path, model: torch.nn.Module) -> tuple[Predict, str]:
    if backend == "torch":

        def predict(inputs: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return model(inputs).float()

        return predict, "PyTorch fp32, CPU"
    runner = B.create_backend(backend, run_dir)
    return (lambda inputs: torch.from_numpy(runner(inputs.cpu().numpy()))), runner.name


def logits_of(predict: Predict, data: EvalSet) -> torch.Tensor:
    return torch.cat([predict(torch.from_numpy(batch)) for batch in data.images])


# ----------------------------------------------------------------------------- the parts


def domain_metrics(meta: dict, logits: torch.Tensor, targets: torch.Tensor, n_bins: int) -> dict:
    from trainer.tasks.classification.metrics import ClassificationMetrics

    metrics = ClassificationMetrics(meta["num_classes"])
    metrics.update(logits, targets)
    scalars, tables = metrics.compute("")
    probs = logits.softmax(1)
    return {
        "images": int(targets.shape[0]),
        "top1": scalars["top1"],
        "f1": scalars["f1"],
        "per_class_acc": dict(zip(meta["classes"], tables["per_class_acc"], strict=True)),
        "confusion": tables["confusion"],
        "ece": R.expected_calibration_error(probs, targets, n_bins),
        "reliability": R.reliability_bins(probs, targets, n_bins),
    }


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return float((logits.argmax(1) == targets).float().mean())


def corruption_suite(
    predict: Predict, data: EvalSet, norm: R.Normalizer, opts: EvalOptions, clean: float
) -> dict:
    table: dict[str, dict[str, float]] = {}
    for name in opts.corruptions:
        table[name] = {}
        for severity in opts.severities:
            logits = torch.cat([
                predict(norm.to_inputs(R.corrupt(norm.to_pixels(torch.from_numpy(batch)), name, severity,
                                                 opts.seed + i)))
                for i, batch in enumerate(data.images)
            ])  # fmt: skip
            table[name][str(severity)] = accuracy(logits, data.targets)
    per_corruption = {name: float(np.mean(list(row.values()))) for name, row in table.items()}
    mean_acc = float(np.mean(list(per_corruption.values())))
    return {
        "clean_top1": clean,
        "top1": table,
        "per_corruption_top1": per_corruption,
        "mean_corruption_error": 1.0 - mean_acc,
        "relative_drop": (clean - mean_acc) / clean if clean else 0.0,
        "by_severity": {str(s): float(np.mean([table[n][str(s)] for n in table])) for s in opts.severities},
    }


def adversarial_suite(model, predict: Predict, data: EvalSet, norm: R.Normalizer, opts: EvalOptions) -> dict:
    gen = torch.Generator().manual_seed(opts.seed)
    results: dict[str, dict[str, float]] = {attack: {} for attack in opts.attacks}
    for attack in opts.attacks:
        for eps in opts.eps:
            logits = []
            for batch, start in zip(
                data.images, np.cumsum([0, *[len(b) for b in data.images]]), strict=False
            ):
                inputs = torch.from_numpy(batch)
                labels = data.targets[start : start + len(batch)]
                pixels = norm.to_pixels(inputs)
                if attack == "fgsm":
                    adv = R.fgsm(model, norm, pixels, labels, eps)
                else:
                    adv = R.pgd(model, norm, pixels, labels, eps, steps=opts.pgd_steps, gen=gen)
                logits.append(predict(norm.to_inputs(adv)))
            results[attack][f"{eps:.6g}"] = accuracy(torch.cat(logits), data.targets)
    return {"norm": "linf", "pixel_range": [0, 1], "pgd_steps": opts.pgd_steps, "crafted_on": "torch",
            "top1": results}  # fmt: skip


# ----------------------------------------------------------------------------- the command


def evaluate_run(
    run_dir: Path, domains: list[tuple[str, Path]], backend: str, name: str, opts: EvalOptions
) -> dict:
    from trainer.tasks.base import model_from_checkpoint

    unknown = [c for c in opts.corruptions if c not in R.list_corruptions()]
    if unknown:
        raise EvalError(
            f"--corruptions: unknown {', '.join(unknown)}; allowed: {', '.join(R.list_corruptions())}"
        )
    B.check_servable(run_dir, backend)
    meta = B.read_run_meta(run_dir)
    if meta["task"] != "classification":
        from serving.taskeval import evaluate_task_run

        return evaluate_task_run(run_dir, domains, backend, name, opts, meta)
    if meta["multilabel"]:
        raise EvalError(f"{run_dir}: vft eval covers single-label classification runs")
    model, meta = model_from_checkpoint(B.checkpoint_dir(run_dir))
    sets = {domain: load_domain(domain, path, meta, opts) for domain, path in domains}
    predict, runtime = make_predict(backend, run_dir, model)
    p = meta["preprocessing"]
    norm = R.Normalizer(p["mean"], p["std"])
    per_domain = {
        d: domain_metrics(meta, logits_of(predict, data), data.targets, opts.n_bins)
        for d, data in sets.items()
    }
    primary = domains[0][0]
    clean = per_domain[primary]["top1"]
    report = {
        "run_dir": str(run_dir),
        "name": name,
        "backend": backend,
        "runtime": runtime,
        "epoch": meta["epoch"],
        "options": asdict(opts),
        "domains": {d: {**m, "path": str(dict(domains)[d])} for d, m in per_domain.items()},
        "worst_domain": min(per_domain, key=lambda d: per_domain[d]["top1"]),
        "primary_domain": primary,
        "corruptions": corruption_suite(predict, sets[primary], norm, opts, clean)
        if opts.corruptions
        else None,
        "adversarial": adversarial_suite(model, predict, sets[primary], norm, opts) if opts.attacks else None,
    }
    write_report(Path(run_dir, "eval", name), report, meta)
    return report


def write_report(out: Path, report: dict, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    primary = report["domains"][report["primary_domain"]]
    images = {"reliability": "reliability.png", "confusion": "confusion_matrix.png"}
    plots.reliability_diagram(primary["reliability"], primary["ece"], out / images["reliability"])
    plots.confusion_matrix(primary["confusion"], meta["classes"], out / images["confusion"],
                           f"{report['primary_domain']} ({report['backend']})")  # fmt: skip
    if report["corruptions"]:
        images["corruptions"] = "corruptions.png"
        plots.corruption_heatmap(report["corruptions"]["top1"], out / images["corruptions"])
    if report["adversarial"]:
        images["adversarial"] = "adversarial.png"
        plots.accuracy_vs_eps(report["adversarial"]["top1"], out / images["adversarial"])
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report, images))


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    align = ["---"] + ["---:"] * (len(header) - 1)
    return ["| " + " | ".join(row) + " |" for row in (header, align, *rows)]


def md_domains(report: dict, images: dict[str, str]) -> list[str]:
    rows = []
    for name, d in report["domains"].items():
        worst = " (worst)" if name == report["worst_domain"] and len(report["domains"]) > 1 else ""
        rows.append([name + worst, str(d["images"]), f"{d['top1']:.4f}", f"{d['f1']:.4f}", f"{d['ece']:.4f}"])
    primary = report["domains"][report["primary_domain"]]
    return [
        "## Domains", "", *md_table(["domain", "images", "top-1", "macro F1", "ECE"], rows), "",
        f"![confusion matrix]({images['confusion']})", "",
        "## Calibration", "", f"ECE ({len(primary['reliability'])} bins): {primary['ece']:.4f}", "",
        f"![reliability diagram]({images['reliability']})", "",
    ]  # fmt: skip


def md_corruptions(c: dict, image: str) -> list[str]:
    severities = list(next(iter(c["top1"].values())))
    rows = [[name, *(f"{row[s]:.3f}" for s in severities), f"{c['per_corruption_top1'][name]:.3f}"]
            for name, row in c["top1"].items()]  # fmt: skip
    summary = (f"Clean top-1 {c['clean_top1']:.4f}; mean corruption error {c['mean_corruption_error']:.4f}; "
               f"relative drop from clean {c['relative_drop']:.1%}.")  # fmt: skip
    header = ["corruption", *(f"severity {s}" for s in severities), "mean"]
    return ["## Corruptions", "", summary, "", *md_table(header, rows), "", f"![corruptions]({image})", ""]


def md_adversarial(a: dict, backend: str, image: str) -> list[str]:
    eps = list(next(iter(a["top1"].values())))
    rows = [[attack, *(f"{row[e]:.3f}" for e in eps)] for attack, row in a["top1"].items()]
    note = (
        f"Crafted with the PyTorch checkpoint's gradients, scored on `{backend}`; PGD {a['pgd_steps']} steps."
    )
    header = ["attack", *(f"eps {float(e) * 255:.3g}/255" for e in eps)]
    return [
        "## Adversarial (L-inf)",
        "",
        note,
        "",
        *md_table(header, rows),
        "",
        f"![accuracy against eps]({image})",
    ]


def markdown(report: dict, images: dict[str, str]) -> str:
    r = report
    head = f"Run `{r['run_dir']}`, epoch {r['epoch']}; backend `{r['backend']}` ({r['runtime']})."
    lines = [f"# vft eval: {report['name']}", "", head, "", *md_domains(report, images)]
    if report["corruptions"]:
        lines += md_corruptions(report["corruptions"], images["corruptions"])
    if report["adversarial"]:
        lines += md_adversarial(report["adversarial"], report["backend"], images["adversarial"])
    return "\n".join(lines) + "\n"
