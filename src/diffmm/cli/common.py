"""What the commands share: parameter types, help texts, the data options, user errors.

Nothing here imports torch or NumPy: ``diffmm --help`` stays fast.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from diffmm.errors import DiffMMError
from diffmm.logs import log_to_stderr

F = TypeVar("F", bound=Callable[..., Any])

DATA_HELP = (
    "Dataset: a folder in the authors' format (trnMat.pkl, valMat.pkl, tstMat.pkl, "
    "<modality>_feat.npy), an MMRec folder (<name>.inter), a CSV/TSV/Parquet table of "
    "user,item[,split] pairs, or 'synthetic' (built-in; 'synthetic:n_users=2000' sets sizes)."
)
GROUPS_HELP = "Lower bounds of the sparsity study's user groups (training interactions)."
MOVED_DATA_HELP = "Where the run's data are now, if they moved since training."
SPLIT_HELP = (
    "How to split tables without a split column: random (8:1:1 per user), loo "
    "(leave-one-out: last item to test, by timestamp where there is one, else at random) or "
    "temporal (leave-last-out by timestamp: needs a time column; ties by row order)."
)
COL_HELP = "Name of the table's {} column (default: one of {})."
MIN_RATING_HELP = "Keep only rows rated at least this (e.g. 4 on MovieLens); needs a rating column."
K_CORE_HELP = "Keep only users and items with at least N interactions (repeated until stable)."
CACHE_DIR_HELP = (
    "Folder for split caches [default: $DIFFMM_CACHE_DIR, else .diffmm_splits/ next to the table]."
)
SPLIT_SEED_HELP = "Seed of the split of tables without a split column."
FEATURES_HELP = (
    "Folder of extra <modality>.features.* files keyed by item id (see `diffmm features`)."
)

#: Seeds torch and NumPy both accept.
SEED = click.IntRange(0, 2**63 - 1)
RUN_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
OUT_DIR = click.Path(file_okay=False, path_type=Path)

#: ``diffmm.data.split.SPLIT_METHODS`` and ``diffmm.data.ref.DEFAULT_SPLIT_SEED``, repeated
#: here so that the CLI starts without importing the data layer (a test keeps them equal).
SPLIT_METHODS = ("random", "loo", "temporal")
DEFAULT_SPLIT_SEED = 2024
#: The table options (``diffmm.data.options.TableOptions`` fields) and their flags.
TABLE_OPTIONS = ("user_col", "item_col", "rating_col", "time_col", "min_rating", "k_core")


@dataclass(frozen=True)
class DataSource:
    """A command's data options as one argument: where the data are (``--data``, None
    where the command takes a path or none was given) and how they are split, extended
    and read. ``table`` is a ``diffmm.data.options.TableOptions``."""

    data: str | None
    split: str
    split_seed: int
    features: str | None
    table: Any
    cache_dir: str | None

    def ref(self) -> Any:
        """The ``diffmm.checkpoint.DataRef`` of these options (``data`` must be set)."""
        from diffmm.checkpoint import DataRef

        assert self.data is not None
        return DataRef.of(
            self.data, self.split, self.split_seed, self.features, self.table, self.cache_dir
        )

    def spec_fields(self) -> dict[str, Any]:
        """The options as ``diffmm.experiments.BenchmarkSpec`` fields, paths absolute."""
        assert self.data is not None
        return {
            "data": absolute_data(self.data),
            "split": self.split,
            "split_seed": self.split_seed,
            "features": absolute_features(self.features),
            "table": self.table,
            "cache_dir": absolute_features(self.cache_dir),
        }


def _bundle_data_options(fn: F) -> F:
    """Pass the data options to ``fn`` as one ``source`` (a :class:`DataSource`) argument."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from diffmm.data.options import TableOptions
        from diffmm.errors import DataError

        given = {name: kwargs.pop(name) for name in TABLE_OPTIONS}
        try:
            table = TableOptions(**given)
        except DataError as err:
            raise click.UsageError(str(err)) from None
        kwargs["source"] = DataSource(
            kwargs.pop("data", None),
            kwargs.pop("split"),
            kwargs.pop("split_seed"),
            kwargs.pop("features"),
            table,
            kwargs.pop("cache_dir"),
        )
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def split_options(fn: F) -> F:
    """How a dataset is split, extended and read: ``--split``, ``--split-seed``,
    ``--features``, the table options and ``--cache-dir``, passed (with ``--data`` if the
    command has it) as one ``source`` argument, a :class:`DataSource`.
    """
    columns = [
        ("--user-col", "user", "user, user_id, userID, reviewerID"),
        ("--item-col", "item", "item, item_id, itemID, movieId, product_id, asin"),
        ("--rating-col", "rating", "rating, score, value, stars, preference"),
        ("--time-col", "time", "timestamp, time, ts"),
    ]
    options = [
        click.option(
            "--split",
            default="random",
            show_default=True,
            type=click.Choice(SPLIT_METHODS),
            help=SPLIT_HELP,
        ),
        click.option(
            "--split-seed",
            default=DEFAULT_SPLIT_SEED,
            show_default=True,
            type=SEED,
            help=SPLIT_SEED_HELP,
        ),
        click.option(
            "--features",
            type=click.Path(exists=True, file_okay=False),
            default=None,
            help=FEATURES_HELP,
        ),
        *(
            click.option(flag, default=None, metavar="NAME", help=COL_HELP.format(role, names))
            for flag, role, names in columns
        ),
        click.option("--min-rating", type=float, default=None, help=MIN_RATING_HELP),
        click.option(
            "--k-core", type=click.IntRange(min=1), default=None, metavar="N", help=K_CORE_HELP
        ),
        click.option(
            "--cache-dir", type=click.Path(file_okay=False), default=None, help=CACHE_DIR_HELP
        ),
    ]
    fn = _bundle_data_options(fn)
    for option in reversed(options):
        fn = option(fn)
    return fn


