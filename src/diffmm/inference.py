"""Using a trained model: load a run directory, recommend top-K items by raw id, export.

    import diffmm
    rec = diffmm.load("runs/diffmm-tiktok")
    rec.recommend(["u1", "u2"], k=20)        # -> [[item id, ...], [item id, ...]]
    rec.evaluate("test", ks=(10, 20))        # -> {"recall@10": ..., "n_users": ...}

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
from diffmm.evaluate import check_metrics, evaluate, mask_items
from diffmm.models import get_model_class
from diffmm.models.base import Recommender
from diffmm.run_files import read_json
from diffmm.state import load_model_state
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

    # ------------------------------------------------------------------ evaluation
    def evaluate(
        self,
        split: str = "test",
        ks: Sequence[int] = (10, 20),
        metrics: Sequence[str] | None = None,
        batch_size: int = 1024,
        per_user: bool = False,
    ) -> dict[str, Any]:
        """All-rank metrics of this model on ``split`` ("test" or "valid"), as training scores.

        The protocol is the trainer's (:func:`diffmm.evaluate.evaluate`): every item is
        ranked, the user's training items are masked, and for ``test`` the validation
        items too. ``metrics`` are any of :data:`diffmm.evaluate.ALL_METRICS` (default
        recall, ndcg, precision, hit). Returns ``{"recall@10": ..., "n_users": int}``; with
        ``per_user`` also each evaluated user's metrics under ``"per_user"`` (``"user"``: the
        user indices; see :func:`diffmm.evaluate.evaluate`).
        """
        if self.dataset is None:
            raise DataError(
                "this recommender holds no data to evaluate on; load it with "
                "diffmm.load(run_dir) (or pass data=...)"
            )
        if split not in ("valid", "test"):
            raise ConfigError(f"split must be 'test' or 'valid', got {split!r}")
        ks = [ks] if isinstance(ks, int) else list(ks)
        if not ks or not all(
            isinstance(k, int | np.integer) and not isinstance(k, bool) and k >= 1 for k in ks
        ):
            raise ConfigError(f"ks must be positive integers (e.g. 10, 20), got {ks!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        chosen = check_metrics(metrics)
        embeddings = (self.user_emb, self.item_emb)
        with torch.no_grad():
            return evaluate(
                lambda users: self.model.scores(users, embeddings),
                self.dataset,
                split,
                ks=[int(k) for k in ks],
                batch_size=batch_size,
                device=self.device,
                metrics=chosen,
                per_user=per_user,
            )

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


def load(
    run_dir: str | Path, data: str | Dataset | None = None, device: str = "auto"
) -> TrainedRecommender:
    """Load the best model of a training run for inference.

    Works on an unfinished run too (``best.pt`` written, no ``summary.json`` yet).

    Args:
        run_dir: a directory written by :func:`diffmm.train` or ``diffmm train``
            (``config.json``, ``dataset.json``, ``ids.json``, ``best.pt``).
        data: where the run's data are now, if they have moved, or the :class:`Dataset`
            itself (needed for a run trained on a ``Dataset`` object, whose directory
            does not say where its data are); checked against the run's fingerprint.
            Default: where they were at training time.
        device: "auto", "cpu" or "cuda[:i]".
    """
    run = open_run(run_dir)
    config = run.read_config()
    dataset = run_data(run, data)
    user_ids, item_ids = run.read_ids(dataset.n_users, dataset.n_items)
    device_t = resolve_device(device)
    best = run.load(ckpt.BEST, map_location=device_t)
    model = get_model_class(config.model)(config.params, dataset).to(device_t)
    load_model_state(model, best["model"], f"{run / ckpt.BEST} (settings: {run / ckpt.CONFIG})")
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


def open_run(run_dir: str | Path) -> ckpt.RunDir:
    """The run in ``run_dir``; :class:`DataError` if there is none."""
    run = ckpt.RunDir(run_dir)
    written_by = "give a directory written by diffmm.train(out=...) or `diffmm train --out`"
    if not run.path.is_dir():
        raise DataError(f"{run.path}: no such run directory; {written_by}")
    if not run.holds_run():
        raise DataError(f"{run.path}: not a run directory (no {ckpt.CONFIG}); {written_by}")
    return run


def run_data(run: ckpt.RunDir, data: str | Path | Dataset | None = None) -> Dataset:
    """The data of ``run``: ``data`` (a Dataset or where they are now) or its own reference."""
    if isinstance(data, Dataset):
        run.check_fingerprint(data)
        return data
    if data is None:
        recorded = read_json(run / ckpt.DATASET)
        if isinstance(recorded, dict) and "load" in recorded and recorded["load"] is None:
            raise DataError(
                f"{run.path} was trained on a Dataset given in memory and does not say where "
                "its data are; pass data=... (that Dataset, or the path of its data; --data "
                "on the command line)"
            )
    return run.load_data(moved_to=None if data is None else str(data))


def _seen(dataset: Dataset) -> sp.csr_matrix:
    seen = (dataset.train + dataset.valid + dataset.test).tocsr()
    seen.data[:] = 1.0
    return seen
