"""`vft eval RUN_DIR --data ...`: the domains, the corruption suite and (where the task allows
attacks) the adversarial suite on one backend; the report written and its summary tables."""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from serving.evaluate.adversarial import adversarial_suite
from serving.evaluate.base import EvalError, EvalOptions
from serving.evaluate.corruptions import corruption_suite
from serving.evaluate.domains import image_count, load_domain, score
from serving.evaluate.report import Table, summary_tables, write_report
from serving.runtime.registry import check_servable, create_backend
from serving.runtime.rundir import checkpoint_dir, fetch_run_dir, read_run_meta
from trainer.components import checkpoint as ckpt
from trainer.components import robustness as R
from trainer.tasks.base import model_from_checkpoint, task_of


@dataclass
class Evaluation:
    report: dict  # as written to report.json
    tables: list[Table]  # the summary `vft eval` prints


def evaluate_run(
    run_dir: str | Path, domains: list[tuple[str, Path]], backend: str, name: str, opts: EvalOptions
) -> Evaluation:
    """Evaluate and write RUN_DIR/eval/NAME/. A run in object storage is evaluated in a local
    copy, whose eval/NAME/ is then copied to the run."""
    if not ckpt.is_remote(str(run_dir)):
        return evaluate_local(Path(run_dir), domains, backend, name, opts)
    local = fetch_run_dir(str(run_dir))
    evaluation = evaluate_local(local, domains, backend, name, opts, label=str(run_dir))
    ckpt.publish(local / "eval" / name, ckpt.join(str(run_dir), "eval", name))
    shutil.rmtree(local, ignore_errors=True)
    return evaluation


def evaluate_local(
    run_dir: Path,
    domains: list[tuple[str, Path]],
    backend: str,
    name: str,
    opts: EvalOptions,
    label: str | None = None,  # the run as the report names it (its URI for a local copy)
) -> Evaluation:
    unknown = [c for c in opts.corruptions if c not in R.list_corruptions()]
    if unknown:
        raise EvalError(
            f"--corruptions: unknown {', '.join(unknown)}; allowed: {', '.join(R.list_corruptions())}"
        )
    check_servable(run_dir, backend)
    meta = read_run_meta(run_dir)
    if meta["multilabel"]:
        raise EvalError(f"{run_dir}: vft eval covers single-label runs")
    task = task_of(meta)
    spec = task.evaluation(meta, opts.n_bins)
    sets = {domain: load_domain(spec, domain, path, opts) for domain, path in domains}
    runner = create_backend(backend, run_dir)
    per_domain = {}
    for domain, batches in sets.items():
        scalars, tables = score(spec, runner, batches)
        per_domain[domain] = {
            "images": image_count(batches),
            **scalars,
            **tables,
            "path": str(dict(domains)[domain]),
        }
    primary = domains[0][0]
    clean = per_domain[primary][spec.metric]
    report = {
        "run_dir": label or str(run_dir), "name": name, "task": task.name, "backend": backend,
        "runtime": runner.name,
        "epoch": meta["epoch"], "options": asdict(opts), "metric": spec.metric, "domains": per_domain,
        "worst_domain": min(per_domain, key=lambda d: per_domain[d][spec.metric]), "primary_domain": primary,
        "corruptions": None, "adversarial": None,
    }  # fmt: skip
    if opts.corruptions:
        report["corruptions"] = corruption_suite(spec, runner, sets[primary], opts, clean)
    if spec.attacks and opts.attacks:
        model, _ = model_from_checkpoint(checkpoint_dir(run_dir))
        p = meta["preprocessing"]
        report["adversarial"] = adversarial_suite(
            model, runner, sets[primary], R.Normalizer(p["mean"], p["std"]), opts
        )
    write_report(Path(run_dir, "eval", name), report, spec)
    return Evaluation(report, summary_tables(report, spec))
