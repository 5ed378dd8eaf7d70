"""Typed configuration: training settings, model hyper-parameters, presets, overrides.

A run's configuration is resolved in this order, later winning:
the defaults of :class:`TrainConfig` and of the model's ``Config``; a named preset
(:data:`PRESETS`); a TOML file; ``key=value`` overrides from the command line.

A TOML file looks like::

    model = "diffmm"
    preset = "tiktok"          # optional

    [train]
    epochs = 50

    [diffmm]                   # section named after the model
    cl_weight = 0.01
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from diffmm.errors import ConfigError
from diffmm.models import get_model_class, model_names
from diffmm.models.base import ModelConfig


class TrainConfig(BaseModel):
    """How a model is trained and selected (shared by every model)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    epochs: int = Field(200, ge=1, description="Maximum number of epochs.")
    batch_size: int = Field(2048, ge=1, description="BPR triples per optimiser step.")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate of the recommender.")
    seed: int = Field(421, description="Seed of every random number generator.")
    eval_every: int = Field(1, ge=1, description="Validate every N epochs.")
    patience: int = Field(
        10, ge=1, description="Stop after this many validations without improvement."
    )
    metric: str = Field("recall@20", description="Validation metric used for selection.")
    ks: list[int] = Field(default_factory=lambda: [10, 20], description="Cut-offs @K.")
    eval_batch_size: int = Field(1024, ge=1, description="Users scored per batch.")
    device: str = Field("auto", description="'auto' (CUDA if available), 'cpu' or 'cuda[:i]'.")
    test_every_epoch: bool = Field(
        False,
        description="Also score test at every validation, logged as 'best-on-test' for "
        "parity with the authors' protocol only; never used for selection.",
    )
    progress: bool = Field(True, description="Show progress bars.")

    @field_validator("ks")
    @classmethod
    def _positive_ks(cls, ks: list[int]) -> list[int]:
        if not ks or any(k < 1 for k in ks):
            raise ValueError("ks must be a non-empty list of positive integers")
        return sorted(set(ks))

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        name, _, k = metric.partition("@")
        if name not in {"recall", "ndcg", "precision", "hit"} or not k.isdigit():
            raise ValueError(
                "metric must look like 'recall@20' (recall, ndcg, precision or hit), "
                f"got {metric!r}"
            )
        return metric


# Per-dataset settings of the authors' README (spec §5), by model and preset name.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "diffmm": {
        "tiktok": {
            "train": {"epochs": 50, "batch_size": 1024},
            "diffmm": {
                "l2_weight": 1e-4,
                "cl_weight": 1e-2,
                "trans": "linear",
                "msi_weight": 0.1,
                "cl_anchor": "main",
                "keep_rate": 0.5,
                "temperature": 0.5,
                "residual_weight": 0.5,
            },
        },
        "baby": {
            "train": {"epochs": 50, "batch_size": 1024},
            "diffmm": {
                "l2_weight": 1e-5,
                "cl_weight": 1e-1,
                "keep_rate": 1.0,
                "msi_weight": 0.01,
                "trans": "parametric",
            },
        },
        "sports": {
            "train": {"epochs": 50, "batch_size": 1024},
            "diffmm": {
                "l2_weight": 1e-6,
                "cl_weight": 1e-2,
                "temperature": 0.1,
                "residual_weight": 0.1,
                "msi_weight": 0.5,
                "keep_rate": 1.0,
                "trans": "linear",
            },
        },
    },
}


class RunConfig(BaseModel):
    """Everything a training run needs besides the data."""

    model_config = ConfigDict(extra="forbid")

    model: str
    preset: str | None = None
    train: TrainConfig = Field(default_factory=TrainConfig)
    params: ModelConfig

    def to_dict(self) -> dict[str, Any]:
        """Plain dict in the TOML layout (``[train]``, ``[<model>]``), JSON-serialisable."""
        return {
            "model": self.model,
            "preset": self.preset,
            "train": self.train.model_dump(),
            self.model: self.params.model_dump(),
        }


