"""Data are read as the user meant them, and what cannot be read so is refused in one line.

Old pickle protocols, values that are not interactions, matrices or ids far larger than the
data, overlapping splits, an empty test split, features without columns or too large for
float32, repeated header rows, padded ids, ambiguous columns, list-valued id columns.
"""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from diffmm.data import build_dataset, dataset_stats, format_stats, is_synthetic_spec, load_dataset
from diffmm.errors import DataError

VALID = sp.coo_matrix((np.ones(2), ([0, 1], [2, 3])), shape=(4, 5))


def _dump(obj, path, protocol=pickle.DEFAULT_PROTOCOL):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


# --------------------------------------------------------------------- pickle protocols


@pytest.mark.parametrize("protocol", [0, 1, 2, 5])
@pytest.mark.parametrize("fmt", ["coo", "csr", "dok", "lil", "coo_array"])
def test_sparse_pickles_of_every_protocol_load(tmp_path, write_authors, fmt, protocol):
    d = write_authors(tmp_path)
    matrix = sp.coo_array(VALID) if fmt == "coo_array" else VALID.asformat(fmt)
    _dump(matrix, d / "valMat.pkl", protocol)
    ds = load_dataset(d)
    assert ds.valid.nnz == 2 and ds.valid[0, 2] == 1 and ds.valid[1, 3] == 1


@pytest.mark.parametrize("protocol", [0, 2])
def test_empty_matrix_of_an_old_protocol_loads(tmp_path, write_authors, protocol):
    d = write_authors(tmp_path)
    _dump(sp.coo_matrix((4, 5)), d / "valMat.pkl", protocol)  # protocol 2 pickles b"" as bytes()
    assert load_dataset(d).valid.nnz == 0


PAYLOADS = {
    # _reconstructor may only rebuild a scipy.sparse class on object (or dict for dok)
    "reconstruct-a-dtype": b"ccopy_reg\n_reconstructor\n(cnumpy\ndtype\nc__builtin__\nobject\nNtR.",
    "reconstruct-on-dtype-base": (
        b"ccopy_reg\n_reconstructor\n(cscipy.sparse\ncoo_matrix\ncnumpy\ndtype\nNtR."
    ),
    "reconstruct-on-dict-base": (
        b"ccopyreg\n_reconstructor\n(cscipy.sparse\ncoo_matrix\nc__builtin__\ndict\n(dtR."
    ),
    "reconstruct-os-system": b"ccopy_reg\n_reconstructor\n(cos\nsystem\nc__builtin__\nobject\nNtR.",
    "encode-other-codec": b"c_codecs\nencode\n(Vx\nVrot13\ntR.",
    "encode-not-a-str": b"c_codecs\nencode\n(I1\nVlatin1\ntR.",
    "bytes-of-a-size": b"c__builtin__\nbytes\n(I1000000000000\ntR.",
    "call-object": b"c__builtin__\nobject\n)R.",
    "builtins-eval": b"cbuiltins\neval\n(V1+1\ntR.",
    "subprocess": b"csubprocess\nPopen\n(Vtrue\ntR.",
}


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_old_protocol_payloads_stay_refused(tmp_path, write_authors, payload):
    d = write_authors(tmp_path)
    (d / "valMat.pkl").write_bytes(payload)
    with pytest.raises(DataError, match="valMat.pkl") as err:
        load_dataset(d)
    assert "refuses" in str(err.value) or "cannot read this pickle" in str(err.value)


# --------------------------------------------------------------------- stored values


@pytest.mark.parametrize(("value", "shown"), [(-1.0, "-1.0"), (np.nan, "nan"), (np.inf, "inf")])
def test_pickled_negative_nan_or_inf_values_are_refused(tmp_path, write_authors, value, shown):
    d = write_authors(tmp_path)
    bad = sp.coo_matrix(([1.0, value, value], ([0, 1, 2], [3, 0, 2])), shape=(4, 5))
    _dump(bad, d / "tstMat.pkl")
    with pytest.raises(DataError, match=rf"tstMat.pkl: .*2 stored value\(s\) .*{shown}") as err:
        load_dataset(d)
    assert "negative, NaN or inf" in str(err.value)


def test_explicit_zeros_in_a_pickle_stay_dropped(tmp_path, write_authors):
    d = write_authors(tmp_path)
    _dump(sp.coo_matrix(([1.0, 0.0], ([0, 1], [3, 0])), shape=(4, 5)), d / "tstMat.pkl")
    assert load_dataset(d).test.nnz == 1


def test_negative_values_in_a_matrix_given_to_build_dataset():
    test = sp.coo_matrix(([-1.0], ([0], [1])), shape=(2, 2))
    with pytest.raises(DataError, match=r"mem: the test matrix .*1 stored value\(s\)"):
        build_dataset("t", 2, 2, ([0], [0]), ([], []), test, source="mem")


# --------------------------------------------------------------------- sizes


def test_pickle_declaring_a_billion_users_is_refused_without_allocating(tmp_path, write_authors):
    d = write_authors(tmp_path, shape=(10**9, 5))
    with pytest.raises(
        DataError, match=r"declares 1,000,000,000 users but only 4 .*index used is 3"
    ):
        load_dataset(d)


