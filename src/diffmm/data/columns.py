"""Reading a table file and finding its columns: shared by every table-like format.

:func:`read_table` reads csv/tsv/parquet/``.inter`` files and refuses header rows repeated
inside the data (files joined together with their headers). :func:`find_col` matches
column names case-insensitively, ignoring a RecBole ``:type`` suffix, and refuses a table
where two columns claim the same role (``split`` and ``x_label``, ``user`` and
``user_id``). :func:`raw_ids` reads an id column: ids are trimmed of surrounding spaces,
must be one scalar per row, and integer-valued ids become integers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from diffmm.data.dataset import preview
from diffmm.errors import DataError

if TYPE_CHECKING:  # imported only to read tables: pandas adds much to a process's memory
    import pandas as pd

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
# The common spellings (compared lower-cased): MovieLens' userId/movieId, Amazon reviews'
# reviewerID/asin, and the generic ones; any other name is given with --user-col etc.
USER_COLS = ("user", "user_id", "userid", "reviewer_id", "reviewerid")
ITEM_COLS = ("item", "item_id", "itemid", "movie_id", "movieid", "product_id", "asin")
SPLIT_COLS = ("split", "x_label")
TIME_COLS = ("timestamp", "time", "ts")
RATING_COLS = ("rating", "score", "value", "stars", "preference")
SPLIT_VALUES = {
    "train": 0, "trn": 0, "0": 0,
    "valid": 1, "val": 1, "validation": 1, "1": 1,
    "test": 2, "tst": 2, "2": 2,
}  # fmt: skip
_SCALARS = (str, int, float, np.integer, np.floating, np.bool_, bool)


def clean_name(col: Any) -> str:
    """A column name without its ``:type`` suffix, stripped and lower-cased."""
    return str(col).split(":", 1)[0].strip().lower()


def find_col(df: pd.DataFrame, names: tuple[str, ...], path: Path | None = None) -> str | None:
    """The one column whose cleaned name is in ``names``; None if there is none.

    Two or more such columns are ambiguous: a DataError (naming ``path``) says to keep one.
    """
    found = [col for col in df.columns if clean_name(col) in names]
    if len(found) > 1:
        where = f"{path}: " if path is not None else ""
        raise DataError(
            f"{where}several columns mean the same thing ({', '.join(map(repr, found))}); "
            "it is ambiguous which one to use - keep one of them"
        )
    return found[0] if found else None


def regular_file(path: Path) -> Path:
    """``path``, or a DataError if it exists but is not a regular file (a pipe, socket or
    device would block the reader or feed it endless bytes)."""
    if path.exists() and not path.is_file() and not path.is_dir():
        raise DataError(
            f"{path}: not a regular file (a pipe, socket or device); save the data to a file "
            "and pass that"
        )
    return path


def read_table(path: Path, **kwargs: Any) -> pd.DataFrame:
    """Read a csv/tsv/parquet/.inter table into a DataFrame; DataError if unreadable."""
    import pandas as pd

    regular_file(path)
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
        df = pd.read_csv(path, sep=sep, **kwargs)
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
    _refuse_repeated_header(df, path)
    return df


def _refuse_repeated_header(df: pd.DataFrame, path: Path) -> None:
    """DataError if a data row holds the header's names (text files joined with headers)."""
    import pandas as pd

    if df.empty or not all(pd.api.types.is_string_dtype(df[c]) for c in df.columns):
        return  # a numeric column cannot hold a column name
    repeated = np.ones(len(df), dtype=bool)
    for col in df.columns:
        repeated &= (df[col].astype(str).str.strip() == str(col).strip()).to_numpy()
    if repeated.any():
        rows = np.flatnonzero(repeated) + 1
        more = f" (and {len(rows) - 1} more)" if len(rows) > 1 else ""
        raise DataError(
            f"{path}: data row {rows[0]}{more} repeats the header row "
            f"({', '.join(map(str, df.columns))}); were files joined with their headers? "
            "remove the repeated header lines"
        )


