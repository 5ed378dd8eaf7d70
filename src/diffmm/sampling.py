"""Negative sampling and BPR epoch batches, vectorised with NumPy.

A negative for user ``u`` is drawn uniformly from the items ``u`` has *not* interacted
with in training. Rather than rejection sampling we draw a rank ``r`` uniformly in
``[0, n_items - deg(u))`` and map it to the ``r``-th non-interacted item exactly: if
``u``'s training items are sorted ``i_0 < i_1 < ...``, item ``i_j`` has ``i_j - j``
non-interacted items before it, so the ``r``-th free item is ``r + #{j : i_j - j <= r}``.
That count is one :func:`numpy.searchsorted` over a globally sorted key array, so every
negative costs ``O(log nnz)`` with no redraws and no Python loop over users or pairs.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp


class NegativeSampler:
    """Uniform negatives from the complement of each user's training items.

    Precomputes the sorted key array once; :meth:`sample` is then ``O(n log nnz)``.
    """

    def __init__(self, train: sp.spmatrix) -> None:
        csr = sp.csr_matrix(train)
        csr.sum_duplicates()
        csr.eliminate_zeros()
        csr.sort_indices()
        self.n_users, self.n_items = csr.shape
        self.indptr = csr.indptr.astype(np.int64)
        self.degree = np.diff(self.indptr)
        rows = np.repeat(np.arange(self.n_users, dtype=np.int64), self.degree)
        position = np.arange(csr.nnz, dtype=np.int64) - self.indptr[rows]
        # key of stored entry j of row u: u * n_items + (i_j - j); non-decreasing overall
        self.keys = rows * self.n_items + (csr.indices.astype(np.int64) - position)

    def sample(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One uniform negative item per entry of ``users`` (int64 array, same shape)."""
        users = np.asarray(users, dtype=np.int64)
        if users.size == 0:
            return np.empty(users.shape, dtype=np.int64)
        if users.min() < 0 or users.max() >= self.n_users:
            raise ValueError(f"user index out of range [0, {self.n_users})")
        n_free = self.n_items - self.degree[users]
        if (n_free <= 0).any():
            full = np.unique(users[n_free <= 0])
            raise ValueError(
                f"cannot sample a negative item for {full.size} user(s) who interacted with "
                f"every item in training (e.g. user {int(full[0])}); remove them or add items"
            )
        ranks = rng.integers(0, n_free)
        before = np.searchsorted(self.keys, users * self.n_items + ranks, side="right")
        return ranks + (before - self.indptr[users])


def sample_negatives(train: sp.spmatrix, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One negative per entry of ``users``, uniform over items not in its training row.

    Raises:
        ValueError: a user interacted with every item, so has no negative.
    """
    return NegativeSampler(train).sample(users, rng)


def n_bpr_batches(train: sp.spmatrix, batch_size: int) -> int:
    """Number of batches :func:`bpr_epoch_batches` yields."""
    return -(-train.nnz // batch_size)


def bpr_epoch_batches(
    train: sp.spmatrix,
    batch_size: int,
    rng: np.random.Generator,
    sampler: NegativeSampler | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Shuffled ``(users, pos_items, neg_items)`` int64 batches over every training pair.

    Each training pair appears exactly once per epoch with one uniform negative; all
    negatives are drawn up front in one vectorised call. Pass a ``sampler`` built once
    on ``train`` to avoid rebuilding its index every epoch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sampler = sampler or NegativeSampler(train)
    coo = sp.coo_matrix(train)
    users = coo.row.astype(np.int64)
    items = coo.col.astype(np.int64)
    order = rng.permutation(users.size)
    users, items = users[order], items[order]
    negs = sampler.sample(users, rng)
    for start in range(0, users.size, batch_size):
        end = start + batch_size
        yield users[start:end], items[start:end], negs[start:end]
