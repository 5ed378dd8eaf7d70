"""The accepted dataset formats, and :func:`load_dataset` which picks one.

One module reads each format: :mod:`~diffmm.data.authors`, :mod:`~diffmm.data.mmrec`,
:mod:`~diffmm.data.table` (tables, via :mod:`~diffmm.data.columns`) and
:mod:`~diffmm.data.feature_files`; their names are re-exported here.

Accepted formats (``load_dataset`` autodetects them):

1. **synthetic**: the string ``"synthetic"`` or ``"synthetic:n_users=500,seed=1"``
   (keyword arguments of :func:`diffmm.data.make_synthetic`).
2. **Authors' folder** (HKUDS/DiffMM): a directory with ``trnMat.pkl``, ``valMat.pkl``,
   ``tstMat.pkl`` (pickled ``scipy.sparse`` matrices of shape (users, items), any pickle
   protocol, loaded with a restricted unpickler that admits only numpy/scipy.sparse
   classes; stored values must be finite and not negative) and optional
   ``<modality>_feat.npy`` item features (``image_feat.npy`` -> modality ``"image"``).
   Other names accepted: ``vldMat.pkl``, ``<name>_train.pkl``, ``<name>_valid.pkl``,
   ``<name>_val.pkl``, ``<name>_test.pkl`` (see :mod:`~diffmm.data.authors`); a matrix
   narrower than the others is padded with a warning.
3. **MMRec**: a ``<name>.inter`` file (or a directory holding one), tab-separated with a
   header containing ``userID``, ``itemID`` and ``x_label`` (0/1/2 = train/valid/test;
   other columns ignored, but not a second split column). Ids are 0-based indices (ids
   implying far more users or items than the file has are refused). Optional
   ``<modality>_feat.npy`` files next to it (row i = item i); feature rows may exceed the
   largest item id.
4. **Generic table**: a ``.csv``, ``.tsv`` or ``.parquet`` file (or a directory with a
   single ``interactions.{csv,tsv,parquet}``; a ``.inter`` file without ``x_label``, such as
   RecBole's atomic files, is read as a tab-separated table). Columns (a RecBole type
   suffix such as ``:token`` is ignored, names are case-insensitive):

   * user: ``user``, ``user_id`` or ``userID``; item: ``item``, ``item_id`` or ``itemID``;
   * optional split: ``split`` (train/valid/test or 0/1/2) or ``x_label`` (0/1/2), not both;
   * optional time: ``timestamp``, ``time`` or ``ts`` (used by the ``loo`` and
     ``temporal`` splits); optional rating: ``rating``, ``score``, ``value``, ``stars`` or
     ``preference`` (used by ``min_rating``);
   * other names, and filters applied before the split (``min_rating``, ``k_core``):
     :class:`~diffmm.data.options.TableOptions` (CLI ``--user-col``, ``--item-col``,
     ``--rating-col``, ``--time-col``, ``--min-rating``, ``--k-core``).

   Raw ids may be any strings or integers (trimmed of surrounding spaces); they are mapped
   to indices in sorted order (kept as ``user_ids``/``item_ids``). Without a split column
   the table is split per user (see :mod:`diffmm.data.split`) and the split is cached next
   to the table.

   Item features for a table: files ``<modality>.features.{csv,tsv,parquet,npz}`` in the
   table's directory. A csv/tsv/parquet has an item column (same names as above) and
   numeric feature columns; a ``.npz`` holds arrays ``item_ids`` and ``features``. Every
   item of the table needs a feature row (missing ones are an error); extra rows are
   ignored.
"""

from __future__ import annotations

import ast
import inspect
import typing
from pathlib import Path
from typing import Any

import numpy as np

