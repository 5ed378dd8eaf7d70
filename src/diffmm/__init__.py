"""diffmm: multi-modal recommendation with DiffMM (Jiang et al., ACM MM 2024)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from diffmm.errors import ConfigError, DataError, DiffMMError, UnknownIdError

if TYPE_CHECKING:
    from diffmm.inference import TrainedRecommender

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "DiffMMError", "UnknownIdError", "__version__", "load"]


def load(run_dir: str | Path, data: str | None = None, device: str = "auto") -> TrainedRecommender:
    """Load the best model of a training run for inference (see :func:`diffmm.inference.load`)."""
    from diffmm.inference import load as load_run

    return load_run(run_dir, data=data, device=device)
