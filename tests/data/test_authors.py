"""The authors' folder format: restricted unpickler, shapes, features, real data."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from diffmm.data import load_dataset
from diffmm.errors import DataError


def test_loads_tiny_folder_with_features(tmp_path, write_authors):
    image = np.arange(10, dtype=np.float16).reshape(5, 2)
    d = write_authors(tmp_path / "tiny", features={"audio": np.ones((5, 3)), "image": image})
    ds = load_dataset(d)
    assert ds.name == "tiny" and (ds.n_users, ds.n_items) == (4, 5)
    assert (ds.train.nnz, ds.valid.nnz, ds.test.nnz) == (6, 2, 2)
    assert ds.train[3, 0] == 1 and ds.test[2, 0] == 1
    assert ds.modalities == ["image", "audio"]  # the authors' order
    assert ds.features["image"].dtype == np.float32
    np.testing.assert_array_equal(ds.features["image"], image.astype(np.float32))
    assert load_dataset(d / "trnMat.pkl").fingerprint() == ds.fingerprint()


@pytest.mark.slow
def test_loading_the_authors_format_and_training_code_leave_pandas_unimported(
    tmp_path, write_authors
):
    """pandas adds ~95 MB to a process; it is imported only to read tables."""
    d = write_authors(tmp_path / "tiny", features={"image": np.ones((5, 2))})
    code = (
        "import sys; from diffmm.data import load_dataset; import diffmm.trainer, diffmm.inference;"
        f" load_dataset({str(d)!r}); print('pandas' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_accepts_csr_pickles(tmp_path, write_authors, make_coo):
    d = write_authors(tmp_path)
    with open(d / "valMat.pkl", "wb") as f:
        pickle.dump(sp.csr_matrix(make_coo([(0, 4)], (4, 5))), f)
    assert load_dataset(d).valid.nnz == 1


class Evil:
    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


def test_refuses_malicious_pickle_without_running_it(tmp_path, write_authors):
    d = write_authors(tmp_path)
    evil = Evil()
    evil.marker = tmp_path / "pwned"
    with open(d / "valMat.pkl", "wb") as f:
        pickle.dump(evil, f)
    with pytest.raises(DataError, match=r"refuses to load global '(os|posix)\.system'") as err:
        load_dataset(d)
    assert "valMat.pkl" in str(err.value)
    assert not evil.marker.exists()


def test_refuses_builtins_eval(tmp_path, write_authors):
    d = write_authors(tmp_path)
    payload = b"cbuiltins\neval\n(S'1+1'\ntR."
    (d / "tstMat.pkl").write_bytes(payload)
    with pytest.raises(DataError, match="refuses to load global 'builtins.eval'.*tstMat.pkl"):
        load_dataset(d)


def test_refuses_pickle_holding_a_non_sparse_object(tmp_path, write_authors):
    d = write_authors(tmp_path)
    with open(d / "trnMat.pkl", "wb") as f:
        pickle.dump(np.zeros((4, 5)), f)
    with pytest.raises(DataError, match="trnMat.pkl: holds a ndarray, not a 2-D scipy.sparse"):
        load_dataset(d)


def test_truncated_pickle(tmp_path, write_authors):
    d = write_authors(tmp_path)
    data = (d / "trnMat.pkl").read_bytes()
    (d / "trnMat.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        DataError, match="trnMat.pkl: cannot read this pickle.*truncated or corrupt"
    ):
        load_dataset(d)


def test_missing_valmat(tmp_path, write_authors):
    d = write_authors(tmp_path)
    (d / "valMat.pkl").unlink()
    with pytest.raises(DataError, match="valMat.pkl: file not found"):
        load_dataset(d)


def test_shapes_must_agree(tmp_path, write_authors, make_coo):
    d = write_authors(tmp_path)
    with open(d / "tstMat.pkl", "wb") as f:
        pickle.dump(make_coo([(0, 0)], (4, 6)), f)
    with pytest.raises(DataError, match=r"different shapes .*tstMat.pkl \(4, 6\)"):
        load_dataset(d)


def test_feature_rows_must_equal_items(tmp_path, write_authors):
    d = write_authors(tmp_path, features={"image": np.ones((4, 2))})
    with pytest.raises(DataError, match=r"image_feat.npy: feature 'image' has 4 rows .* 5 items"):
        load_dataset(d)


def test_nan_features(tmp_path, write_authors):
    feat = np.ones((5, 2))
    feat[[1, 3], 0] = np.nan
    d = write_authors(tmp_path, features={"text": feat})
    with pytest.raises(DataError, match=r"text_feat.npy: .*NaN or inf values in 2 row"):
        load_dataset(d)


def test_corrupt_and_object_npy(tmp_path, write_authors):
    d = write_authors(tmp_path, features={"image": np.ones((5, 2))})
    (d / "image_feat.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match="image_feat.npy: cannot read this .npy file"):
        load_dataset(d)
    np.save(d / "image_feat.npy", np.array([{"a": 1}] * 5, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="image_feat.npy: cannot read"):
        load_dataset(d)


def test_out_of_range_ids_in_pickle_name_the_folder(tmp_path, write_authors):
    d = write_authors(tmp_path)
    bad = sp.coo_matrix((np.ones(1), (np.array([0]), np.array([1]))), shape=(4, 5))
    bad.col[0] = 7  # an inconsistent matrix, as a hand-edited file could hold
    with open(d / "tstMat.pkl", "wb") as f:
        pickle.dump(bad, f)
    with pytest.raises(DataError) as err:
        load_dataset(d)
    assert str(d) in str(err.value)


def _real(shared_data, name):
    path = shared_data / name
    if not (path / "trnMat.pkl").exists():
        pytest.skip(f"{path} has no trnMat.pkl (benchmark data not installed)")
    return load_dataset(path)


def test_real_tiktok(shared_data):
    ds = _real(shared_data, "tiktok")
    assert (ds.n_users, ds.n_items) == (9308, 6710)
    assert (ds.train.nnz, ds.valid.nnz, ds.test.nnz) == (59541, 3051, 6130)
    assert ds.modalities == ["image", "audio"]
    for feat in ds.features.values():
        assert feat.shape == (6710, 128) and feat.dtype == np.float32
    assert ds.duplicates == 0 and ds.leaks == 0


def test_real_baby(shared_data):
    ds = _real(shared_data, "baby")
    assert (ds.n_users, ds.n_items) == (19445, 7050)
    assert (ds.train.nnz, ds.valid.nnz, ds.test.nnz) == (118551, 21682, 20559)
    assert ds.features == {}


def _rename(d, names: dict[str, str]) -> None:
    for old, new in names.items():
        (d / old).rename(d / new)


@pytest.mark.parametrize(
    "names",
    [
        {"valMat.pkl": "vldMat.pkl"},
        {"valMat.pkl": "tiktok_valid.pkl"},
        {
            "trnMat.pkl": "baby_train.pkl",
            "valMat.pkl": "baby_val.pkl",
            "tstMat.pkl": "baby_test.pkl",
        },
    ],
)
def test_other_names_of_the_split_matrices(tmp_path, write_authors, names):
    d = write_authors(tmp_path / "tiny")
    expected = load_dataset(d).fingerprint()
    _rename(d, names)
    ds = load_dataset(d)
    assert ds.fingerprint() == expected and (ds.valid.nnz, ds.test.nnz) == (2, 2)
    assert load_dataset(d / list(names.values())[0]).fingerprint() == expected


def test_missing_valid_matrix_names_the_files_looked_for(tmp_path, write_authors):
    d = write_authors(tmp_path)
    (d / "valMat.pkl").unlink()
    with pytest.raises(
        DataError,
        match=r"valMat.pkl: file not found \(also looked for vldMat.pkl, <name>_valid.pkl, "
        r"<name>_val.pkl\)",
    ):
        load_dataset(d)


def test_two_valid_matrices_are_ambiguous(tmp_path, write_authors):
    d = write_authors(tmp_path)
    (d / "vldMat.pkl").write_bytes((d / "valMat.pkl").read_bytes())
    with pytest.raises(DataError, match=r"several valid matrices \(valMat.pkl, vldMat.pkl\)"):
        load_dataset(d)


def test_a_narrower_matrix_is_padded_with_a_warning(tmp_path, write_authors, make_coo):
    d = write_authors(tmp_path)
    with open(d / "valMat.pkl", "wb") as f:  # its last item never appears in valid
        pickle.dump(make_coo([(0, 2), (1, 3)], (4, 4)), f)
    with pytest.warns(UserWarning, match=r"valMat.pkl: shape \(4, 4\) is smaller .* \(4, 5\)"):
        ds = load_dataset(d)
    assert (ds.n_users, ds.n_items) == (4, 5) and ds.valid.shape == (4, 5)
    assert ds.valid.nnz == 2 and ds.valid[1, 3] == 1
    d = write_authors(tmp_path / "rows")
    with open(d / "trnMat.pkl", "wb") as f:  # fewer rows too: the last user has no train
        pickle.dump(make_coo([(0, 0), (0, 1), (1, 1), (1, 2), (2, 3)], (3, 5)), f)
    with pytest.warns(UserWarning, match=r"trnMat.pkl: shape \(3, 5\) .* 1 empty row"):
        assert load_dataset(d).train.shape == (4, 5)
