"""Reusing a run directory: only when it holds the very run that is asked for.

``diffmm benchmark`` and ``diffmm sweep`` reuse a finished run and resume a started one
(:func:`diffmm.runner.run_one`), so that an interrupted study goes on where it stopped.
Before anything trains, :func:`refuse_other_runs` checks each existing run directory
against what the study would train there: the resolved configuration (its model, preset,
every setting and seed) and the data (the digest of the stored fingerprint: the
interactions of every split and the item features). A run trained with other settings or
on other data is refused with one line naming the first differences; it is never reused
under the new labels, and never resumed with settings it would silently ignore.

Settings that say how a run goes on a machine, not what it computes (:data:`HOW_IT_RUNS`),
may differ. :func:`require_study_folder` keeps a study out of a folder of the user's own
files, whose ``results.md`` or ``sweep.md`` it would otherwise replace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from diffmm.checkpoint import CONFIG, DATASET, RunDir, data_digest
from diffmm.config import RunConfig
from diffmm.errors import ConfigError

#: Settings that do not change what a run computes: a run that differs only in them is
#: the same run.
HOW_IT_RUNS = frozenset(
    {
        "train.progress",
        "train.tensorboard",
        "train.device",
        "train.eval_batch_size",
        "train.reuse_freed_memory_mb",
    }
)


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(stored: RunConfig, wanted: RunConfig) -> list[str]:
    """``key: run's value, asked value`` for every setting (but :data:`HOW_IT_RUNS`) in
    which ``stored`` and ``wanted`` differ."""
    have, want = _flat(stored.to_dict()), _flat(wanted.to_dict())
    return [
        f"{key}: {have.get(key, '(absent)')} in the run, {want.get(key, '(absent)')} asked"
        for key in sorted(set(have) | set(want))
        if key not in HOW_IT_RUNS and have.get(key) != want.get(key)
    ]


def refuse_other_runs(
    runs: Iterable[tuple[RunConfig, Path]],
    data_fingerprint: Callable[[], dict[str, Any]],
    data: str,
) -> None:
    """Raise :class:`ConfigError` if a run directory of ``runs`` (each with the
    configuration it would be trained with) already holds another run.

    ``data_fingerprint`` gives the study's data's fingerprint; it is called at most once,
    and only if a run directory holds the data's fingerprint to compare with.
    """
    digest: str | None = None
    for wanted, run_dir in runs:
        if not (run_dir / CONFIG).exists():
            continue  # nothing trained here yet
        run = RunDir(run_dir)
        if found := config_differences(run.read_config(), wanted):
            shown = "; ".join(found[:3]) + ("; ..." if len(found) > 3 else "")
            raise ConfigError(
                f"{run_dir} holds a run with other settings ({shown}); it is not reused: "
                "remove it or pass another --out"
            )
        if not (run_dir / DATASET).exists():
            continue  # a kept summary without its data's record: the settings are all
        if digest is None:
            digest = data_digest(data_fingerprint())
        if data_digest(run.fingerprint()) != digest:
            raise ConfigError(
                f"{run_dir} holds a run on other data than {data} (their fingerprints "
                "differ); it is not reused: remove it or pass another --out"
            )


def require_study_folder(out: Path) -> None:
    """Refuse ``out`` if it holds files but is not a study's folder (it has no ``runs/``):
    a study rewrites its tables there, and they must not replace the user's files."""
    if out.is_dir() and any(out.iterdir()) and not (out / "runs").is_dir():
        raise ConfigError(
            f"{out} holds files and is not the folder of a benchmark or sweep (it has no "
            "runs/); pass a new or empty --out"
        )
