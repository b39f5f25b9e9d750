"""The one typed config tree: pydantic models, YAML loading, dotted overrides, error formatting.

Only builder functions read this tree; components take plain typed arguments.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from trainer import registry
from trainer.errors import ConfigError


class Section(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def local_paths(info: ValidationInfo) -> bool:
    """Whether paths are checked here and made absolute (workers run in another folder)."""
    return (info.context or {}).get("local_paths", True)


def check_name(kind: str, name: str, choices: list[str]) -> str:
    if name in choices:
        return name
    close = difflib.get_close_matches(name, choices, n=5)
    hint = f"did you mean {', '.join(close)}?" if close else f"see `vft ls {kind}`"
    allowed = ", ".join(choices) if len(choices) <= 12 else hint
    singular = kind.removesuffix("es") if kind.endswith("sses") else kind.removesuffix("s")
    raise ValueError(f"unknown {singular} '{name}'; allowed: {allowed}")


class ModelConfig(Section):
    """What every task's model section has; each task adds its own fields and checks the name."""

    source: Literal["auto", "timm", "torchvision", "hf"] = Field(
        "auto", description="hf: a transformers model (model.name a Hub id or save_pretrained folder)"
    )
    name: str = "resnet18"
    weights: str = Field("none", description="none | hub | path to .safetensors/.pth | previous RUN_DIR")

    @field_validator("weights")
    @classmethod
    def _weights_exist(cls, value: str, info: ValidationInfo) -> str:
        if value in ("none", "hub") or not local_paths(info):
            return value
        path = Path(value).expanduser()
        if not path.exists():
            raise ValueError(f"'{value}' is neither none, hub, nor an existing file or RUN_DIR")
        if path.is_file() and path.suffix not in (".safetensors", ".pth", ".pt", ".bin"):
            raise ValueError(f"'{value}': weights files must be .safetensors, .pth, .pt or .bin")
        return str(path.resolve())


class AugmentConfig(Section):
    """Geometric and colour augmentation every task's joint transforms apply."""

    hflip: float = Field(0.5, ge=0.0, le=1.0)
    vflip: float = Field(0.0, ge=0.0, le=1.0)
    rotation: float = Field(0.0, ge=0.0, le=180.0, description="max degrees")
    color_jitter: float = Field(0.0, ge=0.0, le=1.0)


class CropAugmentConfig(AugmentConfig):
    """RandomResizedCrop's range, for tasks whose model takes a fixed-size crop."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    @field_validator("scale", "ratio")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1]:
            raise ValueError(f"need 0 < low <= high, got {list(value)}")
        return value


class DataConfig(Section):
    """What every task's data section has; each task narrows `format` and adds its fields."""

    train: str = Field(description="the training set (a path; its layout depends on data.format)")
    val: str | None = None
    format: str = "auto"
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    split_seed: int = 0
    batch_size: int = Field(32, ge=1, description="per worker")
    num_workers: int = Field(2, ge=0, description="DataLoader processes per Ray worker")
    img_size: int | None = Field(None, ge=8)
    augment: AugmentConfig = AugmentConfig()
    skip_bad_images: bool = False
    max_image_pixels: int = Field(89_478_485, ge=1)
    cache: Literal["none", "ram"] = Field(
        "none",
        description="ram: each worker decodes its own shard of the training images once and keeps "
        "them in memory (downscaled to what the crop needs, for classification): for datasets that fit",
    )
    decode: Literal["auto", "cpu", "gpu"] = Field(
        "auto",
        description="where JPEGs are decoded: gpu (in batches on the worker's GPU, where the "
        "augmentation runs too; loader processes only read files), cpu (loader processes), "
        "auto (gpu when the worker has one)",
    )

    @field_validator("train", "val")
    @classmethod
    def _exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or not local_paths(info) or ("://" in value and not value.startswith("file://")):
            return value  # object storage (s3://, gs://) is listed when the data is read
        if value.startswith("hf:"):
            return value  # a Hugging Face Hub dataset: loaded (or found in its cache) when read
        path = Path(value).expanduser()
        if not path.exists():
            raise ValueError(f"path '{value}' does not exist")
        return str(path.resolve())  # workers run elsewhere: pass absolute paths