def _deep_update(base: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value


def parse_value(text: str) -> Any:
    """Parse a ``--set`` value: JSON (numbers, true/false, lists) or a bare string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _suggest(key: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(key, choices, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def apply_override(raw: dict[str, Any], model: str, assignment: str) -> None:
    """Apply one ``key=value`` to the raw config dict.

    ``key`` is ``train.NAME``, ``<model>.NAME`` or a bare ``NAME`` (looked up in the
    training settings first, then in the model's hyper-parameters).
    """
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key=value (e.g. train.epochs=5)")
    key, _, text = assignment.partition("=")
    key = key.strip()
    section, _, name = key.rpartition(".")
    train_fields = list(TrainConfig.model_fields)
    model_fields = list(get_model_class(model).Config.model_fields)
    if not section:
        if name in train_fields:
            section = "train"
        elif name in model_fields:
            section = model
        else:
            raise ConfigError(
                f"unknown setting {name!r} for model {model!r}."
                + _suggest(name, train_fields + model_fields)
                + f" `diffmm config --model {model}` lists them all."
            )
    if section not in ("train", model):
        raise ConfigError(f"unknown section {section!r} in {key!r}; use 'train' or {model!r}")
    fields = train_fields if section == "train" else model_fields
    if name not in fields:
        raise ConfigError(f"unknown setting {key!r}." + _suggest(name, fields))
    raw.setdefault(section, {})[name] = parse_value(text)


def _format_validation_error(err: ValidationError, where: str, section: str) -> str:
    lines = [f"invalid configuration ({where}):"]
    for e in err.errors():
        loc = ".".join([section, *(str(p) for p in e["loc"])])
        lines.append(f"  {loc}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into a raw dict, with a clear error if it is bad."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def resolve_config(
    model: str | None = None,
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> RunConfig:
    """Resolve defaults < preset < config file < overrides into a validated RunConfig."""
    file_raw = load_config_file(config_file) if config_file else {}
    for key in ("model", "preset"):
        if key in file_raw and not isinstance(file_raw[key], str):
            choices = ", ".join(model_names()) if key == "model" else "a preset name"
            raise ConfigError(
                f"config file {config_file}: {key} must be a string ({choices}), "
                f"got {file_raw[key]!r}"
            )
    model = model or file_raw.get("model") or "lightgcn"
    if model not in model_names():
        raise ConfigError(
            f"unknown model {model!r}; available: {', '.join(model_names())}."
            + _suggest(model, model_names())
        )
    preset = preset or file_raw.get("preset")
    raw: dict[str, Any] = {"train": {}, model: {}}
    if preset:
        presets = PRESETS.get(model, {})
        if preset not in presets:
            raise ConfigError(
                f"unknown preset {preset!r} for model {model!r}; available: "
                f"{', '.join(presets) or 'none'}"
            )
        _deep_update(raw, presets[preset])
    extra = set(file_raw) - {"model", "preset", "train", model}
    if extra:
        raise ConfigError(
            f"config file {config_file}: unknown top-level keys {sorted(extra)}; "
            f"expected 'model', 'preset', '[train]' and '[{model}]'"
        )
    for section in ("train", model):
        if section in file_raw and not isinstance(file_raw[section], dict):
            raise ConfigError(
                f"config file {config_file}: {section!r} must be a table ([{section}] with "
                f"key = value lines below it), got {file_raw[section]!r}"
            )
    _deep_update(raw, {k: v for k, v in file_raw.items() if k in ("train", model)})
    for assignment in overrides:
        apply_override(raw, model, assignment)
    where = ", ".join(filter(None, [str(config_file or ""), "overrides" if overrides else ""]))
    sections = {}
    for section, cls in (("train", TrainConfig), (model, get_model_class(model).Config)):
        try:
            sections[section] = cls(**raw[section])
        except ValidationError as err:
            raise ConfigError(_format_validation_error(err, where or "defaults", section)) from None
    train, params = sections["train"], sections[model]
    return RunConfig(model=model, preset=preset, train=train, params=params)


def run_config_from_dict(raw: dict[str, Any]) -> RunConfig:
    """Validate a configuration in the layout of :meth:`RunConfig.to_dict`."""
    if not isinstance(raw, dict) or raw.get("model") not in model_names():
        raise ConfigError(
            f"not a run configuration: 'model' must be one of {', '.join(model_names())}"
        )
    model = raw["model"]
    sections = {}
    for section, cls in (("train", TrainConfig), (model, get_model_class(model).Config)):
        try:
            sections[section] = cls(**raw.get(section, {}))
        except ValidationError as err:
            raise ConfigError(_format_validation_error(err, "run configuration", section)) from None
    return RunConfig(
        model=model, preset=raw.get("preset"), train=sections["train"], params=sections[model]
    )
