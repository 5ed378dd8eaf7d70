"""The small interface every recommender implements.

A model is built from ``(config, dataset)``; the trainer only calls:

* :meth:`Recommender.begin_epoch` once per epoch, before the recommender pass
  (DiffMM trains its diffusion models and regenerates its graphs there);
* :meth:`Recommender.loss` for a batch of (user, positive item, negative item);
* :meth:`Recommender.embeddings` / :meth:`Recommender.scores` for all-rank scoring.

Every model here scores with a dot product of final user and item representations, so
``embeddings()`` is computed once and ``scores`` is a batched matrix product; a model
that scores otherwise overrides ``scores``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

if TYPE_CHECKING:
    from diffmm.data.dataset import Dataset


def require_features(dataset: Dataset, model: str) -> None:
    """Raise :class:`DataError` when ``dataset`` has no item features, naming ``model``."""
    if not dataset.features:
        from diffmm.errors import DataError

        raise DataError(
            f"dataset {dataset.name!r} has no item features, and {model} needs at least one "
            "modality (e.g. image_feat.npy). Train an ID-only model instead: "
            "--model lightgcn or --model mf."
        )


class ModelConfig(BaseModel):
    """Base of every model's typed hyper-parameters (unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


@dataclass
class Batch:
    """A BPR batch: index tensors of equal length on the model's device."""

    users: Tensor
    pos_items: Tensor
    neg_items: Tensor


class Recommender(nn.Module, ABC):
    """Base class: loss for a batch, full-rank scores for a set of users."""

    name: ClassVar[str]
    Config: ClassVar[type[ModelConfig]]

    def begin_epoch(self, epoch: int) -> dict[str, float]:
        """Work done once per epoch before the recommender pass; returns numbers to log."""
        return {}

    @abstractmethod
    def loss(self, batch: Batch) -> dict[str, Tensor]:
        """Named scalar losses for one batch; the trainer back-propagates their sum."""

    @abstractmethod
    def embeddings(self) -> tuple[Tensor, Tensor]:
        """Final ``(user, item)`` representations used for scoring."""

    def scores(self, users: Tensor, embeddings: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Scores of every item for ``users``: a ``(len(users), n_items)`` tensor.

        Pass ``embeddings`` (from :meth:`embeddings`) to score many batches without
        recomputing the propagation.
        """
        user_emb, item_emb = embeddings if embeddings is not None else self.embeddings()
        return user_emb[users] @ item_emb.T

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the trainer's optimiser updates (a model may train others itself)."""
        return [p for p in self.parameters() if p.requires_grad]

    def extra_state_dict(self) -> dict[str, Any]:
        """State the model keeps outside its parameters (e.g. its own optimisers)."""
        return {}

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state_dict` returned."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