class HfDataSection(Section):
    """Which part of a Hugging Face dataset (`data.format: hf`) to read."""

    config: str | None = Field(None, description="the dataset's configuration (load_dataset's name)")
    split: str = Field("train", description="the training split")
    val_split: str | None = Field(
        None,
        description="the validation split (of data.val when set, else of data.train); unset: "
        "data.val's validation or test split, or a seeded stratified split of the training split",
    )
    image_column: str | None = Field(None, description="unset: the first Image feature")
    label_column: str | None = Field(
        None,
        description="classification: unset = the first ClassLabel feature, else 'label'; "
        "segmentation: the mask column, unset = the first Image feature after the image's",
    )


class ImageInputDataConfig(DataConfig):
    """Data for models that take a normalised fixed-size input: the preprocessing overrides
    (defaults come from the model's pretrained config) and crop augmentation."""

    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    interpolation: Literal["bilinear", "bicubic", "nearest"] | None = None
    crop_pct: float | None = Field(None, gt=0.0, le=1.0)
    augment: CropAugmentConfig = CropAugmentConfig()


class UnfreezeStage(Section):
    epoch: int = Field(ge=1, description="epoch (0-based) at which this stage starts")
    blocks: int | Literal["all"] = Field(description="how many more blocks to unfreeze, top first")
    lr_mult: float = Field(1.0, gt=0.0)

    @field_validator("blocks")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be >= 1 or 'all'")
        return value


class LoraSection(Section):
    """Low-rank adapters (strategy 'lora'); the head always trains in full."""

    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0.0, description="adapters scale by alpha / rank")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    targets: list[str] | None = Field(
        None,
        description="layers to adapt: names, suffixes (qkv) or globs (blocks.*.mlp.fc1); default per "
        "family: attention projections for ViTs, 1x1 convs for CNNs",
    )


class FinetuneConfig(Section):
    strategy: Literal["full", "linear_probe", "gradual", "lora"] = "full"
    unfreeze: list[UnfreezeStage] = Field([], validate_default=True)
    layer_decay: float | None = Field(None, gt=0.0, le=1.0)
    head_lr_mult: float = Field(1.0, gt=0.0)
    lora: LoraSection = LoraSection()

    @field_validator("unfreeze")
    @classmethod
    def _schedule_fits_strategy(
        cls, stages: list[UnfreezeStage], info: ValidationInfo
    ) -> list[UnfreezeStage]:
        strategy = info.data.get("strategy")
        if strategy == "gradual" and not stages:
            raise ValueError("strategy 'gradual' needs at least one stage")
        if stages and strategy not in ("gradual", "lora"):
            raise ValueError(
                f"only used by strategies 'gradual' and 'lora' (adapters by stage), not '{strategy}'"
            )
        epochs = [s.epoch for s in stages]
        if epochs != sorted(set(epochs)):
            raise ValueError(f"stage epochs must be strictly increasing, got {epochs}")
        return stages

    @field_validator("lora")
    @classmethod
    def _lora_needs_strategy(cls, lora: LoraSection, info: ValidationInfo) -> LoraSection:
        strategy = info.data.get("strategy")
        if strategy != "lora" and lora != LoraSection():  # a dumped config repeats the defaults
            raise ValueError(f"only used by strategy 'lora', not '{strategy}'")
        return lora


class OptimConfig(Section):
    name: str = "adamw"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    betas: tuple[float, float] | None = None
    eps: float | None = Field(None, gt=0.0)

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        return check_name("optimizers", value, registry.list_optimizers())


class ScheduleConfig(Section):
    name: str = "cosine"
    warmup_epochs: float = Field(0.0, ge=0.0)
    warmup_steps: int = Field(0, ge=0, description="overrides warmup_epochs when > 0")
    warmup_start_factor: float = Field(0.01, gt=0.0, le=1.0)
    min_lr: float = Field(0.0, ge=0.0)
    step_epochs: int = Field(30, ge=1, description="step: decay every N epochs")
    milestones: list[int] = [30, 60]
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step/multistep/plateau decay factor")
    plateau_patience: int = Field(2, ge=0)
    pct_start: float = Field(0.3, gt=0.0, lt=1.0, description="onecycle warm phase")
    cycle_epochs: float = Field(2.0, gt=0.0, description="cyclic: length of one up+down cycle")
    cyclic_base_factor: float = Field(0.1, gt=0.0, le=1.0)

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        return check_name("schedulers", value, registry.list_schedulers())


class LossConfig(Section):
    """`name` is checked by each task against the losses it can train with."""

    name: str = "auto"


