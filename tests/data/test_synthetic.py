"""The synthetic dataset: determinism, sizes, speed, planted signal in the features."""

from __future__ import annotations

import hashlib
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
        ("synthetic:n_users=abc", "n_users must be an integer, got 'abc'"),
        ("synthetic:n_users=2.5", "n_users must be an integer, got '2.5'"),
        ("synthetic:n_users=True", "n_users must be an integer"),
        ("synthetic:temperature=hot", "temperature must be a number, got 'hot'"),
        ("synthetic:n_clusters=many", "n_clusters must be an integer or None"),
        ("synthetic:sampler=3", "sampler must be one of"),
    ],
)
def test_bad_synthetic_specs(spec, needle):
    with pytest.raises(DataError, match=needle):
        load_dataset(spec)


def test_synthetic_spec_values_take_the_options_types():
    ds = load_dataset("synthetic:n_users=60,n_items=40,temperature=1,n_clusters=None,seed=2")
    assert ds.fingerprint() == make_synthetic(60, 40, seed=2, temperature=1.0).fingerprint()


# --- the two samplers (issue 13 §5) -----------------------------------------------------


def _interactions_digest(ds) -> str:
    """sha256 (first 16 hex) of all interactions, whatever the split."""
    m = (ds.train + ds.valid + ds.test).tocsr()
    m.sort_indices()
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(m.indptr, np.int64))
    h.update(np.ascontiguousarray(m.indices, np.int64))
    return h.hexdigest()[:16]


def _planted(n_users: int, n_items: int, lam: int, seed: int):
    """The generator's planted user/item factors and per-user counts (its first draws)."""
    rng = np.random.default_rng(seed)
    user_f = rng.standard_normal((n_users, 16))
    item_f = rng.standard_normal((n_items, 16))
    rng.permutation(n_items)
    counts = np.clip(rng.poisson(lam, n_users), 3, n_items)
    return user_f, item_f, counts


def test_default_data_unchanged_by_the_linear_sampler():
    # digests of make_synthetic() as built before the clusters sampler existed (0c508d0)
    ds = make_synthetic()
    assert _interactions_digest(ds) == "417f2923bb41846e"
    visual = np.ascontiguousarray(ds.features["visual"], np.float32)
    assert hashlib.sha256(visual).hexdigest()[:16] == "bca92c170ae9164c"
    assert "sampler" not in ds.source  # auto chose the exact sampler
    exact = make_synthetic(sampler="exact")
    assert exact.fingerprint()["splits"] == ds.fingerprint()["splits"]


def test_auto_switches_to_clusters_above_the_threshold(monkeypatch):
    from diffmm.data import synthetic

    monkeypatch.setattr(synthetic, "EXACT_MAX_PAIRS", 200 * 150 - 1)
    auto = make_synthetic(n_users=200, n_items=150, seed=3)
    clusters = make_synthetic(n_users=200, n_items=150, seed=3, sampler="clusters")
    assert "sampler=clusters" in auto.source
    assert auto.fingerprint()["splits"] == clusters.fingerprint()["splits"]


def test_clusters_sampler_deterministic_exact_counts_no_duplicates():
    kw = dict(n_users=3000, n_items=1000, interactions_per_user=12, seed=7, sampler="clusters")
    a, b = make_synthetic(**kw), make_synthetic(**kw)
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint()["splits"] != make_synthetic(**{**kw, "seed": 8}).fingerprint()["splits"]
    assert a.duplicates == 0 and a.leaks == 0
    _, _, counts = _planted(3000, 1000, 12, seed=7)
    per_user = np.diff((a.train + a.valid + a.test).tocsr().indptr)
    np.testing.assert_array_equal(per_user, counts)  # the same counts as the exact sampler
    assert (np.diff(a.test.indptr) > 0).all()


def test_clusters_sampler_takes_every_item_when_asked():
    # counts are clipped to n_items: the top-up rounds must find every last item
    ds = make_synthetic(n_users=50, n_items=6, interactions_per_user=20, sampler="clusters")
    per_user = np.diff((ds.train + ds.valid + ds.test).tocsr().indptr)
    assert (per_user == 6).all() and ds.duplicates == 0


def _co_interacted_cosine(features: np.ndarray, matrix) -> float:
    """Mean cosine of the features of item pairs that one user holds, less random pairs'.

    Pairs are consecutive items of each user's row: linear in the interactions.
    """
    f = features - features.mean(0)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    m = matrix.tocsr()
    same_user = np.diff(np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))) == 0
    a, b = m.indices[:-1][same_user], m.indices[1:][same_user]
    perm = np.random.default_rng(0).permutation(len(b))
    return float((f[a] * f[b]).sum(1).mean() - (f[a] * f[b[perm]]).sum(1).mean())


def test_clusters_sampler_keeps_the_modalities_signal_at_scale():
    start = time.perf_counter()
    kw = dict(n_users=20_000, n_items=5_000, interactions_per_user=10, seed=0)
    ds = make_synthetic(**kw, sampler="clusters")
    assert time.perf_counter() - start < 60.0  # a few seconds on a quiet core
    total = ds.train + ds.valid + ds.test
    per_user = np.diff(total.tocsr().indptr)
    assert abs(per_user.mean() - 10) < 0.1 and per_user.min() >= 3
    visual = _co_interacted_cosine(ds.features["visual"], total)
    acoustic = _co_interacted_cosine(ds.features["acoustic"], total)
    # items a user holds look alike in "visual" (0.168 with the exact law at 2000 x 1500)
    assert visual > 0.12
    assert visual > acoustic + 0.1  # and hardly in "acoustic" (~0)
    pop = np.sort(np.bincount(total.indices, minlength=ds.n_items))[::-1]
    assert pop[: ds.n_items // 10].sum() / pop.sum() > 0.3  # still a long tail


def test_clusters_sampler_close_to_the_exact_law():
    # where both run: the planted affinity of the sampled items, and the head's share
    kw = dict(n_users=2000, n_items=1500, interactions_per_user=10, seed=1)
    user_f, item_f, _ = _planted(2000, 1500, 10, seed=1)

    def affinity_and_head(ds) -> tuple[float, float]:
        m = (ds.train + ds.valid + ds.test).tocoo()
        pop = np.sort(np.bincount(m.col, minlength=ds.n_items))[::-1]
        head = pop[: ds.n_items // 10].sum() / pop.sum()
        return float((user_f[m.row] * item_f[m.col]).sum(1).mean()), float(head)

    exact = affinity_and_head(make_synthetic(**kw, sampler="exact"))
    clusters = affinity_and_head(make_synthetic(**kw, sampler="clusters"))
    # E[u·v] is 0 over uniform items; 8.06 exact, 7.32 with the default 187 clusters
    assert clusters[0] > 0.85 * exact[0]
    assert abs(clusters[1] - exact[1]) < 0.1


def test_synthetic_spec_selects_the_sampler():
    spec = "synthetic:n_users=300,n_items=200,sampler=clusters,n_clusters=12,candidates=4"
    ds = load_dataset(spec)
    same = make_synthetic(300, 200, sampler="clusters", n_clusters=12, candidates=4)
    assert ds.fingerprint()["splits"] == same.fingerprint()["splits"]
    assert "n_clusters=12" in ds.source
    with pytest.raises(DataError, match="sampler must be one of"):
        load_dataset("synthetic:sampler=fast")
    with pytest.raises(DataError, match="candidates must be positive"):
        make_synthetic(sampler="clusters", candidates=0)
