"""Generic csv/tsv/parquet tables: columns, raw ids, split column, features, errors."""

from __future__ import annotations

import builtins

import numpy as np
import pandas as pd
import pytest

from diffmm.data import load_dataset
from diffmm.errors import DataError

ROWS = [  # user, item, split
    ("alice", "i3", "train"),
    ("alice", "i1", "train"),
    ("alice", "i2", "valid"),
    ("bob", "i1", "train"),
    ("bob", "i3", "test"),
    ("carol", "i2", "train"),
    ("carol", "i2", "train"),  # duplicate
    ("carol", "i1", "test"),
]


def frame():
    return pd.DataFrame(ROWS, columns=["user", "item", "split"])


@pytest.mark.parametrize(
    ("fname", "user", "item", "split"),
    [
        ("data.csv", "user", "item", "split"),
        ("data.tsv", "user_id:token", "item_id:token", "split"),
        ("data.parquet", "userID", "itemID", "split"),
        ("data.csv", "USER_ID", "Item", "split"),
        ("data.csv", "userId", "movieId", "split"),  # MovieLens' ratings.csv
        ("data.csv", "reviewerID", "asin", "split"),  # Amazon reviews
    ],
)
def test_reads_tables_with_split_column(tmp_path, fname, user, item, split):
    df = pd.DataFrame(ROWS, columns=[user, item, split])
    path = tmp_path / fname
    if fname.endswith(".parquet"):
        df.to_parquet(path)
    else:
        df.to_csv(path, sep="\t" if fname.endswith(".tsv") else ",", index=False)
    ds = load_dataset(path)
    assert ds.user_ids.tolist() == ["alice", "bob", "carol"]
    assert ds.item_ids.tolist() == ["i1", "i2", "i3"]
    assert (ds.train.nnz, ds.valid.nnz, ds.test.nnz) == (4, 1, 2)
    assert ds.duplicates == 1 and ds.leaks == 0
    u, i = ds.user_index(["bob"])[0], ds.item_index(["i3"])[0]
    assert ds.test[u, i] == 1
    assert not (tmp_path / ".diffmm_splits").exists()  # already split: nothing cached


def test_numeric_split_codes_and_x_label(tmp_path):
    df = pd.DataFrame({"user": [5, 5, 7, 7], "item": [1, 2, 1, 3], "x_label": [0, 2, 0, 1]})
    df.to_csv(tmp_path / "t.csv", index=False)
    ds = load_dataset(tmp_path / "t.csv")
    assert ds.user_ids.tolist() == [5, 7] and ds.item_ids.tolist() == [1, 2, 3]
    assert ds.test[0, 1] == 1 and ds.valid[1, 2] == 1


def test_integer_ids_sorted_numerically(tmp_path):
    df = pd.DataFrame({"user": [10, 9, 100], "item": [3, 20, 1], "split": ["train"] * 2 + ["test"]})
    df.to_csv(tmp_path / "t.csv", index=False)
    ds = load_dataset(tmp_path / "t.csv")
    assert ds.user_ids.tolist() == [9, 10, 100]
    assert ds.user_index([100]).tolist() == [2]


def test_directory_with_single_interactions_file(tmp_path):
    frame().to_csv(tmp_path / "interactions.csv", index=False)
    ds = load_dataset(tmp_path)
    assert ds.name == tmp_path.name and ds.train.nnz == 4


def test_leak_counted(tmp_path):
    rows = ROWS + [("alice", "i1", "valid")]
    pd.DataFrame(rows, columns=["user", "item", "split"]).to_csv(tmp_path / "t.csv", index=False)
    with pytest.warns(UserWarning, match="in train and also in valid .*user 'alice', item 'i1'"):
        ds = load_dataset(tmp_path / "t.csv")
    assert ds.leaks == 1


def test_test_pair_also_in_train_is_refused(tmp_path):
    rows = ROWS + [("alice", "i1", "test")]
    pd.DataFrame(rows, columns=["user", "item", "split"]).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match=r"t.csv: 1 test pair\(s\) are also in train"):
        load_dataset(tmp_path / "t.csv")