class EarlyStoppingConfig(Section):
    enabled: bool = False
    patience: int = Field(5, ge=1)
    min_delta: float = Field(0.0, ge=0.0)


class EmaConfig(Section):
    enabled: bool = False
    decay: float = Field(0.9998, gt=0.0, lt=1.0)


class TrainConfig(Section):
    epochs: int = Field(10, ge=1)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    channels_last: bool = False
    compile: bool = False
    grad_clip: float | None = Field(None, gt=0.0)
    accum_steps: int = Field(1, ge=1)
    monitor: str | None = Field(None, description="metric for best checkpoint and early stopping")
    mode: Literal["max", "min"] | None = None
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    ema: EmaConfig = EmaConfig()
    sync_bn: bool = False
    seed: int = 0


class QatSection(Section):
    """Quantization-aware training: the last `epochs` epochs train with int8 fake quantization
    (PyTorch 2 export QAT through torchao), so `vft export --format int8` writes the learned
    scales instead of calibrating."""

    enabled: bool = False
    epochs: int | None = Field(
        None, ge=1, description="the last N epochs train quantized (null: all of them, e.g. a short "
        "QAT run from a finished one: model.weights=RUN_DIR)",
    )  # fmt: skip
    per_channel: bool = Field(True, description="int8 weights per output channel (else per tensor)")
    freeze_bn_after: int | None = Field(
        None, ge=1, description="QAT epochs after which BatchNorm statistics stop updating (null: never)"
    )
    freeze_observers_after: int | None = Field(
        None, ge=1, description="QAT epochs after which activation ranges stop updating (null: never)"
    )


class ScalingSection(Section):
    num_workers: int = Field(2, ge=1)
    use_gpu: bool | Literal["auto"] = "auto"
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus_per_worker: float = Field(1.0, gt=0.0)


class RunSection(Section):
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    storage: str = "runs"
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(0, ge=-1)


