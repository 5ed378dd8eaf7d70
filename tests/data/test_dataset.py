"""build_dataset validation, normalisation, duplicates/leaks, fingerprint and id maps."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from diffmm.data import build_dataset
from diffmm.errors import DataError


def pairs(*p: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Two index arrays from (user, item) pairs."""
    if not p:
        return np.array([], dtype=int), np.array([], dtype=int)
    u, i = zip(*p, strict=True)
    return np.array(u), np.array(i)


def small(**kw):
    args = dict(
        name="t",
        n_users=3,
        n_items=4,
        train=pairs((0, 0), (0, 1), (1, 2), (2, 3)),
        valid=pairs((0, 2)),
        test=pairs((1, 3)),
    )
    args.update(kw)
    return build_dataset(**args)


def test_normalises_to_sorted_binary_float32_csr():
    ds = small(train=pairs((1, 2), (0, 1), (0, 0), (2, 3)))
    for name in ("train", "valid", "test"):
        m = ds.split(name)
        assert isinstance(m, sp.csr_matrix)
        assert m.dtype == np.float32 and m.shape == (3, 4)
        assert m.has_sorted_indices
        assert np.all(m.data == 1)
    assert ds.train.indptr.tolist() == [0, 2, 3, 4]
    assert ds.train.indices.tolist() == [0, 1, 2, 3]
    assert ds.duplicates == 0 and ds.leaks == 0


def test_accepts_sparse_matrices_and_drops_explicit_zeros():
    train = sp.coo_matrix(([1.0, 0.0, 1.0], ([0, 1, 2], [0, 1, 3])), shape=(3, 4))
    ds = small(train=train)
    assert ds.train.nnz == 2


def test_duplicates_counted_and_kept_once_leaks_counted_and_warned():
    train = pairs((0, 0), (0, 0), (0, 0), (1, 1), (2, 2))  # 2 duplicates
    valid = pairs((0, 0), (1, 3))  # (0,0) leaks
    test = pairs((1, 2), (1, 2), (2, 3))  # 1 duplicate
    with pytest.warns(UserWarning, match="1 .* in train and also in valid"):
        ds = small(train=train, valid=valid, test=test)
    assert ds.duplicates == 3
    assert ds.leaks == 1
    assert ds.train.nnz == 3 and ds.test.nnz == 2
    # leaks are reported, not removed
    assert ds.valid[0, 0] == 1 and ds.train[0, 0] == 1


@pytest.mark.parametrize(
    ("valid", "test", "needle"),
    [
        (pairs((0, 2)), pairs((0, 2)), r"1 test pair\(s\) are also in valid"),
        (pairs((0, 2)), pairs((0, 0), (1, 1)), r"1 test pair\(s\) are also in train"),
    ],
)
def test_test_pairs_in_another_split_are_refused(valid, test, needle):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match=needle):
            small(valid=valid, test=test, train=pairs((0, 0), (0, 1), (1, 2)))


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        (
            {"train": pairs((0, 0), (-1, 1), (5, 1))},
            r"2 user id\(s\) in the train split .*\[0, 3\).*-1, 5",
        ),
        ({"test": pairs((0, 4))}, r"1 item id\(s\) in the test split are out of range \[0, 4\)"),
        ({"train": pairs()}, "train split is empty"),
        ({"valid": (np.array([0.5]), np.array([1]))}, "non-integer user indices"),
        ({"valid": (np.array([0, 1]), np.array([1]))}, "equal length"),
        ({"user_ids": np.array(["a", "b"])}, "2 raw user ids given for 3 users"),
        ({"train": sp.coo_matrix((3, 5))}, r"shape \(3, 5\); expected \(3, 4\)"),
    ],
)
def test_invalid_interactions_raise_data_error(kw, needle):
    with pytest.raises(DataError, match=needle) as err:
        small(source="/data/x.csv", **kw)
    assert "/data/x.csv" in str(err.value)


def test_features_normalised_to_float32_c_contiguous():
    feat = np.asfortranarray(np.arange(8, dtype=np.float16).reshape(4, 2))
    ds = small(features={"image": feat})
    out = ds.features["image"]
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, feat.astype(np.float32))
    assert ds.modalities == ["image"]


@pytest.mark.parametrize(
    ("feat", "needle"),
    [
        (np.zeros((3, 2)), "feature 'image' has 3 rows but the dataset has 4 items"),
        (np.zeros(4), r"shape \(4,\); expected a 2-D"),
        (
            np.array([[0, np.nan], [np.inf, 0], [0, 0], [1, 1]]),
            r"NaN or inf values in 2 row\(s\) \(first rows: \[0, 1\]\)",
        ),
        (np.full((4, 1), 1e300), r"too large for float32 .* in 4 row"),  # finite, not NaN
        (np.zeros((4, 0)), r"has 0 columns"),
        (np.array([["a"], ["b"], ["c"], ["d"]]), "non-numeric dtype"),
    ],
)
def test_invalid_features_raise_data_error(feat, needle):
    with pytest.raises(DataError, match=needle):
        small(features={"image": feat})


def test_nan_rows_found_in_every_block_of_a_large_feature_matrix():
    from diffmm.data.dataset import check_features

    feat = np.zeros((10_000, 3), dtype=np.float32)
    feat[[0, 4095, 4096, 9999], 1] = np.nan  # both sides of the 4096-row block edges
    with pytest.raises(DataError, match=r"4 row\(s\) \(first rows: \[0, 4095, 4096, 9999\]\)"):
        check_features("image", feat, 10_000, "f.npz")
    assert check_features("image", np.ones((0, 3)), 0, "f.npz").shape == (0, 3)


def test_fingerprint_detects_changes_and_ignores_index_dtype():
    a = small(features={"v": np.ones((4, 2))})
    b = small(features={"v": np.ones((4, 2))})
    b.train = b.train.copy()
    b.train.indices = b.train.indices.astype(np.int64)
    b.train.indptr = b.train.indptr.astype(np.int64)
    assert a.fingerprint() == b.fingerprint()
    fp = a.fingerprint()
    assert fp["n_users"] == 3 and fp["splits"]["train"]["nnz"] == 4
    assert fp["features"]["v"]["shape"] == [4, 2]
    c = small(test=pairs((1, 0)), features={"v": np.ones((4, 2))})
    assert c.fingerprint()["splits"]["test"] != fp["splits"]["test"]
    d = small(features={"v": np.zeros((4, 2))})
    assert d.fingerprint()["features"]["v"]["sha256"] != fp["features"]["v"]["sha256"]


def test_user_and_item_index_map_raw_ids():
    ds = small(user_ids=np.array(["u9", "u1", "u5"]), item_ids=np.array([10, 20, 30, 40]))
    assert ds.user_index(["u5", "u9"]).tolist() == [2, 0]
    assert ds.item_index([40, 10]).tolist() == [3, 0]
    assert ds.item_index(["20"]).tolist() == [1]  # ids typed on a command line
    with pytest.raises(DataError, match=r"2 unknown user id\(s\).*'nobody'"):
        ds.user_index(["u1", "nobody", "u7"])
    with pytest.raises(DataError, match="unknown item"):
        ds.item_index(["x"])


def test_index_without_raw_ids_is_identity_with_range_check():
    ds = small()
    assert ds.user_index([2, 0]).tolist() == [2, 0]
    with pytest.raises(DataError, match=r"unknown item id.*\[4\]"):
        ds.item_index([4])


def test_split_accessor_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown split"):
        small().split("dev")
