"""Training from Python: a run in a few lines, and a benchmark over models and seeds.

    import diffmm
    run = diffmm.train("diffmm", "data/tiktok", preset="tiktok", epochs=50)
    run.summary["test"]["recall@20"]
    run.recommend(["u1"], k=20)
    run.evaluate("test", ks=(10, 20, 50), metrics=("recall", "ndcg", "mrr"))

    table = diffmm.benchmark("data/baby", ["diffmm", "lightgcn"], seeds=3, out="bench")

Settings are given by the names ``--set`` takes (``epochs=2``, ``embedding_dim=128``, the
authors' aliases such as ``ssl_reg``), as Python values; a name that is both a training
setting and one of the model's is refused, and is given as ``**{"train.NAME": value}`` or
``**{"MODEL.NAME": value}`` instead. The run directory is the one ``diffmm train`` writes:
``diffmm.load(run.run_dir)`` reopens it, and every command works on it.
"""

from __future__ import annotations

import difflib
import json
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffmm.data.dataset import Dataset
from diffmm.data.ref import DEFAULT_SPLIT_SEED, DataRef
from diffmm.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from diffmm.inference import TrainedRecommender

__all__ = ["Run", "benchmark", "train"]

#: The seeds a benchmark's ``seeds=N`` stands for: 421, 422, ... (as ``--seeds N``).
FIRST_SEED = 421


