"""The search space file of `vft tune --space SPACE.yaml`: a typed model, checked against the
config schema before anything starts.

```yaml
metric: val/top1            # default: the config's train.monitor (and train.mode)
mode: max
num_samples: 8              # default 8 (random, optuna) or 1 (grid: each point once)
max_concurrent_trials: 2    # default: the trials the cluster's CPUs and GPUs hold at once
time_budget_s: 3600         # optional: stop the sweep after this long
search: random              # random | grid | optuna (TPE)
seed: 0                     # optional: reproducible sampling
scheduler:                  # asha (default) | pbt | median | fifo, or a mapping:
  name: asha
  grace_period: 1           # asha, median: epochs before a trial may be stopped
  reduction_factor: 2       # asha: keep the top 1/reduction_factor at each rung
params:                     # dotted config keys, one distribution each
  optim.lr: {loguniform: [1.0e-5, 1.0e-2]}
  optim.weight_decay: {uniform: [0.0, 0.1]}
  data.batch_size: {choice: [32, 64, 128]}
  model.drop_rate: {quniform: [0.0, 0.5, 0.1]}
  finetune.unfreeze.0.epoch: {randint: [1, 4]}     # list items by index; upper bound exclusive
  finetune.lora.rank: {choice: [4, 8, 16]}          # with finetune.strategy: lora
  loss.label_smoothing: {grid: [0.0, 0.1]}
```

Distributions: `loguniform: [lo, hi]`, `uniform: [lo, hi]`, `quniform: [lo, hi, q]`,
`randint: [lo, hi]` (hi excluded, as in Ray Tune), `choice: [...]`, `grid: [...]` (every value,
in every sample). Each bound and choice is validated by building the config with it, so a
value the schema rejects is an error naming the key before any trial runs; every sampled point
is validated again in its trial.
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainer.config import DEFAULT_TASK, VftConfig, build_config, config_class, format_errors
from trainer.errors import ConfigError
from tuner.registry import SCHEDULERS, SEARCHERS

DISTRIBUTIONS = ("loguniform", "uniform", "quniform", "randint", "choice", "grid")
CONTINUOUS = ("loguniform", "uniform")
FIXED_SECTIONS = {
    "run": "the sweep sets each trial's run.name and run.storage",
    "scaling": "every trial gets the config's scaling; set scaling.* in the config or as an override",
}
FIXED_KEYS = {
    "train.monitor": "set `metric` in the space instead",
    "train.mode": "set `mode` in the space instead",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Distribution(_Strict):
    """Exactly one of the fields is set."""

    loguniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    quniform: tuple[float, float, float] | None = None
    randint: tuple[int, int] | None = None
    choice: list[Any] | None = Field(None, min_length=1)
    grid: list[Any] | None = Field(None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _one_distribution(cls, value: Any) -> Any:
        example = "e.g. {loguniform: [0.0001, 0.01]} or {choice: [32, 64]}"
        if not isinstance(value, dict) or len(value) != 1:
            raise ValueError(f"expected one distribution, {example}")
        (name,) = value
        if name not in DISTRIBUTIONS:
            raise ValueError(f"unknown distribution '{name}'; allowed: {', '.join(DISTRIBUTIONS)}")
        return value

    @model_validator(mode="after")
    def _ordered_bounds(self) -> Distribution:
        name, args = self.kind, self.args
        if name in ("choice", "grid"):
            return self
        lo, hi = args[0], args[1]
        if not lo < hi:
            raise ValueError(f"{name}: need low < high, got {list(args)}")
        if name == "loguniform" and lo <= 0:
            raise ValueError(f"loguniform: bounds must be > 0, got {list(args)}")
        if name == "quniform" and args[2] <= 0:
            raise ValueError(f"quniform: the step q must be > 0, got {args[2]}")
        return self

    @property
    def kind(self) -> str:
        return next(name for name in DISTRIBUTIONS if getattr(self, name) is not None)

    @property
    def args(self) -> Any:
        return getattr(self, self.kind)

    def probes(self) -> list[Any]:
        """The values checked against the config schema: the bounds, or every choice."""
        args = self.args
        if self.kind in ("choice", "grid"):
            return list(args)
        if self.kind == "randint":
            return [args[0], args[1] - 1]
        return [args[0], args[1]]

    def bounds(self) -> tuple[float, float] | None:
        if self.kind in ("choice", "grid"):
            return None
        return (self.args[0], self.args[1] - 1) if self.kind == "randint" else (self.args[0], self.args[1])


class SchedulerSpec(_Strict):
    name: str = "asha"
    grace_period: int = Field(1, ge=1, description="asha, median: epochs before stopping is allowed")
    reduction_factor: float = Field(2.0, gt=1.0, description="asha: keep the top 1/reduction_factor")
    min_samples_required: int = Field(3, ge=1, description="median: trials needed to compare")
    perturbation_interval: int = Field(1, ge=1, description="pbt: epochs between exploit/explore")
    quantile_fraction: float = Field(0.25, gt=0.0, le=0.5, description="pbt: bottom that copies the top")
    resample_probability: float = Field(0.25, ge=0.0, le=1.0, description="pbt: resample, else perturb")
    synch: bool = Field(False, description="pbt: perturb only when every trial reached the interval")

    OPTIONS: typing.ClassVar[dict[str, tuple[str, ...]]] = {
        "asha": ("grace_period", "reduction_factor"),
        "median": ("grace_period", "min_samples_required"),
        "pbt": ("perturbation_interval", "quantile_fraction", "resample_probability", "synch"),
        "fifo": (),
    }

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        known = SCHEDULERS.names()
        if name not in known:
            raise ValueError(f"unknown scheduler '{name}'; allowed: {', '.join(known)}")
        return name

    @model_validator(mode="after")
    def _options_fit(self) -> SchedulerSpec:
        allowed = self.OPTIONS.get(self.name, ())
        for option in sorted(self.model_fields_set - {"name", *allowed}):
            users = [name for name, options in self.OPTIONS.items() if option in options]
            raise ValueError(f"{option}: only used by scheduler {' and '.join(users)}, not '{self.name}'")
        return self


class Space(_Strict):
    params: dict[str, Distribution] = Field(min_length=1)
    metric: str | None = None
    mode: Literal["max", "min"] | None = None
    num_samples: int | None = Field(None, ge=1)
    max_concurrent_trials: int | None = Field(None, ge=1)
    time_budget_s: float | None = Field(None, gt=0)
    scheduler: SchedulerSpec = SchedulerSpec()
    search: str = "random"
    seed: int | None = None

    @field_validator("search")
    @classmethod
    def _known_search(cls, name: str) -> str:
        known = SEARCHERS.names()
        if name not in known:
            raise ValueError(f"unknown search '{name}'; allowed: {', '.join(known)}")
        return name

    @model_validator(mode="after")
    def _search_fits_params(self) -> Space:
        for key, dist in self.params.items():
            if self.search == "grid" and dist.kind not in ("grid", "choice"):
                raise ValueError(f"params.{key}: search 'grid' takes grid or choice values, not {dist.kind}")
            if self.search == "optuna" and dist.kind == "grid":
                raise ValueError(f"params.{key}: grid needs search random or grid, not optuna")
        if self.scheduler.name == "pbt" and self.search == "optuna":
            raise ValueError("scheduler: pbt chooses its own hyperparameters; use search random or grid")
        return self

    @property
    def samples(self) -> int:
        return self.num_samples or (1 if self.search == "grid" else 8)


# ----------------------------------------------------------------------------- against the config


def parse_space(raw: Any) -> Space:
    """Validate the space file's structure (not yet against a config)."""
    if not isinstance(raw, dict):
        raise ConfigError("top level must be a mapping with `params` and optional settings")
    try:
        return Space.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc)) from None


