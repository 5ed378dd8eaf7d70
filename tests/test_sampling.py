"""Negative sampling: never a training item, uniform, deterministic, vectorised batches."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from diffmm.errors import DataError
from diffmm.sampling import (
    NegativeSampler,
    bpr_epoch_batches,
    grown_batch,
    n_bpr_batches,
    sample_negatives,
)
from helpers import csr


def random_train(seed: int = 0, n_users: int = 50, n_items: int = 30, density: float = 0.4):
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items)) < density
    dense[0] = False  # a user with no interactions
    dense[1] = True
    dense[1, 7] = False  # a user with a single free item
    return csr(dense), dense


def test_negatives_are_never_training_items():
    train, dense = random_train()
    users = np.repeat(np.arange(train.shape[0]), 200)
    neg = sample_negatives(train, users, np.random.default_rng(0))
    assert neg.dtype == np.int64 and neg.shape == users.shape
    assert ((neg >= 0) & (neg < train.shape[1])).all()
    assert not dense[users, neg].any()
    assert (neg[users == 1] == 7).all()


def test_negatives_are_roughly_uniform_over_free_items():
    train, dense = random_train(seed=3)
    n = 30_000
    for u in (0, 5, 9):
        neg = sample_negatives(train, np.full(n, u), np.random.default_rng(u))
        counts = np.bincount(neg, minlength=train.shape[1])
        free = ~dense[u]
        assert (counts[~free] == 0).all()
        expected = n / free.sum()
        # chi-square-like check: every free item within 5 standard deviations
        assert np.abs(counts[free] - expected).max() < 5 * np.sqrt(expected)


def test_deterministic_under_seed():
    train, _ = random_train()
    users = np.arange(train.shape[0]).repeat(3)
    a = sample_negatives(train, users, np.random.default_rng(42))
    b = sample_negatives(train, users, np.random.default_rng(42))
    c = sample_negatives(train, users, np.random.default_rng(43))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_no_negative_for_a_user_with_every_item():
    train = csr([[1, 1], [1, 0]])
    with pytest.warns(UserWarning, match="1 user"):
        sampler = NegativeSampler(train)
    with pytest.raises(DataError, match=r"every item in training \(e.g. user 0\)"):
        sampler.sample(np.array([1, 0]), np.random.default_rng(0))
    assert sampler.sample(np.array([1, 1]), np.random.default_rng(0)).tolist() == [1, 1]


def test_epoch_batches_leave_out_users_with_every_item():
    dense = np.array([[1, 1, 1], [1, 0, 0], [0, 1, 1], [1, 1, 1]])
    train = csr(dense)
    with pytest.warns(UserWarning, match=r"2 user\(s\) interacted with every item"):
        batches = list(bpr_epoch_batches(train, 2, np.random.default_rng(0)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(batches) == n_bpr_batches(train, 2) == 2
    users = np.concatenate([b[0] for b in batches])
    neg = np.concatenate([b[2] for b in batches])
    assert sorted(users.tolist()) == [1, 2, 2]
    assert not dense[users, neg].any()


def test_epoch_batches_refuse_data_where_nobody_has_a_negative():
    train = csr([[1, 1], [1, 1], [0, 0]])
    with pytest.warns(UserWarning), pytest.raises(DataError, match="no training pair"):
        list(bpr_epoch_batches(train, 4, np.random.default_rng(0)))


def test_epoch_batches_cover_every_pair_once():
    train, dense = random_train()
    rng = np.random.default_rng(0)
    batches = list(bpr_epoch_batches(train, 64, rng))
    assert len(batches) == n_bpr_batches(train, 64)
    assert all(len(b[0]) == 64 for b in batches[:-1])
    users = np.concatenate([b[0] for b in batches])
    pos = np.concatenate([b[1] for b in batches])
    neg = np.concatenate([b[2] for b in batches])
    assert users.size == train.nnz
    coo = sp.coo_matrix(train)
    assert sorted(zip(users.tolist(), pos.tolist(), strict=True)) == sorted(
        zip(coo.row.tolist(), coo.col.tolist(), strict=True)
    )
    assert dense[users, pos].all() and not dense[users, neg].any()
    # shuffled, and reproducible with the same seed (also with a prebuilt sampler)
    assert not np.array_equal(users, np.sort(users))
    again = list(bpr_epoch_batches(train, 64, np.random.default_rng(0), NegativeSampler(train)))
    for x, y in zip(batches, again, strict=True):
        for a, b in zip(x, y, strict=True):
            np.testing.assert_array_equal(a, b)


def test_grown_batch_known_answers():
    assert grown_batch(1000, 100, None) == (100, 1.0)  # off
    assert grown_batch(1000, 100, 10) == (100, 1.0)  # 10 steps fit: unchanged
    assert grown_batch(1001, 100, 10) == (101, pytest.approx(1.01**0.5))
    assert grown_batch(40_000, 100, 4) == (10_000, pytest.approx(10.0))
