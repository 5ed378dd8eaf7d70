"""The trainer's human-readable lines (one per epoch, one per epoch phase, metrics as text)
and :class:`Reporter`, which sends them to the ``diffmm.trainer`` logger (rank 0 only)
and, with ``train.tensorboard``, the epochs' scalars to TensorBoard."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from diffmm import tensorboard_log
from diffmm.models.base import Recommender

logger = logging.getLogger("diffmm.trainer")


def metrics_text(metrics: dict[str, float], keys: list[str]) -> str:
    """``"recall@20 0.1234 ndcg@20 0.0567"``: the ``keys`` that ``metrics`` holds."""
    return " ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics)


def loss_text(value: float) -> str:
    """A loss with 4 significant digits: ``0.6931``, ``12.35``, ``3.2e-06`` (never ``0.0000``
    for a small but non-zero term such as an L2 penalty)."""
    return f"{value:.4g}"


def epoch_line(record: dict[str, Any], metric: str) -> str:
    """One epoch's log record (see :class:`diffmm.trainer.Trainer`) as one line: losses,
    validation ``metric`` and NDCG at its cut-off (``*`` if improved), times."""
    parts = [f"epoch {record['epoch']:>3}"]
    parts.append(" ".join(f"{k} {loss_text(v)}" for k, v in record["losses"].items()))
    keys = [metric, f"ndcg@{metric.partition('@')[2]}"]
    if "valid" in record:
        improved = " *" if record["improved"] else ""
        parts.append("valid " + metrics_text(record["valid"], keys) + improved)
    if "test_parity" in record:
        parts.append("test(parity) " + metrics_text(record["test_parity"], keys))
    parts.append(
        f"{record['seconds']:.1f}s (begin {record['seconds_begin_epoch']:.1f}, "
        f"train {record['seconds_train']:.1f}, eval {record['seconds_eval']:.1f})"
    )
    return " | ".join(parts)


def phase_line(epoch: int, name: str, seconds: float, stats: dict[str, float]) -> str:
    """``"epoch   3 diffusion 7.7s (elbo_image 0.12 msi_image 0.03)"``: one per-epoch phase
    (see :meth:`diffmm.models.base.Recommender.epoch_phases`) when it ends."""
    shown = " ".join(
        f"{k} {loss_text(v)}" for k, v in stats.items() if not k.startswith("seconds_")
    )
    return f"epoch {epoch:>3} {name} {seconds:.1f}s" + (f" ({shown})" if shown else "")


def has_epoch_work(model: Recommender) -> bool:
    """Whether ``model`` overrides the default (empty) per-epoch work of the base class."""
    kind = type(model)
    return (
        kind.epoch_phases is not Recommender.epoch_phases
        or kind.begin_epoch is not Recommender.begin_epoch
    )


class Reporter:
    """Where a trainer's lines and scalars go.

    Args:
        main: whether this process logs (rank 0, or the only process).
        board_dir: the run directory to write ``tensorboard/`` into (opened at the first
            epoch's record, after its checkpoint: a run that fails before it leaves no
            files behind); None: no TensorBoard.
        phases: log a line per epoch phase; off for a model without per-epoch work
            (see :func:`has_epoch_work`).
    """

    def __init__(self, main: bool, board_dir: Path | None = None, phases: bool = True) -> None:
        self.main = main
        self.phases = phases
        self.board_dir = board_dir if main else None
        self.board: tensorboard_log.Board | None = None

    def info(self, line: str) -> None:
        if self.main:
            logger.info(line)

    def warning(self, line: str) -> None:
        if self.main:
            logger.warning(line)

    def phase(self, epoch: int, name: str, seconds: float, stats: dict[str, float]) -> None:
        if self.phases:
            self.info(phase_line(epoch, name, seconds, stats))

    def epoch(self, record: dict[str, Any], metric: str) -> None:
        self.info(epoch_line(record, metric))
        if self.board is None and self.board_dir is not None:
            self.board = tensorboard_log.open_board(self.board_dir)
        if self.board is not None:
            self.board.epoch(record)

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.board is not None:
            self.board.close()
            self.board = None
