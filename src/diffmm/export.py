"""Export every user's top-K recommendations to CSV/TSV or Parquet, in batches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from diffmm.checkpoint import RunDir
from diffmm.errors import ConfigError
from diffmm.inference import TrainedRecommender
from diffmm.utils import atomic_write

FORMATS = {".csv": ",", ".tsv": "\t", ".parquet": None}


def check_export_path(out: str | Path, run_dir: str | Path, overwrite: bool = False) -> None:
    """Refuse an output that exists (unless ``overwrite``) or is one of the run's own files.

    The run's files and its data's files (the table, the data folder, the features
    folder, the split cache) are refused even with ``overwrite``.
    """
    out = Path(out)
    target = out.resolve()
    for protected in RunDir(run_dir).protected_paths():
        if target == protected or protected in target.parents:
            raise ConfigError(
                f"--out {out} is {'inside ' if target != protected else ''}{protected}, part "
                "of the run or of the data it was trained on; write somewhere else"
            )
    if out.exists() and not overwrite:
        raise ConfigError(f"--out {out} exists; pass --force to replace it, or another --out")


def export_top_k(
    rec: TrainedRecommender,
    out: str | Path,
    k: int = 20,
    batch_size: int = 1024,
    exclude_seen: bool = True,
    progress: bool = True,
    overwrite: bool = False,
) -> int:
    """Write ``user, rank, item, score`` rows (rank 1 = best) for every user; returns the count.

    Users are scored ``batch_size`` at a time and each batch is appended to the file, so
    memory does not grow with the number of users. The file appears atomically when
    complete. An existing ``out`` is replaced only with ``overwrite``; the run's own files
    and its data's are never replaced (:func:`check_export_path`).
    """
    out = Path(out)
    check_export_path(out, rec.metadata["run_dir"], overwrite)
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"{out}: unsupported output format; use one of {', '.join(FORMATS)}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    rec.check_k(k)
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ConfigError(
                "Parquet output needs pyarrow: pip install 'diffmm[parquet]', or write .csv"
            ) from None
    count = 0

    def frames() -> Iterator[pd.DataFrame]:
        nonlocal count
        bar = tqdm(
            total=rec.n_users, desc="export", unit="user", disable=None if progress else True
        )
        for users, items, scores in rec.iter_all(k, batch_size, exclude_seen):
            keep = ~np.isneginf(scores)
            ranks = np.broadcast_to(np.arange(1, scores.shape[1] + 1), scores.shape)
            frame = pd.DataFrame(
                {
                    "user": np.repeat(users, keep.sum(1)),
                    "rank": ranks[keep],
                    "item": items[keep],
                    "score": scores[keep],
                }
            )
            count += len(frame)
            bar.update(len(users))
            yield frame
        bar.close()

    def write(fh: BinaryIO) -> None:
        if suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            writer = None
            for frame in frames():
                table = pa.Table.from_pandas(frame, preserve_index=False)
                writer = writer or pq.ParquetWriter(fh, table.schema)
                writer.write_table(table)
            if writer is not None:
                writer.close()
        else:
            for i, frame in enumerate(frames()):
                frame.to_csv(fh, sep=FORMATS[suffix], index=False, header=i == 0)

    atomic_write(out, write)
    return count
