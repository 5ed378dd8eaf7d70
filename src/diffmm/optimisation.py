"""How a run optimises: its batch, its optimiser, its parameter average, its precision.

:func:`optimisation` gathers the settings of :class:`~diffmm.config.TrainConfig` that
decide the recommender pass's steps, for the trainer:

* the batch: ``batch_size``, grown on large data to at most ``max_batches_per_epoch``
  steps per epoch, with ``lr`` scaled by the square root of the growth
  (:func:`diffmm.sampling.grown_batch`);
* Adam over the model's trainable parameters;
* with ``ema_decay``, the moving average of those parameters (:mod:`diffmm.ema`);
* the dtype of the hot matrix products (``precision``, :mod:`diffmm.precision`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from diffmm import precision as matmul_precision
from diffmm.config import TrainConfig
from diffmm.data.dataset import Dataset
from diffmm.ema import ParameterAverage
from diffmm.epoch_log import Reporter
from diffmm.models.base import Recommender
from diffmm.sampling import grown_batch, n_bpr_pairs


@dataclass
class Optimisation:
    """What :func:`optimisation` decided."""

    batch_size: int
    optimizer: torch.optim.Optimizer
    ema: ParameterAverage | None
    precision: dict[str, Any]  # matmul_precision.describe(...), for the summary
    matmul_dtype: torch.dtype


def optimisation(
    model: Recommender, dataset: Dataset, cfg: TrainConfig, report: Reporter
) -> Optimisation:
    """The run's batch, Adam, average and precision; the choices that are not the plain
    defaults are logged once through ``report``."""
    batch_size, lr_factor = grown_batch(
        n_bpr_pairs(dataset.train), cfg.batch_size, cfg.max_batches_per_epoch
    )
    if lr_factor != 1.0:
        report.info(
            f"batches of {batch_size} pairs (train.max_batches_per_epoch="
            f"{cfg.max_batches_per_epoch}), lr {cfg.lr:g} x {lr_factor:.3g}"
        )
    params = model.trainable_parameters()
    optimizer = torch.optim.Adam(params, lr=cfg.lr * lr_factor)
    ema = ParameterAverage(params, cfg.ema_decay) if cfg.ema_decay is not None else None
    info = matmul_precision.describe(cfg.precision, model.device)
    if cfg.precision != "fp32":
        report.info(matmul_precision.message(info))
    return Optimisation(batch_size, optimizer, ema, info, matmul_precision.dtype_of(info))
