"""Per-user random and leave-one-out splits, and the split cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diffmm.data import load_dataset, split_labels
from diffmm.errors import DataError


def test_random_split_is_8_1_1_per_user():
    users = np.repeat(np.arange(50), np.arange(50) % 25 + 1)  # 1..25 interactions each
    labels = split_labels(users, "random", seed=3)
    for u in range(50):
        lab = labels[users == u]
        n = len(lab)
        if n < 3:
            assert (lab == 0).all()
            continue
        expected = max(1, int(np.floor(0.1 * n + 0.5)))
        assert (lab == 2).sum() == expected and (lab == 1).sum() == expected
        assert (lab == 0).sum() == n - 2 * expected


def test_random_split_deterministic_under_seed():
    users = np.repeat(np.arange(30), 20)
    a = split_labels(users, "random", seed=1)
    assert np.array_equal(a, split_labels(users, "random", seed=1))
    assert not np.array_equal(a, split_labels(users, "random", seed=2))


def test_loo_by_timestamp_exact():
    users = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2])
    stamps = np.array([5, 1, 9, 3, 2, 8, 4, 1, 2])
    labels = split_labels(users, "loo", seed=0, timestamps=stamps)
    # user 0: 9 -> test, 5 -> valid; user 1: 8 -> test, 4 -> valid; user 2 (<3): all train
    assert labels.tolist() == [1, 0, 2, 0, 0, 2, 1, 0, 0]


def test_loo_without_timestamps_one_each():
    users = np.repeat(np.arange(10), 5)
    labels = split_labels(users, "loo", seed=0)
    for u in range(10):
        assert sorted(labels[users == u].tolist()) == [0, 0, 0, 1, 2]


def test_unknown_method():
    with pytest.raises(DataError, match="unknown split method 'kfold'"):
        split_labels(np.array([0]), "kfold")


def write_unsplit(tmp_path, n_users=40, per_user=10, seed=0):
    rng = np.random.default_rng(seed)
    users = np.repeat([f"u{k}" for k in range(n_users)], per_user)
    items = np.concatenate([rng.choice(60, per_user, replace=False) for _ in range(n_users)])
    df = pd.DataFrame({"user_id": users, "item_id": items, "timestamp": np.arange(len(users))})
    path = tmp_path / "ratings.csv"
    df.to_csv(path, index=False)
    return path


def test_table_random_split_saved_and_reused(tmp_path):
    path = write_unsplit(tmp_path)
    ds = load_dataset(path, seed=5)
    assert (ds.train.nnz, ds.valid.nnz, ds.test.nnz) == (320, 40, 40)
    cache = tmp_path / ".diffmm_splits" / "ratings.random-5.csv"
    saved = pd.read_csv(cache)
    assert list(saved.columns) == ["user", "item", "split"] and len(saved) == 400
    assert json.loads(cache.with_suffix(".json").read_text())["rows"] == 400
    # the saved split is the one used: tamper with it and the tampered split is read back
    flipped = saved.copy()
    flipped.loc[flipped["split"] == "valid", "split"] = "train"
    flipped.to_csv(cache, index=False)
    again = load_dataset(path, seed=5)
    assert again.valid.nnz == 0 and again.train.nnz == 360
    # another seed: another split, saved separately
    other = load_dataset(path, seed=6)
    assert (tmp_path / ".diffmm_splits" / "ratings.random-6.csv").exists()
    assert other.fingerprint()["splits"] != ds.fingerprint()["splits"]


def test_cache_ignored_when_source_changes(tmp_path):
    path = write_unsplit(tmp_path)
    load_dataset(path, seed=5)
    cache = tmp_path / ".diffmm_splits" / "ratings.random-5.csv"
    pd.read_csv(cache).assign(split="train").to_csv(cache, index=False)
    with open(path, "a") as f:
        f.write("u0,59,9999\n")  # a new interaction changes the checksum
    ds = load_dataset(path, seed=5)
    assert ds.valid.nnz == 40 and ds.train.nnz + ds.valid.nnz + ds.test.nnz == 401


def test_same_seed_same_split_without_cache(tmp_path):
    path = write_unsplit(tmp_path)
    a = load_dataset(path, seed=1)
    for f in (tmp_path / ".diffmm_splits").iterdir():
        f.unlink()
    assert load_dataset(path, seed=1).fingerprint() == a.fingerprint()


def test_table_loo_uses_timestamps(tmp_path):
    path = write_unsplit(tmp_path, n_users=5, per_user=4)
    df = pd.read_csv(path)
    ds = load_dataset(path, split="loo")
    last = df.groupby("user_id").tail(1)
    before = df.groupby("user_id").nth(-2)
    for frame_, mat in ((last, ds.test), (before, ds.valid)):
        u = ds.user_index(frame_["user_id"].to_numpy())
        i = ds.item_index(frame_["item_id"].to_numpy())
        assert mat.nnz == 5 and np.all(np.asarray(mat[u, i]).ravel() == 1)
    assert (tmp_path / ".diffmm_splits" / "ratings.loo-2024.csv").exists()


def test_duplicates_in_unsplit_table_do_not_leak(tmp_path):
    path = write_unsplit(tmp_path, n_users=10, per_user=10)
    df = pd.read_csv(path)
    pd.concat([df, df]).to_csv(path, index=False)
    ds = load_dataset(path)
    assert ds.duplicates == 100 and ds.leaks == 0
    assert ds.train.nnz + ds.valid.nnz + ds.test.nnz == 100


def test_read_only_directory_falls_back_to_user_cache(tmp_path):
    data = tmp_path / "ro"
    data.mkdir()
    path = write_unsplit(data)
    os.chmod(data, 0o555)
    try:
        ds = load_dataset(path, seed=5)
        assert not (data / ".diffmm_splits").exists()
        fallback = Path(os.environ["HOME"]) / ".cache" / "diffmm" / "splits"
        cached = list(fallback.glob("ratings-*.ratings.random-5.csv"))
        assert len(cached) == 1
        assert load_dataset(path, seed=5).fingerprint() == ds.fingerprint()
    finally:
        os.chmod(data, 0o755)
