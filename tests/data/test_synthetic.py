"""The synthetic dataset: determinism, sizes, speed, planted signal in the features."""

from __future__ import annotations

import time

import numpy as np
import pytest

from diffmm.data import load_dataset, make_synthetic
from diffmm.errors import DataError


def test_same_seed_identical_different_seed_different():
    a = make_synthetic(n_users=200, n_items=150, seed=3)
    b = make_synthetic(n_users=200, n_items=150, seed=3)
    c = make_synthetic(n_users=200, n_items=150, seed=4)
    assert a.fingerprint() == b.fingerprint()
    for name in ("train", "valid", "test"):
        assert (a.split(name) != b.split(name)).nnz == 0
    np.testing.assert_array_equal(a.features["visual"], b.features["visual"])
    assert a.fingerprint()["splits"]["train"] != c.fingerprint()["splits"]["train"]
    assert not np.array_equal(a.features["visual"], c.features["visual"])


def test_default_sizes_and_speed():
    start = time.perf_counter()
    ds = make_synthetic()
    assert time.perf_counter() - start < 2.0
    assert (ds.n_users, ds.n_items) == (1000, 800)
    assert ds.features["visual"].shape == (800, 64)
    assert ds.features["acoustic"].shape == (800, 32)
    total = ds.train.nnz + ds.valid.nnz + ds.test.nnz
    assert 18_000 < total < 22_000  # ~20 per user
    assert 0.75 < ds.train.nnz / total < 0.85
    assert (np.diff(ds.test.indptr) > 0).all()  # every user has >= 3, so a test item
    assert ds.duplicates == 0 and ds.leaks == 0


def test_popularity_long_tail():
    ds = make_synthetic()
    pop = np.sort(np.bincount(ds.train.indices, minlength=ds.n_items))[::-1]
    top_decile = pop[: ds.n_items // 10].sum() / pop.sum()
    assert top_decile > 0.3  # head items dominate; a uniform draw would give ~0.1


def _neighbour_overlap(features: np.ndarray, item_users) -> float:
    """Mean Jaccard of the user sets of each item and its nearest feature neighbour."""
    f = features - features.mean(0)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    nn = sim.argmax(1)
    inter = np.asarray(item_users.multiply(item_users[nn]).sum(1)).ravel()
    sizes = np.asarray(item_users.sum(1)).ravel()
    union = sizes + sizes[nn] - inter
    return float(np.mean(inter[union > 0] / union[union > 0]))


def test_visual_features_informative_acoustic_weak():
    ds = make_synthetic()
    item_users = (ds.train + ds.valid + ds.test).T.tocsr()
    rng = np.random.default_rng(0)
    visual = _neighbour_overlap(ds.features["visual"], item_users)
    acoustic = _neighbour_overlap(ds.features["acoustic"], item_users)
    noise = _neighbour_overlap(rng.standard_normal((ds.n_items, 64)), item_users)
    assert visual > 1.5 * noise
    assert visual > acoustic


def test_load_dataset_synthetic_spec():
    ds = load_dataset("synthetic:n_users=120,n_items=90,seed=1", name="toy")
    assert (ds.n_users, ds.n_items, ds.name) == (120, 90, "toy")
    assert ds.fingerprint()["splits"] == make_synthetic(120, 90, seed=1).fingerprint()["splits"]
    assert load_dataset("synthetic").n_users == 1000


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("synthetic:n_user=5", "bad synthetic option 'n_user=5'.*n_users"),
        ("synthetic:n_users", "bad synthetic option"),
        ("synthetic:n_users=-3", "n_users must be positive"),
        ("synthetic:n_users=abc", "invalid synthetic options"),
    ],
)
def test_bad_synthetic_specs(spec, needle):
    with pytest.raises(DataError, match=needle):
        load_dataset(spec)
