"""The checks :func:`~diffmm.data.dataset.build_dataset` applies to every input.

* :func:`check_interaction_values`: stored values of an interaction matrix must be finite
  and not negative (a -1 or NaN is not an interaction); zeros are dropped later.
* :func:`check_sizes`: a dataset may not declare vastly more users/items than its
  interactions use (ids that are not 0-based indices, a wrong matrix shape): refused
  rather than allocated.
* :func:`check_overlaps`: pairs shared by two splits. A test pair also in train or valid
  is refused: evaluation masks a user's train and valid items, so it could never be hit
  and the test metrics would be wrong. A valid pair also in train is counted and warned
  about: it only lowers the validation metric, which ranks epochs.
* :func:`check_features`: a feature matrix is 2-D, numeric, one row per item, at least
  one column, finite and within float32's range.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from diffmm.errors import DataError

#: Users/items without any interaction allowed beyond :data:`EMPTY_RATIO` x those with one.
EMPTY_FLOOR = 1_000_000
EMPTY_RATIO = 10
PAIRS = (("train", "valid"), ("train", "test"), ("valid", "test"))
_BLOCK = 4096  # rows checked at a time: a boolean copy of a large matrix costs as much


def _preview(values: Any) -> str:
    from diffmm.data.dataset import preview  # here: dataset imports this module

    return preview(np.asarray(values))


def check_interaction_values(values: Any, where: str, what: str) -> None:
    """DataError if stored values of an interaction matrix are negative, NaN or inf."""
    values = np.asarray(values)
    if values.dtype.kind not in "biuf":
        raise DataError(
            f"{where}: the {what} holds {values.dtype} values; an interaction matrix holds "
            "numbers (1 or another positive value per interaction)"
        )
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values) | (values < 0)
    else:
        bad = values < 0
    if bad.any():
        raise DataError(
            f"{where}: the {what} has {int(bad.sum())} stored value(s) that are negative, NaN "
            f"or inf (e.g. {_preview(np.unique(values[bad]))}); an interaction matrix stores a "
            "positive value per interaction and nothing (or 0) elsewhere - fix those entries"
        )


def needs_size_check(n: int) -> bool:
    """Whether :func:`check_sizes` looks at a dimension of ``n`` users/items at all."""
    return n > EMPTY_FLOOR


def check_sizes(n: int, ids: list[np.ndarray], kind: str, where: str, backed: bool = False) -> None:
    """DataError if far more of the ``n`` declared users/items than ``ids`` use are empty.

    ``ids``: the distinct indices each split uses (needed only if :func:`needs_size_check`).
    ``backed``: every row has data of its own (item features), so none is empty.
    """
    if backed or not needs_size_check(n):
        return
    used = np.unique(np.concatenate(ids)) if ids else np.zeros(0, dtype=np.int64)
    empty = n - len(used)
    if empty > max(EMPTY_FLOOR, EMPTY_RATIO * len(used)):
        largest = int(used[-1]) if len(used) else None
        raise DataError(
            f"{where}: declares {n:,} {kind}s but only {len(used):,} of them have an "
            f"interaction (the largest {kind} index used is {largest}); {empty:,} empty "
            f"{kind} rows would be allocated. Ids must be 0-based indices 0..n-1: fix the "
            f"matrix shape or re-index the {kind}s (a .csv/.tsv table maps arbitrary ids)"
        )


def _pairs_text(keys: np.ndarray, n_items: int, user_ids: Any, item_ids: Any) -> str:
    users, items = np.divmod(keys[:3], n_items)
    shown = []
    for u, i in zip(users.tolist(), items.tolist(), strict=True):
        ru = user_ids[u] if user_ids is not None else u
        ri = item_ids[i] if item_ids is not None else i
        ru, ri = (v.item() if hasattr(v, "item") else v for v in (ru, ri))
        shown.append(f"user {ru!r}, item {ri!r}")
    return "; ".join(shown) + ("; ..." if len(keys) > 3 else "")


def check_overlaps(
    keys: Mapping[str, np.ndarray],
    n_items: int,
    where: str,
    user_ids: Any = None,
    item_ids: Any = None,
) -> dict[str, int]:
    """Pairs shared by each two splits (``{"train&valid": n, ...}``), refusing test ones.

    ``keys`` holds each split's sorted unique ``user * n_items + item`` keys.
    """
    shared = {f"{a}&{b}": np.intersect1d(keys[a], keys[b], assume_unique=True) for a, b in PAIRS}
    refused = [
        f"{len(shared[f'{other}&test'])} test pair(s) are also in {other} (first: "
        f"{_pairs_text(shared[f'{other}&test'], n_items, user_ids, item_ids)})"
        for other in ("train", "valid")
        if len(shared[f"{other}&test"])
    ]
    if refused:
        raise DataError(
            f"{where}: {' and '.join(refused)}; evaluation masks each user's train and valid "
            "items, so these test items could never be recommended and the test metrics "
            "would be wrong - keep each (user, item) pair in one split only"
        )
    n_valid = len(shared["train&valid"])
    if n_valid:
        warnings.warn(
            f"{where}: {n_valid} (user, item) pair(s) are in train and also in valid (first: "
            f"{_pairs_text(shared['train&valid'], n_items, user_ids, item_ids)}); they can "
            "never count as hits in validation (reported, not removed)",
            stacklevel=3,
        )
    return {k: len(v) for k, v in shared.items()}


def check_features(name: str, values: Any, n_items: int, where: str) -> np.ndarray:
    """Validate one feature matrix; return it as float32 C-contiguous ``(n_items, d)``."""
    raw = np.asarray(values)
    if raw.ndim != 2:
        raise DataError(
            f"{where}: feature {name!r} has shape {raw.shape}; expected a 2-D "
            f"(n_items={n_items}, d) matrix"
        )
    if raw.dtype.kind not in "biuf":
        raise DataError(f"{where}: feature {name!r} has non-numeric dtype {raw.dtype}")
    if raw.shape[0] != n_items:
        raise DataError(
            f"{where}: feature {name!r} has {raw.shape[0]} rows but the dataset has "
            f"{n_items} items; give one row per item (row i = item i)"
        )
    if raw.shape[1] == 0:
        raise DataError(
            f"{where}: feature {name!r} has 0 columns (shape {raw.shape}); a feature matrix "
            "needs at least one value per item - re-export it, or remove the file"
        )
    with np.errstate(over="ignore"):
        arr = np.ascontiguousarray(raw, dtype=np.float32)
    bad = np.flatnonzero(
        np.concatenate(
            [~np.isfinite(arr[i : i + _BLOCK]).all(axis=1) for i in range(0, len(arr), _BLOCK)]
            or [np.zeros(0, dtype=bool)]
        )
    )
    if len(bad):
        # non-finite only once in float32, yet finite in the input: too large for float32
        nan_rows = bad[~np.isfinite(raw[bad]).all(axis=1)]
        huge_rows = np.setdiff1d(bad, nan_rows, assume_unique=True)
        problems = []
        if len(nan_rows):
            problems.append(
                f"has NaN or inf values in {len(nan_rows)} row(s) (first rows: "
                f"{_preview(nan_rows)}); clean or impute them"
            )
        if len(huge_rows):
            big = np.finfo(np.float32).max
            problems.append(
                f"has values too large for float32 (|x| > {big:.3g}) in {len(huge_rows)} "
                f"row(s) (first rows: {_preview(huge_rows)}); rescale or normalise them"
            )
        raise DataError(f"{where}: feature {name!r} " + "; it also ".join(problems))
    return arr
