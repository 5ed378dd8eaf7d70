"""The run directory: what a training run writes, and how it is read back.

A run directory holds

* ``config.json``  the resolved configuration (:meth:`RunConfig.to_dict`);
* ``dataset.json`` how to load the data again (path, split method, split seed) and the
  data's fingerprint (sizes and sha256 digests, :meth:`Dataset.fingerprint`);
* ``ids.json``     the raw id of every user and item index;
* ``log.jsonl``    one JSON object per epoch;
* ``last.pt``      the full training state after the last finished epoch: model,
  optimisers, random number generators, epoch, early-stopping state (for ``--resume``);
* ``best.pt``      the model at the best validation epoch so far (for inference);
* ``summary.json`` the selected epoch and its metrics, once training has finished.

Every file is written atomically (temporary file, fsync, rename), so a crash leaves
either the previous version of a file or the new one, never a partial one.
"""

from __future__ import annotations

import io
import json
import pickle
import random
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffmm.config import RunConfig, run_config_from_dict
from diffmm.data.dataset import Dataset
from diffmm.errors import ConfigError, DataError
from diffmm.utils import atomic_torch_save, atomic_write_json

CONFIG = "config.json"
DATASET = "dataset.json"
IDS = "ids.json"
LOG = "log.jsonl"
LAST = "last.pt"
BEST = "best.pt"
SUMMARY = "summary.json"
#: Version of the ``last.pt`` layout; a checkpoint of another version is refused.
CHECKPOINT_FORMAT = 1
#: What ``last.pt`` holds besides the epoch.
TRAINING_STATE = ("model", "model_extra", "optimizer", "rng", "selection")


@dataclass(frozen=True)
class DataRef:
    """How to load a run's data again: the ``--data`` argument and the split settings."""

    path: str
    split: str = "random"
    seed: int = 2024
    features: str | None = None

    @classmethod
    def of(cls, data: str, split: str, seed: int, features: str | None = None) -> DataRef:
        """A reference that still works from another directory (paths made absolute)."""
        if not data.startswith("synthetic"):
            data = str(Path(data).expanduser().resolve())
        if features is not None:
            features = str(Path(features).expanduser().resolve())
        return cls(data, split, seed, features)

    def load(self) -> Dataset:
        from diffmm.data import load_dataset

        return load_dataset(self.path, split=self.split, seed=self.seed, features=self.features)


# ----------------------------------------------------------------------------- metadata
def write_metadata(
    run_dir: Path, run_config: RunConfig, dataset: Dataset, data_ref: DataRef | None
) -> None:
    """Write ``config.json``, ``dataset.json`` and ``ids.json`` for a new run."""
    atomic_write_json(run_dir / CONFIG, run_config.to_dict())
    atomic_write_json(
        run_dir / DATASET,
        {"load": asdict(data_ref) if data_ref else None, "fingerprint": dataset.fingerprint()},
    )
    atomic_write_json(
        run_dir / IDS,
        {
            "users": _ids_list(dataset.user_ids, dataset.n_users),
            "items": _ids_list(dataset.item_ids, dataset.n_items),
        },
        indent=None,
    )


def _ids_list(ids: np.ndarray | None, n: int) -> list[Any]:
    return (np.arange(n) if ids is None else np.asarray(ids)).tolist()


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(
            f"{path}: not found; {path.parent} is not a complete run directory (written by "
            "`diffmm train --out DIR`)"
        )
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); the run directory is damaged") from None


