"""diffmm: multi-modal recommendation with DiffMM (Jiang et al., ACM MM 2024).

    import diffmm
    run = diffmm.train("lightgcn", "synthetic", epochs=5)   # -> diffmm.Run
    rec = diffmm.load(run.run_dir)                           # -> TrainedRecommender
    table = diffmm.benchmark("synthetic", ["mf", "lightgcn"], seeds=2, out="bench")

Importing the package is light: torch and the data layer load on first use.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffmm.errors import ConfigError, DataError, DiffMMError, UnknownIdError

if TYPE_CHECKING:
    from diffmm.api import Run, benchmark, train
    from diffmm.data.dataset import Dataset
    from diffmm.inference import TrainedRecommender

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "DiffMMError",
    "Run",
    "UnknownIdError",
    "__version__",
    "benchmark",
    "load",
    "train",
]

_API = {"Run", "benchmark", "train"}  # from diffmm.api, imported on first use


def load(
    run_dir: str | Path, data: str | Dataset | None = None, device: str = "auto"
) -> TrainedRecommender:
    """Load the best model of a training run for inference (see :func:`diffmm.inference.load`)."""
    from diffmm.inference import load as load_run

    return load_run(run_dir, data=data, device=device)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module("diffmm.api"), name)
    raise AttributeError(f"module 'diffmm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
