"""Typed configuration: training settings, model hyper-parameters, presets, overrides.

A run's configuration is resolved in this order, later winning:
the defaults of :class:`TrainConfig` and of the model's ``Config``; a named preset
(the model's ``Config.presets``); a TOML file; ``key=value`` overrides from the command
line. A setting may be named by an alias of its field (the DiffMM authors' flag names,
e.g. ``ssl_reg`` for ``cl_weight``) in all three; the resolved config uses the names.

A TOML file looks like::

    model = "diffmm"
    preset = "tiktok"          # optional

    [train]
    epochs = 50

    [diffmm]                   # section named after the model
    cl_weight = 0.01
    temp = 0.5                 # an alias: the authors' name of temperature
"""

from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
)

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from diffmm.errors import ConfigError
from diffmm.models import get_model_class, model_names
from diffmm.models.base import ModelConfig
from diffmm.train_config import MAX_SEED, TrainConfig  # noqa: F401 (re-exported)


def presets_of(model: str) -> dict[str, dict[str, Any]]:
    """The named presets of ``model`` (its ``Config.presets``), by name; empty if none.

    A preset is ``{"train": {...}, "<model>": {...}}``, settings in the TOML layout.
    """
    return dict(getattr(get_model_class(model).Config, "presets", {}))


def aliases_of(cls: type[BaseModel]) -> dict[str, str]:
    """Other accepted names of ``cls``'s settings (e.g. the authors' flags): alias -> name.

    They are each field's ``validation_alias=AliasChoices(name, alias, ...)``, the one
    place the mapping is defined.
    """
    out = {}
    for name, field in cls.model_fields.items():
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
        out |= {c: name for c in choices if isinstance(c, str) and c != name}
    return out


def setting_names(cls: type[BaseModel]) -> list[str]:
    """Every name a setting of ``cls`` is accepted under: field names, then aliases."""
    return [*cls.model_fields, *aliases_of(cls)]


def canonical_names(cls: type[BaseModel], values: dict[str, Any], where: str) -> dict[str, Any]:
    """``values`` with aliases renamed to the settings' names; one setting twice is refused."""
    aliases, out, given_as = aliases_of(cls), {}, {}
    for key, value in values.items():
        name = aliases.get(key, key)
        if name in given_as:
            raise ConfigError(
                f"{where}: {given_as[name]!r} and {key!r} are the same setting ({name}); "
                "give it once"
            )
        given_as[name], out[name] = key, value
    return out


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
    training settings first, then in the model's hyper-parameters); ``NAME`` may be an
    alias (:func:`aliases_of`) and is stored under the setting's own name.
    """
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key=value (e.g. train.epochs=5)")
    key, _, text = assignment.partition("=")
    section, name = setting_of(model, key.strip())
    raw.setdefault(section, {})[name] = parse_value(text)


def setting_of(model: str, key: str) -> tuple[str, str]:
    """``(section, name)`` of a ``--set`` key: ``("train", "epochs")`` for ``epoch``.

    Raises :class:`ConfigError`, with the closest name, for a key ``model`` does not have.
    """
    section, _, name = key.rpartition(".")
    classes = {"train": TrainConfig, model: get_model_class(model).Config}
    if not section:
        section = next((s for s, c in classes.items() if name in setting_names(c)), "")
        if not section:
            choices = setting_names(TrainConfig) + setting_names(classes[model])
            raise ConfigError(
                f"unknown setting {name!r} for model {model!r}."
                + _suggest(name, choices)
                + f" `diffmm config --model {model}` lists them all."
            )
    if section not in classes:
        raise ConfigError(f"unknown section {section!r} in {key!r}; use 'train' or {model!r}")
    if name not in setting_names(classes[section]):
        raise ConfigError(
            f"unknown setting {key!r}." + _suggest(name, setting_names(classes[section]))
        )
    return section, aliases_of(classes[section]).get(name, name)


def allowed_range(cls: type[BaseModel], loc: str | tuple[int | str, ...]) -> str:
    """The values a numeric setting of ``cls`` accepts, e.g. ``an integer in [1, 65536]``.

    ``loc`` is the setting's name, or a pydantic error location (``("ks", 0)`` for an item
    of a list setting). Empty for a setting that is not a number.
    """
    loc = (loc,) if isinstance(loc, str) else loc
    name = aliases_of(cls).get(str(loc[0]), str(loc[0])) if loc else ""
    field = cls.model_fields.get(name)
    if field is None:
        return ""
    annotation, metadata = field.annotation, list(field.metadata)
    if len(loc) == 2 and get_origin(annotation) is list:  # an item of a list setting
        (item,) = get_args(annotation)
        annotation = get_args(item)[0] if get_origin(item) is Annotated else item
        metadata = [m for a in get_args(item)[1:] for m in getattr(a, "metadata", [a])]
    elif len(loc) != 1:
        return ""
    kind = {int: "an integer", float: "a finite number"}.get(annotation)  # type: ignore[call-overload]
    if kind is None:
        return ""
    low = next((f"[{m.ge}" for m in metadata if isinstance(m, Ge)), None)
    low = low or next((f"({m.gt}" for m in metadata if isinstance(m, Gt)), None)
    high = next((f"{m.le}]" for m in metadata if isinstance(m, Le)), None)
    high = high or next((f"{m.lt})" for m in metadata if isinstance(m, Lt)), None)
    if low and high:
        return f"{kind} in {low}, {high}"
    if low:
        return f"{kind} {'>=' if low[0] == '[' else '>'} {low[1:]}"
    return kind


def _format_validation_error(
    err: ValidationError, cls: type[BaseModel], where: str, section: str
) -> str:
    """One line: each problem as ``section.setting: what is wrong (got value), allowed: range``."""
    problems = []
    for e in err.errors():
        loc = ".".join([section, *(str(p) for p in e["loc"])])
        msg = e["msg"].removeprefix("Value error, ")
        if not e["loc"]:  # a relation between settings: the input is the whole section
            problems.append(f"{loc}: {msg}")
            continue
        allowed = allowed_range(cls, e["loc"])
        problems.append(
            f"{loc}: {msg} (got {e.get('input')!r})" + (f", allowed: {allowed}" if allowed else "")
        )
    return f"invalid configuration ({where}): " + "; ".join(problems)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into a raw dict, with a clear error if it is bad."""
    path = Path(path)
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise ConfigError(f"config file {path} {what}")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} nests arrays or tables too deeply") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text; save it as UTF-8 TOML") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None


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
        presets = presets_of(model)
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
    classes = {"train": TrainConfig, model: get_model_class(model).Config}
    for section, cls in classes.items():
        if section in file_raw:
            origin = f"config file {config_file}, [{section}]"
            _deep_update(raw, {section: canonical_names(cls, file_raw[section], origin)})
    for assignment in overrides:
        apply_override(raw, model, assignment)
    where = ", ".join(filter(None, [str(config_file or ""), "overrides" if overrides else ""]))
    sections = {}
    for section, cls in classes.items():
        try:
            sections[section] = cls(**raw[section])
        except ValidationError as err:
            message = _format_validation_error(err, cls, where or "defaults", section)
            raise ConfigError(message) from None
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
            message = _format_validation_error(err, cls, "run configuration", section)
            raise ConfigError(message) from None
    return RunConfig(
        model=model, preset=raw.get("preset"), train=sections["train"], params=sections[model]
    )
