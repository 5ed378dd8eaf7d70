"""All-rank top-K evaluation: Recall, NDCG, Precision, HitRate, MRR, MAP and coverage at K.

For every user with at least one held-out item in the evaluated split, every item is
scored; the user's training items are masked out (and, when evaluating ``test``, the
validation items too), the top ``K`` are taken, and for each cut-off ``K``:

* ``recall@K``    = hits / |held-out|
* ``precision@K`` = hits / K
* ``ndcg@K``      = DCG / IDCG with DCG = sum over hit ranks r (0-based) of 1/log2(r + 2)
  and IDCG the DCG of ``min(|held-out|, K)`` hits at the top
* ``hit@K``       = 1 if hits > 0 else 0
* ``mrr@K``       = 1 / (r + 1) for the rank r (0-based) of the first hit, 0 without a hit
* ``map@K``       = average precision at K: the sum over hit ranks r of precision@(r + 1),
  divided by ``min(|held-out|, K)`` (so a user whose held-out items fill the top is 1)

each averaged over the evaluated users, and one catalogue-level metric:

* ``coverage@K``  = the fraction of all items that are in at least one evaluated user's
  top K (items ranked among masked ones, when a user has fewer than K left, do not count).

By default :func:`evaluate` computes the first four (:data:`METRICS`); ``metrics=`` picks
any of :data:`ALL_METRICS`. Users are processed in batches; only a batch's
``(batch, n_items)`` score matrix is ever dense.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from diffmm.data.dataset import Dataset
from diffmm.errors import ConfigError

#: The metrics :func:`evaluate` computes by default; a run's selection metric is one of them.
METRICS = ("recall", "ndcg", "precision", "hit")
#: Every per-user metric :func:`evaluate` can compute.
USER_METRICS = (*METRICS, "mrr", "map")
#: Every metric :func:`evaluate` can compute: the per-user ones and catalogue coverage.
ALL_METRICS = (*USER_METRICS, "coverage")


def _binary_csr(mat: sp.spmatrix) -> sp.csr_matrix:
    csr = sp.csr_matrix(mat, dtype=np.float32, copy=True)
    csr.eliminate_zeros()
    csr.data[:] = 1.0
    return csr


def mask_items(scores: Tensor, items: sp.csr_matrix) -> Tensor:
    """``scores`` with ``-inf`` where ``items`` (one CSR row per score row) is stored.

    Out of place: one ``index_put`` on the (row, item) pairs, on ``scores``' device.
    """
    if not items.nnz:
        return scores
    rows = np.repeat(np.arange(items.shape[0], dtype=np.int64), np.diff(items.indptr))
    idx = (
        torch.from_numpy(rows).to(scores.device),
        torch.from_numpy(items.indices.astype(np.int64)).to(scores.device),
    )
    return scores.index_put(idx, torch.tensor(-torch.inf, device=scores.device, dtype=scores.dtype))


def top_k_items(
    scores: Tensor, k: int, exclude: sp.csr_matrix | None = None
) -> tuple[Tensor, Tensor]:
    """Top-``k`` ``(indices, scores)`` per row, skipping the items in ``exclude``'s rows."""
    if exclude is not None:
        scores = mask_items(scores, exclude)
    top = torch.topk(scores, min(k, scores.shape[1]), dim=1, sorted=True)
    return top.indices, top.values


def check_metrics(metrics: Sequence[str] | str | None) -> tuple[str, ...]:
    """``metrics`` as a tuple of known names, in the order given (None: :data:`METRICS`).

    Raises :class:`ConfigError` naming an unknown metric.
    """
    if metrics is None:
        return METRICS
    names = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    unknown = [m for m in names if m not in ALL_METRICS]
    if unknown or not names:
        raise ConfigError(
            f"unknown metric(s) {unknown or '(none given)'}; choose from {', '.join(ALL_METRICS)}"
        )
    return tuple(dict.fromkeys(names))


def metric_names(ks: Sequence[int], metrics: Sequence[str] | None = None) -> list[str]:
    """Keys of the metrics :func:`evaluate` returns, e.g. ``["recall@10", ...]``."""
    chosen = () if metrics is not None and not len(metrics) else check_metrics(metrics)
    return [f"{m}@{k}" for k in sorted(set(ks)) for m in chosen]


def sample_users(heldout: sp.spmatrix, n: int | None, seed: int) -> np.ndarray | None:
    """``n`` of the users with held-out items, drawn with ``seed`` (sorted), or None
    (every user) when ``n`` is None or not below their number."""
    candidates = np.flatnonzero(np.diff(sp.csr_matrix(heldout).indptr) > 0)
    if n is None or n >= candidates.size:
        return None
    return np.sort(np.random.default_rng(seed).choice(candidates, size=n, replace=False))


