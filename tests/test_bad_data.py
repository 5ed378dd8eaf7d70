"""A catalogue of bad datasets and what the user must see for each.

Every case feeds one bad file (or folder) to ``diffmm data stats`` and checks a clear
message that names the offending file, key or id (and, where there is one, the fix),
asserted on specific substrings; exit status 2 with ``error: ...`` on stderr; and never
a Python traceback. A pickle that would run code is refused without running it.
Configuration, run directories and the HTTP service: ``test_bad_inputs.py``.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from helpers import assert_says, case, cli, truncate, usage_error, user_error

pytestmark = pytest.mark.usefixtures("scratch_dir")


# =========================================================================== data loading


def _coo(pairs: list[tuple[int, int]], shape: tuple[int, int]) -> sp.coo_matrix:
    rows, cols = zip(*pairs, strict=True) if pairs else ((), ())
    return sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=shape)


def _dump(obj: Any, path: Path) -> None:
    path.write_bytes(pickle.dumps(obj))


def authors(d: Path, **features: np.ndarray) -> Path:
    """A valid authors'-format folder: 4 users x 5 items, plus ``<name>_feat.npy`` files."""
    _dump(_coo([(0, 0), (0, 1), (1, 1), (1, 2), (2, 3), (3, 0)], (4, 5)), d / "trnMat.pkl")
    _dump(_coo([(0, 2), (1, 3)], (4, 5)), d / "valMat.pkl")
    _dump(_coo([(0, 3), (2, 0)], (4, 5)), d / "tstMat.pkl")
    for name, arr in features.items():
        np.save(d / f"{name}_feat.npy", arr)
    return d


MMREC = "userID\titemID\tx_label\n0\t0\t0\n0\t1\t0\n1\t1\t0\n1\t2\t0\n2\t3\t0\n0\t2\t1\n2\t0\t2\n"


def mmrec(d: Path, text: str = MMREC, **features: np.ndarray) -> Path:
    (d / "baby.inter").write_text(text)
    for name, arr in features.items():
        np.save(d / f"{name}_feat.npy", arr)
    return d


def table(d: Path, text: str, name: str = "t.csv") -> Path:
    (d / name).write_text(text)
    return d / name


SPLIT_TABLE = "user,item,split\nalice,i1,train\nalice,i2,valid\nbob,i2,train\nbob,i3,test\n"


def _truncated_pickle(d: Path) -> Path:
    truncate(authors(d) / "trnMat.pkl")
    return d


def _pickle_holding(obj: Any, fname: str) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        _dump(obj, authors(d) / fname)
        return d

    return build


def _without(fname: str) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        (authors(d) / fname).unlink()
        return d

    return build


def _inconsistent_matrix(row: int, col: int) -> Callable[[Path], Path]:
    """A test matrix whose stored entry lies outside its own shape (a hand-edited file)."""

    def build(d: Path) -> Path:
        bad = _coo([(0, 1)], (4, 5))
        bad.row[0], bad.col[0] = row, col
        _dump(bad, authors(d) / "tstMat.pkl")
        return d

    return build


def _nan_features(d: Path) -> Path:
    feat = np.ones((5, 2))
    feat[[1, 3], 0] = np.nan
    return authors(d, text=feat)


def _truncated_npy(d: Path) -> Path:
    truncate(authors(d, image=np.ones((5, 8))) / "image_feat.npy", keep=0.8)
    return d


def _object_npy(d: Path) -> Path:
    np.save(d / "image_feat.npy", np.array([{"a": 1}] * 5, dtype=object), allow_pickle=True)
    return authors(d)


def _features_missing_items(d: Path) -> Path:
    (d / "image.features.csv").write_text("item,x\ni1,0.5\ni2,0.1\n")
    return table(d, SPLIT_TABLE)


def _fifo(d: Path, name: str) -> Path:
    os.mkfifo(d / name)  # nothing writes to it: a reader would wait forever
    return d / name


def _fifo_features(d: Path) -> Path:
    _fifo(d, "image.features.csv")
    return table(d, SPLIT_TABLE)


def _parquet_ids(d: Path, values: Any) -> Path:
    pd.DataFrame({"user": values, "item": [1, 2, 3]}).to_parquet(d / "t.parquet")
    return d / "t.parquet"


def _features_header_only(d: Path) -> Path:
    (d / "image.features.csv").write_text("item,x,y\n")
    return table(d, SPLIT_TABLE)


