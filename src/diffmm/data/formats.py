"""Readers for every accepted dataset format, and :func:`load_dataset` which picks one.

Accepted formats (``load_dataset`` autodetects them):

1. **synthetic**: the string ``"synthetic"`` or ``"synthetic:n_users=500,seed=1"``
   (keyword arguments of :func:`diffmm.data.make_synthetic`).
2. **Authors' folder** (HKUDS/DiffMM): a directory with ``trnMat.pkl``, ``valMat.pkl``,
   ``tstMat.pkl`` (pickled ``scipy.sparse`` matrices of shape (users, items), loaded with
   a restricted unpickler that admits only numpy/scipy.sparse classes) and optional
   ``<modality>_feat.npy`` item features (``image_feat.npy`` -> modality ``"image"``).
3. **MMRec**: a ``<name>.inter`` file (or a directory holding one), tab-separated with a
   header containing ``userID``, ``itemID`` and ``x_label`` (0/1/2 = train/valid/test;
   other columns ignored). Ids are 0-based indices. Optional ``<modality>_feat.npy`` files
   next to it (row i = item i); feature rows may exceed the largest item id.
4. **Generic table**: a ``.csv``, ``.tsv`` or ``.parquet`` file (or a directory with a
   single ``interactions.{csv,tsv,parquet}``; a ``.inter`` file without ``x_label``, such as
   RecBole's atomic files, is read as a tab-separated table). Columns (a RecBole type
   suffix such as ``:token`` is ignored, names are case-insensitive):

   * user: ``user``, ``user_id`` or ``userID``; item: ``item``, ``item_id`` or ``itemID``;
   * optional split: ``split`` (train/valid/test or 0/1/2) or ``x_label`` (0/1/2);
   * optional ``timestamp`` (used by the leave-one-out split).

   Raw ids may be any strings or integers; they are mapped to indices in sorted order
   (kept as ``user_ids``/``item_ids``). Without a split column the table is split per user
   (see :mod:`diffmm.data.split`) and the split is cached next to the table.

   Item features for a table: files ``<modality>.features.{csv,tsv,parquet,npz}`` in the
   table's directory. A csv/tsv/parquet has an item column (same names as above) and
   numeric feature columns; a ``.npz`` holds arrays ``item_ids`` and ``features``. Every
   item of the table needs a feature row (missing ones are an error); extra rows are
   ignored.
"""

from __future__ import annotations

import ast
import inspect
import logging
import pickle
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from diffmm.data.dataset import Dataset, build_dataset, check_features, match_ids, preview
from diffmm.data.split import SPLIT_METHODS, cached_split, split_labels
from diffmm.errors import DataError

if TYPE_CHECKING:  # pandas is imported only to read tables: it adds ~95 MB to a process
    import pandas as pd

log = logging.getLogger("diffmm.data")

ACCEPTED = (
    "accepted formats: 'synthetic[:key=value,...]'; a directory with trnMat.pkl, valMat.pkl, "
    "tstMat.pkl (authors' format); a MMRec .inter file (userID, itemID, x_label) or a "
    "directory holding one; a .csv/.tsv/.parquet table with user and item columns, or a "
    "directory with a single interactions.{csv,tsv,parquet}"
)
AUTHOR_FILES = ("trnMat.pkl", "valMat.pkl", "tstMat.pkl")
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
USER_COLS = ("user", "user_id", "userid")
ITEM_COLS = ("item", "item_id", "itemid")
SPLIT_COLS = ("split", "x_label")
TIME_COLS = ("timestamp", "time", "ts")
SPLIT_VALUES = {
    "train": 0, "trn": 0, "0": 0,
    "valid": 1, "val": 1, "validation": 1, "1": 1,
    "test": 2, "tst": 2, "2": 2,
}  # fmt: skip
MODALITY_ORDER = ("image", "visual", "text", "textual", "audio", "acoustic")


# --------------------------------------------------------------------------- dispatch


