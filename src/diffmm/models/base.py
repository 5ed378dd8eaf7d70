"""The small interface every recommender implements.

A model is built from ``(config, dataset)``; the trainer only calls:

* :meth:`Recommender.epoch_phases` once per epoch, before the recommender pass: named
  steps of per-epoch work (by default one, :meth:`Recommender.begin_epoch`; DiffMM
  trains its diffusion models in one and regenerates its graphs in another), which the
  trainer runs in order, timing each;
* :meth:`Recommender.loss` for a batch of (user, positive item, negative item);
* :meth:`Recommender.embeddings` / :meth:`Recommender.scores` for all-rank scoring.

:meth:`Recommender.check_data` says, without building anything, whether a configuration
can work on a dataset (settings bounded by the data's size, features a model needs); every
model's ``__init__`` calls it too, and a caller can call it before writing any file.

Every model here scores with a dot product of final user and item representations, so
``embeddings()`` is computed once and ``scores`` is a batched matrix product; a model
that scores otherwise overrides ``scores``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np
import torch
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from torch import Tensor, nn

if TYPE_CHECKING:
    from diffmm.data.dataset import Dataset


#: Largest accepted embedding or hidden width: far above any useful size, and small
#: enough that a mistyped value (``2e9``) is refused before any memory is allocated.
MAX_WIDTH = 65_536
#: Largest accepted number of propagation or convolution layers.
MAX_LAYERS = 64
#: Largest accepted count (batch sizes, neighbours, epochs): a signed 32-bit integer.
MAX_COUNT = 2**31 - 1

#: A named step of per-epoch work (see :meth:`Recommender.epoch_phases`): the function
#: does the work and returns numbers to log.
EpochPhase = tuple[str, Callable[[], dict[str, float]]]

#: A yes/no setting: unlike numbers, also given as words ("yes", "False", "off", ...).
Flag = Annotated[bool, Field(strict=False)]


def require_features(dataset: Dataset, model: str) -> None:
    """Raise :class:`DataError` when ``dataset`` has no item features, naming ``model``."""
    if not dataset.features:
        from diffmm.errors import DataError

        raise DataError(
            f"dataset {dataset.name!r} has no item features, and {model} needs at least one "
            "modality: next to a table, <modality>.features.csv/.tsv/.parquet/.npz files "
            "(or --features DIR); next to the authors' or MMRec files, <modality>_feat.npy. "
            "Or train an ID-only model: --model lightgcn or --model mf."
        )


def at_most_n_items(value: int, setting: str, dataset: Dataset) -> None:
    """Raise :class:`ConfigError` when ``setting = value`` exceeds the dataset's item count."""
    if value > dataset.n_items:
        from diffmm.errors import ConfigError

        raise ConfigError(
            f"{setting} = {value} is larger than the data allow: dataset {dataset.name!r} has "
            f"{dataset.n_items} items; set {setting} between 1 and {dataset.n_items}"
        )


def require_negatives(dataset: Dataset) -> None:
    """Raise :class:`DataError` when no training pair has a negative item for BPR."""
    from diffmm.sampling import users_without_negatives

    degree = np.diff(dataset.train.indptr)
    full = users_without_negatives(dataset.train)
    if degree.sum() > 0 and degree[full].sum() == degree.sum():
        from diffmm.errors import DataError

        raise DataError(
            f"dataset {dataset.name!r}: every user with training interactions interacted "
            f"with every item ({dataset.n_items}), so BPR has no negative item to sample; "
            "the data need items some users have not seen"
        )


def authors(name: str, flag: str) -> AliasChoices:
    """Accept setting ``name`` also under the DiffMM authors' flag name ``flag``."""
    return AliasChoices(name, flag)


class ModelConfig(BaseModel):
    """Base of every model's typed hyper-parameters.

    Unknown keys are refused; numbers are checked strictly (no float for an integer, no
    boolean or string for a number) and infinities and NaN are refused.
    """

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False
    )


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
    #: The paper the model implements: authors, venue, year (shown by `diffmm models`).
    paper: ClassVar[str]
    #: Settings to name when :meth:`epoch_phases` leave a non-finite parameter.
    epoch_phase_settings: ClassVar[str] = "train.lr"

    @classmethod
    def check_data(cls, config: ModelConfig, dataset: Dataset) -> None:
        """Refuse a configuration that cannot work on ``dataset``, before anything is built.

        Raises :class:`~diffmm.errors.ConfigError` for a setting the data bound (naming
        the setting, its value and the data's limit) and :class:`~diffmm.errors.DataError`
        for data the model cannot use. Models that need more override this and call
        ``super().check_data(config, dataset)``; every model's ``__init__`` calls it.
        """
        require_negatives(dataset)

    def begin_epoch(self, epoch: int) -> dict[str, float]:
        """Work done once per epoch before the recommender pass; returns numbers to log."""
        return {}

    def epoch_phases(self, epoch: int) -> list[EpochPhase]:
        """The per-epoch work of ``epoch`` as named phases, run in this order.

        The trainer times each phase (``seconds_<name>`` in the log) and gives freed
        memory back between them. Default: :meth:`begin_epoch` as one phase.
        """
        return [("begin_epoch", lambda: self.begin_epoch(epoch))]

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