@dataclass
class Run:
    """A training run made by :func:`train`: its directory, its summary, its best model.

    Attributes:
        run_dir: the run directory (``config.json``, ``log.jsonl``, ``best.pt``, ...).
        summary: what ``summary.json`` holds: the selected epoch, its validation metrics,
            the test metrics, timings.
    """

    run_dir: Path
    summary: dict[str, Any]
    _data: Dataset | None = field(default=None, repr=False)
    _recommender: TrainedRecommender | None = field(default=None, repr=False)

    @property
    def recommender(self) -> TrainedRecommender:
        """The selected model for inference (:func:`diffmm.load` of the run, loaded once)."""
        if self._recommender is None:
            from diffmm.inference import load

            device = str(self.summary.get("device", "auto"))
            self._recommender = load(self.run_dir, data=self._data, device=device)
        return self._recommender

    def recommend(
        self, user_ids: Sequence[Any], k: int = 20, exclude_seen: bool = True
    ) -> list[list[Any]]:
        """The top-``k`` raw item ids of each raw user id (:meth:`TrainedRecommender.recommend`)."""
        return self.recommender.recommend(user_ids, k=k, exclude_seen=exclude_seen)

    def evaluate(
        self,
        split: str = "test",
        ks: Sequence[int] = (10, 20),
        metrics: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Metrics of the selected model on ``split`` (:meth:`TrainedRecommender.evaluate`)."""
        return self.recommender.evaluate(split, ks=ks, metrics=metrics)


def train(
    model: str,
    data: str | Path | Dataset | None,
    *,
    preset: str | None = None,
    out: str | Path | None = None,
    split: str = "random",
    split_seed: int = DEFAULT_SPLIT_SEED,
    features: str | Path | None = None,
    config: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    **settings: Any,
) -> Run:
    """Train ``model`` on ``data`` as ``diffmm train`` does; returns the :class:`Run`.

    Args:
        model: a model name (``diffmm.models.model_names()``): "diffmm", "lightgcn", ...
        data: a dataset path or spec string, as ``diffmm train --data`` takes (recorded in
            the run, so ``diffmm.load(out)`` reopens it), or a :class:`Dataset`. A run
            trained on a Dataset object does not know where its data are: reopen it with
            ``diffmm.load(out, data=...)``. With ``resume``, None means the run's own data.
        preset: named settings of the model, e.g. "tiktok".
        out: the run directory, new or empty; default ``runs/<model>-<data>-<time>``.
        split, split_seed: how a table without a split column is split ("random" 8:1:1
            per user, or "loo"); only for a path.
        features: a folder of extra ``<modality>.features.*`` files; only for a path.
        config: a TOML file of settings (``[train]``, ``[<model>]``).
        resume: continue the interrupted run in ``out`` with its own configuration and
            split (settings given must equal the run's).
        progress: show progress bars, and the progress lines (one per epoch and epoch
            phase) on stderr unless the application configured :mod:`logging` (they go
            to the ``"diffmm"`` loggers at INFO either way).
        log: deprecated, to be removed in the next release: receives each log line too;
            configure :mod:`logging` (the ``"diffmm"`` logger) instead.
        **settings: settings by the names ``--set`` takes, as Python values, e.g.
            ``epochs=2`` (``train.epochs``), ``embedding_dim=128``, ``ssl_reg=0.01``. They
            win over ``config``, which wins over ``preset``.

    Raises:
        DiffMMError: a bad setting, unreadable data, or an ``out`` that holds other files.
    """
    from diffmm.config import resolve_config
    from diffmm.inference import open_run, run_data
    from diffmm.trainer import train as run_training

    with _log_setup(log, to_stderr=progress):
        overrides = settings_overrides(model, settings)
        if resume:
            if out is None:
                raise ConfigError("resume=True needs out=, the directory of the run to continue")
            run = open_run(out)
            stored = run.read_config()
            if model != stored.model or preset or config or overrides:
                given = resolve_config(model, preset, config, overrides).to_dict()
                if {**given, "train": {**given["train"], "progress": stored.train.progress}} != (
                    stored.to_dict()
                ):
                    raise ConfigError(
                        f"the settings given differ from those of the run in {out}; a run "
                        "continues with its own configuration: give only the model and out= "
                        "with resume=True, or start a new run in another out="
                    )
            train_cfg = stored.train.model_copy(update={"progress": progress})
            run_config = stored.model_copy(update={"train": train_cfg})
            dataset = run_data(run, data)
            summary = run_training(run_config, dataset, run.path, resume=True)
            return Run(run.path, summary, _data=dataset if isinstance(data, Dataset) else None)

        run_config = resolve_config(
            model, preset, config, [*overrides, f"train.progress={json.dumps(progress)}"]
        )
        if data is None:
            raise ConfigError("pass data=, a dataset path or spec or a Dataset, to train on")
        if isinstance(data, Dataset):
            if features is not None:
                raise ConfigError(
                    "features= applies to data given as a path; add them to the Dataset"
                )
            ref, dataset = None, data
        else:
            ref = DataRef.of(
                str(data), split, split_seed, None if features is None else str(features)
            )
            dataset = ref.load()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path(out) if out is not None else Path("runs") / f"{model}-{dataset.name}-{stamp}"
        _check_new_run_dir(run_dir)
        summary = run_training(run_config, dataset, run_dir, data_ref=ref)
        return Run(run_dir, summary, _data=dataset if ref is None else None)


def benchmark(
    data: str | Path,
    models: str | Sequence[str],
    seeds: int | Sequence[int] = 3,
    out: str | Path | None = None,
    *,
    preset: str | None = None,
    split: str = "random",
    split_seed: int = DEFAULT_SPLIT_SEED,
    features: str | Path | None = None,
    plots: bool = True,
    groups: Sequence[int] | None = None,
    log: Callable[[str], None] | None = None,
    **settings: Any,
) -> pd.DataFrame:
    """Train every model for every seed, as ``diffmm benchmark``; returns the summary table.

    Each run trains in a child process; a finished run in ``out`` is reused and an
    interrupted one resumed, so calling again after a crash does only what is missing.

    Args:
        data: a dataset path or spec string (not a Dataset: the runs load it themselves).
        models: model names, a list or "diffmm,lightgcn".
        seeds: a count (3 = seeds 421, 422, 423) or the seeds.
        out: the folder for ``runs/``, ``results.md/.csv``, plots and the sparsity study;
            default ``runs/benchmark-<data>-<time>``.
        preset: applied to the models that have a preset of that name.
        split, split_seed, features: as for :func:`train`.
        plots: also write the PNG plots.
        groups: lower bounds of the sparsity study's user groups (training interactions).
        log: deprecated, to be removed in the next release: receives each progress line
            too. The lines (one per run) go to the ``"diffmm"`` loggers at INFO, and to
            stderr unless the application configured :mod:`logging`.
        **settings: as for :func:`train`; a bare name applies to every model that has it,
            ``**{"MODEL.NAME": value}`` to one model.

    Returns:
        One row per model: mean and ``<metric>_std`` over seeds of each test metric, the
        validation metric, the mean selected epoch, seconds per epoch, peak memory.
    """
    from diffmm.data import is_synthetic_spec
    from diffmm.experiments import DEFAULT_GROUPS, BenchmarkSpec, run_benchmark

    if isinstance(data, Dataset):
        raise ConfigError(
            "benchmark trains each run in its own process: pass data= as a path or spec, "
            "not a Dataset"
        )
    names = [m.strip() for m in models.split(",")] if isinstance(models, str) else list(models)
    names = [m for m in names if m]
    ref = DataRef.of(str(data), split, split_seed, None if features is None else str(features))
    sets = []
    for key, value in settings.items():
        section, _, name = key.rpartition(".")
        if not section:
            sections = {_section_of(m, name, allow_unknown=True) for m in names}
            sections.discard(None)
            if not sections:
                raise ConfigError(f"no model of {names} has a setting {name!r}")
        sets.append(f"{key}={_value_text(key, value)}")
    spec = BenchmarkSpec(
        data=ref.path,
        models=names,
        seeds=_seed_list(seeds),
        preset=preset,
        sets=sets,
        split=split,
        split_seed=split_seed,
        features=ref.features,
    )
    if out is None:
        label = "synthetic" if is_synthetic_spec(ref.path) else Path(ref.path).stem
        out = Path("runs") / f"benchmark-{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    chosen_groups = DEFAULT_GROUPS if groups is None else groups
    with _log_setup(log, to_stderr=True):
        return run_benchmark(spec, out, plots=plots, groups=chosen_groups)


def settings_overrides(model: str, settings: dict[str, Any]) -> list[str]:
    """``settings`` (Python values by setting name) as the ``KEY=VALUE`` strings of ``--set``.

    A bare name goes to ``train.`` or to the model's section, whichever has it (a name
    both have is refused as ambiguous); values are written as JSON, which the config
    layer reads back as the same numbers, booleans, strings and lists.
    """
    out = []
    for key, value in settings.items():
        section, _, name = key.rpartition(".")
        if not section:
            key = f"{_section_of(model, name)}.{name}"
        out.append(f"{key}={_value_text(key, value)}")
    return out


def _section_of(model: str, name: str, allow_unknown: bool = False) -> str | None:
    """ "train" or ``model``: the section with a setting ``name``; ConfigError if both."""
    from diffmm.config import TrainConfig, setting_names
    from diffmm.models import get_model_class, model_names

    if model not in model_names():
        raise ConfigError(f"unknown model {model!r}; available: {', '.join(model_names())}")
    train_names = setting_names(TrainConfig)
    model_settings = setting_names(get_model_class(model).Config)
    in_train, in_model = name in train_names, name in model_settings
    if in_train and in_model:
        raise ConfigError(_ambiguous(name, model))
    if in_train or in_model:
        return "train" if in_train else model
    if allow_unknown:
        return None
    close = difflib.get_close_matches(name, train_names + model_settings, n=1)
    raise ConfigError(
        f"unknown setting {name!r} for model {model!r}."
        + (f" Did you mean {close[0]!r}?" if close else "")
        + " diffmm.config.setting_names(...) lists them."
    )


def _ambiguous(name: str, model: str) -> str:
    return (
        f"setting {name!r} is both a training setting and one of {model}'s; give "
        f"**{{'train.{name}': ...}} or **{{'<model>.{name}': ...}} instead"
    )


def _value_text(key: str, value: Any) -> str:
    """``value`` as JSON text (NumPy scalars and paths as plain values)."""

    def plain(obj: Any) -> Any:
        if hasattr(obj, "item") and callable(obj.item):  # a NumPy scalar
            return obj.item()
        if isinstance(obj, Path):
            return str(obj)
        raise TypeError

    try:
        return json.dumps(value, default=plain)
    except (TypeError, ValueError):
        raise ConfigError(
            f"setting {key}: {value!r} is not a number, string, boolean or list"
        ) from None


def _seed_list(seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, bool):
        raise ConfigError(f"seeds must be a count or a list of seeds, got {seeds!r}")
    chosen = [FIRST_SEED + i for i in range(seeds)] if isinstance(seeds, int) else list(seeds)
    valid = all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**63 for s in chosen)
    if not chosen or not valid:
        raise ConfigError(f"seeds must be a count >= 1 or seeds in [0, 2**63), got {seeds!r}")
    return chosen


def _check_new_run_dir(run_dir: Path) -> None:
    """Refuse, in Python terms, an ``out`` that is a file or holds other files."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"out={str(run_dir)!r} is a file; a run needs a new or empty directory")
    for parent in run_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"out={str(run_dir)!r}: {parent} is a file, not a directory")
            break
    if not run_dir.is_dir():
        return
    if (run_dir / "config.json").is_file():
        raise ConfigError(
            f"{run_dir} already holds a training run; continue it with "
            f"diffmm.train(model, None, out={str(run_dir)!r}, resume=True), or pass another out="
        )
    others = sorted(p.name for p in run_dir.iterdir() if p.name != ".lock")
    if others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise ConfigError(
            f"out={str(run_dir)!r} is not empty ({shown}); a new run goes only into a new or "
            "empty directory, and diffmm never deletes what is there: pass another out="
        )


def _log_setup(
    log: Callable[[str], None] | None, *, to_stderr: bool
) -> AbstractContextManager[None]:
    """Log to stderr (unless logging is configured) when ``to_stderr``; forward the lines
    to the deprecated ``log`` callback too, if one is given."""
    from diffmm import logs

    if log is not None:
        warnings.warn(
            "log= is deprecated and will be removed in the next release; configure the "
            "'diffmm' logger of the logging module instead",
            DeprecationWarning,
            stacklevel=3,
        )
    elif to_stderr:
        logs.log_to_stderr(unless_any=True)
    return logs.forwarded_to(log)
