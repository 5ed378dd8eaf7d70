"""Per-user splits of unsplit interactions, and their on-disk cache.

Three methods, all vectorised (no Python loop over users); users with fewer than 3
interactions keep them all in train:

* ``"random"``: each user's interactions are shuffled (seeded) and split 8:1:1
  (``round(0.1 n)`` valid and test items, at least one each).
* ``"loo"`` (leave-one-out): each user's last interaction goes to test, the one before
  to valid. "Last" is by timestamp when the table has a time column, else a seeded
  random one; timestamp ties are broken at random (seeded).
* ``"temporal"`` (leave-last-out by time): like ``"loo"`` but it needs a time column
  (refused without one) and breaks ties deterministically: of two interactions with the
  same timestamp, the one whose row comes later in the table is the later one. The seed
  plays no part.

The split cache. A split computed for a table file is saved (atomically) as CSV with
columns ``user,item,split`` (raw ids, split names), with a ``.json`` sidecar holding the
source file's sha256; it is reused while the source file is unchanged (and recomputed,
identically, when it is missing). By default it goes into a hidden folder next to the
data: ``<table_dir>/.diffmm_splits/<stem>.<method>-<seed>[.opts-<hash>].csv``, where the
``opts-<hash>`` part names the table options (``--min-rating``, ``--k-core``, column
names) of a filtered table. ``--cache-dir DIR`` (``cache_dir=`` in Python), or else the
environment variable ``DIFFMM_CACHE_DIR``, moves it to ``DIR/<stem>-<hash of the table's
path>.<method>-<seed>[...].csv``. If that folder (or the table's) is not writable the
cache goes to ``~/.cache/diffmm/splits/``; if none is, the split is not saved.
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

SPLIT_METHODS = ("random", "loo", "temporal")
CACHE_ENV = "DIFFMM_CACHE_DIR"
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
    order: np.ndarray | None = None,
) -> np.ndarray:
    """Split label (0 train, 1 valid, 2 test) of each interaction, per user.

    ``users`` holds the user index of each (unique) interaction; ``timestamps`` (same
    length) orders them for ``method="loo"`` and ``"temporal"`` (required there);
    ``order`` breaks ``"temporal"`` ties (larger = later; default: position).
    """
    if method not in SPLIT_METHODS:
        raise DataError(f"unknown split method {method!r}; use one of {SPLIT_METHODS}")
    if method == "temporal" and timestamps is None:
        raise DataError("the temporal split needs a timestamp per interaction")
    users = np.asarray(users, dtype=np.int64)
    labels = np.zeros(len(users), dtype=np.int8)
    if len(users) == 0:
        return labels
    rng = np.random.default_rng(seed)
    noise = rng.random(len(users))
    n_u = np.bincount(users)[users]
    eligible = n_u >= MIN_INTERACTIONS
    if method in ("loo", "temporal"):
        key = np.zeros(len(users)) if timestamps is None else np.asarray(timestamps, float)
        if method == "temporal":
            noise = np.arange(len(users)) if order is None else np.asarray(order)
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


def cache_dir_of(cache_dir: str | Path | None) -> Path | None:
    """The chosen cache folder: ``cache_dir``, else ``$DIFFMM_CACHE_DIR``, else None.

    A chosen path that exists but is not a folder is refused (DataError), not passed over.
    """
    chosen = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV) or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser().resolve()
    if path.exists() and not path.is_dir():
        named = "the split cache folder" if cache_dir is not None else f"${CACHE_ENV}"
        raise DataError(f"{path}: {named} is a file, not a folder; name a folder")
    return path


def cache_dirs(table: Path, cache_dir: str | Path | None = None) -> list[Path]:
    """The folders a split of ``table`` is cached in, first choice first."""
    chosen = cache_dir_of(cache_dir)
    first = chosen if chosen is not None else table.resolve().parent / ".diffmm_splits"
    return [first, Path.home() / ".cache" / "diffmm" / "splits"]


def cache_paths(
    table: Path, method: str, seed: int, tag: str = "", cache_dir: str | Path | None = None
) -> list[Path]:
    """Where the split of ``table`` is cached (see the module docstring), in order.

    ``tag`` names the table options of a filtered table ('' for none).
    """
    table = table.resolve()
    fname = f"{table.stem}.{method}-{seed}{'.' + tag if tag else ''}.csv"
    path_tag = hashlib.sha256(str(table).encode()).hexdigest()[:8]
    shared = f"{table.stem}-{path_tag}.{fname}"  # a shared folder: tables of many folders
    first, fallback = cache_dirs(table, cache_dir)
    own = first / (fname if cache_dir_of(cache_dir) is None else shared)
    return [own, fallback / shared]


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
    tag: str = "",
    cache_dir: str | Path | None = None,
) -> tuple[np.ndarray, Path | None]:
    """Labels of a split of ``table``: read from the cache, else computed and saved.

    ``raw_users``/``raw_items`` are the raw ids of the (unique) interactions in the order
    ``compute()`` labels them; ``tag`` and ``cache_dir`` as in :func:`cache_paths`.
    Returns the labels and the cache file (None if unsaved).
    """
    checksum = file_sha256(table)
    paths = cache_paths(table, method, seed, tag, cache_dir)
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
