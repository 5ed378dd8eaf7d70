"""Optional TensorBoard logging of a run (``train.tensorboard = true``).

The trainer writes, on rank 0 and into ``<run_dir>/tensorboard/``, per epoch: the losses
(``loss/<name>``), the per-epoch phases' statistics (``phase/<name>``, e.g. DiffMM's
``elbo_image``), the validation metrics (``valid/<metric>``; ``test_parity/<metric>`` with
``train.test_every_epoch``) and the seconds of every phase (``seconds/<phase>``: the
model's phases such as ``diffusion`` and ``graphs``, ``train``, ``eval``, ``checkpoint``,
``epoch``). It needs the ``tensorboard`` package: ``pip install 'diffmm[tensorboard]'``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Protocol

from diffmm.errors import ConfigError

DIR = "tensorboard"
MISSING = "train.tensorboard=true needs the tensorboard package: pip install 'diffmm[tensorboard]'"


class Writer(Protocol):
    """What is used of ``torch.utils.tensorboard.SummaryWriter``."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int) -> Any: ...
    def flush(self) -> Any: ...
    def close(self) -> Any: ...


def available() -> bool:
    """Whether the ``tensorboard`` package is installed."""
    return importlib.util.find_spec("tensorboard") is not None


def require() -> None:
    """Refuse ``train.tensorboard=true`` (one line) when the package is missing."""
    if not available():
        raise ConfigError(MISSING)


def summary_writer(log_dir: Path) -> Writer:
    """A ``SummaryWriter`` writing event files into ``log_dir``."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir))


def open_board(run_dir: Path) -> Board:
    """The :class:`Board` of the run in ``run_dir`` (``run_dir/tensorboard/``)."""
    require()
    return Board(summary_writer(run_dir / DIR))


class Board:
    """Writes the trainer's epoch records (see :class:`diffmm.trainer.Trainer`) as scalars."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    def epoch(self, record: dict[str, Any]) -> None:
        """One epoch's record: losses, phase statistics, metrics and seconds."""
        step = int(record["epoch"])
        scalars: dict[str, float] = {f"loss/{k}": v for k, v in record["losses"].items()}
        for key, value in record.get("begin_epoch", {}).items():
            if key.startswith("seconds_"):
                scalars[f"seconds/{key.removeprefix('seconds_')}"] = value
            else:
                scalars[f"phase/{key}"] = value
        for split in ("valid", "test_parity"):
            for key, value in record.get(split, {}).items():
                if isinstance(value, int | float) and key != "n_users":  # metrics only
                    scalars[f"{split}/{key}"] = value
        for key in ("train", "eval", "checkpoint"):
            if f"seconds_{key}" in record:
                scalars[f"seconds/{key}"] = record[f"seconds_{key}"]
        scalars["seconds/epoch"] = record["seconds"]
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, float(value), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