def test_inter_with_a_huge_item_id_is_refused(tmp_path):
    text = "userID\titemID\tx_label\n0\t0\t0\n0\t1\t0\n1\t999999999\t0\n0\t2\t2\n1\t1\t2\n"
    (tmp_path / "x.inter").write_text(text)
    with pytest.raises(
        DataError, match=r"x.inter: declares 1,000,000,000 items but only 4 .*999999999"
    ):
        load_dataset(tmp_path / "x.inter")


def test_a_few_empty_rows_are_fine():
    ds = build_dataset("t", 10, 12, ([0, 1], [0, 1]), ([], []), ([0], [2]))
    assert (ds.n_users, ds.n_items) == (10, 12)


# --------------------------------------------------------------------- splits


def pairs(*p):
    u, i = zip(*p, strict=True) if p else ((), ())
    return np.array(u, dtype=np.int64), np.array(i, dtype=np.int64)


TRAIN = pairs((0, 0), (0, 1), (1, 1), (2, 2))


@pytest.mark.parametrize(
    ("valid", "test", "needle"),
    [
        (pairs((0, 2)), pairs((0, 2), (1, 3)), r"1 test pair\(s\) are also in valid"),
        (pairs((0, 2)), pairs((0, 1), (1, 3)), r"1 test pair\(s\) are also in train"),
    ],
)
def test_test_pairs_also_in_train_or_valid_are_refused(valid, test, needle):
    with pytest.raises(DataError, match=needle) as err:
        build_dataset("t", 3, 4, TRAIN, valid, test, source="/d/x.csv")
    assert "/d/x.csv" in str(err.value) and "user 0, item " in str(err.value)


def test_train_valid_overlap_is_counted_warned_and_in_stats():
    with pytest.warns(UserWarning, match="1 .* in train and also in valid"):
        ds = build_dataset("t", 3, 4, TRAIN, pairs((0, 1), (1, 3)), pairs((2, 3)))
    assert ds.leaks == 1
    stats = dataset_stats(ds)
    assert stats["overlaps"] == {"train&valid": 1, "train&test": 0, "valid&test": 0}
    assert "train&valid 1 / train&test 0 / valid&test 0" in format_stats(stats)


