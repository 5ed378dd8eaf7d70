"""Using a trained model: load a run directory, recommend top-K items by raw id, export.

    import diffmm
    rec = diffmm.load("runs/diffmm-tiktok")
    rec.recommend(["u1", "u2"], k=20)        # -> [[item id, ...], [item id, ...]]

:func:`load` rebuilds the model from the run's configuration and data (checked against
the data's fingerprint), loads ``best.pt`` and computes the final user and item
representations once; every request is then one batched product and a top-K.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from diffmm import checkpoint as ckpt
from diffmm.data.dataset import Dataset, as_id_array, match_ids, preview
from diffmm.errors import ConfigError, DataError, UnknownIdError
from diffmm.evaluate import mask_items
from diffmm.models import get_model_class
from diffmm.models.base import Recommender
from diffmm.utils import resolve_device

#: Largest k a request may ask for (and at most the number of items).
MAX_K = 1000


class TrainedRecommender:
    """A trained model and the id maps of its data: raw ids in, raw ids out.

    Args:
        model: the trained model (its state already loaded).
        seen: ``(n_users, n_items)`` CSR of every interaction in the data, excluded from
            recommendations with ``exclude_seen``.
        user_ids, item_ids: raw id of each index (None: the ids are the indices).
        metadata: what :attr:`metadata` reports (model, data sizes, metrics, ...).
        dataset: the data the model was trained on, if kept (for evaluation).
    """

    def __init__(
        self,
        model: Recommender,
        seen: sp.csr_matrix,
        user_ids: np.ndarray | None,
        item_ids: np.ndarray | None,
        metadata: dict[str, Any],
        dataset: Dataset | None = None,
    ) -> None:
        self.model = model.eval()
        self.dataset = dataset
        self.device = model.device
        with torch.no_grad():
            self.user_emb, self.item_emb = (e.detach() for e in model.embeddings())
        self.seen = seen
        self.n_users, self.n_items = seen.shape
        self.user_ids = user_ids if user_ids is not None else np.arange(self.n_users)
        self.item_ids = item_ids if item_ids is not None else np.arange(self.n_items)
        self.metadata = metadata

    # ------------------------------------------------------------------ ids
    def user_index(self, user_ids: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Indices of raw user ids; :class:`UnknownIdError` names the unknown ones."""
        raw = as_id_array(user_ids)
        idx = match_ids(self.user_ids, raw)
        if (idx < 0).any():
            unknown = raw[idx < 0]
            raise UnknownIdError(
                f"{len(unknown)} unknown user id(s) {preview(unknown)}: the model was trained on "
                f"{self.n_users} users and knows no such id"
            )
        return idx

    def check_k(self, k: int) -> int:
        """``k`` if it is a usable list length, else :class:`ConfigError`."""
        limit = min(MAX_K, self.n_items)
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= limit:
            raise ConfigError(f"k must be an integer from 1 to {limit}, got {k!r}")
        return int(k)

    # ------------------------------------------------------------------ scoring
    def top_k(
        self, users: np.ndarray, k: int, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(item indices, scores)`` of user *indices*, shape ``(len, k)``.

        Where a user has fewer than ``k`` unseen items, the tail holds index -1 and
        score -inf.
        """
        k = self.check_k(k)
        users = np.asarray(users, dtype=np.int64)
        with torch.no_grad():
            user_t = torch.from_numpy(users).to(self.device)
            scores = self.user_emb[user_t] @ self.item_emb.T
            if exclude_seen:
                scores = mask_items(scores, self.seen[users])
            top = torch.topk(scores, k, dim=1, sorted=True)
        items = top.indices.cpu().numpy()
        values = top.values.float().cpu().numpy()
        items[np.isneginf(values)] = -1
        return items, values

    def recommend(
        self, user_ids: Sequence[Any] | np.ndarray, k: int = 20, exclude_seen: bool = True
    ) -> list[list[Any]]:
        """The top-``k`` raw item ids for each raw user id, best first.

        With ``exclude_seen`` the items a user interacted with anywhere in the data
        (train, valid or test) are skipped.
        """
        return [items for items, _ in self.recommend_scored(user_ids, k, exclude_seen)]

    def recommend_scored(
        self, user_ids: Sequence[Any] | np.ndarray, k: int = 20, exclude_seen: bool = True
    ) -> list[tuple[list[Any], list[float]]]:
        """Like :meth:`recommend`, with each item's score: ``[(items, scores), ...]``."""
        items, scores = self.top_k(self.user_index(user_ids), k, exclude_seen)
        out = []
        for row, row_scores in zip(items, scores, strict=True):
            keep = row >= 0
            out.append((self.item_ids[row[keep]].tolist(), row_scores[keep].tolist()))
        return out

    def iter_all(
        self, k: int, batch_size: int = 1024, exclude_seen: bool = True
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(raw user ids, raw item ids (b, k), scores (b, k))`` for every user, in batches.

        Missing entries (fewer than ``k`` unseen items) have score -inf.
        """
        for start in range(0, self.n_users, batch_size):
            users = np.arange(start, min(start + batch_size, self.n_users))
            items, scores = self.top_k(users, k, exclude_seen)
            raw_items = self.item_ids[np.maximum(items, 0)]
            yield self.user_ids[users], raw_items, scores


def load(run_dir: str | Path, data: str | None = None, device: str = "auto") -> TrainedRecommender:
    """Load the best model of a training run for inference.

    Args:
        run_dir: a directory written by ``diffmm train`` (``config.json``,
            ``dataset.json``, ``ids.json``, ``best.pt``).
        data: where the run's data are now, if they have moved (checked against the
            run's fingerprint); default: where they were at training time.
        device: "auto", "cpu" or "cuda[:i]".
    """
    run = ckpt.RunDir(run_dir)
    run.require_run()
    config = run.read_config()
    dataset = run.load_data(moved_to=data)
    user_ids, item_ids = run.read_ids(dataset.n_users, dataset.n_items)
    device_t = resolve_device(device)
    best = run.load(ckpt.BEST, map_location=device_t)
    model = get_model_class(config.model)(config.params, dataset).to(device_t)
    try:
        model.load_state_dict(best["model"])
    except (RuntimeError, KeyError) as exc:
        raise DataError(
            f"{run / ckpt.BEST}: does not fit the model of {run / ckpt.CONFIG} ({exc})"
        ) from None
    summary = run.read_summary()
    metadata = {
        "run_dir": str(run.path),
        "model": config.model,
        "dataset": dataset.name,
        "n_users": dataset.n_users,
        "n_items": dataset.n_items,
        "modalities": dataset.modalities,
        "epoch": best["epoch"],
        "finished": bool(summary),
        "valid": summary.get("valid", {}),
        "test": summary.get("test", {}),
    }
    seen = _seen(dataset)
    del best
    return TrainedRecommender(model, seen, user_ids, item_ids, metadata, dataset)


def _seen(dataset: Dataset) -> sp.csr_matrix:
    seen = (dataset.train + dataset.valid + dataset.test).tocsr()
    seen.data[:] = 1.0
    return seen
