"""Per-user splits of unsplit interactions, and their on-disk cache.

Two methods, both vectorised (no Python loop over users):

* ``"random"``: each user's interactions are shuffled (seeded) and split 8:1:1
  (``round(0.1 n)`` valid and test items, at least one each); users with fewer than
  3 interactions keep them all in train.
* ``"loo"`` (leave-one-out): each user's last interaction (by timestamp when given,
  else a seeded random one) goes to test, the one before to valid; users with fewer
  than 3 interactions keep them all in train. Timestamp ties are broken at random.

A split computed for a table file is saved (atomically) as CSV with columns
``user,item,split`` (raw ids, split names) at
``<table_dir>/.diffmm_splits/<stem>.<method>-<seed>.csv``, with a ``.json`` sidecar
holding the source file's sha256. It is reused while the source file is unchanged.
If the table's directory is not writable the cache goes to ``~/.cache/diffmm/splits/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np

from diffmm.errors import DataError, WriteError
from diffmm.utils import atomic_write, atomic_write_json

log = logging.getLogger("diffmm.data")

SPLIT_METHODS = ("random", "loo")
SPLIT_NAMES = ("train", "valid", "test")
TRAIN, VALID, TEST = 0, 1, 2
MIN_INTERACTIONS = 3


def _ranks(users: np.ndarray, key: np.ndarray, tiebreak: np.ndarray) -> np.ndarray:
    """Rank of each row within its user when sorted by (key, tiebreak), 0-based."""
    order = np.lexsort((tiebreak, key, users))
    counts = np.bincount(users)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    ranks = np.empty(len(users), dtype=np.int64)
    ranks[order] = np.arange(len(users)) - starts[users[order]]
    return ranks


def split_labels(
    users: np.ndarray,
    method: str = "random",
    seed: int = 2024,
    timestamps: np.ndarray | None = None,
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> np.ndarray:
    """Split label (0 train, 1 valid, 2 test) of each interaction, per user.

    ``users`` holds the user index of each (unique) interaction; ``timestamps`` (same
    length) orders them for ``method="loo"``.
    """
    if method not in SPLIT_METHODS:
        raise DataError(f"unknown split method {method!r}; use one of {SPLIT_METHODS}")
    users = np.asarray(users, dtype=np.int64)
    labels = np.zeros(len(users), dtype=np.int8)
    if len(users) == 0:
        return labels
    rng = np.random.default_rng(seed)
    noise = rng.random(len(users))
    n_u = np.bincount(users)[users]
    eligible = n_u >= MIN_INTERACTIONS
    if method == "loo":
        key = np.zeros(len(users)) if timestamps is None else np.asarray(timestamps, float)
        from_end = n_u - 1 - _ranks(users, key, noise)
        labels[eligible & (from_end == 0)] = TEST
        labels[eligible & (from_end == 1)] = VALID
        return labels
    ranks = _ranks(users, noise, np.zeros(len(users)))
    n_test = np.maximum(1, np.floor(n_u * ratios[2] + 0.5)).astype(np.int64)
    n_valid = np.maximum(1, np.floor(n_u * ratios[1] + 0.5)).astype(np.int64)
    labels[eligible & (ranks < n_test + n_valid)] = VALID
    labels[eligible & (ranks < n_test)] = TEST
    return labels


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_paths(table: Path, method: str, seed: int) -> list[Path]:
    """Where the split of ``table`` is cached: next to it, else in the user cache."""
    table = table.resolve()
    fname = f"{table.stem}.{method}-{seed}.csv"
    tag = hashlib.sha256(str(table).encode()).hexdigest()[:8]
    fallback = Path.home() / ".cache" / "diffmm" / "splits"
    return [table.parent / ".diffmm_splits" / fname, fallback / f"{table.stem}-{tag}.{fname}"]


def _writable(directory: Path) -> bool:
    """Whether ``directory`` (or, if absent, its nearest existing parent) is writable.

    A directory without any write permission bit counts as read-only even for root.
    """
    while not directory.exists():
        directory = directory.parent
    mode = directory.stat().st_mode
    return os.access(directory, os.W_OK) and bool(stat.S_IMODE(mode) & 0o222)


def _read_cache(
    path: Path, checksum: str, users: np.ndarray, items: np.ndarray
) -> np.ndarray | None:
    import pandas as pd  # only for split caches of tables: pandas is a large import

    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("source_sha256") != checksum or meta.get("rows") != len(users):
            return None
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    if list(df.columns) != ["user", "item", "split"] or len(df) != len(users):
        return None
    same = (df["user"].to_numpy() == users.astype(str)) & (
        df["item"].to_numpy() == items.astype(str)
    )
    labels = pd.Categorical(df["split"], categories=SPLIT_NAMES).codes
    if not same.all() or (labels < 0).any():
        return None
    return labels.astype(np.int8)


def _write_cache(
    path: Path, checksum: str, users: np.ndarray, items: np.ndarray, labels: np.ndarray
) -> None:
    import pandas as pd

    if not _writable(path.parent):
        raise PermissionError(f"{path.parent} is read-only")
    path.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame({"user": users, "item": items, "split": np.asarray(SPLIT_NAMES)[labels]})
    atomic_write(path, lambda fh: df.to_csv(fh, index=False))
    meta = {"source_sha256": checksum, "rows": len(users)}
    atomic_write_json(path.with_suffix(".json"), meta)


def cached_split(
    table: Path,
    raw_users: np.ndarray,
    raw_items: np.ndarray,
    compute: Callable[[], np.ndarray],
    method: str,
    seed: int,
) -> tuple[np.ndarray, Path | None]:
    """Labels of a split of ``table``: read from the cache, else computed and saved.

    ``raw_users``/``raw_items`` are the raw ids of the (unique) interactions in the order
    ``compute()`` labels them. Returns the labels and the cache file (None if unsaved).
    """
    checksum = file_sha256(table)
    paths = cache_paths(table, method, seed)
    for path in paths:
        if path.exists():
            labels = _read_cache(path, checksum, raw_users, raw_items)
            if labels is not None:
                log.info("reusing the %s split saved in %s", method, path)
                return labels, path
    labels = compute()
    errors = []
    for path in paths:
        try:
            _write_cache(path, checksum, raw_users, raw_items, labels)
        except (OSError, WriteError) as exc:
            errors.append(f"{path}: {exc}")
            continue
        log.info("saved the %s split to %s", method, path)
        return labels, path
    log.warning("could not save the split (%s); it is recomputed next time", "; ".join(errors))
    return labels, None
