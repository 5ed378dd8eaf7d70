"""diffmm: multi-modal recommendation with DiffMM (Jiang et al., ACM MM 2024).

    import diffmm
    run = diffmm.train("lightgcn", "synthetic", epochs=5)   # -> diffmm.Run
    rec = diffmm.load(run.run_dir)                           # -> TrainedRecommender
    table = diffmm.benchmark("synthetic", ["mf", "lightgcn"], seeds=2, out="bench")

Importing the package is light: torch and the data layer load on first use.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffmm.errors import ConfigError, DataError, DiffMMError, UnknownIdError

if TYPE_CHECKING:
    from diffmm.api import Run, benchmark
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

_API = {"Run", "benchmark"}


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


class _TrainEntry:
    """``diffmm.train(model, data, ...)``: train from Python (:func:`diffmm.api.train`).

    The training loop's module, :mod:`diffmm.train`, has the same name; its attributes
    (``diffmm.train.Trainer``, ...) are reached through this object, so both
    ``diffmm.train(...)`` and ``import diffmm.train`` keep working.
    """

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Run:
        from diffmm.api import train

        return train(*args, **kwargs)

    @property
    def __signature__(self) -> Any:
        import inspect

        from diffmm.api import train

        return inspect.signature(train)

    def __getattr__(self, name: str) -> Any:
        return getattr(importlib.import_module("diffmm.train"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(importlib.import_module("diffmm.train"), name, value)

    def __delattr__(self, name: str) -> None:
        delattr(importlib.import_module("diffmm.train"), name)

    def __repr__(self) -> str:
        return "<function diffmm.train (training loop: module diffmm.train)>"


_TRAIN = _TrainEntry()


class _Package(types.ModuleType):
    """The package's module type: ``diffmm.train`` stays the function when the submodule
    of that name is imported (the import system then sets the attribute; it is ignored,
    the submodule staying in ``sys.modules``)."""

    @property
    def train(self) -> _TrainEntry:
        return _TRAIN

    @train.setter
    def train(self, value: Any) -> None:
        pass


sys.modules[__name__].__class__ = _Package
