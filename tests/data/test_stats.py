"""dataset_stats / format_stats on a hand-made case with known numbers."""

from __future__ import annotations

import numpy as np
import pytest

from diffmm.data import build_dataset, dataset_stats, format_stats, load_dataset


def hand_made():
    # 4 users, 5 items. user 3: no train (cold); items 3, 4: no train (cold).
    train = (np.array([0, 0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0, 2]))  # 1 duplicate
    valid = (np.array([0, 1]), np.array([3, 2]))  # (1, 2) leaks
    test = (np.array([0, 2, 3]), np.array([4, 3, 0]))
    with pytest.warns(UserWarning):
        return build_dataset(
            "hand", 4, 5, train, valid, test, features={"image": np.zeros((5, 3))}, source="mem"
        )


def test_stats_known_numbers():
    s = dataset_stats(hand_made())
    assert s["users"] == 4 and s["items"] == 5
    assert s["interactions"] == {"train": 5, "valid": 2, "test": 3, "total": 10}
    assert s["density"] == pytest.approx(10 / 20)
    assert s["features"] == {"image": [5, 3]}
    assert s["cold_users"] == 1 and s["cold_items"] == 2
    assert s["users_with_valid"] == 2 and s["users_with_test"] == 3
    assert s["duplicates"] == 1 and s["leaks"] == 1


def test_format_stats_lists_every_number():
    text = format_stats(dataset_stats(hand_made()))
    lines = dict(line.split(None, 1) for line in text.replace("cold ", "cold_").splitlines())
    assert "train 5 / valid 2 / test 3" in lines["interactions"]
    assert lines["density"].strip() == "50.00000%"
    assert lines["features"].strip() == "image 5x3"
    assert lines["cold_users"].startswith("1 ") and lines["cold_items"].startswith("2 ")
    assert lines["duplicates"].startswith("1 ") and lines["leaks"].startswith("1 ")
    assert "users with test   3" in text


def test_stats_without_features():
    ds = load_dataset("synthetic:n_users=50,n_items=40")
    ds.features = {}
    assert "features          none" in format_stats(dataset_stats(ds))


def test_real_tiktok_stats(shared_data):
    path = shared_data / "tiktok"
    if not (path / "trnMat.pkl").exists():
        pytest.skip(f"{path} has no trnMat.pkl (benchmark data not installed)")
    s = dataset_stats(load_dataset(path))
    assert s["users_with_test"] == 6130 and s["users_with_valid"] == 3051
    assert s["cold_users"] == 10 and s["cold_items"] == 465  # as the data README says
