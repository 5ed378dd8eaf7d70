"""Export a trained run: every user's top-K recommendations (CSV/TSV or Parquet, in
batches), or the final user and item representations (``.npz`` or Parquet) for a
retrieval system."""

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
#: Formats of :func:`export_embeddings`.
EMBEDDING_FORMATS = (".npz", ".parquet")


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
                f"{out} is {'inside ' if target != protected else ''}{protected}, part "
                "of the run or of the data it was trained on; write somewhere else"
            )
    if out.exists() and not overwrite:
        raise ConfigError(
            f"{out} exists; replace it with overwrite=True (--force on the command line), "
            "or write somewhere else"
        )


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
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    rec.check_k(k)
    if suffix == ".parquet":
        _require_pyarrow(".csv")
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


def _require_pyarrow(instead: str) -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"Parquet output needs pyarrow: pip install 'diffmm[parquet]', or write {instead}"
        ) from None


def _plain_ids(ids: np.ndarray) -> np.ndarray:
    """Raw ids as integers or strings (never Python objects, which ``.npz`` would pickle)."""
    ids = np.asarray(ids)
    return ids.astype(str) if ids.dtype == object else ids


def export_embeddings(rec: TrainedRecommender, out: str | Path, overwrite: bool = False) -> int:
    """Write the final user and item representations of ``rec`` (float32); returns the dim.

    A model scores user ``u`` and item ``i`` as the dot product of their rows, so the
    vectors go straight into a maximum-inner-product index. Formats, by suffix:

    * ``.npz``: arrays ``user_ids`` (n_users), ``user_embeddings`` (n_users, d),
      ``item_ids`` (n_items) and ``item_embeddings`` (n_items, d); read with ``np.load``
      (no pickle needed);
    * ``.parquet``: one row per user and per item, columns ``kind`` ("user" or "item"),
      ``id`` (the raw id; strings if users and items have ids of different types) and
      ``embedding`` (a fixed-size list of float32).

    The file appears atomically; the same rules as :func:`export_top_k` guard ``out``.
    """
    out = Path(out)
    check_export_path(out, rec.metadata["run_dir"], overwrite)
    suffix = out.suffix.lower()
    if suffix not in EMBEDDING_FORMATS:
        raise ConfigError(
            f"{out}: unsupported embeddings format; use one of {', '.join(EMBEDDING_FORMATS)}"
        )
    users = rec.user_emb.detach().float().cpu().numpy()
    items = rec.item_emb.detach().float().cpu().numpy()
    user_ids, item_ids = _plain_ids(rec.user_ids), _plain_ids(rec.item_ids)
    if suffix == ".npz":

        def write(fh: BinaryIO) -> None:
            np.savez(
                fh,
                user_ids=user_ids,
                user_embeddings=users,
                item_ids=item_ids,
                item_embeddings=items,
            )

    else:
        _require_pyarrow(".npz")
        import pyarrow as pa
        import pyarrow.parquet as pq

        if user_ids.dtype.kind != item_ids.dtype.kind:
            user_ids, item_ids = user_ids.astype(str), item_ids.astype(str)
        dim = users.shape[1]
        vectors = np.concatenate([users, items]).reshape(-1)
        table = pa.table(
            {
                "kind": pa.array(["user"] * len(users) + ["item"] * len(items)),
                "id": pa.array(np.concatenate([user_ids, item_ids]).tolist()),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors), dim),
            }
        )

        def write(fh: BinaryIO) -> None:
            pq.write_table(table, fh)

    atomic_write(out, write)
    return int(users.shape[1])