def data_options(*, required: bool) -> Callable[[F], F]:
    """``--data`` (required or not) and the :func:`split_options`."""

    def decorate(fn: F) -> F:
        return click.option("--data", "data", required=required, default=None, help=DATA_HELP)(
            split_options(fn)
        )

    return decorate


def user_errors(fn: F) -> F:
    """Run a command: a DiffMMError (or an unreadable path, or exhausted memory) becomes one
    line and exit status 2.

    The command runs under the malloc setting of
    :func:`diffmm.utils.keep_freed_memory_for_reuse`, applied here rather than in the group
    so that ``diffmm COMMAND --help`` does not import torch. The library's log lines
    (progress at INFO, warnings) go to stderr, one line each (:func:`diffmm.logs.log_to_stderr`;
    under torchrun rank 0's only).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from diffmm.utils import keep_freed_memory_for_reuse

        log_to_stderr()
        keep_freed_memory_for_reuse()
        try:
            return fn(*args, **kwargs)
        except DiffMMError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)
        except OSError as err:  # a path the user gave cannot be read or written
            where = f"{err.filename}: " if err.filename else ""
            click.echo(f"error: {where}{err.strerror or err}", err=True)
            sys.exit(2)
        except Exception as err:
            if not _out_of_memory(err):
                raise
            click.echo(
                "error: out of memory: the data or the settings (embedding_dim, batch sizes, "
                "k) need more memory than this machine has; reduce them",
                err=True,
            )
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def _out_of_memory(err: Exception) -> bool:
    """Whether ``err`` is host (MemoryError) or device (torch.OutOfMemoryError) exhaustion."""
    torch = sys.modules.get("torch")
    return isinstance(err, MemoryError) or (
        torch is not None and isinstance(err, torch.OutOfMemoryError)
    )


def group_bounds(groups: str) -> list[int]:
    """``--groups 0,5,10`` as sorted distinct integers."""
    from diffmm.errors import ConfigError

    try:
        return sorted({int(g) for g in groups.split(",")})
    except ValueError:
        raise ConfigError(f"--groups {groups!r}: give integers such as 0,5,10,20") from None


#: A bare ``--seeds N`` above this is refused: it was meant as a seed, not N runs.
MAX_SEED_COUNT = 100

#: ``--jobs`` of ``benchmark`` and ``sweep``: how many training runs go side by side.
jobs_option = click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Training runs at a time, each in its own process with its share of the cores "
    "as threads (OMP_NUM_THREADS, unless you set it); finished runs are reused.",
)


def seed_list(seeds: str) -> list[int]:
    """``--seeds``: a count (3 = 421,422,423) or a comma-separated list."""
    from diffmm.errors import ConfigError

    try:
        if "," in seeds:
            chosen = [int(s) for s in seeds.split(",") if s.strip()]
        else:
            chosen = [421 + i for i in range(int(seeds))]
    except ValueError:
        raise ConfigError(f"--seeds {seeds!r}: give a count (3) or a list (421,422)") from None
    if not chosen or not all(0 <= s < 2**63 for s in chosen):
        raise ConfigError(f"--seeds {seeds!r}: give a count >= 1 or seeds in [0, 2**63)")
    if "," not in seeds and len(chosen) > MAX_SEED_COUNT:  # surely a seed, not a count
        raise ConfigError(
            f"--seeds {seeds}: a bare number is a count of seeds (3 = 421,422,423), at most "
            f"{MAX_SEED_COUNT}; for the one seed {seeds} write --seeds {seeds},"
        )
    return chosen


def check_writable_path(path: Path) -> None:
    """A clear error when a parent of an output path is a file."""
    from diffmm.errors import ConfigError

    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(
                    f"{path}: {parent} is a file, not a directory; choose another path"
                )
            return


def absolute_data(data: str) -> str:
    """``--data`` as an absolute path (the built-in ``synthetic[:...]`` spec as it is)."""
    from diffmm.data import is_synthetic_spec

    return data if is_synthetic_spec(data) else str(Path(data).expanduser().resolve())


def absolute_features(features: str | None) -> str | None:
    """``--features`` as an absolute path, if given."""
    return str(Path(features).resolve()) if features else None


FORCE_HELP = "Replace the report's files in --out if they exist."


def refuse_existing(out: Path, names: list[str], force: bool) -> None:
    """Refuse to write ``names`` into ``out`` where one exists, unless ``force``: nothing
    the user wrote is replaced unasked."""
    from diffmm.errors import ConfigError

    for name in names:
        if (out / name).exists() and not force:
            raise ConfigError(f"{out / name} exists; pass --force to replace it, or another --out")