def load_space(path: str | Path, cfg: VftConfig) -> Space:
    """Read, validate and check the space against `cfg` (the resolved config); ConfigError names
    the file and each offending key."""
    try:
        return check_against_config(parse_space(_read(Path(path))), cfg)
    except ConfigError as exc:
        raise ConfigError(f"space file {path}:\n{exc}") from None


def _read(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError("file not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML ({exc})") from None


def check_against_config(space: Space, cfg: VftConfig) -> Space:
    """Every key names a config field, every bound and choice builds a valid config, integer
    fields get integer distributions, the metric is one the task reports. Returns the space
    with metric/mode filled in and choices normalised as the config stores them (paths made
    absolute, numbers typed)."""
    names = cfg.metric_names()
    metric = space.metric or cfg.train.monitor
    if metric not in names:
        raise ConfigError(f"metric: unknown metric '{metric}' for this task; allowed: {', '.join(names)}")
    mode = space.mode or (cfg.train.mode if metric == cfg.train.monitor else None)
    mode = mode or ("min" if metric.endswith("loss") else "max")
    base = cfg.model_dump(mode="json")
    errors, params = [], {}
    for key, dist in space.params.items():
        try:
            params[key] = _check_param(key, dist, base)
        except ConfigError as exc:
            errors.append(f"params.{key}: {exc}")
    if errors:
        raise ConfigError("\n".join(errors))
    return space.model_copy(update={"metric": metric, "mode": mode, "params": params})


def _check_param(key: str, dist: Distribution, base: dict) -> Distribution:
    section = key.split(".")[0]
    if section in FIXED_SECTIONS:
        raise ConfigError(f"not tunable: {FIXED_SECTIONS[section]}")
    if key in FIXED_KEYS:
        raise ConfigError(f"not tunable: {FIXED_KEYS[key]}")
    annotation = field_type(key, base)
    if _is_integer(annotation) and (
        dist.kind in CONTINUOUS or (dist.kind == "quniform" and not _integral(dist.args))
    ):
        raise ConfigError(
            f"an integer setting needs randint, choice, grid or quniform with integer bounds and step, "
            f"not {dist.kind}"
        )
    normalised = []
    for value in dist.probes():
        try:
            cfg = build_config(set_dotted(base, key, value))
        except ConfigError as exc:
            raise ConfigError(f"value {value!r} is rejected by the config: {_strip_key(exc, key)}") from None
        normalised.append(get_dotted(cfg.model_dump(mode="json"), key))
    if dist.kind in ("choice", "grid"):
        return dist.model_copy(update={dist.kind: normalised})
    return dist


def _strip_key(exc: ConfigError, key: str) -> str:
    lines = [line.removeprefix(f"{key}: ") for line in str(exc).splitlines()]
    return "; ".join(lines)


def _integral(values: tuple) -> bool:
    return all(float(v).is_integer() for v in values)


def _is_integer(annotation: Any) -> bool:
    args = set(typing.get_args(annotation)) if _is_union(annotation) else {annotation}
    return int in args and float not in args


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def field_type(key: str, base: dict) -> Any:
    """The annotation of the config field a dotted key names (list items by index, mapping
    entries by key); ConfigError with a suggestion when there is none."""
    node: Any = config_class(base.get("task", DEFAULT_TASK))
    value: Any = base
    path: list[str] = []
    for part in key.split("."):
        node = _strip_optional(node)
        if typing.get_origin(node) is list:
            if not part.isdigit() or not isinstance(value, list) or int(part) >= len(value):
                size = len(value) if isinstance(value, list) else 0
                where = ".".join(path)
                raise ConfigError(f"unknown config key: {where} is a list of {size} item(s), index with 0..")
            node, value = typing.get_args(node)[0], value[int(part)]
        elif typing.get_origin(node) is dict:  # e.g. loss.weights.<term>: the config checks the key
            node, value = typing.get_args(node)[1], value.get(part) if isinstance(value, dict) else None
        elif isinstance(node, type) and issubclass(node, BaseModel):
            fields = node.model_fields
            if part not in fields:
                prefix = ".".join(path)
                options = [f"{prefix}.{name}".lstrip(".") for name in fields]
                close = difflib.get_close_matches(key, options, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(f"unknown config key{hint}")
            node = fields[part].annotation
            value = value.get(part) if isinstance(value, dict) else None
        else:
            raise ConfigError(f"unknown config key: {'.'.join(path)} is a value, not a section")
        path.append(part)
    return node


def _strip_optional(annotation: Any) -> Any:
    if _is_union(annotation):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def set_dotted(raw: dict, key: str, value: Any) -> dict:
    """A copy of `raw` with the dotted key set (list items by index)."""
    root = _copy(raw)
    node: Any = root
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(leaf)] = value
    else:
        node[leaf] = value
    return root


def get_dotted(raw: Any, key: str) -> Any:
    for part in key.split("."):
        raw = raw[int(part)] if isinstance(raw, list) else raw[part]
    return raw


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def to_dict(space: Space) -> dict:
    """The space as plain data, the scheduler with only its own options (a valid space file)."""
    data = space.model_dump(mode="json", exclude_none=True)
    scheduler = space.scheduler
    data["scheduler"] = {
        k: v for k, v in data["scheduler"].items() if k in ("name", *scheduler.OPTIONS[scheduler.name])
    }
    return data


def to_yaml(space: Space) -> str:
    return yaml.safe_dump(to_dict(space), sort_keys=False)


def clip_to_bounds(config: dict, bounds: dict[str, tuple[float, float]]) -> dict:
    """PBT's explore step multiplies values by 0.8 or 1.2: keep them inside the space."""
    for key, (lo, hi) in bounds.items():
        if key in config and isinstance(config[key], int | float) and math.isfinite(config[key]):
            value = min(max(config[key], lo), hi)
            config[key] = type(config[key])(value)
    return config
