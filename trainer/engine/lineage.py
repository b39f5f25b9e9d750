"""What a tracked run records about where it came from: the resolved config as dotted params, the
datasets' identity (trainer/engine/data_identity.py), the vft and library versions, the git
commit of the working directory and the system it trains on. Imported by the driver, so free of
the tasks (and their model zoos)."""

from __future__ import annotations

import subprocess
from importlib import metadata

from trainer.components.tracking import RunInfo, TrackOptions, flatten
from trainer.config import VftConfig


def track_options(cfg: VftConfig, run_dir: str) -> TrackOptions:
    t = cfg.track
    return TrackOptions(t.backends(), t.uri, t.experiment, cfg.run.storage, run_dir)


def run_info(
    cfg: VftConfig, run_dir: str, resources: dict, datasets: list[dict], parent: dict | None = None
) -> RunInfo:
    """`resources`: the Ray cluster's (ray.cluster_resources()), for the system tags;
    `datasets`: data_identity.datasets(cfg), or none for a sweep's trial (its parent has them)."""
    tags = {**versions(), **system(cfg, resources), "vft.task": cfg.task, "vft.run_dir": run_dir}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return RunInfo(cfg.run.name, run_dir, flatten(cfg.model_dump(mode="json")), tags, datasets, parent)


def versions() -> dict[str, str]:
    found = {}
    for package in ("vft", "torch", "timm", "ray"):
        try:
            found[f"vft.version.{package}" if package != "vft" else "vft.version"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def git_commit(folder: str = ".") -> str | None:
    """HEAD of the git repository the command runs in (the user's project), if any."""
    try:
        done = subprocess.run(
            ["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def system(cfg: VftConfig, resources: dict) -> dict[str, str]:
    s, gpus = cfg.scaling, resources.get("GPU", 0)
    use_gpu = gpus > 0 if s.use_gpu == "auto" else bool(s.use_gpu)
    kinds = sorted(k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:"))
    return {
        "vft.world_size": str(s.num_workers),
        "vft.device": "cuda" if use_gpu else "cpu",
        "vft.gpus": str(s.num_workers * s.gpus_per_worker if use_gpu else 0),
        "vft.gpu_type": ",".join(kinds) if use_gpu and kinds else "none",
        "vft.cluster_gpus": str(int(gpus)),
        "vft.precision": cfg.train.precision if cfg.train.precision != "auto" or use_gpu else "fp32",
    }