def evaluate(
    score_fn: Callable[[Tensor], Tensor],
    dataset: Dataset,
    split: str,
    ks: Sequence[int] = (10, 20),
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
    per_user: bool = False,
    before_batch: Callable[[], None] | None = None,
    metrics: Sequence[str] | None = None,
    users: np.ndarray | None = None,
) -> dict[str, Any]:
    """All-rank metrics of ``score_fn`` on ``split`` ("valid" or "test").

    Args:
        score_fn: maps a 1-d int64 tensor of user indices (on ``device``) to a
            ``(len(users), n_items)`` score tensor on ``device``. It is not modified.
        dataset: supplies the held-out split and the items to mask.
        split: the split to evaluate; "test" also masks validation items.
        ks: cut-offs.
        batch_size: users scored at once.
        device: where masking and top-K run.
        per_user: also return each evaluated user's metrics under ``"per_user"``.
        before_batch: called before each batch of users is scored (the trainer gives
            freed memory back to the system there).
        metrics: the metrics to compute, any of :data:`ALL_METRICS` (default
            :data:`METRICS`: recall, ndcg, precision, hit).
        users: evaluate only these users (those of them with held-out items); default
            every user with held-out items.

    Returns:
        ``{"recall@10": float, "ndcg@10": ..., "precision@10": ..., "hit@10": ..., ...,
        "n_users": int}``; with ``per_user`` also ``"per_user": {"user": array, "recall@10":
        array, ...}`` (every metric but coverage, which is not per user). With no user to
        evaluate every metric is 0.0 and ``n_users`` 0.
    """
    if split not in ("train", "valid", "test"):
        raise ValueError(f"unknown split {split!r}")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chosen = check_metrics(metrics)
    device = torch.device(device)
    n_items = dataset.n_items
    heldout = _binary_csr(dataset.split(split))
    if split == "train":
        exclude = sp.csr_matrix(heldout.shape, dtype=np.float32)
    else:
        exclude = dataset.train if split != "test" else dataset.train + dataset.valid
        exclude = _binary_csr(exclude)
    n_heldout_all = np.diff(heldout.indptr)
    has_heldout = n_heldout_all > 0
    if users is not None:
        chosen_users = np.zeros_like(has_heldout)
        chosen_users[np.asarray(users, dtype=np.int64)] = True
        has_heldout &= chosen_users
    users = np.flatnonzero(has_heldout).astype(np.int64)

    max_k = min(ks[-1], n_items)
    discount = 1.0 / torch.log2(torch.arange(max_k, device=device, dtype=torch.float64) + 2.0)
    # idcg_table[n-1] = IDCG of n relevant items within the top max_k
    idcg_table = torch.cumsum(discount, 0)
    inv_rank = 1.0 / torch.arange(1, max_k + 1, device=device, dtype=torch.float64)
    user_metrics = [m for m in chosen if m != "coverage"]
    per: dict[str, list[np.ndarray]] = {name: [] for name in metric_names(ks, user_metrics)}
    covered = {k: torch.zeros(n_items, dtype=torch.bool, device=device) for k in ks}

    for start in range(0, users.size, batch_size):
        if before_batch is not None:
            before_batch()
        batch = users[start : start + batch_size]
        b = batch.size
        user_t = torch.from_numpy(batch).to(device)
        scores = score_fn(user_t)
        if scores.shape != (b, n_items):
            raise ValueError(
                f"score_fn returned shape {tuple(scores.shape)}, expected {(b, n_items)}"
            )
        scores = mask_items(scores, exclude[batch])
        top_scores, top = torch.topk(scores, max_k, dim=1, sorted=True)
        relevant = torch.from_numpy(heldout[batch].toarray() > 0).to(device)
        hits = relevant.gather(1, top).to(torch.float64)  # (b, max_k)
        n_rel = torch.from_numpy(n_heldout_all[batch]).to(device=device, dtype=torch.float64)
        cum_hits = torch.cumsum(hits, 1)
        cum_dcg = torch.cumsum(hits * discount, 1)
        # precision@(r+1) at each hit rank r, summed: the numerator of average precision
        cum_ap = torch.cumsum(hits * cum_hits * inv_rank, 1)
        # 1/(r+1) falls with r, so its maximum over the hits is the first hit's
        reciprocal = hits * inv_rank
        ranked = ~torch.isneginf(top_scores)  # not a masked item filling a short list
        for k in ks:
            kk = min(k, max_k)
            n_hit = cum_hits[:, kk - 1]
            idcg = idcg_table[(torch.clamp(n_rel, max=kk) - 1).long()]
            values = {
                "recall": n_hit / n_rel,
                "ndcg": cum_dcg[:, kk - 1] / idcg,
                "precision": n_hit / k,
                "hit": (n_hit > 0).to(torch.float64),
                "mrr": reciprocal[:, :kk].max(dim=1).values,
                "map": cum_ap[:, kk - 1] / torch.clamp(n_rel, max=kk),
            }
            for m in user_metrics:
                per[f"{m}@{k}"].append(values[m].cpu().numpy())
            if "coverage" in chosen:
                covered[k][top[:, :kk][ranked[:, :kk]]] = True

    result: dict[str, Any] = {}
    arrays = {
        name: np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)
        for name, parts in per.items()
    }
    for k in ks:
        for m in chosen:
            name = f"{m}@{k}"
            if m == "coverage":
                result[name] = float(covered[k].sum()) / n_items if users.size else 0.0
            else:
                result[name] = float(arrays[name].mean()) if arrays[name].size else 0.0
    result["n_users"] = int(users.size)
    if per_user:
        result["per_user"] = {"user": users, **arrays}
    return result