def test_table_with_a_pair_in_valid_and_test_is_refused(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("user,item,split\na,1,train\na,2,valid\na,2,test\nb,1,train\nb,3,test\n")
    with pytest.raises(
        DataError, match=r"t.csv: 1 test pair\(s\) are also in valid.*user 'a', item 2"
    ):
        load_dataset(path)


def test_empty_test_split_is_refused(tmp_path, write_authors):
    d = write_authors(tmp_path)
    _dump(sp.coo_matrix((4, 5)), d / "tstMat.pkl")
    with pytest.raises(DataError, match=f"{d}: the test split is empty"):
        load_dataset(d)


def test_unsplit_table_too_small_for_a_test_split_is_refused(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("user,item\na,1\na,2\nb,1\n")  # every user has < 3 interactions
    with pytest.raises(DataError, match="t.csv: the test split is empty.*at least 3"):
        load_dataset(path)


def test_empty_valid_split_is_allowed():
    assert build_dataset("t", 3, 4, TRAIN, ([], []), pairs((2, 3))).valid.nnz == 0


# --------------------------------------------------------------------- features


def small(features):
    return build_dataset("t", 3, 4, TRAIN, ([], []), pairs((2, 3)), features=features)


def test_features_without_columns_are_refused():
    with pytest.raises(DataError, match=r"feature 'image' has 0 columns \(shape \(4, 0\)\)"):
        small({"image": np.zeros((4, 0))})


def test_huge_finite_features_are_called_too_large_not_nan():
    feat = np.ones((4, 2))
    feat[[1, 3], 0] = 1e300
    with pytest.raises(
        DataError, match=r"too large for float32 .*2 row\(s\) \(first rows: \[1, 3\]\)"
    ) as err:
        small({"image": feat})
    assert "NaN" not in str(err.value)


def test_nan_and_huge_features_are_both_named():
    feat = np.ones((4, 2))
    feat[0, 0], feat[2, 1] = np.nan, -1e300
    with pytest.raises(
        DataError, match=r"NaN or inf values in 1 row\(s\).*too large for float32 .*1 row"
    ):
        small({"image": feat})


# --------------------------------------------------------------------- tables


def test_repeated_header_row_is_refused(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("user,item\na,1\na,2\na,3\nuser,item\nb,1\nb,2\nb,3\n")
    with pytest.raises(DataError, match=r"t.csv: data row 4 repeats the header row \(user, item\)"):
        load_dataset(path)


def test_ids_padded_with_spaces_are_trimmed(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(
        "user,item,split\nalice,i1,train\n alice ,i2,test\nbob,i1 ,train\nbob,i2,test\n"
    )
    ds = load_dataset(path)
    assert ds.user_ids.tolist() == ["alice", "bob"] and ds.item_ids.tolist() == ["i1", "i2"]


def test_padded_integer_ids_are_integers(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("user,item,split\n 7,1,train\n7 ,2,test\n10,1,train\n10,2,test\n")
    ds = load_dataset(path)
    assert ds.user_ids.tolist() == [7, 10]


@pytest.mark.parametrize(
    ("header", "cols"),
    [
        ("user,item,split,x_label", "'split', 'x_label'"),
        ("user,user_id,item,split", "'user', 'user_id'"),
    ],
)
def test_ambiguous_columns_are_refused(tmp_path, header, cols):
    path = tmp_path / "t.csv"
    path.write_text(header + "\n1,1,train,0\n1,2,test,2\n")
    with pytest.raises(DataError, match=f"t.csv: several columns .*{cols}.*keep one"):
        load_dataset(path)


def test_inter_with_split_and_x_label_is_refused(tmp_path):
    path = tmp_path / "x.inter"
    path.write_text("userID\titemID\tx_label\tsplit\n0\t0\t0\ttrain\n0\t1\t2\ttest\n")
    with pytest.raises(DataError, match="x.inter: several columns"):
        load_dataset(path)


@pytest.mark.parametrize("column", ["user", "item"])
def test_parquet_list_id_column_is_refused(tmp_path, column):
    pytest.importorskip("pyarrow")
    df = pd.DataFrame(
        {"user": ["a", "a", "b", "b"], "item": [1, 2, 1, 2], "split": ["train", "test"] * 2}
    )
    df[column] = [[v] for v in df[column]]
    df.to_parquet(tmp_path / "t.parquet")
    with pytest.raises(DataError, match=f"t.parquet: column '{column}' holds .*one id per row"):
        load_dataset(tmp_path / "t.parquet")


# --------------------------------------------------------------------- synthetic


def test_is_synthetic_spec_is_exact():
    assert is_synthetic_spec("synthetic") and is_synthetic_spec("synthetic:n_users=5")
    for name in ("synthetic_clicks.csv", "synthetic2", "Synthetic", "data/synthetic", ""):
        assert not is_synthetic_spec(name), name


def test_a_table_named_synthetic_is_a_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = "".join(f"u{u},i{i}\n" for u in range(4) for i in range(4))
    (tmp_path / "synthetic_clicks.csv").write_text("user,item\n" + rows)
    ds = load_dataset("synthetic_clicks.csv")
    assert ds.n_users == 4 and ds.source == "synthetic_clicks.csv"


# --------------------------------------------------------------------- the CLI, end to end


def _huge_pickle(d, write_authors):
    return write_authors(d, shape=(10**9, 5))


def _inter(d, write_authors):
    (d / "x.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n1\t999999999\t0\n0\t1\t2\n")
    return d / "x.inter"


def _list_column(d, write_authors):
    pytest.importorskip("pyarrow")
    pd.DataFrame({"user": [["a"], ["b"]], "item": [1, 2]}).to_parquet(d / "t.parquet")
    return d / "t.parquet"


def _features(arr):
    return lambda d, write_authors: write_authors(d, features={"image": arr})


CLI_CASES = {
    "pickle-of-a-billion-rows": (_huge_pickle, "declares 1,000,000,000 users"),
    "inter-with-a-huge-item-id": (_inter, "declares 1,000,000,000 items"),
    "parquet-list-column": (_list_column, "column 'user' holds"),
    "5x0-features": (_features(np.zeros((5, 0))), "has 0 columns"),
    "1e300-features": (_features(np.full((5, 2), 1e300)), "too large for float32"),
}


@pytest.mark.parametrize(("build", "needle"), CLI_CASES.values(), ids=CLI_CASES.keys())
def test_cli_reports_one_line_and_exit_2(tmp_path, write_authors, build, needle):
    from diffmm.cli import main

    path = build(tmp_path, write_authors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = CliRunner().invoke(main, ["data", "stats", str(path)])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines


def test_dataset_ids_match_exactly_as_given() -> None:
    from helpers import make_dataset

    data = make_dataset(np.eye(3))
    data.user_ids = np.array(["u1", "u2", "u3"], dtype=object)
    assert data.user_index(["u2"]).tolist() == [1]
    for bad in (["u2\x00"], [" u2"], ["U2"]):
        with pytest.raises(DataError, match="unknown user id"):
            data.user_index(bad)


def test_ids_beyond_int64_match_as_written() -> None:
    from helpers import make_dataset

    data = make_dataset(np.eye(3))
    big = 18446744073709551000  # read from a table as uint64
    data.user_ids = np.array([big, 5, 2**63], dtype=np.uint64)
    assert data.user_index([str(big), "5", str(2**63)]).tolist() == [0, 1, 2]
    assert data.user_index(np.array([big], dtype=np.uint64)).tolist() == [0]
    assert data.user_index([5]).tolist() == [1]
    for bad in (["05"], [str(2**64)], ["-5"], [" 5"], [5.0]):
        with pytest.raises(DataError, match="unknown user id"):
            data.user_index(bad)