class TrackSection(Section):
    """Experiment tracking from the driver (`trainer/components/tracking.py`)."""

    backend: list[Literal["mlflow", "tensorboard", "none"]] = Field(
        ["mlflow"], description="mlflow | tensorboard | none, or a list of them"
    )
    uri: str | None = Field(
        None,
        description="MLflow tracking server (http(s)://, databricks, sqlite:///); default "
        "$MLFLOW_TRACKING_URI, else sqlite:///<run.storage>/mlflow.db",
    )
    experiment: str = Field("vft", min_length=1, description="MLflow experiment name")

    @field_validator("backend", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("backend")
    @classmethod
    def _none_alone(cls, value: list[str]) -> list[str]:
        if "none" in value and len(value) > 1:
            raise ValueError("'none' cannot be combined with another backend")
        if len(set(value)) != len(value):
            raise ValueError(f"{value}: a backend is listed twice")
        return value

    def backends(self) -> list[str]:
        return [b for b in self.backend if b != "none"]


class VftConfig(Section):
    """The sections every task shares. Each task subclasses it in its own folder
    (`trainer/tasks/<task>/config.py`) with `task: Literal["<task>"]` and its own model, data,
    loss and train sections; `build_config` picks the subclass by `task` (a discriminated
    union), so a field of another task is an unknown key."""

    task: str
    model: ModelConfig = ModelConfig()
    data: DataConfig
    finetune: FinetuneConfig = FinetuneConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    qat: QatSection = QatSection()
    scaling: ScalingSection = ScalingSection()
    run: RunSection = RunSection()
    track: TrackSection = TrackSection()
    supports_qat: ClassVar[bool] = False  # a task whose models quantization-aware training takes

    def with_data_paths(self, localize: Callable[[str], str]) -> VftConfig:
        """A copy whose data.train and data.val went through `localize` (e.g. object-store
        datasets replaced by their local copies)."""
        d = self.data
        paths = {"train": localize(d.train), "val": localize(d.val) if d.val else None}
        return self.model_copy(update={"data": d.model_copy(update=paths)})

    def metric_names(self) -> list[str]:
        """Every metric an epoch reports (train.monitor is one of them)."""
        raise NotImplementedError

    def default_monitor(self) -> str:
        raise NotImplementedError

    @model_validator(mode="after")
    def _decode_needs_gpus(self) -> VftConfig:
        if self.data.decode == "gpu" and self.scaling.use_gpu is False:
            raise ValueError("data.decode: 'gpu' needs GPU workers, and scaling.use_gpu is false")
        return self

    @model_validator(mode="after")
    def _tracking_fits_storage(self) -> VftConfig:
        remote = self.run.storage.startswith(("s3://", "gs://"))
        if remote and "tensorboard" in self.track.backend:
            raise ValueError(
                "track.backend: tensorboard writes RUN_DIR/tb/ on a local run.storage; with "
                f"{self.run.storage} track with mlflow (track.uri)"
            )
        return self

    @model_validator(mode="after")
    def _qat_fits(self) -> VftConfig:
        q = self.qat
        if not q.enabled:
            if q != QatSection():  # a dumped config repeats the defaults
                raise ValueError("qat: settings given but qat.enabled is false")
            return self
        if not self.supports_qat:
            raise ValueError(
                f"qat.enabled: task '{self.task}' has no quantization-aware training (classification has)"
            )
        if q.epochs is not None and q.epochs > self.train.epochs:
            raise ValueError(f"qat.epochs: {q.epochs} is more than train.epochs ({self.train.epochs})")
        clashes = {
            "finetune.strategy": self.finetune.strategy == "lora"
            and "'lora' (adapters are merged after training)",
            "train.compile": self.train.compile and "true (the quantized graph trains eagerly)",
            "train.sync_bn": self.train.sync_bn and "true (the quantized graph keeps its own BatchNorm)",
        }
        for name, why in clashes.items():
            if why:
                raise ValueError(f"{name}: {why} does not work with qat.enabled")
        return self

    @model_validator(mode="after")
    def _resolve_monitor(self) -> VftConfig:
        names = self.metric_names()
        monitor = self.train.monitor or self.default_monitor()
        if monitor not in names:
            raise ValueError(f"train.monitor: unknown metric '{monitor}'; allowed: {', '.join(names)}")
        mode = self.train.mode or ("min" if monitor.endswith("loss") else "max")
        if (self.train.monitor, self.train.mode) != (monitor, mode):
            self.train = self.train.model_copy(update={"monitor": monitor, "mode": mode})
        return self


# ----------------------------------------------------------------------------- loading


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`a.b=1 a.c=[1,2]` -> {"a": {"b": 1, "c": [1, 2]}}; values are YAML scalars/lists."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override '{item}': expected dotted.key=value")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{item}': value is not valid YAML ({exc})") from exc
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        node[leaf] = value
    return tree


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def format_errors(exc: ValidationError, task: str | None = None) -> str:
    lines = []
    for err in exc.errors():
        loc = err["loc"][1:] if task and err["loc"][:1] == (task,) else err["loc"]  # the union's tag
        path = ".".join(str(p) for p in loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key for task {task} (typo?)" if task else "unknown key (typo?)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"{path}: {msg}" if path else msg)
    return "\n".join(lines)


def build_config(raw: dict[str, Any], local_paths: bool = True) -> VftConfig:
    """Validate a raw config tree. `local_paths=False` leaves data and weights paths unchecked
    and as written: they name files on a cluster (`vft submit`), not on this machine."""
    task = raw.get("task", DEFAULT_TASK)
    try:
        check_name("tasks", task, registry.list_tasks())
    except ValueError as exc:
        raise ConfigError(f"task: {exc}") from None
    try:
        return _task_configs().validate_python({**raw, "task": task}, context={"local_paths": local_paths})
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, task)) from None


DEFAULT_TASK = "classification"


@cache
def _task_configs() -> TypeAdapter:
    """The discriminated union of every registered task's config class, tagged by `task`."""
    classes = tuple(registry.TASKS.get(name).config for name in registry.list_tasks())
    return TypeAdapter(Annotated[Union[classes], Field(discriminator="task")])  # noqa: UP007


def config_class(task: str) -> type[VftConfig]:
    return registry.TASKS.get(task).config


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return raw


def load_config(path: str | Path, overrides: list[str] = (), name: str | None = None) -> VftConfig:
    """Load YAML, apply `dotted.key=value` overrides, validate. The run name defaults to the
    config file's stem, so running the same config again resumes the same RUN_DIR."""
    raw = merge(read_yaml(path), parse_overrides(list(overrides)))
    if name:
        raw = merge(raw, {"run": {"name": name}})
    raw.setdefault("run", {}).setdefault("name", Path(path).stem)
    return build_config(raw)


def to_yaml(cfg: VftConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def save_config(cfg: VftConfig, path: str | Path) -> None:
    Path(path).write_text(to_yaml(cfg))
