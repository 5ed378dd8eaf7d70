"""How a table is read: column names, the rating threshold and the k-core filter.

:class:`TableOptions` is recorded in a run's ``dataset.json`` (see
:class:`~diffmm.data.ref.DataRef`) so that the run's data load again exactly as trained.
:func:`filter_interactions` applies ``min_rating`` and ``k_core`` to a table's rows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from diffmm.errors import DataError

#: The CLI flag of each field, for messages and ``diffmm train`` command lines.
FLAGS = {
    "user_col": "--user-col",
    "item_col": "--item-col",
    "rating_col": "--rating-col",
    "time_col": "--time-col",
    "min_rating": "--min-rating",
    "k_core": "--k-core",
}


@dataclass(frozen=True)
class TableOptions:
    """Options of generic tables (csv/tsv/parquet/RecBole ``.inter``); None = the default.

    ``user_col``/``item_col``/``rating_col``/``time_col`` name a column instead of the
    accepted names; ``min_rating`` drops rows rated below it (implicit feedback from
    ratings); ``k_core`` keeps only users and items with at least that many interactions
    (applied repeatedly until stable). Both filters run before the split.
    """

    user_col: str | None = None
    item_col: str | None = None
    rating_col: str | None = None
    time_col: str | None = None
    min_rating: float | None = None
    k_core: int | None = None

    def __post_init__(self) -> None:
        if self.min_rating is not None:  # 4 and 4.0 are one option (and one cache file)
            object.__setattr__(self, "min_rating", float(self.min_rating))
        if self.k_core is not None:
            object.__setattr__(self, "k_core", int(self.k_core))
        if self.min_rating is not None and not np.isfinite(self.min_rating):
            raise DataError(f"--min-rating {self.min_rating}: give a finite number such as 4")
        if self.k_core is not None and self.k_core < 1:
            raise DataError(f"--k-core {self.k_core}: give an integer >= 1 (such as 5)")

    @property
    def is_default(self) -> bool:
        """Whether every option is left at its default (the table is read as it is)."""
        return all(getattr(self, f.name) is None for f in fields(self))

    def given(self) -> dict[str, Any]:
        """The options that are set, by field name."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def cache_tag(self) -> str:
        """A file-name part naming these options in a split cache ('' for the defaults)."""
        if self.is_default:
            return ""
        text = json.dumps(self.given(), sort_keys=True)
        return "opts-" + hashlib.sha256(text.encode()).hexdigest()[:10]

    def cli_args(self) -> list[str]:
        """These options as ``diffmm train`` arguments."""
        out: list[str] = []
        for name, value in self.given().items():
            out += [FLAGS[name], str(value)]
        return out

    def describe(self) -> str:
        """The options that are set, as flags (for messages)."""
        return " ".join(self.cli_args())

    @classmethod
    def from_dict(cls, raw: Any) -> TableOptions:
        """From a recorded dict (``None`` or missing keys = defaults); ValueError if bad."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict) or set(raw) - set(FLAGS):
            raise ValueError(f"table options {raw!r}: unknown keys")
        kwargs: dict[str, Any] = {k: None if raw.get(k) is None else str(raw[k]) for k in FLAGS}
        if raw.get("min_rating") is not None:
            kwargs["min_rating"] = float(raw["min_rating"])
        if raw.get("k_core") is not None:
            kwargs["k_core"] = int(raw["k_core"])
        return cls(**kwargs)


def k_core_mask(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Which (unique) pairs survive the ``k``-core: every user and item keeps >= k pairs.

    ``users``/``items`` are 0-based indices of distinct pairs. Users and items under ``k``
    are dropped repeatedly (a dropped user can take an item under ``k``) until stable;
    each pass is vectorised.
    """
    keep = np.ones(len(users), dtype=bool)
    n_u, n_i = int(users.max(initial=-1)) + 1, int(items.max(initial=-1)) + 1
    while True:
        user_n = np.bincount(users[keep], minlength=n_u)
        item_n = np.bincount(items[keep], minlength=n_i)
        drop = keep & ((user_n[users] < k) | (item_n[items] < k))
        if not drop.any():
            return keep
        keep &= ~drop


def filter_interactions(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray | None,
    options: TableOptions,
    where: str,
) -> np.ndarray:
    """The rows kept by ``options.min_rating`` and ``options.k_core`` (a boolean mask).

    ``users``/``items`` are raw ids per row; ``ratings`` the numeric ratings (needed only
    with ``min_rating``). The k-core counts distinct (user, item) pairs. DataError, naming
    ``where``, when nothing is left.
    """
    keep = np.ones(len(users), dtype=bool)
    if options.min_rating is not None:
        assert ratings is not None
        keep &= ratings >= options.min_rating
    if options.k_core is not None and keep.any():
        _, u = np.unique(users[keep], return_inverse=True)
        _, i = np.unique(items[keep], return_inverse=True)
        key = u.ravel().astype(np.int64) * (int(i.max()) + 1) + i.ravel()
        uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        kept_pairs = k_core_mask(u.ravel()[first], i.ravel()[first], options.k_core)
        rows = np.flatnonzero(keep)
        keep[rows[~kept_pairs[inverse.ravel()]]] = False
    if not keep.any():
        raise DataError(
            f"{where}: no interactions are left after {options.describe()} (of {len(keep)} "
            "rows); lower the threshold"
        )
    return keep