def test_missing_user_column_lists_columns(tmp_path):
    pd.DataFrame({"customer": [1], "item": [2]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match=r"t.csv: no user column .*columns found: customer, item"):
        load_dataset(tmp_path / "t.csv")


def test_missing_item_column(tmp_path):
    pd.DataFrame({"user": [1], "product": [2]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match="no item column .*user, product"):
        load_dataset(tmp_path / "t.csv")


def test_bad_split_value(tmp_path):
    df = frame()
    df.loc[0, "split"] = "holdout"
    df.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match=r"unknown split value.*'holdout'"):
        load_dataset(tmp_path / "t.csv")


def test_missing_ids(tmp_path):
    (tmp_path / "t.csv").write_text("user,item\n1,2\n,3\n")
    with pytest.raises(DataError, match=r"t.csv: 1 row\(s\) have no user id"):
        load_dataset(tmp_path / "t.csv")


@pytest.mark.parametrize(
    ("fname", "content"),
    [("t.csv", b""), ("t.parquet", b"PAR1 not really"), ("t.csv", b'user,item\n"1,2\n')],
)
def test_unreadable_tables(tmp_path, fname, content):
    (tmp_path / fname).write_bytes(content)
    with pytest.raises(DataError, match=fname.replace(".", r"\.")):
        load_dataset(tmp_path / fname)


def test_parquet_without_pyarrow(tmp_path, monkeypatch):
    frame().to_parquet(tmp_path / "t.parquet")
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "pyarrow":
            raise ImportError("no pyarrow")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(DataError, match=r"pip install diffmm\[parquet\]"):
        load_dataset(tmp_path / "t.parquet")


@pytest.mark.parametrize("path", ["nowhere/x.csv", "notes.txt", "emptydir"])
def test_unrecognised_paths(tmp_path, path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(DataError, match="accepted formats") as err:
        load_dataset(tmp_path / path)
    assert path in str(err.value)


# ------------------------------------------------------------------------ features


def write_table(tmp_path):
    frame().to_csv(tmp_path / "t.csv", index=False)
    return tmp_path / "t.csv"


def test_csv_and_npz_features_keyed_by_item_id(tmp_path):
    table = write_table(tmp_path)
    pd.DataFrame(
        {"item_id": ["i3", "i1", "i2", "i9"], "a": [3, 1, 2, 9], "b": [0, 0, 0, 0]}
    ).to_csv(tmp_path / "image.features.csv", index=False)
    np.savez(
        tmp_path / "text.features.npz",
        item_ids=np.array(["i2", "i1", "i3"]),
        features=np.array([[2.0], [1.0], [3.0]]),
    )
    ds = load_dataset(table)
    assert ds.modalities == ["image", "text"]
    np.testing.assert_array_equal(ds.features["image"][:, 0], [1, 2, 3])
    np.testing.assert_array_equal(ds.features["text"][:, 0], [1, 2, 3])
    assert ds.features["image"].dtype == np.float32


def test_npz_item_ids_saved_as_whole_floats_match_integer_ids(tmp_path):
    pd.DataFrame({"user": [0, 0, 0, 1, 1, 1], "item": [0, 1, 2, 0, 1, 2]}).to_csv(
        tmp_path / "t.csv", index=False
    )
    ids = np.array([2.0, 0.0, 1.0])
    np.savez(tmp_path / "image.features.npz", item_ids=ids, features=ids[:, None] * 10)
    ds = load_dataset(tmp_path / "t.csv")
    np.testing.assert_array_equal(ds.features["image"][:, 0], [0, 10, 20])


@pytest.mark.parametrize("ids", [np.array([0.5, 1.0, 2.0]), np.array([b"0", b"1", b"2"]),
                                 np.zeros(3, dtype="V4")])  # fmt: skip
def test_npz_item_ids_that_are_not_integers_or_text_are_refused(tmp_path, ids):
    pd.DataFrame({"user": [0, 0, 0], "item": [0, 1, 2]}).to_csv(tmp_path / "t.csv", index=False)
    np.savez(tmp_path / "image.features.npz", item_ids=ids, features=np.ones((3, 2)))
    with pytest.raises(DataError, match="'item_ids' must hold integers or text"):
        load_dataset(tmp_path / "t.csv")


def test_parquet_features(tmp_path):
    table = write_table(tmp_path)
    pd.DataFrame({"item": ["i1", "i2", "i3"], "x": [0.5, 1.5, 2.5]}).to_parquet(
        tmp_path / "audio.features.parquet"
    )
    ds = load_dataset(table)
    np.testing.assert_allclose(ds.features["audio"][:, 0], [0.5, 1.5, 2.5])


def test_items_without_feature_rows(tmp_path):
    table = write_table(tmp_path)
    pd.DataFrame({"item": ["i1"], "x": [1.0]}).to_csv(tmp_path / "image.features.csv", index=False)
    with pytest.raises(DataError, match=r"image.features.csv: 2 of 3 items .*\['i2', 'i3'\]"):
        load_dataset(table)


def test_feature_file_errors(tmp_path):
    table = write_table(tmp_path)
    f = tmp_path / "image.features.csv"
    pd.DataFrame({"item": ["i1", "i2", "i3"], "x": ["a", "b", "c"]}).to_csv(f, index=False)
    with pytest.raises(DataError, match="must be numeric"):
        load_dataset(table)
    pd.DataFrame({"item": ["i1", "i1", "i2", "i3"], "x": [1, 2, 3, 4]}).to_csv(f, index=False)
    with pytest.raises(DataError, match="several feature rows"):
        load_dataset(table)
    pd.DataFrame({"item": ["i1", "i2", "i3"], "x": [1, np.nan, 3]}).to_csv(f, index=False)
    with pytest.raises(DataError, match=r"image.features.csv: .*NaN or inf values in 1 row"):
        load_dataset(table)
    f.unlink()
    np.savez(tmp_path / "image.features.npz", ids=np.array(["i1"]), features=np.ones((1, 2)))
    with pytest.raises(DataError, match="needs arrays 'item_ids' and 'features'"):
        load_dataset(table)
