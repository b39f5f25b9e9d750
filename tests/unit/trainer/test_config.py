"""Config tree: YAML + dotted overrides, validation errors that name the dotted field and the
allowed values, resolved defaults, and every shipped config under configs/ validates."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hf_tools import digits_parquet, hub_snapshot, tiny_vit

from trainer.components import synthetic as generate
from trainer.config import build_config, load_config, merge, parse_overrides, save_config
from trainer.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
# train configs; search spaces (*_space.yaml) are checked by tests/unit/tuner/test_space.py
SHIPPED = sorted(p for p in (ROOT / "configs").glob("*.yaml") if not p.stem.endswith("_space"))


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """cwd = tmp_path holding an (empty) ImageFolder root `imgs/a` and `val/a`."""
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    (tmp_path / "val" / "a").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_config(directory: Path, body: dict, name: str = "myrun") -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.fixture
def config_file(workdir) -> Path:
    return write_config(workdir, {"data": {"train": "imgs"}, "optim": {"lr": 0.1, "weight_decay": 0.01}})


def config_error(path: Path, *overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    return str(info.value)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("override", "dotted"),
    [
        ("optim.lrr=1", "optim.lrr"),
        ("data.augment.foo=1", "data.augment.foo"),
        ("train.ema.decayy=0.5", "train.ema.decayy"),
        ("bogus=1", "bogus"),
    ],
)
def test_unknown_key_names_its_dotted_path(config_file, override, dotted):
    message = config_error(config_file, override)
    assert message.startswith(f"{dotted}: ")
    assert "unknown key" in message


def test_unknown_key_in_the_yaml_itself(workdir):
    path = write_config(workdir, {"data": {"train": "imgs"}, "schedule": {"warmup_epoch": 1}})
    assert config_error(path).startswith("schedule.warmup_epoch: unknown key")


def test_every_error_is_reported_on_its_own_line(config_file):
    lines = config_error(config_file, "optim.lrr=1", "train.epochs=0").splitlines()
    assert sorted(line.split(":")[0] for line in lines) == ["optim.lrr", "train.epochs"]


@pytest.mark.parametrize(
    ("override", "dotted", "allowed"),
    [
        ("train.precision=fp8", "train.precision", ["auto", "bf16", "fp16", "fp32"]),
        ("finetune.strategy=bogus", "finetune.strategy", ["full", "linear_probe", "gradual"]),
        ("model.source=onnx", "model.source", ["auto", "timm", "torchvision"]),
        ("data.augment.auto_augment=x", "data.augment.auto_augment", ["randaugment", "trivialaugment"]),
    ],
)
def test_literal_field_lists_allowed_values(config_file, override, dotted, allowed):
    message = config_error(config_file, override)
    assert message.startswith(f"{dotted}: ")
    for value in allowed:
        assert f"'{value}'" in message


def test_gpu_decoding_needs_gpu_workers(config_file):
    assert load_config(config_file, ["data.decode=gpu"]).data.decode == "gpu"
    message = config_error(config_file, "data.decode=gpu", "scaling.use_gpu=false")
    assert message.startswith("data.decode: 'gpu' needs GPU workers")


def test_unknown_optimizer_names_field_and_suggests(config_file):
    message = config_error(config_file, "optim.name=adamx")
    assert message.startswith("optim.name: ")
    assert "'adamx'" in message
    assert "adamw" in message  # close match


def test_unknown_scheduler_lists_the_registered_names(config_file):
    message = config_error(config_file, "schedule.name=cosin")
    assert message.startswith("schedule.name: unknown scheduler 'cosin'")
    for name in ("cosine", "step", "multistep", "plateau", "onecycle", "cyclic", "constant"):
        assert name in message


def test_unknown_loss_names_field(config_file):
    message = config_error(config_file, "loss.name=focall")
    assert message.startswith("loss.name: unknown loss 'focall'")
    assert "focal" in message and "cross_entropy" in message


def test_unknown_model_names_field_with_close_matches(config_file):
    message = config_error(config_file, "model.name=resnet19")
    assert message.startswith("model.name: ")
    assert "'resnet19'" in message
    assert "did you mean" in message and "resnet18" in message


def test_model_source_restricts_the_lookup(config_file):
    # test_vit exists in timm only
    assert load_config(config_file, ["model.name=test_vit"]).model.name == "test_vit"
    message = config_error(config_file, "model.name=test_vit", "model.source=torchvision")
    assert message.startswith("model.name: ")
    assert "torchvision" in message


def test_weights_must_exist(config_file):
    message = config_error(config_file, "model.weights=nowhere/w.safetensors")
    assert message.startswith("model.weights: ")
    assert "nowhere/w.safetensors" in message


def test_bad_yaml_file_is_a_config_error(workdir):
    with pytest.raises(ConfigError, match="not found"):
        load_config(workdir / "missing.yaml")
    bad = workdir / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


# ----------------------------------------------------------------------------- overrides


def test_parse_overrides_builds_a_tree():
    tree = parse_overrides(
        ["a.b=1", "a.c=x", "data.augment.scale=[0.5,1.0]", "top=true", "a.d.e=2.5", "empty="]
    )
    assert tree == {
        "a": {"b": 1, "c": "x", "d": {"e": 2.5}},
        "data": {"augment": {"scale": [0.5, 1.0]}},
        "top": True,
        "empty": "",
    }


@pytest.mark.parametrize("bad", ["noequals", "a..b=1", "=1", ".a=1", "a.=1"])
def test_parse_overrides_rejects_malformed(bad):
    with pytest.raises(ConfigError, match="dotted.key=value"):
        parse_overrides([bad])


def test_override_of_a_value_with_a_section_is_rejected():
    with pytest.raises(ConfigError, match="not a section"):
        parse_overrides(["a=1", "a.b=2"])


def test_overrides_win_over_yaml_and_keep_siblings(config_file):
    cfg = load_config(config_file, ["optim.lr=0.5", "data.augment.scale=[0.5,1.0]"])
    assert cfg.optim.lr == 0.5
    assert cfg.optim.weight_decay == 0.01  # untouched YAML sibling survives the merge
    assert cfg.data.augment.scale == (0.5, 1.0)
    assert load_config(config_file).optim.lr == 0.1


def test_run_name_defaults_to_the_config_stem(config_file):
    assert load_config(config_file).run.name == "myrun"
    assert load_config(config_file, ["run.name=other"]).run.name == "other"
    assert load_config(config_file, ["run.name=other"], name="cli").run.name == "cli"


def test_data_paths_become_absolute(config_file, workdir):
    cfg = load_config(config_file, ["data.val=val"])
    assert Path(cfg.data.train).is_absolute()
    assert Path(cfg.data.train) == (workdir / "imgs").resolve()
    assert Path(cfg.data.val) == (workdir / "val").resolve()


def test_missing_data_path_names_the_field(config_file):
    message = config_error(config_file, "data.val=nope")
    assert message.startswith("data.val: ")
    assert "nope" in message


def test_data_train_is_required(workdir):
    path = write_config(workdir, {"optim": {"lr": 0.1}})
    assert config_error(path) == "data: required field is missing"


# ----------------------------------------------------------------------------- resolved values


@pytest.mark.parametrize(
    ("overrides", "monitor", "mode"),
    [
        ([], "val/top1", "max"),
        (["data.multilabel=true"], "val/map", "max"),
        (["train.monitor=val/loss"], "val/loss", "min"),
        (["train.monitor=train/loss"], "train/loss", "min"),
        (["train.monitor=val/f1"], "val/f1", "max"),
        (["train.monitor=val/loss", "train.mode=max"], "val/loss", "max"),
    ],
)
def test_monitor_and_mode_defaults(config_file, overrides, monitor, mode):
    cfg = load_config(config_file, overrides)
    assert (cfg.train.monitor, cfg.train.mode) == (monitor, mode)


def test_unknown_monitor_metric(config_file):
    message = config_error(config_file, "train.monitor=val/map")  # map is multilabel only
    assert message.startswith("train.monitor: unknown metric 'val/map'")
    assert "val/top1" in message


def test_gradual_needs_stages(config_file):
    message = config_error(config_file, "finetune.strategy=gradual")
    assert message.startswith("finetune.unfreeze: ")
    assert "gradual" in message


@pytest.mark.parametrize("epochs", [(3, 2), (2, 2)])
def test_unfreeze_epochs_must_increase(config_file, epochs):
    stages = f"[{{epoch: {epochs[0]}, blocks: 1}}, {{epoch: {epochs[1]}, blocks: all}}]"
    message = config_error(config_file, "finetune.strategy=gradual", f"finetune.unfreeze={stages}")
    assert message.startswith("finetune.unfreeze: ")
    assert "increasing" in message


def test_valid_gradual_config(config_file):
    stages = "[{epoch: 2, blocks: 2, lr_mult: 0.3}, {epoch: 4, blocks: all, lr_mult: 0.1}]"
    cfg = load_config(config_file, ["finetune.strategy=gradual", f"finetune.unfreeze={stages}"])
    assert [(s.epoch, s.blocks, s.lr_mult) for s in cfg.finetune.unfreeze] == [(2, 2, 0.3), (4, "all", 0.1)]


def test_unfreeze_without_gradual_is_an_error(config_file):
    message = config_error(config_file, "finetune.unfreeze=[{epoch: 2, blocks: 1}]")
    assert message.startswith("finetune.unfreeze: ")


def test_resolved_config_round_trips(config_file, workdir):
    cfg = load_config(config_file, ["data.multilabel=true", "optim.name=sgd", "run.name=abc"])
    saved = workdir / "resolved.yaml"
    save_config(cfg, saved)
    again = load_config(saved)
    assert again.model_dump() == cfg.model_dump()
    assert build_config(yaml.safe_load(saved.read_text())) == cfg


# ----------------------------------------------------------------------------- shipped configs


def _dataset_root(path: str) -> tuple[Path, str]:
    """The folder of the generated dataset a config path points into (data/digits/train ->
    data/digits, "digits")."""
    parts = Path(path).parts
    for i, part in enumerate(parts):
        for kind in ("digits", "shapes"):
            if kind in part:
                return Path(*parts[: i + 1]), kind
    pytest.fail(
        f"config data path '{path}' names neither a digits nor a shapes dataset; "
        "teach tests/unit/trainer/test_config.py how to generate it"
    )


def test_shipped_configs_exist():
    assert SHIPPED, "configs/*.yaml: no shipped configs"


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_validates(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load(config.read_text())
    data = raw.get("data") or {}
    overrides = []
    if str(data.get("train")).startswith("hf:"):  # a Hub model and dataset: made here, offline
        overrides = hub_sources(raw, tmp_path)
        data = {}
    paths = [data[key] for key in ("train", "val") if data.get(key)]
    assert paths or overrides, f"{config.name}: no data.train"
    made = set()
    for path in paths:
        root, kind = _dataset_root(path)
        if root not in made:
            if kind == "digits":
                generate.digits(root, size=8)
            else:
                generate.shapes_classification(root, n_train=10, n_val=5, size=16)
            made.add(root)
        if not Path(path).exists():
            pytest.fail(f"{config.name}: '{path}' is not produced by the {kind} generator at {root}")
    weights = (raw.get("model") or {}).get("weights", "none")
    assert weights in ("none", "hub"), f"{config.name}: model.weights '{weights}' needs a file the test lacks"
    cfg = load_config(config, overrides)
    assert cfg.run.name == config.stem
    assert Path(cfg.data.train).is_absolute()


def hub_sources(raw: dict, tmp_path: Path) -> list[str]:
    """For a config naming a Hugging Face model by Hub id: a tiny model of that architecture in
    the session's hub cache under that id (as a download leaves it); its Hub dataset replaced by
    the digits as local Parquet shards (the override returned)."""
    model = raw["model"]
    assert model.get("source") == "hf", "an hf: dataset is shipped with an hf model"
    hub_snapshot(model["name"], tiny_vit(tmp_path / "model"))
    return [f"data.train={digits_parquet(tmp_path / 'data', n=40)}"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_a_dumped_config_validates_again(path, tmp_path):
    """What the driver sends to the workers (and `vft tune` to its trials) is the dumped config:
    defaults of strategy-specific sections must not turn into errors on the way."""
    cfg = build_config(yaml.safe_load(path.read_text()), local_paths=False)
    assert build_config(cfg.model_dump(mode="json"), local_paths=False) == cfg


# ----------------------------------------------------------------------------- quantization-aware training


def _qat_error(raw: dict, *overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        build_config(merge(raw, parse_overrides(["qat.enabled=true", *overrides])), local_paths=False)
    return str(info.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["qat.epochs=11"], "qat.epochs: 11 is more than train.epochs (10)"),
        (["finetune.strategy=lora"], "finetune.strategy: 'lora'"),
        (["train.compile=true"], "train.compile: true (the quantized graph trains eagerly)"),
        (["train.sync_bn=true"], "train.sync_bn: true"),
        (["model.drop_path_rate=0.1"], "model.drop_path_rate: stochastic depth"),
        (["finetune.strategy=linear_probe", "finetune.cache_features=true"], "finetune.cache_features"),
    ],
)
def test_qat_refuses_what_it_cannot_train_naming_the_field(overrides, message):
    assert message in _qat_error({"data": {"train": "imgs"}}, *overrides)


def test_qat_is_refused_for_a_task_without_it_and_its_settings_need_it_enabled():
    detection = {"task": "detection", "data": {"train": "coco"}, "model": {"name": "fasterrcnn_resnet50_fpn"}}
    assert "qat.enabled: task 'detection' has no quantization-aware training" in _qat_error(detection)
    with pytest.raises(ConfigError, match="qat: settings given but qat.enabled is false"):
        build_config({"data": {"train": "imgs"}, "qat": {"epochs": 2}}, local_paths=False)
    cfg = build_config({"data": {"train": "imgs"}, "qat": {"enabled": True, "epochs": 2}}, local_paths=False)
    assert (cfg.qat.epochs, cfg.qat.per_channel) == (2, True)


def test_lora_defaults_are_rank_8_alpha_16_no_dropout():
    """The README's LoRA defaults: the config a run gets when it names only the strategy."""
    raw = {"data": {"train": "train/", "val": "val/"}, "finetune": {"strategy": "lora"}}
    lora = build_config(raw, local_paths=False).finetune.lora
    assert (lora.rank, lora.alpha, lora.dropout) == (8, 16.0, 0.0)
