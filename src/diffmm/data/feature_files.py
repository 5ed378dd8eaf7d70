"""Item-feature files: ``<modality>_feat.npy`` (row i = item i) and ``<modality>.features.*``.

``<modality>.features.{csv,tsv,parquet,npz}`` files are keyed by item id: a csv/tsv/parquet
has an item column and numeric feature columns; a ``.npz`` holds arrays ``item_ids`` and
``features``. Every item needs a feature row (missing ones are an error); extra rows are
ignored. Every matrix is validated by :func:`diffmm.data.dataset.check_features`.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from diffmm.data.columns import ITEM_COLS, raw_ids, read_table, regular_file, require_cols
from diffmm.data.dataset import check_features, match_ids, preview
from diffmm.errors import DataError

MODALITY_ORDER = ("image", "visual", "text", "textual", "audio", "acoustic")
_FEATURE_RE = re.compile(r"^(?P<modality>.+)\.features\.(csv|tsv|parquet|npz)$")


def load_npy(path: Path) -> np.ndarray:
    """Read a ``.npy`` array without pickles; DataError if unreadable."""
    regular_file(path)
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(
            f"{path}: cannot read this .npy file ({type(exc).__name__}: {exc}); the file "
            "is truncated, corrupt or holds Python objects - re-export it as a numeric array"
        ) from exc


def npy_rows(path: Path) -> int:
    """The number of rows of a ``.npy`` file, read without loading it where possible."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception:
        arr = load_npy(path)
    return int(arr.shape[0]) if arr.ndim else 0


def modality_key(name: str) -> tuple[int, str]:
    """Sort key of modality names: the authors' order first, then alphabetical."""
    return (MODALITY_ORDER.index(name) if name in MODALITY_ORDER else len(MODALITY_ORDER), name)


def feat_files(directory: Path) -> dict[str, Path]:
    """The ``<modality>_feat.npy`` files of ``directory``, by modality, in a fixed order."""
    files = {f.name[: -len("_feat.npy")]: f for f in directory.glob("*_feat.npy")}
    return {k: files[k] for k in sorted(files, key=modality_key)}


def load_feat_files(files: dict[str, Path], n_items: int) -> dict[str, np.ndarray]:
    """Read and validate ``<modality>_feat.npy`` files of ``n_items`` rows each."""
    feats = {}
    for modality, f in files.items():
        arr = load_npy(f)
        feats[modality] = check_features(modality, arr, n_items, str(f))
    return feats


def features_from_dir(
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
    for modality in sorted(files, key=modality_key):
        f = files[modality]
        fid, values = read_feature_file(f)
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


def _npz_item_ids(f: Path, fid: np.ndarray) -> np.ndarray:
    """The ``item_ids`` of a .npz file as integers or text, as a table's ids are read.

    Whole-number floats (``0.0``, ``1.0``: ids saved through a float array) become
    integers; bytes, other floats and other kinds are refused (DataError).
    """
    if fid.dtype.kind in "iuU":
        return fid
    if fid.dtype.kind == "f" and np.isfinite(fid).all() and (fid == np.round(fid)).all():
        return fid.astype(np.int64)
    raise DataError(
        f"{f}: 'item_ids' must hold integers or text (unicode strings), not dtype {fid.dtype}; "
        "save them as np.array(ids) of ints or of str"
    )


def read_feature_file(f: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(item_ids, values)`` of one ``<modality>.features.*`` file."""
    import pandas as pd

    if f.suffix == ".npz":
        regular_file(f)
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
        if fid.ndim != 1 or values.ndim != 2 or len(fid) != len(values):
            raise DataError(
                f"{f}: 'features' has shape {values.shape} for item ids of shape {fid.shape}; "
                "it needs one row per item id (1-D 'item_ids')"
            )
        return _npz_item_ids(f, fid), values
    df = read_table(f)
    (icol,) = require_cols(df, f, ITEM_COLS)
    if len(df) == 0:
        raise DataError(f"{f}: has a header but no rows; add one row of features per item")
    rest = df.drop(columns=[icol])
    non_numeric = [c for c in rest.columns if not pd.api.types.is_numeric_dtype(rest[c])]
    if non_numeric or rest.shape[1] == 0:
        raise DataError(
            f"{f}: feature columns must be numeric and there must be at least one "
            f"(non-numeric: {non_numeric})"
        )
    return raw_ids(df[icol], f, "item"), rest.to_numpy()
