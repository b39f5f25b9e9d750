"""Early stopping in sweeps: `vft tune` with ASHA against the same sweep under FIFO (every trial
runs every epoch) — same space (configs/digits_space.yaml), same seed, so both draw the same
trials. Figures: trial-epochs spent and the best metric reached.

    python bench/tune.py                       # digits, 16 px, resnet10t, 8 trials x 8 epochs, CPU
    python bench/tune.py --samples 16 --epochs 10

The last line is one JSON object: epochs_ratio = ASHA trial-epochs / FIFO trial-epochs (lower
is better; goal <= 0.5), best_metric_delta = ASHA best - FIFO best (goal >= -0.01).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.components.synthetic import digits  # noqa: E402
from trainer.config import load_config  # noqa: E402
from tuner.report import collect  # noqa: E402
from tuner.space import check_against_config, parse_space  # noqa: E402
from tuner.sweep import run_sweep  # noqa: E402

TINY = [
    "data.img_size=16",
    "model.name=resnet10t",
    "data.num_workers=0",
    "scaling.num_workers=1",
    "schedule.warmup_epochs=0",
]


def sweep(scheduler: str, data: Path, storage: Path, args) -> dict:
    overrides = [
        f"data.train={data}/train",
        f"data.val={data}/val",
        f"train.epochs={args.epochs}",
        f"run.storage={storage}",
        *TINY,
    ]
    cfg = load_config(ROOT / "configs/digits.yaml", overrides, name=f"bench-{scheduler}")
    raw = yaml.safe_load((ROOT / "configs/digits_space.yaml").read_text())
    raw.update(num_samples=args.samples, seed=args.seed, max_concurrent_trials=args.concurrent)
    if scheduler == "fifo":
        raw["scheduler"] = "fifo"
    space = check_against_config(parse_space(raw), cfg)
    run = run_sweep(cfg, space)
    summary = collect(cfg, space, run)
    finished = [t for t in summary.trials if t.succeeded]
    return {
        "trial_epochs": sum(t.epochs for t in summary.trials),
        "best": summary.best.best if summary.best else float("nan"),
        "best_params": summary.best.params if summary.best else {},
        "finished": len(finished),
        "failed": sum(t.status == "ERROR" for t in summary.trials),
        "wall_s": run.wall_s,
        "per_trial": sorted(t.epochs for t in summary.trials),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpus", type=int, default=4, help="logical CPUs of the local Ray cluster")
    parser.add_argument("--concurrent", type=int, default=2, help="trials at once")
    args = parser.parse_args()

    import ray

    ray.init(address="local", num_cpus=args.cpus, log_to_driver=False, configure_logging=False)
    with tempfile.TemporaryDirectory(prefix="vft-bench-tune-") as tmp:
        data = Path(tmp, "digits")
        digits(data, size=32)
        figures = {name: sweep(name, data, Path(tmp, "runs"), args) for name in ("fifo", "asha")}
    ray.shutdown()

    fifo, asha = figures["fifo"], figures["asha"]
    for name, f in figures.items():
        print(
            f"{name:>4}: {f['trial_epochs']:3d} trial-epochs {f['per_trial']}, best val/top1 {f['best']:.4f} "
            f"({f['finished']} finished, {f['failed']} failed, {f['wall_s']:.0f} s) {f['best_params']}"
        )
    ratio = asha["trial_epochs"] / fifo["trial_epochs"]
    delta = asha["best"] - fifo["best"]
    print(f"ASHA spends {ratio:.2f} of FIFO's trial-epochs; best metric {delta:+.4f}")
    result = {
        "bench": "tune",
        "device": "cpu",
        "model": "resnet10t",
        "trials": args.samples,
        "epochs": args.epochs,
        "fifo_trial_epochs": fifo["trial_epochs"],
        "asha_trial_epochs": asha["trial_epochs"],
        "epochs_ratio": round(ratio, 3),
        "fifo_best": round(fifo["best"], 4),
        "asha_best": round(asha["best"], 4),
        "best_metric_delta": round(delta, 4),
        "fifo_wall_s": round(fifo["wall_s"], 1),
        "asha_wall_s": round(asha["wall_s"], 1),
        "goal_met": ratio <= 0.5 and delta >= -0.01,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
