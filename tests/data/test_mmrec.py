"""The MMRec format: <name>.inter with userID/itemID/x_label and *_feat.npy."""

from __future__ import annotations

import numpy as np
import pytest

from diffmm.data import load_dataset
from diffmm.errors import DataError

INTER = (
    "userID\titemID\trating\ttimestamp\tx_label\n"
    "0\t0\t5\t100\t0\n0\t1\t4\t101\t0\n1\t1\t3\t102\t0\n1\t2\t5\t103\t0\n"
    "2\t3\t4\t104\t0\n0\t2\t5\t105\t1\n1\t3\t5\t106\t2\n2\t0\t1\t107\t2\n"
)


def write(tmp_path, inter=INTER, **features):
    d = tmp_path / "baby"
    d.mkdir()
    (d / "baby.inter").write_text(inter)
    for name, arr in features.items():
        np.save(d / f"{name}_feat.npy", arr)
    return d


def test_loads_file_and_directory(tmp_path):
    d = write(tmp_path, image=np.ones((4, 3)), text=np.zeros((4, 5), dtype=np.float16))
    ds = load_dataset(d / "baby.inter")
    assert ds.name == "baby" and (ds.n_users, ds.n_items) == (3, 4)
    assert (ds.train.nnz, ds.valid.nnz, ds.test.nnz) == (5, 1, 2)
    assert ds.valid[0, 2] == 1 and ds.test[2, 0] == 1
    assert ds.modalities == ["image", "text"]
    assert ds.features["text"].dtype == np.float32
    assert load_dataset(d).fingerprint() == ds.fingerprint()


def test_feature_rows_extend_items(tmp_path):
    d = write(tmp_path, image=np.ones((6, 3)))
    ds = load_dataset(d)
    assert ds.n_items == 6
    assert ds.features["image"].shape == (6, 3)


def test_too_few_feature_rows(tmp_path):
    d = write(tmp_path, image=np.ones((3, 3)))
    with pytest.raises(DataError, match=r"image_feat.npy: has 3 rows .*item ids up to 3.*4 rows"):
        load_dataset(d)


def test_non_integer_ids(tmp_path):
    d = write(tmp_path, INTER.replace("\n2\t3\t4", "\nbob\t3\t4"))
    with pytest.raises(DataError, match=r"baby.inter: 1 non-integer user id.*'bob'"):
        load_dataset(d)


def test_negative_ids(tmp_path):
    d = write(tmp_path, INTER.replace("\n2\t3\t4", "\n2\t-3\t4"))
    with pytest.raises(DataError, match=r"baby.inter: 1 item id\(s\) in the train split .*-3"):
        load_dataset(d)


def test_unknown_x_label(tmp_path):
    d = write(tmp_path, INTER.replace("107\t2", "107\t7"))
    with pytest.raises(DataError, match=r"baby.inter: 1 row\(s\) have an unknown split value.*'7'"):
        load_dataset(d)


def test_several_inter_files_in_directory(tmp_path):
    d = write(tmp_path)
    (d / "other.inter").write_text(INTER)
    with pytest.raises(DataError, match="several .inter files"):
        load_dataset(d)


def test_empty_train(tmp_path):
    text = "userID\titemID\tx_label\n0\t0\t1\n1\t1\t2\n"
    d = write(tmp_path, text)
    with pytest.raises(DataError, match="baby.inter: the train split is empty"):
        load_dataset(d)


def test_header_only_file(tmp_path):
    d = write(tmp_path, "userID\titemID\tx_label\n")
    with pytest.raises(DataError, match="baby.inter"):
        load_dataset(d)