def require_cols(df: pd.DataFrame, path: Path, *groups: tuple[str, ...]) -> list[str]:
    """The column of each group of accepted names; DataError naming what is missing."""
    cols = []
    for names in groups:
        col = find_col(df, names, path)
        if col is None:
            raise DataError(
                f"{path}: no {names[0]} column (accepted names: {', '.join(names)}; a "
                f"':type' suffix is ignored); columns found: {', '.join(map(str, df.columns))}"
            )
        cols.append(col)
    return cols


def named_col(
    df: pd.DataFrame, path: Path, name: str | None, names: tuple[str, ...], flag: str
) -> str | None:
    """The column ``name`` (given with ``flag``), else the one of ``names``; None if absent.

    A name given is matched like the accepted ones (case-insensitive, ``:type`` ignored);
    a DataError names the columns found when it is not there.
    """
    if name is None:
        return find_col(df, names, path)
    if name in df.columns:
        return name
    col = find_col(df, (clean_name(name),), path)
    if col is None:
        raise DataError(
            f"{path}: no column {name!r} ({flag}); columns found: {', '.join(map(str, df.columns))}"
        )
    return col


def split_codes(values: pd.Series, path: Path) -> np.ndarray:
    """Split labels 0/1/2 from train/valid/test (or 0/1/2) values; DataError on others."""
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


def raw_ids(values: pd.Series, path: Path, kind: str) -> np.ndarray:
    """The ids of an id column: one scalar per row, trimmed; integer-valued ones as int64."""
    import pandas as pd

    arr = values.to_numpy()
    if arr.dtype.kind == "O" and not isinstance(values.dtype, pd.StringDtype):
        wrong = np.fromiter(
            (v is not None and not isinstance(v, _SCALARS) for v in arr), bool, len(arr)
        )
        if wrong.any():
            first = arr[np.flatnonzero(wrong)[0]]
            if isinstance(first, (list, tuple, np.ndarray)):
                raise DataError(
                    f"{path}: column {values.name!r} holds list values "
                    f"(e.g. {np.asarray(first).tolist()!r}) in {wrong.sum()} row(s); a {kind} "
                    "column needs one id per row - explode the lists into one row per id"
                )
            raise DataError(
                f"{path}: column {values.name!r} holds {type(first).__name__} values "
                f"(e.g. {first!r}) in {wrong.sum()} row(s); {kind} ids must be integers or "
                "text - convert the column"
            )
    if arr.dtype.kind in "mMVc":  # dates, durations, raw bytes, complex numbers
        raise DataError(
            f"{path}: column {values.name!r} holds {values.dtype} values; {kind} ids must be "
            "integers or text - convert the column"
        )
    missing = values.isna().to_numpy().copy()
    if arr.dtype.kind in "OUS":
        text = np.char.strip(np.where(missing, "", arr).astype(str))
        missing |= text == ""
        arr = text
    if missing.any():
        raise DataError(f"{path}: {int(missing.sum())} row(s) have no {kind} id; fill or drop them")
    whole = (
        (np.isfinite(arr) & (arr == np.round(arr)) & (np.abs(arr) < 2**63))
        if (arr.dtype.kind == "f")
        else None
    )
    if whole is not None and whole.all():
        arr = arr.astype(np.int64)
    elif whole is not None:  # ids as written could not be matched: "0" is read as 0.0
        first = arr[np.flatnonzero(~whole)[0]]
        raise DataError(
            f"{path}: column {values.name!r} holds numbers that are not integers (e.g. "
            f"{float(first)!r}); {kind} ids must be integers or text - fix those rows or "
            "quote the ids"
        )
    elif arr.dtype.kind == "U" and _all_integers(arr):
        arr = arr.astype(np.int64)  # ids such as " 7" in a column that is otherwise numbers
    return arr


def _all_integers(text: np.ndarray) -> bool:
    """Whether every (stripped) string is a decimal integer that fits in int64."""
    digits = np.char.lstrip(text, "-")
    return bool(
        np.all(np.char.isdecimal(digits))
        and np.all(np.char.str_len(digits) <= 18)
        and np.all(np.char.str_len(text) - np.char.str_len(digits) <= 1)
    )
