"""Generic interaction tables: ``.csv``, ``.tsv``, ``.parquet`` (and RecBole ``.inter``).

Columns (a RecBole type suffix such as ``:token`` is ignored, names are case-insensitive):
user (``user``, ``user_id`` or ``userID``), item (``item``, ``item_id`` or ``itemID``),
optional split (``split``: train/valid/test or 0/1/2, or ``x_label``: 0/1/2; not both),
optional time (``timestamp``, ``time`` or ``ts``: used by the ``loo`` and ``temporal``
splits), optional rating (``rating``, ``score``, ``value``, ``stars``, ``preference``:
used only by ``min_rating``). :class:`~diffmm.data.options.TableOptions` name other
columns (``--user-col`` ...) and filter rows before the split: ``min_rating`` drops rows
rated below it, then ``k_core`` keeps only users and items with at least k distinct
interactions (repeatedly, until stable). Raw ids may be any strings or
integers (trimmed of surrounding spaces); they are mapped to indices in sorted order and
kept as ``user_ids``/``item_ids``. Without a split column the table is split per user
(see :mod:`diffmm.data.split`) and the split is cached next to the table.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from diffmm.data.columns import (
    ITEM_COLS,
    RATING_COLS,
    SPLIT_COLS,
    TIME_COLS,
    USER_COLS,
    find_col,
    named_col,
    raw_ids,
    read_table,
    require_cols,
    split_codes,
)
from diffmm.data.dataset import Dataset, build_dataset
from diffmm.data.feature_files import features_from_dir
from diffmm.data.options import TableOptions, filter_interactions
from diffmm.data.split import MIN_INTERACTIONS, cached_split, split_labels
from diffmm.errors import DataError

if TYPE_CHECKING:
    import pandas as pd


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
    path: str | Path,
    *,
    split: str = "random",
    seed: int = 2024,
    name: str | None = None,
    options: TableOptions | None = None,
    cache_dir: str | Path | None = None,
) -> Dataset:
    """Load a generic csv/tsv/parquet table of interactions (see the module docstring).

    ``options`` name columns and filter rows (see :class:`TableOptions`); ``cache_dir``
    moves the split cache (see :mod:`diffmm.data.split`).
    """
    p = Path(path)
    opts = options or TableOptions()
    df = read_table(p)
    ucol = _required(df, p, opts.user_col, USER_COLS, "--user-col")
    icol = _required(df, p, opts.item_col, ITEM_COLS, "--item-col")
    if ucol == icol:
        raise DataError(
            f"{p}: column {ucol!r} is taken as both the user and the item column; name two "
            "columns with --user-col and --item-col"
        )
    if len(df) == 0:
        raise DataError(f"{p}: the table has no rows; it needs interactions")
    raw_u, raw_i = raw_ids(df[ucol], p, "user"), raw_ids(df[icol], p, "item")
    tcol = named_col(df, p, opts.time_col, TIME_COLS, "--time-col")
    scol = find_col(df, SPLIT_COLS, p)
    if split == "temporal" and tcol is None and scol is None:
        raise DataError(
            f"{p}: --split temporal needs a time column (accepted names: "
            f"{', '.join(TIME_COLS)}; or --time-col NAME); columns found: "
            f"{', '.join(map(str, df.columns))}"
        )
    if opts.min_rating is not None or opts.k_core is not None:
        ratings = _ratings(df, p, opts)
        keep = filter_interactions(raw_u, raw_i, ratings, opts, str(p))
        df, raw_u, raw_i = df[keep], raw_u[keep], raw_i[keep]
    elif opts.rating_col is not None:
        named_col(df, p, opts.rating_col, RATING_COLS, "--rating-col")  # it must exist
    user_ids, users = np.unique(raw_u, return_inverse=True)
    item_ids, items = np.unique(raw_i, return_inverse=True)
    users, items = users.ravel(), items.ravel()
    feats = features_from_dir(p.parent, item_ids, p.name)
    n_users, n_items = len(user_ids), len(item_ids)
    ids = {"user_ids": user_ids, "item_ids": item_ids}
    if scol is not None:
        labels = split_codes(df[scol], p)
        return build_from_labels(
            name or p.stem, n_users, n_items, users, items, labels, feats, str(p), **ids
        )
    keys = users.astype(np.int64) * n_items + items
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    duplicates = len(keys) - len(uniq)
    stamps = None
    if tcol is not None and split in ("loo", "temporal"):
        stamps = _timestamps(df[tcol], p, tcol, inverse.ravel(), len(uniq))
    u_uniq, i_uniq = np.divmod(uniq, n_items)
    if not (np.bincount(u_uniq) >= MIN_INTERACTIONS).any():
        raise DataError(
            f"{p}: the test split is empty: the table has no split column and no user has "
            f"at least {MIN_INTERACTIONS} distinct items, which a user needs to get a test "
            "item; add interactions or a split column (train/valid/test)"
        )
    last_row = np.zeros(len(uniq), dtype=np.int64)  # temporal ties: the later row is later
    np.maximum.at(last_row, inverse.ravel(), np.arange(len(keys)))
    labels, _ = cached_split(
        p,
        user_ids[u_uniq],
        item_ids[i_uniq],
        lambda: split_labels(u_uniq, split, seed, stamps, order=last_row),
        split,
        seed,
        opts.cache_tag(),
        cache_dir,
    )
    ds = build_from_labels(
        name or p.stem, n_users, n_items, u_uniq, i_uniq, labels, feats, str(p), **ids
    )
    ds.duplicates += duplicates
    return ds


def _required(
    df: pd.DataFrame, p: Path, name: str | None, names: tuple[str, ...], flag: str
) -> str:
    if name is None:
        return require_cols(df, p, names)[0]
    col = named_col(df, p, name, names, flag)
    assert col is not None
    return col


def _timestamps(values: pd.Series, p: Path, col: str, inverse: np.ndarray, n: int) -> np.ndarray:
    """The latest timestamp of each distinct pair; DataError if any is not a number."""
    import pandas as pd

    t = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    if np.isnan(t).any():
        raise DataError(f"{p}: column {col!r} has non-numeric or missing timestamps")
    stamps = np.full(n, -np.inf)
    np.maximum.at(stamps, inverse, t)
    return stamps


def _ratings(df: pd.DataFrame, p: Path, opts: TableOptions) -> np.ndarray | None:
    """The numeric rating of each row (None unless ``--min-rating`` needs it)."""
    import pandas as pd

    if opts.min_rating is None:
        return None
    col = named_col(df, p, opts.rating_col, RATING_COLS, "--rating-col")
    if col is None:
        raise DataError(
            f"{p}: --min-rating needs a rating column (accepted names: "
            f"{', '.join(RATING_COLS)}; or --rating-col NAME); columns found: "
            f"{', '.join(map(str, df.columns))}"
        )
    values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
    bad = np.isnan(values)
    if bad.any():
        raise DataError(
            f"{p}: {int(bad.sum())} row(s) of column {col!r} have no numeric rating; "
            "fill or drop them"
        )
    return values
