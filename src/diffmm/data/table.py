"""Generic interaction tables: ``.csv``, ``.tsv``, ``.parquet`` (and RecBole ``.inter``).

Columns (a RecBole type suffix such as ``:token`` is ignored, names are case-insensitive):
user (``user``, ``user_id`` or ``userID``), item (``item``, ``item_id`` or ``itemID``),
optional split (``split``: train/valid/test or 0/1/2, or ``x_label``: 0/1/2; not both),
optional ``timestamp`` (used by the leave-one-out split). Raw ids may be any strings or
integers (trimmed of surrounding spaces); they are mapped to indices in sorted order and
kept as ``user_ids``/``item_ids``. Without a split column the table is split per user
(see :mod:`diffmm.data.split`) and the split is cached next to the table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from diffmm.data.columns import (
    ITEM_COLS,
    SPLIT_COLS,
    TIME_COLS,
    USER_COLS,
    find_col,
    raw_ids,
    read_table,
    require_cols,
    split_codes,
)
from diffmm.data.dataset import Dataset, build_dataset
from diffmm.data.feature_files import features_from_dir
from diffmm.data.split import MIN_INTERACTIONS, cached_split, split_labels
from diffmm.errors import DataError


def build_from_labels(
    name: str,
    n_users: int,
    n_items: int,
    users: np.ndarray,
    items: np.ndarray,
    labels: np.ndarray,
    feats: dict[str, np.ndarray],
    source: str,
    **kwargs: Any,
) -> Dataset:
    """:func:`build_dataset` from one (user, item) index pair and split label (0/1/2) per row."""
    splits = [(users[labels == k], items[labels == k]) for k in range(3)]
    return build_dataset(name, n_users, n_items, *splits, features=feats, source=source, **kwargs)


def load_table(
    path: str | Path, *, split: str = "random", seed: int = 2024, name: str | None = None
) -> Dataset:
    """Load a generic csv/tsv/parquet table of interactions (see the module docstring)."""
    import pandas as pd

    p = Path(path)
    df = read_table(p)
    ucol, icol = require_cols(df, p, USER_COLS, ITEM_COLS)
    if len(df) == 0:
        raise DataError(f"{p}: the table has no rows; it needs interactions")
    raw_u, raw_i = raw_ids(df[ucol], p, "user"), raw_ids(df[icol], p, "item")
    user_ids, users = np.unique(raw_u, return_inverse=True)
    item_ids, items = np.unique(raw_i, return_inverse=True)
    feats = features_from_dir(p.parent, item_ids, p.name)
    n_users, n_items = len(user_ids), len(item_ids)
    ids = {"user_ids": user_ids, "item_ids": item_ids}
    scol = find_col(df, SPLIT_COLS, p)
    if scol is not None:
        labels = split_codes(df[scol], p)
        return build_from_labels(
            name or p.stem, n_users, n_items, users, items, labels, feats, str(p), **ids
        )
    keys = users.astype(np.int64) * n_items + items
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    duplicates = len(keys) - len(uniq)
    tcol = find_col(df, TIME_COLS, p)
    stamps = None
    if tcol is not None and split == "loo":
        t = pd.to_numeric(df[tcol], errors="coerce").to_numpy(dtype=float)
        if np.isnan(t).any():
            raise DataError(f"{p}: column {tcol!r} has non-numeric or missing timestamps")
        stamps = np.full(len(uniq), -np.inf)
        np.maximum.at(stamps, inverse.ravel(), t)
    u_uniq, i_uniq = np.divmod(uniq, n_items)
    if not (np.bincount(u_uniq) >= MIN_INTERACTIONS).any():
        raise DataError(
            f"{p}: the test split is empty: the table has no split column and no user has "
            f"at least {MIN_INTERACTIONS} distinct items, which a user needs to get a test "
            "item; add interactions or a split column (train/valid/test)"
        )
    labels, _ = cached_split(
        p,
        user_ids[u_uniq],
        item_ids[i_uniq],
        lambda: split_labels(u_uniq, split, seed, stamps),
        split,
        seed,
    )
    ds = build_from_labels(
        name or p.stem, n_users, n_items, u_uniq, i_uniq, labels, feats, str(p), **ids
    )
    ds.duplicates += duplicates
    return ds