DATA_CASES = [
    # case(id, build(d) -> the path given to `diffmm data stats`, needles); {d} = the folder
    case("missing-path", lambda d: d / "nowhere.csv",
         ["{d}/nowhere.csv: no such file or directory", "accepted formats"]),
    case("directory-without-dataset", lambda d: table(d, "hello", "README.txt").parent,
         ["{d}: no dataset found in this directory", "trnMat.pkl", ".inter", ".csv"]),
    case("unsupported-suffix", lambda d: table(d, "junk", "ratings.xlsx"),
         ["{d}/ratings.xlsx: unrecognised dataset file", ".csv/.tsv/.parquet"]),
    case("missing-split-pickle", _without("valMat.pkl"),
         ["{d}/valMat.pkl: file not found", "trnMat.pkl", "tstMat.pkl"]),
    case("truncated-pickle", _truncated_pickle,
         ["{d}/trnMat.pkl: cannot read this pickle", "truncated or corrupt", "copy it again"]),
    case("garbage-pickle", lambda d: table(authors(d), "\x00\x01 junk", "tstMat.pkl").parent,
         ["{d}/tstMat.pkl: cannot read this pickle", "truncated or corrupt"]),
    case("pickle-of-a-dict", _pickle_holding({"users": [0, 1]}, "tstMat.pkl"),
         ["{d}/tstMat.pkl: holds a dict, not a 2-D scipy.sparse matrix of (users, items)"]),
    case("pickle-of-a-dense-array", _pickle_holding(np.zeros((4, 5)), "trnMat.pkl"),
         ["{d}/trnMat.pkl: holds a ndarray, not a 2-D scipy.sparse matrix"]),
    case("split-shapes-differ", _pickle_holding(_coo([(0, 0)], (4, 6)), "tstMat.pkl"),
         ["{d}: the split matrices have different shapes", "tstMat.pkl (4, 6)",
          "(users, items)"]),
    case("item-id-out-of-range", _inconsistent_matrix(0, 7),
         ["{d}: 1 item id(s) in the test split are out of range [0, 5) (first: [7])",
          "fix the ids or the number of items"]),
    case("negative-user-id", _inconsistent_matrix(-2, 1),
         ["{d}: 1 user id(s) in the test split are out of range [0, 4) (first: [-2])"]),
    case("empty-train-split", _pickle_holding(sp.coo_matrix((4, 5)), "trnMat.pkl"),
         ["{d}: the train split is empty; a dataset needs train interactions"]),
    case("feature-rows-not-items", lambda d: authors(d, image=np.ones((4, 3))),
         ["{d}/image_feat.npy: feature 'image' has 4 rows but the dataset has 5 items",
          "row i = item i"]),
    case("nan-features", _nan_features,
         ["{d}/text_feat.npy: feature 'text' has NaN or inf values in 2 row(s)",
          "first rows: [1, 3]", "clean or impute them"]),
    case("1d-features", lambda d: authors(d, image=np.ones(5)),
         ["{d}/image_feat.npy: feature 'image' has shape (5,); expected a 2-D"]),
    case("truncated-npy", _truncated_npy,
         ["{d}/image_feat.npy: cannot read this .npy file", "truncated", "re-export it"]),
    case("object-npy", _object_npy,
         ["{d}/image_feat.npy: cannot read this .npy file", "holds Python objects"]),
    case("mmrec-negative-item-id", lambda d: mmrec(d, MMREC.replace("2\t3\t0", "2\t-3\t0")),
         ["{d}/baby.inter: 1 item id(s) in the train split are out of range", "(first: [-3])"]),
    case("mmrec-non-integer-id", lambda d: mmrec(d, MMREC.replace("2\t3\t0", "bob\t3\t0")),
         ["{d}/baby.inter: 1 non-integer user id(s)", "'bob'", "use a .csv table"]),
    case("mmrec-unknown-x-label", lambda d: mmrec(d, MMREC.replace("2\t0\t2", "2\t0\t7")),
         ["{d}/baby.inter: 1 row(s) have an unknown split value (first: ['7'])",
          "use train/valid/test or 0/1/2"]),
    case("mmrec-too-few-feature-rows", lambda d: mmrec(d, image=np.ones((3, 2))),
         ["{d}/image_feat.npy: has 3 rows but baby.inter uses item ids up to 3",
          "needs at least 4 rows"]),
    case("mmrec-header-only", lambda d: mmrec(d, "userID\titemID\tx_label\n"),
         ["{d}/baby.inter", "no rows"]),
    case("empty-csv", lambda d: table(d, ""),
         ["{d}/t.csv: the file is empty; it needs a header and rows"]),
    case("header-only-csv", lambda d: table(d, "user,item,split\n"),
         ["{d}/t.csv: the table has no rows; it needs interactions"]),
    case("csv-without-train-rows", lambda d: table(d, "user,item,split\n1,2,test\n2,3,valid\n"),
         ["{d}/t.csv: the train split is empty"]),
    case("csv-unknown-split-value", lambda d: table(d, SPLIT_TABLE.replace("test", "holdout")),
         ["{d}/t.csv: 1 row(s) have an unknown split value (first: ['holdout'])",
          "use train/valid/test or 0/1/2"]),
    case("csv-without-user-column", lambda d: table(d, "uid,iid\n1,2\n"),
         ["{d}/t.csv: no user column", "user_id", "columns found: uid, iid"]),
    case("csv-blank-user-id", lambda d: table(d, "user,item,split\n1,2,train\n,3,train\n"),
         ["{d}/t.csv: 1 row(s) have no user id; fill or drop them"]),
    case("corrupt-parquet", lambda d: table(d, "PAR1 not really", "t.parquet"),
         ["{d}/t.parquet: cannot read this table", "valid, complete file"]),
    case("items-without-feature-rows", _features_missing_items,
         ["{d}/image.features.csv: 1 of 3 items of t.csv have no feature row (first: ['i3'])",
          "add a row for each item"]),
    case("fifo-as-data", lambda d: _fifo(d, "t.csv"),
         ["{d}/t.csv: not a regular file (a pipe, socket or device)", "save the data to a file"]),
    case("fifo-as-features", _fifo_features,
         ["{d}/image.features.csv: not a regular file"]),
    case("fractional-user-ids", lambda d: table(d, "user,item\n0,1\n1,2\n3.5,3\n"),
         ["{d}/t.csv: column 'user' holds numbers that are not integers (e.g. 3.5)",
          "quote the ids"]),
    case("infinite-user-id", lambda d: table(d, "user,item\n0,1\n1,2\ninf,3\n"),
         ["{d}/t.csv: column 'user' holds numbers that are not integers (e.g. inf)"]),
    case("datetime-user-ids", lambda d: _parquet_ids(d, pd.to_datetime(["2024-01-01"] * 3)),
         ["{d}/t.parquet: column 'user' holds datetime64[",
          "user ids must be integers or text"]),
    case("bytes-user-ids", lambda d: _parquet_ids(d, [b"a", b"b", b"c"]),
         ["{d}/t.parquet: column 'user' holds bytes values", "convert the column"]),
    case("feature-file-header-only", _features_header_only,
         ["{d}/image.features.csv: has a header but no rows", "one row of features per item"]),
    case("bad-synthetic-value", lambda d: "synthetic:n_users=abc",
         ["'synthetic:n_users=abc': synthetic option n_users must be an integer, got 'abc'"]),
    case("bad-synthetic-option", lambda d: "synthetic:n_user=5",
         ["'synthetic:n_user=5': bad synthetic option 'n_user=5'", "n_users"]),
]  # fmt: skip