def load_dataset(
    path: str | Path,
    *,
    split: str = "random",
    seed: int = 2024,
    name: str | None = None,
    features: str | Path | None = None,
) -> Dataset:
    """Load a dataset from ``path``, detecting its format (see the module docstring).

    ``split`` ("random" or "loo") and ``seed`` are used only for tables without a split
    column. ``name`` defaults to the file or directory name. ``features`` is a folder of
    ``<modality>.features.{csv,tsv,parquet,npz}`` files keyed by item id (e.g. written
    by ``diffmm features``), added to the dataset's own modalities.
    """
    ds = _load_any(path, split, seed, name)
    if features is not None:
        directory = Path(features).expanduser()
        if not directory.is_dir():
            raise DataError(f"{directory}: no such folder of feature files (--features)")
        item_ids = ds.item_ids if ds.item_ids is not None else np.arange(ds.n_items)
        extra = _features_from_dir(directory, item_ids, f"the items of {ds.source}")
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


def _load_any(path: str | Path, split: str, seed: int, name: str | None) -> Dataset:
    if split not in SPLIT_METHODS:
        raise DataError(f"unknown split method {split!r}; use one of {SPLIT_METHODS}")
    if isinstance(path, str) and (path == "synthetic" or path.startswith("synthetic:")):
        return _load_synthetic(path, name)
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file or directory; {ACCEPTED}")
    if p.is_dir():
        return _load_dir(p, split, seed, name)
    suffix = p.suffix.lower()
    if suffix == ".inter":
        if _has_x_label(p):
            return load_mmrec(p, name=name)
        return load_table(p, split=split, seed=seed, name=name)
    if suffix in TABLE_SUFFIXES:
        return load_table(p, split=split, seed=seed, name=name)
    if p.name in AUTHOR_FILES:
        return load_authors(p.parent, name=name)
    raise DataError(f"{p}: unrecognised dataset file; {ACCEPTED}")


def _load_dir(p: Path, split: str, seed: int, name: str | None) -> Dataset:
    if (p / "trnMat.pkl").exists():
        return load_authors(p, name=name)
    inters = sorted(p.glob("*.inter"))
    if len(inters) > 1:
        raise DataError(
            f"{p}: holds several .inter files ({', '.join(f.name for f in inters)}); "
            "pass the path of one of them"
        )
    tables = [p / f"interactions{s}" for s in TABLE_SUFFIXES if (p / f"interactions{s}").exists()]
    if inters and not tables:
        return load_dataset(inters[0], split=split, seed=seed, name=name or p.name)
    if len(tables) == 1 and not inters:
        return load_table(tables[0], split=split, seed=seed, name=name or p.name)
    if tables:
        found = ", ".join(f.name for f in [*inters, *tables])
        raise DataError(f"{p}: holds several interaction files ({found}); pass one of them")
    raise DataError(f"{p}: no dataset found in this directory; {ACCEPTED}")


def _load_synthetic(spec: str, name: str | None) -> Dataset:
    from diffmm.data.synthetic import make_synthetic

    allowed = set(inspect.signature(make_synthetic).parameters)
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
        try:
            kwargs[key] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            kwargs[key] = value.strip()
    try:
        ds = make_synthetic(**kwargs)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{spec!r}: invalid synthetic options: {exc}") from exc
    if name:
        ds.name = name
    return ds


# --------------------------------------------------------------------------- pickles


