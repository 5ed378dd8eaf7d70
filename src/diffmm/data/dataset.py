"""The one in-memory dataset type every loader returns and every model reads.

:func:`build_dataset` is the single constructor that validates and normalises the
interactions and features; every loader goes through it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from diffmm.data.checks import (
    check_features,
    check_interaction_values,
    check_overlaps,
    check_sizes,
    needs_size_check,
)
from diffmm.errors import DataError, UnknownIdError

SPLITS = ("train", "valid", "test")

SplitInput = Any  # a pair of int arrays (users, items), or a scipy sparse matrix / array


@dataclass
class Dataset:
    """Users, items, the three interaction splits and the item features.

    Attributes:
        name: a short name for logs ("tiktok", "synthetic", ...).
        n_users, n_items: sizes; every index is in ``[0, n_users)`` / ``[0, n_items)``.
        train, valid, test: binary ``(n_users, n_items)`` CSR matrices, float32, sorted
            indices, one stored entry per (user, item) pair.
        features: modality name -> float32 ``(n_items, d)`` matrix, finite; row i is item i.
        user_ids, item_ids: the raw id of each index (``user_ids[u]`` is user u's raw id).
        duplicates: pairs that appeared more than once in the input (kept once).
        leaks: pairs that are in train and also in valid (reported, not removed; a test
            pair also in train or valid is refused, see :mod:`diffmm.data.checks`).
        source: where the data came from (a path, or "synthetic(...)").
    """

    name: str
    n_users: int
    n_items: int
    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    features: dict[str, np.ndarray] = field(default_factory=dict)
    user_ids: np.ndarray | None = None
    item_ids: np.ndarray | None = None
    duplicates: int = 0
    leaks: int = 0
    source: str = ""

    def split(self, name: str) -> sp.csr_matrix:
        """The interaction matrix of split ``name`` ("train", "valid" or "test")."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)

    @property
    def modalities(self) -> list[str]:
        """Names of the item-feature matrices, in a fixed order."""
        return list(self.features)

    def fingerprint(self) -> dict[str, Any]:
        """Sizes and sha256 digests of every split and feature matrix.

        Two datasets with equal fingerprints hold the same interactions and features
        (the digests do not depend on the index dtype of the CSR matrices).
        """
        splits = {}
        for name in SPLITS:
            m = self.split(name)
            h = hashlib.sha256()
            h.update(np.ascontiguousarray(m.indptr, dtype=np.int64))
            h.update(np.ascontiguousarray(m.indices, dtype=np.int64))
            splits[name] = {"nnz": int(m.nnz), "sha256": h.hexdigest()}
        features = {
            k: {
                "shape": list(v.shape),
                # hashed in place: .tobytes() would copy the whole matrix
                "sha256": hashlib.sha256(np.ascontiguousarray(v, np.float32)).hexdigest(),
            }
            for k, v in self.features.items()
        }
        return {
            "name": self.name,
            "n_users": int(self.n_users),
            "n_items": int(self.n_items),
            "splits": splits,
            "features": features,
        }

    def user_index(self, raw_ids: Any) -> np.ndarray:
        """Map raw user ids to indices; DataError lists ids that are unknown."""
        return _lookup(raw_ids, self.user_ids, self.n_users, "user", self.source)

    def item_index(self, raw_ids: Any) -> np.ndarray:
        """Map raw item ids to indices; DataError lists ids that are unknown."""
        return _lookup(raw_ids, self.item_ids, self.n_items, "item", self.source)


def match_ids(known: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Position of each ``raw`` id in ``known`` (any order), -1 where absent.

    Ids match as they are written. An integer id also matches its decimal string ("17"
    and 17), but no other spelling of it ("017", "+17", " 17", "-0"). A string ending
    in NUL matches nothing: numpy's fixed-width strings drop trailing NULs, which would
    make "u1\\x00" match "u1" (pass ids that may hold them as an object array).
    """
    known = np.asarray(known)
    raw = np.asarray(raw)
    idx = _match(known, raw)
    if raw.dtype.kind == "O":  # still as given: astype(str) would turn "u1\x00" into "u1"
        idx[_ends_in_nul(raw)] = -1
    return idx


def _ends_in_nul(raw: np.ndarray) -> np.ndarray:
    flags = (isinstance(v, str) and v.endswith("\x00") for v in raw.ravel().tolist())
    return np.fromiter(flags, dtype=bool, count=raw.size).reshape(raw.shape)


def _match(known: np.ndarray, raw: np.ndarray) -> np.ndarray:
    if known.dtype.kind == "u" and raw.dtype.kind != "u":  # ids beyond int64 (uint64)
        values, ok = _parse_uint64(raw)
        idx = _match(known, values)
        idx[~ok] = -1
        return idx
    if known.dtype.kind in "iu" and raw.dtype.kind not in "iu":
        values, ok = _parse_int64(raw)
        idx = _match(known, values)
        idx[~ok] = -1
        return idx
    elif known.dtype.kind not in "iu" and raw.dtype.kind in "iu":
        raw = raw.astype(str)
    if known.dtype.kind == "O" or raw.dtype.kind == "O":
        known, raw = known.astype(str), raw.astype(str)
    if len(known) == 0:
        return np.full(raw.shape, -1, dtype=np.int64)
    order = np.argsort(known, kind="stable")
    sorted_known = known[order]
    pos = np.clip(np.searchsorted(sorted_known, raw), 0, len(known) - 1)
    return np.where(sorted_known[pos] == raw, order[pos], -1).astype(np.int64)


def _parse_int64(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(values, ok)``: each id as an int64 where it is one (e.g. "42", 42.0), else ok=False.

    Ids that are not integers, or do not fit in int64, are not parsed (never an error);
    nor are strings other than an integer's own decimal form ("017", "-0", " 42").
    """
    raw = np.asarray(raw)
    if raw.dtype.kind == "b":
        return np.zeros(raw.shape, dtype=np.int64), np.zeros(raw.shape, dtype=bool)
    if raw.dtype.kind == "f":
        ok = np.isfinite(raw) & (raw == np.round(raw)) & (np.abs(raw) < 2**62)
        return np.where(ok, raw, 0).astype(np.int64), ok
    text = raw.astype(str)
    digits = np.char.lstrip(text, "-")
    ok = (
        np.char.isdecimal(digits)
        & (np.char.str_len(digits) <= 18)  # fits in int64
        & (np.char.str_len(text) - np.char.str_len(digits) <= 1)  # at most one minus sign
    )
    values = np.zeros(raw.shape, dtype=np.int64)
    if ok.any():
        values[ok] = text[ok].astype(np.int64)
        ok &= values.astype(str) == text  # "017" and "-0" are other ids than 17 and 0
    return values, ok


def _parse_uint64(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(values, ok)`` as :func:`_parse_int64`, for the uint64 ids of a column whose ids
    exceed int64: each id's own decimal form from 0 to 2**64 - 1 (or an integer) parses."""
    raw = np.asarray(raw)
    values = np.zeros(raw.shape, dtype=np.uint64)
    if raw.dtype.kind == "i":
        ok = raw >= 0
        values[ok] = raw[ok].astype(np.uint64)
        return values, ok
    if raw.dtype.kind == "b" or raw.dtype.kind == "f":  # a float cannot hold such ids exactly
        return values, np.zeros(raw.shape, dtype=bool)
    text = raw.astype(str)
    ok = np.char.isdecimal(text) & (np.char.str_len(text) <= 20)
    if ok.any():  # only the few candidate ids: Python ints hold any size
        ints = [int(t) for t in text[ok].tolist()]
        fits = np.array([i < 2**64 for i in ints])
        fitting = np.flatnonzero(ok)[fits]
        values[fitting] = np.array([i for i, f in zip(ints, fits, strict=True) if f], np.uint64)
        ok[np.flatnonzero(ok)[~fits]] = False
        ok &= values.astype(str) == text  # "017" is another id than 17
    return values, ok


def as_id_array(raw_ids: Any) -> np.ndarray:
    """Ids given by a caller as a 1-D array, strings kept exactly as given.

    numpy's fixed-width strings drop trailing NULs ("u1\x00" would become "u1"), so
    string ids are kept as an object array.
    """
    raw = np.atleast_1d(np.asarray(raw_ids))
    if raw.dtype.kind == "U" and not isinstance(raw_ids, np.ndarray):
        raw = np.atleast_1d(np.asarray(raw_ids, dtype=object))
    return raw


def _lookup(raw_ids: Any, known: np.ndarray | None, n: int, kind: str, source: str) -> np.ndarray:
    raw = as_id_array(raw_ids)
    if known is None:
        known = np.arange(n, dtype=np.int64)
    idx = match_ids(known, raw)
    bad = idx < 0
    if bad.any():
        unknown = raw[bad]
        raise UnknownIdError(
            f"{bad.sum()} unknown {kind} id(s) in dataset {source or '(in memory)'}: "
            f"{preview(unknown)}; use ids that appear in the data"
        )
    return idx


def preview(values: np.ndarray, k: int = 5, width: int = 40) -> str:
    """The first ``k`` values as ``[a, b, ...]``, each cut to ``width`` characters."""
    shown = [repr(v.item() if hasattr(v, "item") else v) for v in values[:k]]
    shown = [s if len(s) <= width else s[: width - 3] + "..." for s in shown]
    return f"[{', '.join(shown)}{', ...' if len(values) > k else ''}]"


def _pairs(split: str, data: SplitInput, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) int64 arrays from a pair of arrays or a sparse matrix."""
    if sp.issparse(data):
        try:
            coo = data if data.format == "coo" else data.tocoo()
            rows, cols, values = np.asarray(coo.row), np.asarray(coo.col), np.asarray(coo.data)
        except (ValueError, IndexError, TypeError, AttributeError) as exc:
            raise DataError(f"{where}: the {split} matrix is inconsistent ({exc})") from exc
        check_interaction_values(values, where, f"{split} matrix")
        keep = values != 0
        return rows[keep].astype(np.int64), cols[keep].astype(np.int64)
    try:
        users, items = data
        users, items = np.asarray(users), np.asarray(items)
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"{where}: the {split} split must be a pair (users, items) or a sparse matrix"
        ) from exc
    if users.shape != items.shape or users.ndim != 1:
        raise DataError(
            f"{where}: the {split} split has {users.shape} users and {items.shape} items; "
            "give two 1-D arrays of equal length"
        )
    for arr, kind in ((users, "user"), (items, "item")):
        if len(arr) and arr.dtype.kind not in "iu":
            if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
                continue
            raise DataError(
                f"{where}: the {split} split has non-integer {kind} indices "
                f"(dtype {arr.dtype}, e.g. {preview(arr, 3)}); give 0-based integer indices"
            )
    return users.astype(np.int64), items.astype(np.int64)


def _check_range(split: str, ids: np.ndarray, n: int, kind: str, where: str) -> None:
    bad = (ids < 0) | (ids >= n)
    if bad.any():
        raise DataError(
            f"{where}: {bad.sum()} {kind} id(s) in the {split} split are out of range "
            f"[0, {n}) (first: {preview(ids[bad])}); fix the ids or the number of {kind}s"
        )


def _csr_from_keys(keys: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """A binary float32 CSR matrix from sorted unique keys ``user * n_items + item``."""
    users, items = np.divmod(keys, n_items)
    idx_dtype = np.int32 if max(n_items, len(keys)) < 2**31 else np.int64
    indptr = np.zeros(n_users + 1, dtype=idx_dtype)
    np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
    data = np.ones(len(keys), dtype=np.float32)
    m = sp.csr_matrix((data, items.astype(idx_dtype), indptr), shape=(n_users, n_items))
    m.has_sorted_indices = True
    return m


def build_dataset(
    name: str,
    n_users: int,
    n_items: int,
    train: SplitInput,
    valid: SplitInput,
    test: SplitInput,
    features: Mapping[str, Any] | None = None,
    user_ids: Sequence[Any] | np.ndarray | None = None,
    item_ids: Sequence[Any] | np.ndarray | None = None,
    source: str = "",
) -> Dataset:
    """Validate and normalise interactions and features into a :class:`Dataset`.

    Each split is a pair ``(users, items)`` of integer index arrays or a sparse matrix
    (stored values finite and not negative; zeros are dropped). Ids must be in range, and
    not imply far more users/items than the interactions use; duplicate pairs are kept
    once and counted. Train and test must not be empty. A test pair also in train or
    valid is refused; pairs of train also in valid are counted as ``leaks`` (with a
    warning), not removed (see :mod:`diffmm.data.checks`). Raises :class:`DataError` for
    any invalid input, naming ``source``.
    """
    where = source or name
    n_users, n_items = int(n_users), int(n_items)
    if n_users <= 0 or n_items <= 0:
        raise DataError(f"{where}: the dataset has {n_users} users and {n_items} items")
    too_large = n_users * n_items >= 2**63  # keys user * n_items + item would overflow
    used: dict[str, list[np.ndarray]] = {"user": [], "item": []}
    keys: dict[str, np.ndarray] = {}
    duplicates = 0
    for split, data in zip(SPLITS, (train, valid, test), strict=True):
        users, items = _pairs(split, data, where)
        if sp.issparse(data) and data.shape != (n_users, n_items):
            raise DataError(
                f"{where}: the {split} matrix has shape {data.shape}; "
                f"expected ({n_users}, {n_items})"
            )
        _check_range(split, users, n_users, "user", where)
        _check_range(split, items, n_items, "item", where)
        for kind, ids, n in (("user", users, n_users), ("item", items, n_items)):
            if needs_size_check(n):
                used[kind].append(np.unique(ids))
        if not too_large:
            raw = users * n_items + items
            keys[split] = np.unique(raw)
            duplicates += len(raw) - len(keys[split])
    check_sizes(n_users, used["user"], "user", where)
    check_sizes(n_items, used["item"], "item", where, backed=bool(features))
    if too_large:
        raise DataError(f"{where}: {n_users:,} users x {n_items:,} items is too large to index")
    if len(keys["train"]) == 0:
        raise DataError(f"{where}: the train split is empty; a dataset needs train interactions")
    if len(keys["test"]) == 0:
        raise DataError(
            f"{where}: the test split is empty, so every test metric would be 0; give test "
            "interactions (x_label 2, split 'test', or a non-empty tstMat.pkl)"
        )
    uid = _ids(user_ids, n_users, "user", where)
    iid = _ids(item_ids, n_items, "item", where)
    leaks = check_overlaps(keys, n_items, where, uid, iid)["train&valid"]
    feats = {str(k): check_features(str(k), v, n_items, where) for k, v in (features or {}).items()}
    mats = {s: _csr_from_keys(keys[s], n_users, n_items) for s in SPLITS}
    return Dataset(
        name=name,
        n_users=n_users,
        n_items=n_items,
        **mats,
        features=feats,
        user_ids=uid,
        item_ids=iid,
        duplicates=int(duplicates),
        leaks=int(leaks),
        source=source,
    )


def _ids(ids: Any, n: int, kind: str, where: str) -> np.ndarray | None:
    if ids is None:
        return None
    arr = np.asarray(ids)
    if arr.shape != (n,):
        raise DataError(f"{where}: {len(arr)} raw {kind} ids given for {n} {kind}s")
    return arr
