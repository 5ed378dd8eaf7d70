"""Training settings shared by every model: :class:`TrainConfig`, the ``[train]`` table.

How a run is trained (epochs, batches, optimiser, precision, device), validated and
selected (metric, cut-offs, patience) and what it logs. Resolved with the model's settings
by :func:`diffmm.config.resolve_config`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from diffmm.evaluate import USER_METRICS
from diffmm.models.base import MAX_COUNT, Flag, authors
from diffmm.precision import Precision
from diffmm.utils import KEPT_FREED_BLOCK_MB

#: Seeds are in ``[0, 2^63)``: what NumPy's and torch's generators both accept.
MAX_SEED = 2**63 - 1


class TrainConfig(BaseModel):
    """How a model is trained and selected (shared by every model).

    Numbers are checked strictly (no float for an integer, no boolean or string for a
    number); infinities and NaN are refused.
    """

    model_config = ConfigDict(
        extra="forbid",
        validate_assignment=True,
        strict=True,
        allow_inf_nan=False,
        populate_by_name=True,
    )

    epochs: int = Field(
        200,
        ge=1,
        le=MAX_COUNT,
        validation_alias=authors("epochs", "epoch"),
        description="Maximum number of epochs [epoch].",
    )
    batch_size: int = Field(
        2048,
        ge=1,
        le=MAX_COUNT,
        validation_alias=authors("batch_size", "batch"),
        description="BPR triples per optimiser step [batch].",
    )
    lr: float = Field(1e-3, gt=0, description="Adam learning rate of the recommender.")
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Keep an exponential moving average of the recommender's parameters, "
        "updated after every step with this decay (e.g. 0.99); validation, selection, "
        "best.pt and test use the average. None: the raw parameters.",
    )
    max_batches_per_epoch: int | None = Field(
        None,
        ge=1,
        le=MAX_COUNT,
        description="At most this many optimiser steps per epoch: on data with more than "
        "batch_size x this many training pairs the batch grows to fit, and lr grows with "
        "the square root of the batch's growth (Adam's square-root rule). Each step "
        "propagates the whole graph, so this keeps an epoch's cost linear in the data. "
        "None: batches of batch_size, however many.",
    )
    seed: int = Field(
        421, ge=0, le=MAX_SEED, description="Seed of every random number generator, in [0, 2^63)."
    )
    eval_every: int = Field(1, ge=1, le=MAX_COUNT, description="Validate every N epochs.")
    patience: int = Field(
        10, ge=1, le=MAX_COUNT, description="Stop after this many validations without improvement."
    )
    metric: str = Field(
        "recall@20",
        description="Validation metric used for selection, <name>@<k> with name one of "
        f"{', '.join(USER_METRICS)}; its cut-off k is evaluated even when not in ks.",
    )
    ks: list[Annotated[int, Field(ge=1, le=MAX_COUNT)]] = Field(
        default_factory=lambda: [10, 20], description="Cut-offs @K."
    )
    validation_users: int | None = Field(
        None,
        ge=1,
        le=MAX_COUNT,
        description="Validate on this many users with validation items, drawn once with "
        "the seed (the same users at every epoch), to bound the cost of each validation: "
        "all-rank scoring costs users x items. Selection becomes noisier; test always "
        "scores every user. None: every user.",
    )
    eval_batch_size: int = Field(1024, ge=1, le=MAX_COUNT, description="Users scored per batch.")
    reuse_freed_memory_mb: int = Field(
        KEPT_FREED_BLOCK_MB,
        ge=1,
        le=1 << 20,
        description="The diffmm command has glibc keep freed blocks up to this many MiB for "
        "reuse (no page fault per 4 KiB page of each new large tensor) instead of returning "
        "them: faster, but at 10^5-10^6 users the kept blocks double the peak memory; 32 "
        "(glibc's own largest) halves it, at about 1.5x the recommender pass's time. The "
        "library alone leaves malloc as it is.",
    )
    device: str = Field("auto", description="'auto' (CUDA if available), 'cpu' or 'cuda[:i]'.")
    test_every_epoch: Flag = Field(
        False,
        description="Also score test at every validation, logged as 'best-on-test' for "
        "parity with the authors' protocol only; never used for selection.",
    )
    progress: Flag = Field(True, description="Show progress bars.")
    tensorboard: Flag = Field(
        False,
        description="Also write losses, validation metrics and seconds per phase to "
        "<run_dir>/tensorboard/ (needs pip install 'diffmm[tensorboard]').",
    )
    precision: Precision = Field(
        "fp32",
        description="Dtype of the denoisers' and the contrastive loss's matrix products in "
        "training: 'fp32'; 'bf16' (autocast; parameters and losses stay float32); 'auto': "
        "bf16 only where it is fast (CUDA with bf16, CPUs with AVX-512 BF16 or AMX).",
    )

    @field_validator("ks")
    @classmethod
    def _positive_ks(cls, ks: list[int]) -> list[int]:
        if not ks:
            raise ValueError("ks must be a non-empty list of positive integers")
        return sorted(set(ks))

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        name, at, k = metric.partition("@")
        if name not in USER_METRICS or not at:
            raise ValueError(
                f"metric must look like 'recall@20' ({', '.join(USER_METRICS)} at a cut-off)"
            )
        if not k.isascii() or not k.isdigit() or int(k) < 1:
            raise ValueError(f"the cut-off of metric {metric!r} must be a positive integer")
        if str(int(k)) != k:
            raise ValueError(f"write the cut-off without leading zeros: '{name}@{int(k)}'")
        if int(k) > MAX_COUNT:
            raise ValueError(f"the cut-off of metric {metric!r} must be at most {MAX_COUNT}")
        return metric