def _sparse_classes() -> dict[str, type]:
    names = ("coo", "csr", "csc", "bsr", "dia", "lil", "dok")
    out = {}
    for n in names:
        for kind in ("matrix", "array"):
            cls = getattr(sp, f"{n}_{kind}", None)
            if cls is not None:
                out[f"{n}_{kind}"] = cls
    return out


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _numpy_scalar() -> Any:
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    return scalar


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits only numpy arrays/dtypes and scipy.sparse matrices."""

    _NUMPY_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")

    def __init__(self, file: Any, source: Path) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        if module in self._NUMPY_MULTIARRAY and name == "_reconstruct":
            return _numpy_reconstruct()
        if module in self._NUMPY_MULTIARRAY and name == "scalar":
            return _numpy_scalar()
        if module == "numpy.dtypes" and name.endswith("DType"):
            cls = getattr(np.dtypes, name, None)
            if cls is not None:
                return cls
        if module == "scipy.sparse" or module.startswith("scipy.sparse."):
            cls = _sparse_classes().get(name)
            if cls is not None:
                return cls
        raise DataError(
            f"{self.source}: refuses to load global '{module}.{name}' from {self.source}: "
            "only numpy arrays and scipy.sparse matrices are allowed in dataset pickles "
            "(the file may be malicious or not a dataset file)"
        )


def load_sparse_pickle(path: Path) -> sp.spmatrix:
    """Read a pickled scipy.sparse matrix with :class:`RestrictedUnpickler`."""
    if not path.is_file():
        raise DataError(f"{path}: file not found (the authors' format needs {AUTHOR_FILES})")
    try:
        with open(path, "rb") as f:
            obj = RestrictedUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as exc:  # any failure of a corrupt pickle is the file's fault
        raise DataError(
            f"{path}: cannot read this pickle ({type(exc).__name__}: {exc}); the file is "
            "truncated or corrupt - copy it again from the dataset source"
        ) from exc
    if not sp.issparse(obj) or len(obj.shape) != 2:
        raise DataError(
            f"{path}: holds a {type(obj).__name__}, not a 2-D scipy.sparse matrix of (users, items)"
        )
    return obj


def load_npy(path: Path) -> np.ndarray:
    """Read a ``.npy`` array without pickles; DataError if unreadable."""
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(
            f"{path}: cannot read this .npy file ({type(exc).__name__}: {exc}); the file "
            "is truncated, corrupt or holds Python objects - re-export it as a numeric array"
        ) from exc


def _modality_key(name: str) -> tuple[int, str]:
    return (MODALITY_ORDER.index(name) if name in MODALITY_ORDER else len(MODALITY_ORDER), name)


def _feat_files(directory: Path) -> dict[str, Path]:
    files = {f.name[: -len("_feat.npy")]: f for f in directory.glob("*_feat.npy")}
    return {k: files[k] for k in sorted(files, key=_modality_key)}


def _load_feat_files(files: dict[str, Path], n_items: int) -> dict[str, np.ndarray]:
    feats = {}
    for modality, f in files.items():
        arr = load_npy(f)
        feats[modality] = check_features(modality, arr, n_items, str(f))
    return feats


# --------------------------------------------------------------------------- authors


def load_authors(directory: str | Path, *, name: str | None = None) -> Dataset:
    """Load the DiffMM authors' folder: ``trnMat/valMat/tstMat.pkl`` + ``*_feat.npy``."""
    d = Path(directory)
    mats = [load_sparse_pickle(d / f) for f in AUTHOR_FILES]
    shapes = [m.shape for m in mats]
    if len(set(shapes)) != 1:
        listed = ", ".join(f"{f} {s}" for f, s in zip(AUTHOR_FILES, shapes, strict=True))
        raise DataError(
            f"{d}: the split matrices have different shapes ({listed}); "
            "they must all be (users, items)"
        )
    n_users, n_items = shapes[0]
    feats = _load_feat_files(_feat_files(d), n_items)
    return build_dataset(
        name or d.resolve().name, n_users, n_items, *mats, features=feats, source=str(d)
    )


# --------------------------------------------------------------------------- tables


def _clean(col: str) -> str:
    return str(col).split(":", 1)[0].strip().lower()


def _find_col(df: pd.DataFrame, names: tuple[str, ...]) -> str | None:
    for col in df.columns:
        if _clean(col) in names:
            return col
    return None


def read_table(path: Path, **kwargs: Any) -> pd.DataFrame:
    """Read a csv/tsv/parquet/.inter table into a DataFrame; DataError if unreadable."""
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise DataError(
                    f"{path}: reading Parquet needs pyarrow; run `pip install diffmm[parquet]`"
                ) from None
            return pd.read_parquet(path)
        sep = "," if suffix == ".csv" else "\t"
        return pd.read_csv(path, sep=sep, **kwargs)
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: the file is empty; it needs a header and rows") from exc
    except Exception as exc:
        raise DataError(
            f"{path}: cannot read this table ({type(exc).__name__}: {exc}); check that it "
            "is a valid, complete file"
        ) from exc


