"""Negative sampling and BPR epoch batches, vectorised with NumPy.

A negative for user ``u`` is drawn uniformly from the items ``u`` has *not* interacted
with in training. Rather than rejection sampling we draw a rank ``r`` uniformly in
``[0, n_items - deg(u))`` and map it to the ``r``-th non-interacted item exactly: if
``u``'s training items are sorted ``i_0 < i_1 < ...``, item ``i_j`` has ``i_j - j``
non-interacted items before it, so the ``r``-th free item is ``r + #{j : i_j - j <= r}``.
That count is one :func:`numpy.searchsorted` over a globally sorted key array, so every
negative costs ``O(log nnz)`` with no redraws and no Python loop over users or pairs.

A user who interacted with every item in training has no negative: BPR cannot rank
anything below their items, so their training pairs are left out of the epoch batches
(with a warning); data where that leaves no pair at all are refused with a
:class:`~diffmm.errors.DataError`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp

from diffmm.errors import DataError


def _canonical(train: sp.spmatrix) -> sp.csr_matrix:
    """``train`` as CSR with one sorted, non-zero entry per (user, item) pair."""
    csr = sp.csr_matrix(train, copy=True)
    csr.sum_duplicates()
    csr.eliminate_zeros()
    csr.sort_indices()
    return csr


def users_without_negatives(train: sp.spmatrix) -> np.ndarray:
    """Sorted indices of the users who interacted with every item in ``train``."""
    csr = sp.csr_matrix(train)
    # stored entries bound the distinct items from above: most data need no more work
    candidates = np.flatnonzero(np.diff(csr.indptr) >= csr.shape[1])
    if candidates.size == 0:
        return candidates.astype(np.int64)
    distinct = np.diff(_canonical(csr[candidates]).indptr)
    return candidates[distinct >= csr.shape[1]].astype(np.int64)


def _describe(users: np.ndarray) -> str:
    return f"{users.size} user(s) interacted with every item in training (e.g. user {users[0]})"


class NegativeSampler:
    """Uniform negatives from the complement of each user's training items.

    Precomputes the sorted key array once; :meth:`sample` is then ``O(n log nnz)``.
    Warns when some users have no negative (:attr:`users_without_negatives`).
    """

    def __init__(self, train: sp.spmatrix) -> None:
        csr = _canonical(train)
        self.n_users, self.n_items = csr.shape
        self.indptr = csr.indptr.astype(np.int64)
        self.degree = np.diff(self.indptr)
        #: users who interacted with every item: no negative can be drawn for them
        self.users_without_negatives = np.flatnonzero(self.degree >= self.n_items).astype(np.int64)
        if self.users_without_negatives.size:
            warnings.warn(
                _describe(self.users_without_negatives)
                + ": they have no negative item, so their training pairs are left out of BPR",
                stacklevel=2,
            )
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
            raise DataError(
                f"cannot sample a negative item: {_describe(np.unique(users[n_free <= 0]))}; "
                "leave their pairs out (bpr_epoch_batches does) or add items"
            )
        ranks = rng.integers(0, n_free)
        before = np.searchsorted(self.keys, users * self.n_items + ranks, side="right")
        return ranks + (before - self.indptr[users])


def sample_negatives(train: sp.spmatrix, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One negative per entry of ``users``, uniform over items not in its training row.

    Raises:
        DataError: a user interacted with every item, so has no negative.
    """
    return NegativeSampler(train).sample(users, rng)


def _bpr_pairs(train: sp.spmatrix, without: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every training ``(users, items)`` pair, except those of the users in ``without``."""
    coo = sp.coo_matrix(train)
    users = coo.row.astype(np.int64)
    items = coo.col.astype(np.int64)
    if without.size:
        keep = ~np.isin(users, without)
        users, items = users[keep], items[keep]
    return users, items


def n_bpr_pairs(train: sp.spmatrix) -> int:
    """Training pairs of an epoch of :func:`bpr_epoch_batches`."""
    return _bpr_pairs(train, users_without_negatives(train))[0].size


def n_bpr_batches(train: sp.spmatrix, batch_size: int) -> int:
    """Number of batches :func:`bpr_epoch_batches` yields."""
    return -(-n_bpr_pairs(train) // batch_size)


def grown_batch(n_pairs: int, batch_size: int, max_batches: int | None) -> tuple[int, float]:
    """The batch of an epoch of ``n_pairs`` pairs in at most ``max_batches`` steps, and the
    factor of the learning rate that goes with it.

    The batch is ``batch_size`` unless that takes more than ``max_batches`` steps; then it
    grows to ``ceil(n_pairs / max_batches)`` and the learning rate by the square root of
    the growth, the rule under which Adam's updates keep their scale as the batch grows
    (Malladi et al., "On the SDEs and Scaling Rules for Adaptive Gradient Algorithms",
    NeurIPS 2022).
    """
    if max_batches is None or n_pairs <= batch_size * max_batches:
        return batch_size, 1.0
    batch = -(-n_pairs // max_batches)
    return batch, (batch / batch_size) ** 0.5


def bpr_epoch_batches(
    train: sp.spmatrix,
    batch_size: int,
    rng: np.random.Generator,
    sampler: NegativeSampler | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Shuffled ``(users, pos_items, neg_items)`` int64 batches over every training pair.

    Each training pair appears exactly once per epoch with one uniform negative, except
    the pairs of users who interacted with every item (they have no negative); all
    negatives are drawn up front in one vectorised call. Pass a ``sampler`` built once
    on ``train`` to avoid rebuilding its index every epoch.

    Raises:
        DataError: no training pair is left (every user who has one has every item).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sampler = sampler or NegativeSampler(train)
    users, items = _bpr_pairs(train, sampler.users_without_negatives)
    if users.size == 0 and train.nnz > 0:
        raise DataError(
            f"no training pair has a negative item: {_describe(sampler.users_without_negatives)}"
            ", and no other user has training interactions"
        )
    order = rng.permutation(users.size)
    users, items = users[order], items[order]
    negs = sampler.sample(users, rng)
    for start in range(0, users.size, batch_size):
        end = start + batch_size
        yield users[start:end], items[start:end], negs[start:end]