from diffmm.data.authors import (
    AUTHOR_FILES,
    AUTHOR_NAMES,
    RestrictedUnpickler,
    is_author_file,
    is_authors_dir,
    load_authors,
    load_sparse_pickle,
)
from diffmm.data.columns import (
    ITEM_COLS,
    SPLIT_COLS,
    SPLIT_VALUES,
    TABLE_SUFFIXES,
    TIME_COLS,
    USER_COLS,
    read_table,
    regular_file,
)
from diffmm.data.columns import clean_name as _clean
from diffmm.data.columns import find_col as _find_col
from diffmm.data.dataset import Dataset
from diffmm.data.feature_files import MODALITY_ORDER, features_from_dir, load_npy
from diffmm.data.mmrec import has_x_label, load_mmrec
from diffmm.data.options import TableOptions
from diffmm.data.split import SPLIT_METHODS
from diffmm.data.synthetic import is_synthetic_spec
from diffmm.data.table import load_table
from diffmm.errors import DataError

ACCEPTED = (
    "accepted formats: 'synthetic[:key=value,...]'; a directory with trnMat.pkl, valMat.pkl, "
    "tstMat.pkl (authors' format); a MMRec .inter file (userID, itemID, x_label) or a "
    "directory holding one; a .csv/.tsv/.parquet table with user and item columns, or a "
    "directory with a single interactions.{csv,tsv,parquet}"
)


def load_dataset(
    path: str | Path,
    *,
    split: str = "random",
    seed: int = 2024,
    name: str | None = None,
    features: str | Path | None = None,
    table: TableOptions | None = None,
    cache_dir: str | Path | None = None,
) -> Dataset:
    """Load a dataset from ``path``, detecting its format (see the module docstring).

    ``split`` ("random", "loo" or "temporal") and ``seed`` are used only for tables
    without a split column. ``name`` defaults to the file or directory name. ``features``
    is a folder of ``<modality>.features.{csv,tsv,parquet,npz}`` files keyed by item id
    (e.g. written by ``diffmm features``), added to the dataset's own modalities.
    ``table`` names a table's columns and filters its rows
    (:class:`~diffmm.data.options.TableOptions`; tables only); ``cache_dir`` moves the
    split cache (default: ``$DIFFMM_CACHE_DIR``, else next to the table; see
    :mod:`diffmm.data.split`).
    """
    ds = _load_any(path, split, seed, name, _Table(table or TableOptions(), cache_dir))
    if features is not None:
        directory = Path(features).expanduser()
        if not directory.is_dir():
            what = "is not a folder of feature files" if directory.exists() else "no such folder"
            raise DataError(f"{directory}: {what} (--features takes the folder that holds them)")
        item_ids = ds.item_ids if ds.item_ids is not None else np.arange(ds.n_items)
        extra = features_from_dir(directory, item_ids, f"the items of {ds.source}")
        if not extra:
            raise DataError(
                f"{directory}: no <modality>.features.(csv|tsv|parquet|npz) files in it"
            )
        clash = sorted(set(extra) & set(ds.features))
        if clash:
            raise DataError(
                f"{directory}: modalities {clash} are already in {ds.source}; rename the files"
            )
        ds.features.update(extra)
    return ds


class _Table:
    """The table options and split cache folder, passed on to the table loader."""

    def __init__(self, options: TableOptions, cache_dir: str | Path | None) -> None:
        self.options, self.cache_dir = options, cache_dir

    def load(self, p: Path, split: str, seed: int, name: str | None) -> Dataset:
        return load_table(
            p, split=split, seed=seed, name=name, options=self.options, cache_dir=self.cache_dir
        )

    def not_a_table(self, where: str, kind: str) -> None:
        """DataError when table options were given for data that are not a table."""
        if not self.options.is_default:
            raise DataError(
                f"{where}: {self.options.describe()} apply only to tables "
                f"(csv/tsv/parquet/.inter without x_label), not to {kind}; drop them"
            )