def _has_x_label(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            header = f.readline()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    return any(_clean(c) == "x_label" for c in header.rstrip("\n").split("\t"))


def _require_cols(df: pd.DataFrame, path: Path, *groups: tuple[str, ...]) -> list[str]:
    cols = []
    for names in groups:
        col = _find_col(df, names)
        if col is None:
            raise DataError(
                f"{path}: no {names[0]} column (accepted names: {', '.join(names)}; a "
                f"':type' suffix is ignored); columns found: {', '.join(map(str, df.columns))}"
            )
        cols.append(col)
    return cols


def _split_column(values: pd.Series, path: Path) -> np.ndarray:
    keys = values.astype(str).str.strip().str.lower().str.replace(r"\.0$", "", regex=True)
    codes = keys.map(SPLIT_VALUES)
    keys = keys.to_numpy()
    bad = codes.isna().to_numpy()
    if bad.any():
        raise DataError(
            f"{path}: {bad.sum()} row(s) have an unknown split value "
            f"(first: {preview(np.unique(keys[bad]))}); use train/valid/test or 0/1/2"
        )
    return codes.to_numpy(dtype=np.int8)


def _raw_ids(values: pd.Series, path: Path, kind: str) -> np.ndarray:
    if values.isna().any():
        raise DataError(
            f"{path}: {int(values.isna().sum())} row(s) have no {kind} id; fill or drop them"
        )
    arr = values.to_numpy()
    if arr.dtype.kind == "f" and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind == "O":
        arr = arr.astype(str)
    return arr


def load_mmrec(path: str | Path, *, name: str | None = None) -> Dataset:
    """Load a MMRec ``.inter`` file (userID, itemID, x_label) and its ``*_feat.npy``."""
    import pandas as pd

    p = Path(path)
    df = read_table(p)
    ucol, icol, lcol = _require_cols(df, p, ("userid",), ("itemid",), ("x_label",))
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
        idx[kind] = s.to_numpy().astype(np.int64)
    labels = _split_column(df[lcol], p)
    files = _feat_files(p.parent)
    n_users = int(idx["user"].max()) + 1 if len(df) else 0
    max_item = int(idx["item"].max()) + 1 if len(df) else 0
    rows = {m: _npy_rows(f) for m, f in files.items()}
    n_items = max([max_item, *rows.values()])
    for m, r in rows.items():
        if r < max_item:
            raise DataError(
                f"{files[m]}: has {r} rows but {p.name} uses item ids up to {max_item - 1}; "
                f"it needs at least {max_item} rows (row i = item i)"
            )
    feats = _load_feat_files(files, n_items)
    return _build_from_labels(
        name or p.stem, n_users, n_items, idx["user"], idx["item"], labels, feats, str(p)
    )


def _npy_rows(path: Path) -> int:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception:
        arr = load_npy(path)
    return int(arr.shape[0]) if arr.ndim else 0


def _build_from_labels(
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
    splits = [(users[labels == k], items[labels == k]) for k in range(3)]
    return build_dataset(name, n_users, n_items, *splits, features=feats, source=source, **kwargs)


def load_table(
    path: str | Path, *, split: str = "random", seed: int = 2024, name: str | None = None
) -> Dataset:
    """Load a generic csv/tsv/parquet table of interactions (see the module docstring)."""
    import pandas as pd

    p = Path(path)
    df = read_table(p)
    ucol, icol = _require_cols(df, p, USER_COLS, ITEM_COLS)
    if len(df) == 0:
        raise DataError(f"{p}: the table has no rows; it needs interactions")
    raw_u, raw_i = _raw_ids(df[ucol], p, "user"), _raw_ids(df[icol], p, "item")
    user_ids, users = np.unique(raw_u, return_inverse=True)
    item_ids, items = np.unique(raw_i, return_inverse=True)
    feats = _table_features(p, item_ids)
    n_users, n_items = len(user_ids), len(item_ids)
    ids = {"user_ids": user_ids, "item_ids": item_ids}
    scol = _find_col(df, SPLIT_COLS)
    if scol is not None:
        labels = _split_column(df[scol], p)
        return _build_from_labels(
            name or p.stem, n_users, n_items, users, items, labels, feats, str(p), **ids
        )
    keys = users.astype(np.int64) * n_items + items
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    duplicates = len(keys) - len(uniq)
    tcol = _find_col(df, TIME_COLS)
    stamps = None
    if tcol is not None and split == "loo":
        t = pd.to_numeric(df[tcol], errors="coerce").to_numpy(dtype=float)
        if np.isnan(t).any():
            raise DataError(f"{p}: column {tcol!r} has non-numeric or missing timestamps")
        stamps = np.full(len(uniq), -np.inf)
        np.maximum.at(stamps, inverse.ravel(), t)
    u_uniq, i_uniq = np.divmod(uniq, n_items)
    labels, _ = cached_split(
        p,
        user_ids[u_uniq],
        item_ids[i_uniq],
        lambda: split_labels(u_uniq, split, seed, stamps),
        split,
        seed,
    )
    ds = _build_from_labels(
        name or p.stem, n_users, n_items, u_uniq, i_uniq, labels, feats, str(p), **ids
    )
    ds.duplicates += duplicates
    return ds


_FEATURE_RE = re.compile(r"^(?P<modality>.+)\.features\.(csv|tsv|parquet|npz)$")


def _table_features(table: Path, item_ids: np.ndarray) -> dict[str, np.ndarray]:
    return _features_from_dir(table.parent, item_ids, table.name)


def _features_from_dir(
    directory: Path, item_ids: np.ndarray, items_of: str
) -> dict[str, np.ndarray]:
    """Every ``<modality>.features.*`` file in ``directory``, rows ordered as ``item_ids``."""
    files: dict[str, Path] = {}
    for f in sorted(directory.iterdir()):
        m = _FEATURE_RE.match(f.name)
        if m:
            if m["modality"] in files:
                raise DataError(
                    f"{directory}: two feature files for modality {m['modality']!r} "
                    f"({files[m['modality']].name}, {f.name}); keep one"
                )
            files[m["modality"]] = f
    feats = {}
    for modality in sorted(files, key=_modality_key):
        f = files[modality]
        fid, values = _read_feature_file(f)
        pos = match_ids(fid, item_ids)
        if len(np.unique(fid)) != len(fid):
            raise DataError(f"{f}: some item ids have several feature rows; keep one per item")
        missing = pos < 0
        if missing.any():
            raise DataError(
                f"{f}: {missing.sum()} of {len(item_ids)} items of {items_of} have no "
                f"feature row (first: {preview(item_ids[missing])}); add a row for each item"
            )
        in_order = len(pos) == len(values) and bool((pos == np.arange(len(pos))).all())
        rows = values if in_order else values[pos]  # no copy when the rows are in item order
        feats[modality] = check_features(modality, rows, len(item_ids), str(f))
    return feats


def _read_feature_file(f: Path) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    if f.suffix == ".npz":
        try:
            with np.load(f, allow_pickle=False) as z:
                if "item_ids" not in z or "features" not in z:
                    raise DataError(
                        f"{f}: a .npz feature file needs arrays 'item_ids' and 'features' "
                        f"(found: {', '.join(z.files)})"
                    )
                fid, values = z["item_ids"], z["features"]
        except DataError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise DataError(f"{f}: cannot read this .npz file ({exc}); re-export it") from exc
        if values.ndim != 2 or len(fid) != len(values):
            raise DataError(
                f"{f}: 'features' has shape {values.shape} for {len(fid)} item ids; "
                "it needs one row per item id"
            )
        return fid, values
    df = read_table(f)
    (icol,) = _require_cols(df, f, ITEM_COLS)
    rest = df.drop(columns=[icol])
    non_numeric = [c for c in rest.columns if not pd.api.types.is_numeric_dtype(rest[c])]
    if non_numeric or rest.shape[1] == 0:
        raise DataError(
            f"{f}: feature columns must be numeric and there must be at least one "
            f"(non-numeric: {non_numeric})"
        )
    return _raw_ids(df[icol], f, "item"), rest.to_numpy()


__all__ = [
    "ACCEPTED",
    "RestrictedUnpickler",
    "load_authors",
    "load_dataset",
    "load_mmrec",
    "load_sparse_pickle",
    "load_table",
    "read_table",
]
