"""Shared helpers for the data-layer tests: tiny datasets written to tmp_path."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp


def shared_data_dir() -> Path:
    """The benchmark data folder: $DIFFMM_SHARED_DATA, else ../shared/data from the repo."""
    env = os.environ.get("DIFFMM_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The shared benchmark data folder; skips the test when it is absent."""
    root = shared_data_dir()
    if not root.is_dir():
        pytest.skip(f"benchmark data not found at {root} (set DIFFMM_SHARED_DATA to its path)")
    return root


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Keep the split cache fallback (~/.cache/diffmm) out of the real home directory."""
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))


def coo(pairs: list[tuple[int, int]], shape: tuple[int, int]) -> sp.coo_matrix:
    """A binary float64 coo_matrix, like the authors' pickles."""
    rows, cols = zip(*pairs, strict=True) if pairs else ((), ())
    return sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=shape)


TRAIN = [(0, 0), (0, 1), (1, 1), (1, 2), (2, 3), (3, 0)]
VALID = [(0, 2), (1, 3)]
TEST = [(0, 3), (2, 0)]


def _write_authors(
    directory: Path,
    shape: tuple[int, int] = (4, 5),
    features: dict[str, np.ndarray] | None = None,
) -> Path:
    """A tiny authors'-format folder: trn/val/tst pickles and ``<m>_feat.npy`` files."""
    directory.mkdir(parents=True, exist_ok=True)
    for fname, pairs in (("trnMat.pkl", TRAIN), ("valMat.pkl", VALID), ("tstMat.pkl", TEST)):
        with open(directory / fname, "wb") as f:
            pickle.dump(coo(pairs, shape), f)
    for name, arr in (features or {}).items():
        np.save(directory / f"{name}_feat.npy", arr)
    return directory


@pytest.fixture
def write_authors():
    """Factory fixture: ``write_authors(directory, shape=(4, 5), features=None)``."""
    return _write_authors


@pytest.fixture
def make_coo():
    """Factory fixture: ``make_coo(pairs, shape)`` -> binary coo_matrix."""
    return coo
