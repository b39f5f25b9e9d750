"""LoRA and cached-feature probes in a worker's job, without Ray: what trains, what a LoRA
checkpoint holds and resumes from, and a cached probe that trains the head as the uncached
probe does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer.components import checkpoint as ckpt
from trainer.components.feature_cache import CachedFeatures
from trainer.config import load_config
from trainer.engine.assemble import setup
from trainer.engine.loop import cache_features, evaluate, seed_everything, set_stage, train_one_epoch
from trainer.engine.progress import WorkerProgress
from trainer.engine.state import restore, save_epoch
from trainer.errors import ConfigError, WeightsError
from trainer.tasks.base import model_from_checkpoint

ROOT = Path(__file__).resolve().parents[4]
CPU = torch.device("cpu")


def make_job(digits_dir, *overrides: str):
    cfg = load_config(
        ROOT / "configs/digits.yaml",
        [f"data.train={digits_dir}/train", f"data.val={digits_dir}/val", "data.num_workers=0", *overrides],
    )
    seed_everything(cfg.train.seed)
    return setup(cfg, rank=0, world=1, device=CPU)


def first_batches(job, n: int) -> list:
    return [batch for _, batch in zip(range(n), job.train_loader, strict=False)]


class Batches(list):
    sampler = None


def test_lora_trains_adapters_and_head_only_and_resumes_from_the_adapters(digits_dir, tmp_path):
    job = make_job(digits_dir, "finetune.strategy=lora", "finetune.lora.rank=4", "optim.lr=0.01")
    set_stage(job, 0)
    before = {n: p.detach().clone() for n, p in job.model.named_parameters()}
    batches = Batches(first_batches(job, 3))
    job.train_loader = batches
    train_one_epoch(job, 0, WorkerProgress(None))
    changed = {n for n, p in job.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".lora_" in n or n.startswith("fc.") for n in changed)
    assert any(".lora_B." in n for n in changed) and "fc.weight" in changed
    record = {"epoch": 1, "train/loss": 1.0, "val/top1": 0.5}
    job.history.append(record)
    save_epoch(job, 1, record, {}, True, str(tmp_path))

    best = tmp_path / "best"
    merged = load_file(best / ckpt.MODEL_FILE)
    assert not any("lora_" in k or "base_layer" in k for k in merged)
    meta = ckpt.read_meta(best)
    assert meta["training"]["strategy"] == "lora" and meta["training"]["lora"]["rank"] == 4
    plain, _ = model_from_checkpoint(best)  # what export and serving load: a plain resnet18
    x = torch.randn(2, 3, 32, 32)
    job.model.eval()
    torch.testing.assert_close(plain.eval()(x), job.model(x), rtol=1e-4, atol=1e-5)
    state = ckpt.read_state(best)
    kept = sum(t.numel() for t in state["adapter"].values())
    assert kept < 0.1 * sum(t.numel() for t in merged.values())  # adapters + head, not the base
    assert "model" not in state

    resumed = make_job(digits_dir, "finetune.strategy=lora", "finetune.lora.rank=4", "optim.lr=0.01")
    restore(resumed, str(best))
    assert resumed.start_epoch == 1
    for name, param in resumed.model.named_parameters():
        torch.testing.assert_close(param, job.model.get_parameter(name))
    other = make_job(digits_dir, "finetune.strategy=lora", "finetune.lora.rank=4", "train.seed=1")
    with pytest.raises(WeightsError, match="adapters were trained on resnet18"):
        restore(other, str(best))  # another random base: the adapters do not belong to it


def test_lora_with_stages_unfreezes_adapters_top_first(digits_dir):
    job = make_job(
        digits_dir,
        "finetune.strategy=lora",
        'finetune.unfreeze=[{"epoch": 1, "blocks": 1}, {"epoch": 2, "blocks": "all"}]',
    )
    set_stage(job, 0)
    assert job.trainable == {"fc.weight", "fc.bias"}
    set_stage(job, 1)
    top = job.trainable - {"fc.weight", "fc.bias"}
    assert top and all(".lora_" in n and n.startswith("layer4.") for n in top)
    set_stage(job, 2)
    assert any(n.startswith("layer1.") for n in job.trainable)
    assert not any("base_layer" in n for n in job.trainable)


def test_lora_target_that_matches_nothing_is_a_config_error(digits_dir):
    with pytest.raises(ConfigError, match="finetune.lora.targets: 'qkv' matches no"):
        make_job(digits_dir, "finetune.strategy=lora", "finetune.lora.targets=[qkv]")


def test_cached_probe_trains_the_head_as_the_uncached_probe(digits_dir):
    """One full-batch step per epoch, so the data order does not matter: the head after three
    epochs on cached features equals the head trained through the frozen backbone."""
    common = ("finetune.strategy=linear_probe", "data.batch_size=2000", "optim.lr=0.05")
    no_aug = ("data.augment.scale=[1,1]", "data.augment.ratio=[1,1]", "data.augment.rotation=0")
    plain = make_job(digits_dir, *common, *no_aug)
    cached = make_job(digits_dir, *common, "finetune.cache_features=true", "data.augment.rotation=0")
    cache_features(cached)
    assert isinstance(cached.train_loader, CachedFeatures) and len(cached.train_loader) == 1
    calls = []
    cached.model.conv1.register_forward_hook(lambda *_: calls.append(1))
    for epoch in range(3):
        for job in (plain, cached):
            set_stage(job, epoch)
            train_one_epoch(job, epoch, WorkerProgress(None))
    assert calls == []  # the backbone never ran again
    torch.testing.assert_close(cached.model.fc.weight, plain.model.fc.weight, rtol=1e-3, atol=1e-5)
    assert not torch.equal(cached.model.fc.weight, make_job(digits_dir, *common).model.fc.weight)
    assert evaluate(cached)[0]["val/top1"] == pytest.approx(evaluate(plain)[0]["val/top1"], abs=0.01)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("finetune.cache_features=true",), "finetune.cache_features: needs strategy 'linear_probe'"),
        (
            ("finetune.strategy=linear_probe", "finetune.cache_features=true"),
            "data.augment.rotation: 10.0 changes the images every epoch",
        ),
        (("finetune.lora.rank=4",), "finetune.lora: only used by strategy 'lora', not 'full'"),
    ],
)
def test_probe_and_lora_settings_that_cannot_apply_are_config_errors(digits_dir, overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_job(digits_dir, *overrides)


def test_an_fp16_runs_grad_scaler_scale_survives_a_resume(digits_dir, tmp_path):
    """An overflow lowers the fp16 loss scale; RUN_DIR/last keeps it and a resumed job goes on
    with it instead of the default."""
    job = make_job(digits_dir, "train.precision=fp16", "model.name=test_resnet")
    set_stage(job, 0)
    images, targets, _ = first_batches(job, 1)[0]
    job.step(images * float("inf"), targets)
    scale = job.step.scaler.get_scale()
    record = {"epoch": 1, "train/loss": 1.0, "val/top1": 0.5}
    job.history.append(record)
    save_epoch(job, 1, record, {}, True, str(tmp_path))
    resumed = make_job(digits_dir, "train.precision=fp16", "model.name=test_resnet")
    default = resumed.step.scaler.get_scale()
    restore(resumed, str(tmp_path / "last"))
    assert resumed.step.scaler.get_scale() == scale < default


def test_ema_weights_are_what_validation_scores_best_holds_and_a_resume_restores(digits_dir, tmp_path):
    job = make_job(digits_dir, "train.ema.enabled=true", "train.ema.decay=0.5", "model.name=test_resnet")
    set_stage(job, 0)
    job.train_loader = Batches(first_batches(job, 2))
    train_one_epoch(job, 0, WorkerProgress(None))
    ema = {k: v.detach().clone() for k, v in job.step.ema.module.state_dict().items()}
    raw = job.model.state_dict()
    assert any(not torch.equal(v, raw[k]) for k, v in ema.items() if v.is_floating_point())
    scores, _ = evaluate(job)
    with torch.no_grad():
        for param in job.model.parameters():
            param.zero_()  # the trained (non-averaged) weights are gone: validation must not notice
    assert evaluate(job)[0] == scores
    record = {"epoch": 1, "train/loss": 1.0, **scores}
    job.history.append(record)
    save_epoch(job, 1, record, {}, True, str(tmp_path))
    saved = load_file(tmp_path / "best" / ckpt.MODEL_FILE)
    assert saved.keys() == ema.keys()
    for name, value in ema.items():
        torch.testing.assert_close(saved[name], value)
    resumed = make_job(digits_dir, "train.ema.enabled=true", "train.ema.decay=0.5", "model.name=test_resnet")
    restore(resumed, str(tmp_path / "last"))
    for name, value in resumed.step.ema.module.state_dict().items():
        torch.testing.assert_close(value, ema[name])


def test_compiled_training_steps_and_saves_the_plain_model(digits_dir, tmp_path):
    """`train.compile`: the loss runs through torch.compile's module (inductor, C++ on CPU), the
    weights train, and best/ holds the plain model's keys (no `_orig_mod.` prefix), which
    export and serving load. timm's test_vit: inductor compiles its graph in about half
    test_resnet's time on a CPU."""
    job = make_job(digits_dir, "model.name=test_vit", "train.compile=true", "data.batch_size=16")
    set_stage(job, 0)
    assert isinstance(job.step.forward_model, torch._dynamo.eval_frame.OptimizedModule)
    assert job.step.forward_model._orig_mod is job.model
    before = {n: p.detach().clone() for n, p in job.model.named_parameters()}
    job.train_loader = Batches(first_batches(job, 3))
    record = train_one_epoch(job, 0, WorkerProgress(None))
    assert torch.isfinite(torch.tensor(record["train/loss"]))
    assert all(not torch.equal(p, before[n]) for n, p in job.model.named_parameters() if p.requires_grad)
    job.history.append(record | {"epoch": 1, "val/top1": 0.5})
    save_epoch(job, 1, job.history[-1], {}, True, str(tmp_path))
    saved = load_file(tmp_path / "best" / ckpt.MODEL_FILE)
    assert set(saved) == set(job.model.state_dict())
    plain, _ = model_from_checkpoint(tmp_path / "best")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(plain.eval()(x), job.model.eval()(x), rtol=1e-4, atol=1e-5)
