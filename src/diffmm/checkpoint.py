"""The run directory: what a training run writes, who may write it, how it is read back.

A run directory holds

* ``config.json``  the resolved configuration (:meth:`RunConfig.to_dict`) and the run's
  identity, a random ``run_id``;
* ``dataset.json`` how to load the data again (path, split method, split seed) and the
  data's fingerprint (sizes and sha256 digests, :meth:`Dataset.fingerprint`);
* ``ids.json``     the raw id of every user and item index;
* ``log.jsonl``    one JSON object per epoch;
* ``last.pt``      the full training state after the last finished epoch: model,
  optimisers, random number generators, epoch, early-stopping state (for ``--resume``);
* ``best.pt``      the model at the best validation epoch so far (for inference);
* ``summary.json`` the selected epoch and its metrics, once training has finished;
* ``.lock``        held (``flock``) by the one process training the run, holding its PID.

:class:`RunDir` is the one place that knows these names and the rules around them:

* a new run goes only into a directory that does not exist or is empty, and a run that
  fails before its first epoch removes what it wrote, so the same ``--out`` can be
  retried; nothing else in the directory is ever deleted;
* one process at a time trains a run (an OS lock, released by the kernel if the process
  dies, so a killed run never blocks ``--resume``);
* every checkpoint carries the run's id and the digest of its data's fingerprint, and
  a checkpoint of another run is refused;
* checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain data
  only, so loading a run never runs code from a file.

Every file is written atomically (temporary file, fsync, rename), so a crash leaves
either the previous version of a file or the new one, never a partial one.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffmm.config import RunConfig, run_config_from_dict
from diffmm.data.dataset import Dataset
from diffmm.data.options import TableOptions
from diffmm.data.ref import DEFAULT_SPLIT_SEED, DataRef
from diffmm.errors import ConfigError, DataError
from diffmm.run_files import ids_of, parse_ids, read_json, read_object
from diffmm.run_lock import RunLock, RunLockedError
from diffmm.state import CHECKPOINT_FORMAT, capture_rng, load_checkpoint, restore_rng
from diffmm.utils import (
    atomic_append_line,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
)

__all__ = [
    "DEFAULT_SPLIT_SEED",
    "DataRef",
    "RunDir",
    "RunLockedError",
    "capture_rng",
    "load_checkpoint",
    "restore_rng",
]

CONFIG = "config.json"
DATASET = "dataset.json"
IDS = "ids.json"
LOG = "log.jsonl"
LAST = "last.pt"
BEST = "best.pt"
SUMMARY = "summary.json"
LOCK = ".lock"
#: Every file a run writes (the lock file aside).
RUN_FILES = (CONFIG, DATASET, IDS, LOG, LAST, BEST, SUMMARY)
#: What ``last.pt`` holds besides the epoch.
TRAINING_STATE = ("model", "model_extra", "optimizer", "rng", "selection")


def data_digest(fingerprint: dict[str, Any]) -> str:
    """sha256 of a fingerprint (its dataset name aside: a renamed file is the same data)."""
    canonical = json.dumps({**fingerprint, "name": None}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


class RunDir:
    """One training run's directory: its files, its owner, its identity.

    Args:
        path: the directory (it need not exist yet).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = RunLock(self.path, LOCK)
        self._created: list[Path] = []

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # ------------------------------------------------------------------ state
    def holds_run(self) -> bool:
        """Whether a run was started here (``config.json`` is its mark)."""
        return (self.path / CONFIG).is_file()

    def require_run(self) -> None:
        if not self.path.is_dir():
            raise DataError(f"{self.path}: no such run directory; pass the --out of `diffmm train`")
        if not self.holds_run():
            raise DataError(
                f"{self.path}: not a run directory (no {CONFIG}); pass the --out of `diffmm train`"
            )

    # ------------------------------------------------------------------ ownership
    @contextmanager
    def owned(self) -> Iterator[RunDir]:
        """Hold the run's lock for the ``with`` block; :class:`RunLockedError` if taken.

        The lock is ``flock`` on ``.lock``: the kernel drops it when the holder exits
        for any reason, so a killed run never blocks its ``--resume``. If the block
        leaves no run behind, the lock file (and the directory, if this created it and
        it is empty) is removed again.
        """
        made_dir = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        try:
            yield self
        finally:
            leaves_nothing = not self.holds_run()
            self._lock.release(remove_file=leaves_nothing)
            if leaves_nothing and made_dir and not any(self.path.iterdir()):
                self.path.rmdir()

    def _require_owner(self) -> None:
        if not self._lock.held:
            raise RuntimeError(f"{self}: written without holding its lock (use `with owned()`)")

    # ------------------------------------------------------------------ a new run
    def create(self, run_config: RunConfig, dataset: Dataset, data_ref: DataRef | None) -> str:
        """Start a new run here: refuse a non-empty directory, write the metadata.

        Returns the new run's id. Must be called while :meth:`owned`.
        """
        self._require_owner()
        others = sorted(p.name for p in self.path.iterdir() if p.name != LOCK)
        if self.holds_run():
            raise ConfigError(
                f"{self.path} already holds a training run; continue it with "
                f"`diffmm train --resume {self.path}`, or pass another --out"
            )
        if others:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise ConfigError(
                f"--out {self.path} is not empty ({shown}); a new run goes only into a new "
                "or empty directory, and diffmm never deletes what is there: pass another --out"
            )
        run_id = uuid.uuid4().hex
        fingerprint = dataset.fingerprint()
        ids = ids_of(dataset)
        try:  # all three or none: a retry with the same --out must find the folder empty
            self._write_new(
                CONFIG, lambda p: atomic_write_json(p, {**run_config.to_dict(), "run_id": run_id})
            )
            self._write_new(
                DATASET,
                lambda p: atomic_write_json(
                    p, {"load": asdict(data_ref) if data_ref else None, "fingerprint": fingerprint}
                ),
            )
            self._write_new(IDS, lambda p: atomic_write_json(p, ids, indent=None))
        except BaseException:
            self.discard_new()
            raise
        return run_id

    def _write_new(self, name: str, write: Any) -> None:
        path = self.path / name
        self._created.append(path)
        write(path)

    def discard_new(self) -> None:
        """Remove what this process wrote for a run that failed before its first epoch.

        Only the files this process wrote are removed, and only while no epoch has
        finished (no ``last.pt``): a retry with the same ``--out`` then starts cleanly.
        """
        if (self.path / LAST).exists():
            return
        for path in self._created:
            path.unlink(missing_ok=True)
        self._created.clear()

    # ------------------------------------------------------------------ metadata
    def run_id(self) -> str | None:
        raw = read_json(self.path / CONFIG)
        run_id = raw.get("run_id") if isinstance(raw, dict) else None
        return run_id if isinstance(run_id, str) else None

    def read_config(self) -> RunConfig:
        """The resolved configuration of the run."""
        path = self.path / CONFIG
        raw = read_json(path)
        if isinstance(raw, dict):
            raw = {k: v for k, v in raw.items() if k != "run_id"}
        try:
            return run_config_from_dict(raw)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def data_ref(self, moved_to: str | None = None) -> DataRef:
        """How to load the run's data; ``moved_to`` is where they are now, if they moved."""
        load = read_object(self.path / DATASET, ("load", "fingerprint"))["load"]
        if load is None:
            if moved_to is None:
                raise DataError(f"{self.path} does not say where its data are; pass --data PATH")
            return DataRef.of(moved_to)
        try:
            ref = DataRef(
                path=str(load["path"]),
                split=str(load["split"]),
                seed=int(load["seed"]),
                features=None if load.get("features") is None else str(load["features"]),
                table=TableOptions.from_dict(load.get("table")),  # absent in older runs
                cache_dir=None if load.get("cache_dir") is None else str(load["cache_dir"]),
            )
        except (KeyError, TypeError, ValueError, DataError):
            raise DataError(
                f"{self.path / DATASET}: 'load' must hold path, split and seed (and valid "
                "table options, if any)"
            ) from None
        return ref if moved_to is None else ref.moved_to(moved_to)

    def load_data(self, moved_to: str | None = None) -> Dataset:
        """The run's data, checked against its fingerprint."""
        ref = self.data_ref(moved_to)
        try:
            dataset = ref.load()
        except DataError as exc:
            raise DataError(
                f"cannot load the data of run {self.path}: {exc}. If the data moved, pass "
                "their new location (--data PATH, or data= in Python)"
            ) from None
        self.check_fingerprint(dataset)
        return dataset

    def fingerprint(self) -> dict[str, Any]:
        """The fingerprint of the data the run was trained on (``dataset.json``)."""
        expected = read_object(self.path / DATASET, ("fingerprint",))["fingerprint"]
        if not isinstance(expected, dict) or not isinstance(expected.get("splits"), dict):
            raise DataError(
                f"{self.path / DATASET}: the fingerprint is damaged; the run cannot be checked"
            )
        return expected

    def check_fingerprint(self, dataset: Dataset) -> None:
        """Raise DataError if ``dataset`` is not the data the run was trained on."""
        expected, actual = self.fingerprint(), dataset.fingerprint()
        if data_digest(expected) == data_digest(actual):
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
            f"the data at {dataset.source or '(in memory)'} are not the data run {self.path} "
            f"was trained on ({'; '.join(diffs) or 'fingerprints differ'}); pass the original data"
        )

    def restore_ids(self, dataset: Dataset) -> bool:
        """Write ``ids.json`` again from ``dataset`` (checked to be the run's data) if it is
        missing, so that the resumed run can be loaded; whether it was missing."""
        self._require_owner()
        if (self.path / IDS).exists():
            return False
        atomic_write_json(self.path / IDS, ids_of(dataset), indent=None)
        return True

    def read_ids(self, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw user and item ids: ``users[u]`` is the raw id of user index ``u``."""
        return parse_ids(self.path / IDS, n_users, n_items)

    def read_summary(self) -> dict[str, Any]:
        """``summary.json`` of a finished run; ``{}`` while the run is unfinished."""
        path = self.path / SUMMARY
        return read_object(path, ()) if path.exists() else {}

    # ------------------------------------------------------------------ log
    def append_log(self, record: str) -> None:
        self._require_owner()
        atomic_append_line(self.path / LOG, record)

    def truncate_log(self, after_epoch: int) -> None:
        """Drop log lines of epochs after ``after_epoch`` (a run that died before saving)."""
        self._require_owner()
        path = self.path / LOG
        if not path.exists():
            return
        kept = []
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                epoch = json.loads(line)["epoch"]
                if not isinstance(epoch, int):
                    raise TypeError
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError(
                    f"{path}: line {number} is not a log record (JSON with an integer "
                    "'epoch'); the file was edited: restore it or delete that line"
                ) from None
            if epoch <= after_epoch:
                kept.append(line)
        atomic_write_bytes(path, "".join(ln + "\n" for ln in kept).encode())

    def remove_log(self) -> None:
        self._require_owner()
        (self.path / LOG).unlink(missing_ok=True)

    def write_summary(self, summary: dict[str, Any]) -> None:
        self._require_owner()
        atomic_write_json(self.path / SUMMARY, summary)

    # ------------------------------------------------------------------ checkpoints
    def _identity(self) -> dict[str, Any]:
        return {"run_id": self.run_id(), "data": data_digest(self.fingerprint())}

    def save(self, name: str, state: dict[str, Any]) -> None:
        """Write checkpoint ``name`` (``last.pt`` or ``best.pt``) with the run's identity."""
        self._require_owner()
        self._created.append(self.path / name)
        atomic_torch_save(
            self.path / name, {"format": CHECKPOINT_FORMAT, **self._identity(), **state}
        )

    def load(
        self,
        name: str,
        map_location: str | torch.device = "cpu",
        required: tuple[str, ...] = ("model",),
    ) -> dict[str, Any]:
        """Read checkpoint ``name`` of this run; DataError if unusable or another run's."""
        path = self.path / name
        state = load_checkpoint(path, map_location, required)
        identity = self._identity()
        if state.get("run_id") != identity["run_id"]:
            raise DataError(
                f"{path}: belongs to another run (run id {state.get('run_id')}, this run is "
                f"{identity['run_id']} per {self.path / CONFIG}); put back this run's own "
                "checkpoint or start a new run"
            )
        if state.get("data") != identity["data"]:
            raise DataError(
                f"{path}: was trained on other data than {self.path / DATASET} describes; "
                "put back this run's own checkpoint"
            )
        return state

    # ------------------------------------------------------------------ outputs
    def protected_paths(self) -> list[Path]:
        """Paths an export must never overwrite: the run's files and its data's files."""
        paths = [self.path / name for name in RUN_FILES]
        try:
            paths += self.data_ref().paths()
        except DataError:  # a run given its data in memory
            pass
        return [p.resolve() for p in paths]
