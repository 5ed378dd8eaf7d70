"""The MMRec format: ``<name>.inter`` (userID, itemID, x_label) and ``<modality>_feat.npy``.

The ``.inter`` file is tab-separated with a header containing ``userID``, ``itemID`` and
``x_label`` (0/1/2 = train/valid/test; other columns ignored, but not a second split
column). Ids are 0-based indices, as MMRec writes them: an id far beyond the number of
users/items that have interactions is refused by :func:`build_dataset`'s size check rather
than allocated. Optional ``<modality>_feat.npy`` files next to it (row i = item i);
feature rows may exceed the largest item id.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffmm.data.columns import (
    SPLIT_COLS,
    clean_name,
    find_col,
    read_table,
    regular_file,
    require_cols,
    split_codes,
)
from diffmm.data.dataset import Dataset, preview
from diffmm.data.feature_files import feat_files, load_feat_files, npy_rows
from diffmm.data.table import build_from_labels
from diffmm.errors import DataError

#: Ids at or above this are not indices of any matrix that fits in memory.
MAX_INDEX = 2**53


def has_x_label(path: Path) -> bool:
    """Whether the header of the tab-separated file ``path`` has an ``x_label`` column."""
    regular_file(path)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            header = f.readline()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    return any(clean_name(c) == "x_label" for c in header.rstrip("\n").split("\t"))


def load_mmrec(path: str | Path, *, name: str | None = None) -> Dataset:
    """Load a MMRec ``.inter`` file (userID, itemID, x_label) and its ``*_feat.npy``."""
    import pandas as pd

    p = Path(path)
    df = read_table(p)
    ucol, icol, lcol = require_cols(df, p, ("userid",), ("itemid",), ("x_label",))
    find_col(df, SPLIT_COLS, p)  # a second split column is ambiguous
    if df.empty:
        raise DataError(f"{p}: the file has a header but no rows; it needs interactions")
    idx = {}
    for col, kind in ((ucol, "user"), (icol, "item")):
        s = df[col]
        if s.dtype.kind not in "iu":
            as_num = pd.to_numeric(s, errors="coerce")
            bad = as_num.isna() | (as_num != np.round(as_num))
            if bad.any():
                raise DataError(
                    f"{p}: {int(bad.sum())} non-integer {kind} id(s) in column {col!r} "
                    f"(first: {preview(s[bad].to_numpy())}); MMRec files need 0-based "
                    "integer indices - use a .csv table for arbitrary ids"
                )
            s = as_num
        huge = (s.abs() >= MAX_INDEX).to_numpy()
        if huge.any():
            raise DataError(
                f"{p}: {int(huge.sum())} {kind} id(s) in column {col!r} are too large to be "
                f"0-based indices (first: {preview(s[huge].to_numpy())}); re-index them, or "
                "rename the file to .tsv to read it as a table of arbitrary ids"
            )
        idx[kind] = s.to_numpy().astype(np.int64)
    labels = split_codes(df[lcol], p)
    files = feat_files(p.parent)
    n_users = int(idx["user"].max()) + 1
    max_item = int(idx["item"].max()) + 1
    rows = {m: npy_rows(f) for m, f in files.items()}
    n_items = max([max_item, *rows.values()])
    for m, r in rows.items():
        if r < max_item:
            raise DataError(
                f"{files[m]}: has {r} rows but {p.name} uses item ids up to {max_item - 1}; "
                f"it needs at least {max_item} rows (row i = item i)"
            )
    feats = load_feat_files(files, n_items)
    return build_from_labels(
        name or p.stem, n_users, n_items, idx["user"], idx["item"], labels, feats, str(p)
    )
