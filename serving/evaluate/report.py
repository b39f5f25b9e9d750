"""The eval report: report.json, report.md with the task's own plots and the corruption and
adversarial plots, and the summary tables `vft eval` prints (title, header, rows)."""

from __future__ import annotations

import json
from pathlib import Path

from serving.evaluate.corruptions import report_name
from trainer.components import plots
from trainer.components.deploy import TaskEval

CORRUPTIONS_PNG, ADVERSARIAL_PNG = "corruptions.png", "adversarial.png"
Table = tuple[str, list[str], list[list[str]]]  # title, header, rows


def metric_label(spec: TaskEval) -> str:
    return dict((f, label) for label, f in spec.columns).get(spec.metric, spec.metric)


def domain_rows(report: dict, spec: TaskEval) -> tuple[list[str], list[list[str]]]:
    rows = []
    for name, d in report["domains"].items():
        worst = " (worst)" if name == report["worst_domain"] and len(report["domains"]) > 1 else ""
        rows.append([name + worst, str(d["images"]), *(f"{d[f]:.4f}" for _, f in spec.columns)])
    return ["domain", "images", *(label for label, _ in spec.columns)], rows


def corruption_rows(c: dict, spec: TaskEval) -> tuple[list[str], list[list[str]]]:
    table, means = c[report_name(spec, "table")], c[report_name(spec, "per_corruption")]
    severities = list(next(iter(table.values())))
    rows = [
        [name, *(f"{row[s]:.3f}" for s in severities), f"{means[name]:.3f}"] for name, row in table.items()
    ]
    return ["corruption", *(f"severity {s}" for s in severities), "mean"], rows


def adversarial_rows(a: dict) -> tuple[list[str], list[list[str]]]:
    eps = list(next(iter(a["top1"].values())))
    rows = [[attack, *(f"{row[e]:.3f}" for e in eps)] for attack, row in a["top1"].items()]
    return ["attack", *(f"eps {float(e) * 255:.3g}/255" for e in eps)], rows


def summary_tables(report: dict, spec: TaskEval) -> list[Table]:
    tables = [(f"vft eval: {report['name']} ({report['runtime']})", *domain_rows(report, spec))]
    if c := report["corruptions"]:
        clean, error = c[report_name(spec, "clean")], c["mean_corruption_error"]
        title = f"corruptions ({metric_label(spec)}): clean {clean:.4f}, mCE {error:.4f}"
        tables.append((title, *corruption_rows(c, spec)))
    if a := report["adversarial"]:
        tables.append((f"adversarial top-1 (L-inf, PGD {a['pgd_steps']} steps)", *adversarial_rows(a)))
    return tables


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    align = ["---"] + ["---:"] * (len(header) - 1)
    return ["| " + " | ".join(row) + " |" for row in (header, align, *rows)]


def markdown(report: dict, spec: TaskEval, extras: list[str]) -> str:
    r = report
    head = (
        f"Run `{r['run_dir']}` ({r['task']}), epoch {r['epoch']}; backend `{r['backend']}` ({r['runtime']})."
    )
    lines = [f"# vft eval: {r['name']}", "", head, "", "## Domains", "", *md_table(*domain_rows(r, spec)), "",
             *extras]  # fmt: skip
    if c := r["corruptions"]:
        summary = (
            f"Clean {metric_label(spec)} {c[report_name(spec, 'clean')]:.4f}; mean corruption error "
            f"{c['mean_corruption_error']:.4f}; relative drop from clean {c['relative_drop']:.1%}."
        )
        lines += ["## Corruptions", "", summary, "", *md_table(*corruption_rows(c, spec)), "",
                  f"![corruptions]({CORRUPTIONS_PNG})", ""]  # fmt: skip
    if a := r["adversarial"]:
        note = (
            f"Crafted with the PyTorch checkpoint's gradients, scored on `{r['backend']}`; "
            f"PGD {a['pgd_steps']} steps."
        )
        lines += ["## Adversarial (L-inf)", "", note, "", *md_table(*adversarial_rows(a)), "",
                  f"![accuracy against eps]({ADVERSARIAL_PNG})"]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict, spec: TaskEval) -> None:
    """RUN_DIR/eval/<name>/: the task's plots, the corruption and adversarial plots, report.json
    and report.md."""
    out.mkdir(parents=True, exist_ok=True)
    extras = spec.write_extras(report, out)
    if c := report["corruptions"]:
        plots.corruption_heatmap(
            c[report_name(spec, "table")], out / CORRUPTIONS_PNG, label=metric_label(spec)
        )
    if a := report["adversarial"]:
        plots.accuracy_vs_eps(a["top1"], out / ADVERSARIAL_PNG)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report, spec, extras))
