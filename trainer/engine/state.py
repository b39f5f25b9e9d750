"""What a training job saves and resumes from: meta.json fields, the training state (optimizer,
schedule, scaler, EMA, RNG, history), RUN_DIR/last and RUN_DIR/best, and restoring all of it."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from safetensors.torch import load_file

from trainer.components import checkpoint as ckpt
from trainer.components.lora import adapter_keys, base_fingerprint, has_adapters, merged_state_dict
from trainer.components.qat import is_qat, split_state
from trainer.components.runlog import write_metrics_csv
from trainer.engine.assemble import Job, enter_qat, qat_start_epoch
from trainer.errors import WeightsError


def model_meta(job: Job, metrics: dict, epoch: int) -> dict:
    c = job.cfg
    fields = job.task.training_meta(c, job.classes)
    model = {
        "name": job.built.name,
        "source": job.built.source,
        "head": list(job.built.head),
        **job.built.extra,
        **fields.pop("model", {}),
        "weights": c.model.weights,
        "ema": c.train.ema.enabled,
    }
    meta = ckpt.build_meta(
        task=c.task,
        classes=job.classes,
        multilabel=fields.pop("multilabel"),
        model=model,
        preprocessing=job.prep.to_meta(),
        metrics=metrics,
        epoch=epoch,
        monitor={"metric": c.train.monitor, "mode": c.train.mode, "value": metrics.get(c.train.monitor)},
        training={
            "precision": job.precision,
            "device": job.device.type,
            "world_size": job.world,
            "strategy": c.finetune.strategy,
            **({"lora": _lora_meta(job)} if has_adapters(job.model) else {}),
            **({"qat": _qat_meta(job)} if is_qat(job.model) else {}),
        },
    )
    return {**meta, **{k: v for k, v in fields.items() if k not in meta}}


def training_state(job: Job, epoch: int) -> dict:
    step = job.step
    state = {
        "epoch": epoch,
        "optimizer": step.optimizer.state_dict(),
        "schedule": step.schedule.state_dict(),
        "scaler": step.scaler.state_dict(),
        "updates": step.updates,
        "rng": ckpt.rng_state(),
        "history": job.history,
        "best": job.best,
        "bad_epochs": job.bad_epochs,
    }
    if has_adapters(job.model):  # the adapters and head alone; the base is rebuilt on resume
        keep = adapter_keys(job.model, job.built.head)
        state["adapter"] = {k: v for k, v in job.model.state_dict().items() if k in keep}
        state["base"] = {
            "name": job.built.name,
            "weights": job.cfg.model.weights,
            "fingerprint": _fingerprint(job),
        }
        if step.ema is not None:
            state["ema"] = {
                k: v for k, v in step.ema.state_dict().items() if k.removeprefix("module.") in keep
            }
    elif step.ema is not None:
        state["model"] = job.model.state_dict()  # model.safetensors holds the EMA weights
        state["ema"] = step.ema.state_dict()
    return state


def _fingerprint(job: Job) -> float:
    return base_fingerprint(job.model, job.built.head)


def _lora_meta(job: Job) -> dict:
    lora = job.cfg.finetune.lora
    adapters = {n for n in adapter_keys(job.model, job.built.head) if ".lora_" in n}
    return {
        "rank": lora.rank,
        "alpha": lora.alpha,
        "layers": len({n.split(".lora_")[0] for n in adapters}),
        "adapter_params": sum(p.numel() for n, p in job.model.named_parameters() if n in adapters),
        "total_params": sum(p.numel() for p in job.model.parameters()),
    }


def _qat_meta(job: Job) -> dict:
    """What `vft export --format int8` rebuilds the quantized graph from (with qat.safetensors)."""
    q = job.cfg.qat
    return {
        "flow": "torchao pt2e",
        "quantizer": "x86: uint8 activations per tensor, int8 symmetric weights",
        "per_channel": q.per_channel,
        "start_epoch": qat_start_epoch(job.cfg) + 1,
        "epochs": q.epochs or job.cfg.train.epochs,
    }


def _load_part(module, part: dict, directory: str) -> None:
    _, unexpected = module.load_state_dict(part, strict=False)
    if unexpected:
        raise WeightsError(
            f"{directory}: adapter tensors this model does not have: {', '.join(unexpected[:5])}"
        )


def restore(job: Job, directory: str) -> None:
    configured = [dict(group) for group in job.step.optimizer.param_groups]
    state = ckpt.read_state(directory)
    if "adapter" in state:
        restore_adapters(job, state, directory)
    else:
        weights = load_file(f"{directory}/{ckpt.MODEL_FILE}")
        qat_file = Path(directory, ckpt.QAT_FILE)
        if qat_file.is_file():  # saved quantization-aware: the model becomes its QAT graph first
            enter_qat(job)
            weights |= load_file(str(qat_file))
        job.model.load_state_dict(state.get("model", weights))
        if job.step.ema is not None:
            job.step.ema.load_state_dict(state["ema"])
    # the optimizer's param groups only exist for parameters that will ever train
    job.step.optimizer.load_state_dict(state["optimizer"])
    job.step.schedule.load_state_dict(state["schedule"])
    job.step.scaler.load_state_dict(state["scaler"])
    job.step.updates = state["updates"]
    job.history, job.best, job.bad_epochs = state["history"], state["best"], state["bad_epochs"]
    job.start_epoch = state["epoch"]
    ckpt.set_rng_state(state["rng"])
    keep_configured_hparams(job, configured)


def restore_adapters(job: Job, state: dict, directory: str) -> None:
    """A LoRA checkpoint holds adapters and head only: they go onto the freshly built base,
    which must be the one they were trained on."""
    base, now = state["base"], _fingerprint(job)
    if abs(now - base["fingerprint"]) > 1e-6 * max(abs(base["fingerprint"]), 1.0):
        raise WeightsError(
            f"{directory}: its adapters were trained on {base['name']} (weights: {base['weights']}), "
            f"but the base model built now (weights: {job.cfg.model.weights}) has other weights"
        )
    _load_part(job.model, state["adapter"], directory)
    if job.step.ema is not None:
        _load_part(job.step.ema, state["ema"], directory)


def keep_configured_hparams(job: Job, configured: list[dict]) -> None:
    """Resuming under changed hyperparameters (PBT's explore step in `vft tune`, or an edited
    config): the config's learning rates and weight decay win over the checkpoint's, rescaling
    the schedule so its progress is kept. A no-op when they are unchanged."""
    schedule = job.step.schedule.per_step
    for i, (group, want) in enumerate(zip(job.step.optimizer.param_groups, configured, strict=False)):
        group["weight_decay"] = want["weight_decay"]
        ratio = want["initial_lr"] / group["initial_lr"]
        if ratio == 1.0:
            continue
        for key in ("lr", "initial_lr", "max_lr", "min_lr"):
            if key in group:
                group[key] *= ratio
        for name in ("base_lrs", "max_lrs", "_last_lr"):
            values = getattr(schedule, name, None)
            if values:
                values[i] *= ratio


@contextlib.contextmanager
def latest_checkpoint(reported, last_uri: str):
    """The newer of Ray Train's latest reported checkpoint and RUN_DIR/last, as a local folder
    (or None). RUN_DIR/last is written just before each report, so it is ahead when the driver
    was stopped between the two."""
    with contextlib.ExitStack() as stack:
        candidates = []
        if reported is not None:
            candidates.append(stack.enter_context(reported.as_directory()))
        last = stack.enter_context(ckpt.local_copy(last_uri))
        if last is not None:
            candidates.append(last)
        yield max(candidates, key=lambda d: ckpt.read_meta(d)["epoch"], default=None)


def save_epoch(job: Job, epoch: int, record: dict, tables: dict, is_best: bool, run_dir: str) -> str:
    """Rank 0: write the checkpoint to a local folder, publish it as RUN_DIR/last (and
    RUN_DIR/best), rewrite metrics.csv. Returns the local folder for ray.train.report."""
    local = tempfile.mkdtemp(prefix="vft-ckpt-")
    # a QAT graph's quantization state goes to qat.safetensors: model.safetensors is the plain model
    weights, qparams = split_state(
        merged_state_dict(job.step.ema.module if job.step.ema is not None else job.model)
    )
    metrics = {k: v for k, v in record.items() if k not in ("epoch", "time")}
    meta = model_meta(job, {**metrics, **tables}, epoch)
    ckpt.write_checkpoint(local, weights, meta, training_state(job, epoch), qparams)
    ckpt.publish(local, ckpt.join(run_dir, "last"))
    if is_best:
        ckpt.publish(local, ckpt.join(run_dir, "best"))
    write_metrics_csv(ckpt.join(run_dir, "metrics.csv"), job.history)
    return local
