"""Where a run's data come from: the ``--data`` argument and the split settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffmm.data.dataset import Dataset
from diffmm.data.synthetic import is_synthetic_spec

#: Split seed of unsplit tables when none is given (the CLI's ``--split-seed`` default).
DEFAULT_SPLIT_SEED = 2024


@dataclass(frozen=True)
class DataRef:
    """How to load a run's data again: the ``--data`` argument and the split settings."""

    path: str
    split: str = "random"
    seed: int = DEFAULT_SPLIT_SEED
    features: str | None = None

    @classmethod
    def of(
        cls, data: str, split: str = "random", seed: int = DEFAULT_SPLIT_SEED, features=None
    ) -> DataRef:
        """A reference that still works from another directory (paths made absolute)."""
        if not is_synthetic_spec(data):
            data = str(Path(data).expanduser().resolve())
        if features is not None:
            features = str(Path(features).expanduser().resolve())
        return cls(data, split, seed, features)

    def moved_to(self, data: str) -> DataRef:
        """The same split and features, with the data now at ``data``."""
        return DataRef.of(data, self.split, self.seed, self.features)

    def load(self) -> Dataset:
        from diffmm.data.formats import load_dataset

        return load_dataset(self.path, split=self.split, seed=self.seed, features=self.features)

    def paths(self) -> list[Path]:
        """The files and folders the data are read from (and the split cache next to them)."""
        if is_synthetic_spec(self.path):
            return []
        found = [Path(self.path)]
        if Path(self.path).is_file():
            found.append(Path(self.path).parent / ".diffmm_splits")
        if self.features is not None:
            found.append(Path(self.features))
        return found
