"""Summary numbers of a dataset, and their text rendering (``diffmm data stats``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from diffmm.data.checks import PAIRS
from diffmm.data.dataset import SPLITS, Dataset


def split_overlaps(ds: Dataset) -> dict[str, int]:
    """The (user, item) pairs each two splits share: ``{"train&valid": n, ...}``."""
    return {
        f"{a}&{b}": int(ds.split(a).astype(bool).multiply(ds.split(b).astype(bool)).nnz)
        for a, b in PAIRS
    }


def dataset_stats(ds: Dataset) -> dict[str, Any]:
    """Sizes, per-split counts, density, features, cold users/items, duplicates, overlaps.

    ``cold_users``/``cold_items``: users/items with no train interaction (they may still
    appear in valid/test). ``users_with_valid``/``users_with_test``: users with at least one
    valid/test item. ``density``: all interactions / (users x items). ``overlaps``: pairs
    shared by each two splits; ``leaks``: train pairs also in valid (a
    test pair also in another split is refused when the data are loaded).
    """
    nnz = {s: int(ds.split(s).nnz) for s in SPLITS}
    train = ds.train
    user_train = np.diff(train.indptr)
    item_train = np.bincount(train.indices, minlength=ds.n_items)
    return {
        "name": ds.name,
        "source": ds.source,
        "users": int(ds.n_users),
        "items": int(ds.n_items),
        "interactions": {**nnz, "total": sum(nnz.values())},
        "density": sum(nnz.values()) / (ds.n_users * ds.n_items),
        "features": {k: list(v.shape) for k, v in ds.features.items()},
        "cold_users": int((user_train == 0).sum()),
        "cold_items": int((item_train == 0).sum()),
        "users_with_valid": int((np.diff(ds.valid.indptr) > 0).sum()),
        "users_with_test": int((np.diff(ds.test.indptr) > 0).sum()),
        "duplicates": int(ds.duplicates),
        "leaks": int(ds.leaks),
        "overlaps": split_overlaps(ds),
    }


def format_stats(stats: dict[str, Any]) -> str:
    """A human-readable, aligned rendering of :func:`dataset_stats`."""
    inter = stats["interactions"]
    feats = stats["features"]
    feat_text = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in feats.items()) or "none"
    rows = [
        ("dataset", f"{stats['name']} ({stats['source']})" if stats["source"] else stats["name"]),
        ("users", f"{stats['users']:,}"),
        ("items", f"{stats['items']:,}"),
        (
            "interactions",
            f"{inter['total']:,} (train {inter['train']:,} / valid {inter['valid']:,} / "
            f"test {inter['test']:,})",
        ),
        ("density", f"{stats['density']:.5%}"),
        ("features", feat_text),
        ("cold users", f"{stats['cold_users']:,} (no train interaction)"),
        ("cold items", f"{stats['cold_items']:,} (no train interaction)"),
        ("users with valid", f"{stats['users_with_valid']:,}"),
        ("users with test", f"{stats['users_with_test']:,}"),
        ("duplicates", f"{stats['duplicates']:,} (kept once)"),
        ("leaks", f"{stats['leaks']:,} (train pairs also in valid)"),
        ("overlaps", " / ".join(f"{k} {v:,}" for k, v in stats["overlaps"].items())),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
