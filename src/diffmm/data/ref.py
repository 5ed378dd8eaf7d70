"""Where a run's data come from: the ``--data`` argument, the split and table settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from diffmm.data.dataset import Dataset
from diffmm.data.options import TableOptions
from diffmm.data.synthetic import is_synthetic_spec

#: Split seed of unsplit tables when none is given (the CLI's ``--split-seed`` default).
DEFAULT_SPLIT_SEED = 2024


@dataclass(frozen=True)
class DataRef:
    """How to load a run's data again: ``--data``, the split, features and table options.

    ``table`` (column names, ``min_rating``, ``k_core``) changes the data, so it is part
    of the run; ``cache_dir`` only says where the split cache is (None: the default).
    """

    path: str
    split: str = "random"
    seed: int = DEFAULT_SPLIT_SEED
    features: str | None = None
    table: TableOptions = field(default_factory=TableOptions)
    cache_dir: str | None = None

    @classmethod
    def of(
        cls,
        data: str,
        split: str = "random",
        seed: int = DEFAULT_SPLIT_SEED,
        features: str | Path | None = None,
        table: TableOptions | None = None,
        cache_dir: str | Path | None = None,
    ) -> DataRef:
        """A reference that still works from another directory (paths made absolute)."""
        if not is_synthetic_spec(data):
            data = str(Path(data).expanduser().resolve())
        if features is not None:
            features = str(Path(features).expanduser().resolve())
        if cache_dir is not None:
            cache_dir = str(Path(cache_dir).expanduser().resolve())
        return cls(data, split, seed, features, table or TableOptions(), cache_dir)

    def moved_to(self, data: str) -> DataRef:
        """The same split, features and table options, with the data now at ``data``."""
        return DataRef.of(data, self.split, self.seed, self.features, self.table, self.cache_dir)

    def load(self) -> Dataset:
        from diffmm.data.formats import load_dataset

        return load_dataset(
            self.path,
            split=self.split,
            seed=self.seed,
            features=self.features,
            table=self.table,
            cache_dir=self.cache_dir,
        )

    def paths(self) -> list[Path]:
        """The files and folders the data are read from (and the split cache folders)."""
        from diffmm.data.split import cache_dirs

        if is_synthetic_spec(self.path):
            return []
        found = [Path(self.path)]
        if Path(self.path).is_file():
            found.append(cache_dirs(Path(self.path), self.cache_dir)[0])
        if self.features is not None:
            found.append(Path(self.features))
        return found
