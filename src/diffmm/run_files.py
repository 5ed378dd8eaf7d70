"""The run directory's JSON files: read with one-line errors that name the file, and the
format of ``ids.json`` (the raw id of every user and item index), written and checked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from diffmm.data.dataset import Dataset
from diffmm.errors import DataError


def ids_of(dataset: Dataset) -> dict[str, list[Any]]:
    """What ``ids.json`` holds: the raw id of every user and item index of ``dataset``."""

    def listed(ids: np.ndarray | None, n: int) -> list[Any]:
        return (np.arange(n) if ids is None else np.asarray(ids)).tolist()

    return {
        "users": listed(dataset.user_ids, dataset.n_users),
        "items": listed(dataset.item_ids, dataset.n_items),
    }


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


def read_object(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """A JSON object with at least ``keys``; DataError naming the file otherwise."""
    obj = read_json(path)
    if not isinstance(obj, dict) or not set(keys) <= set(obj):
        with_keys = f" with keys {list(keys)}" if keys else ""
        raise DataError(
            f"{path}: expected a JSON object{with_keys}; the run directory is "
            "damaged (was this file edited?)"
        )
    return obj


def parse_ids(path: Path, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """The user and item ids of ``ids.json`` at ``path``: ``users[u]`` is the raw id of
    user index ``u``; DataError naming the file unless each is a flat list of ``n`` ids."""
    raw = read_object(path, ("users", "items"))
    out = []
    for key, n in (("users", n_users), ("items", n_items)):
        ids = raw[key]
        try:
            arr = np.asarray(ids) if isinstance(ids, list) else None
        except ValueError:  # lists of different lengths among the ids
            arr = None
        flat = arr is not None and arr.ndim == 1 and (arr.dtype.kind in "iufU" or n == 0)
        if not flat or len(ids) != n:
            raise DataError(
                f"{path}: expected a list of {n} {key[:-1]} ids (numbers or text) under "
                f"{key!r}; the run directory was modified or belongs to other data"
            )
        out.append(arr)
    return out[0], out[1]