def _load_any(path: str | Path, split: str, seed: int, name: str | None, table: _Table) -> Dataset:
    if split not in SPLIT_METHODS:
        raise DataError(f"unknown split method {split!r}; use one of {SPLIT_METHODS}")
    if isinstance(path, str) and is_synthetic_spec(path):
        table.not_a_table(path, "synthetic data")
        return _load_synthetic(path, name)
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file or directory; {ACCEPTED}")
    if p.is_dir():
        return _load_dir(p, split, seed, name, table)
    regular_file(p)
    suffix = p.suffix.lower()
    if suffix == ".inter":
        if has_x_label(p):
            table.not_a_table(str(p), "a MMRec file (it has x_label)")
            return load_mmrec(p, name=name)
        return table.load(p, split, seed, name)
    if suffix in TABLE_SUFFIXES:
        return table.load(p, split, seed, name)
    if is_author_file(p):
        table.not_a_table(str(p.parent), "the authors' folder")
        return load_authors(p.parent, name=name)
    raise DataError(f"{p}: unrecognised dataset file; {ACCEPTED}")


def _load_dir(p: Path, split: str, seed: int, name: str | None, table: _Table) -> Dataset:
    if is_authors_dir(p):
        table.not_a_table(str(p), "the authors' folder")
        return load_authors(p, name=name)
    inters = sorted(p.glob("*.inter"))
    if len(inters) > 1:
        raise DataError(
            f"{p}: holds several .inter files ({', '.join(f.name for f in inters)}); "
            "pass the path of one of them"
        )
    tables = [p / f"interactions{s}" for s in TABLE_SUFFIXES if (p / f"interactions{s}").exists()]
    if inters and not tables:
        return _load_any(inters[0], split, seed, name or p.name, table)
    if len(tables) == 1 and not inters:
        return table.load(tables[0], split, seed, name or p.name)
    if tables:
        found = ", ".join(f.name for f in [*inters, *tables])
        raise DataError(f"{p}: holds several interaction files ({found}); pass one of them")
    raise DataError(f"{p}: no dataset found in this directory; {ACCEPTED}")


_KINDS = {int: "an integer", float: "a number", str: "a word"}


def _synthetic_value(spec: str, key: str, raw: str, hint: Any) -> Any:
    """``raw`` read as the type ``hint`` of a :func:`make_synthetic` argument, else a DataError.

    ``int | None`` admits ``None``; an integer stands for a float; text options keep ``raw``.
    """
    kinds = [t for t in typing.get_args(hint) or (hint,) if t is not type(None)]
    none_ok = type(None) in typing.get_args(hint)
    if kinds == [str]:
        return raw
    if none_ok and raw == "None":
        return None
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value) if kinds == [float] else value
    if isinstance(value, float) and float in kinds:
        return value
    wanted = " or ".join(_KINDS[t] for t in kinds) + (" or None" if none_ok else "")
    raise DataError(f"{spec!r}: synthetic option {key} must be {wanted}, got {raw!r}")


def _load_synthetic(spec: str, name: str | None) -> Dataset:
    from diffmm.data.synthetic import make_synthetic

    allowed = set(inspect.signature(make_synthetic).parameters)
    hints = typing.get_type_hints(make_synthetic)
    kwargs: dict[str, Any] = {}
    body = spec.partition(":")[2].strip()
    for part in filter(None, (s.strip() for s in body.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or key not in allowed:
            raise DataError(
                f"{spec!r}: bad synthetic option {part!r}; use key=value with keys "
                f"{', '.join(sorted(allowed))}"
            )
        kwargs[key] = _synthetic_value(spec, key, value.strip(), hints[key])
    try:
        ds = make_synthetic(**kwargs)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{spec!r}: invalid synthetic options: {exc}") from exc
    if name:
        ds.name = name
    return ds


__all__ = [
    "ACCEPTED",
    "AUTHOR_FILES",
    "AUTHOR_NAMES",
    "ITEM_COLS",
    "MODALITY_ORDER",
    "SPLIT_COLS",
    "SPLIT_VALUES",
    "TABLE_SUFFIXES",
    "TableOptions",
    "TIME_COLS",
    "USER_COLS",
    "RestrictedUnpickler",
    "_clean",
    "_find_col",
    "is_synthetic_spec",
    "load_authors",
    "load_dataset",
    "load_mmrec",
    "load_npy",
    "load_sparse_pickle",
    "load_table",
    "read_table",
]