def _read_object(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """A JSON object with at least ``keys``; DataError naming the file otherwise."""
    obj = read_json(path)
    if not isinstance(obj, dict) or not set(keys) <= set(obj):
        raise DataError(
            f"{path}: expected a JSON object with keys {list(keys)}; the run directory is "
            "damaged (was this file edited?)"
        )
    return obj


def read_config(run_dir: Path) -> RunConfig:
    """The resolved configuration of a run."""
    path = run_dir / CONFIG
    try:
        return run_config_from_dict(read_json(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def read_data_ref(run_dir: Path) -> DataRef | None:
    """How the run's data were loaded (None if the run was given a dataset in memory)."""
    path = run_dir / DATASET
    load = _read_object(path, ("load", "fingerprint"))["load"]
    if load is None:
        return None
    try:
        return DataRef(
            path=str(load["path"]),
            split=str(load["split"]),
            seed=int(load["seed"]),
            features=None if load.get("features") is None else str(load["features"]),
        )
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{path}: 'load' must hold path, split and seed") from None


def check_fingerprint(run_dir: Path, dataset: Dataset) -> None:
    """Raise DataError if ``dataset`` is not the data the run was trained on."""
    expected = _read_object(run_dir / DATASET, ("fingerprint",))["fingerprint"]
    actual = dataset.fingerprint()
    if not isinstance(expected, dict) or not isinstance(expected.get("splits"), dict):
        raise DataError(
            f"{run_dir / DATASET}: the fingerprint is damaged; the run cannot be checked"
        )
    if {**expected, "name": None} == {**actual, "name": None}:  # a renamed file is fine
        return
    diffs = [
        f"{key}: {expected.get(key)} in the run, {actual.get(key)} now"
        for key in ("n_users", "n_items")
        if expected.get(key) != actual.get(key)
    ]
    for name in ("train", "valid", "test"):
        if expected["splits"].get(name) != actual["splits"].get(name):
            diffs.append(f"the {name} split differs")
    if expected.get("features") != actual.get("features"):
        diffs.append("the item features differ")
    raise DataError(
        f"the data at {dataset.source or '(in memory)'} are not the data run {run_dir} was "
        f"trained on ({'; '.join(diffs) or 'fingerprints differ'}); pass the original data"
    )


def read_ids(run_dir: Path, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw user and item ids: ``users[u]`` is the raw id of user index ``u``.

    DataError unless there is exactly one id per user and per item of the run's data.
    """
    path = run_dir / IDS
    raw = _read_object(path, ("users", "items"))
    out = []
    for key, n in (("users", n_users), ("items", n_items)):
        ids = raw[key]
        if ids is None:  # written by an earlier version: the ids are the indices
            ids = list(range(n))
        if not isinstance(ids, list) or len(ids) != n:
            raise DataError(
                f"{path}: expected a list of {n} {key[:-1]} ids under {key!r}; the run "
                "directory was modified or belongs to other data"
            )
        out.append(np.asarray(ids))
    return out[0], out[1]


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically."""
    atomic_torch_save(path, {"format": CHECKPOINT_FORMAT, **state})


def load_checkpoint(
    path: Path, map_location: str | torch.device = "cpu", required: tuple[str, ...] = ("model",)
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; DataError if it is unusable.

    ``required`` keys must be present (a ``last.pt`` needs the full training state).
    """
    if not path.is_file():
        raise DataError(f"{path}: no checkpoint there; was the run started with --out?")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        io.UnsupportedOperation,
    ) as exc:
        raise DataError(
            f"{path}: cannot read this checkpoint ({type(exc).__name__}: {exc}); it is corrupt "
            "or truncated, e.g. copied while being written; restore it from a copy"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise DataError(
            f"{path}: not a diffmm checkpoint of format {CHECKPOINT_FORMAT}; it was written "
            "by another program or another version of diffmm"
        )
    missing = [key for key in ("epoch", *required) if key not in state]
    if missing:
        raise DataError(f"{path}: incomplete checkpoint, missing {missing}; restore it from a copy")
    return state


# ----------------------------------------------------------------------------- random state
def capture_rng(generator: np.random.Generator) -> dict[str, Any]:
    """The state of every random number generator a run draws from."""
    state = {
        "python": random.getstate(),
        "numpy_global": np.random.get_state(),  # noqa: NPY002 - saved for third-party code
        "numpy": generator.bit_generator.state,
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: np.random.Generator) -> None:
    """Put every generator back in the state :func:`capture_rng` saw."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy_global"])  # noqa: NPY002
    generator.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