@pytest.mark.parametrize(("build", "needles"), DATA_CASES)
def test_bad_dataset(tmp_path: Path, build: Callable[[Path], Any], needles: list[str]) -> None:
    d = tmp_path / "data"
    d.mkdir()
    message = user_error(cli("data", "stats", build(d)))
    assert_says(message, *(n.format(d=d) for n in needles))


@pytest.mark.parametrize(
    ("options", "needles"),
    [
        case("loo-with-bad-timestamps", ["--split", "loo"],
             ["{d}/t.csv: column 'timestamp' has non-numeric or missing timestamps"]),
    ],
)  # fmt: skip
def test_bad_split_options(tmp_path: Path, options: list[str], needles: list[str]) -> None:
    path = table(tmp_path, "user,item,timestamp\n1,2,yesterday\n1,3,4\n")
    message = user_error(cli("data", "stats", path, *options))
    assert_says(message, *(n.format(d=tmp_path) for n in needles))


def test_one_column_as_both_user_and_item_is_refused(tmp_path: Path) -> None:
    path = table(tmp_path, "user,item\n1,2\n1,3\n")
    message = user_error(cli("data", "stats", path, "--user-col", "item"))
    assert_says(message, f"{path}: column 'item' is taken as both the user and the item column")


def test_an_unknown_split_method_is_a_usage_error(tmp_path: Path) -> None:
    path = table(tmp_path, "user,item\n1,2\n1,3\n")
    message = usage_error(cli("data", "stats", path, "--split", "bogus"))
    assert_says(message, "'bogus' is not one of 'random', 'loo'")


class _Payload:
    """A pickle whose loading would call ``func(arg)``."""

    def __init__(self, func: Callable[..., Any], arg: str) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, (self.arg,))


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path: Path, kind: str) -> None:
    d = authors(tmp_path)
    marker = tmp_path / "pwned"
    if kind == "os.system":
        payload = _Payload(os.system, f"touch {marker}")
    else:
        payload = _Payload(exec, f"open({str(marker)!r}, 'w').write('x')")
    _dump(payload, d / "valMat.pkl")
    message = user_error(cli("data", "stats", d))
    assert_says(message, f"{d}/valMat.pkl: refuses to load global", kind.split(".")[1])
    assert_says(message, "only numpy arrays and scipy.sparse matrices", "may be malicious")
    assert not marker.exists(), "the pickle's payload ran"
