"""The ``diffmm`` command.

Errors caused by the user's input (:class:`diffmm.errors.DiffMMError`) are printed as
one message and exit with status 2, never as a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from diffmm.errors import DiffMMError

DATA_HELP = (
    "Dataset: a folder in the authors' format (trnMat.pkl, valMat.pkl, tstMat.pkl, "
    "<modality>_feat.npy), an MMRec folder (<name>.inter), a CSV/TSV/Parquet table of "
    "user,item[,split] pairs, or 'synthetic' (built-in; 'synthetic:n_users=2000' sets sizes)."
)


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a DiffMMError into a one-line message and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DiffMMError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="diffmm")
def main() -> None:
    """Multi-modal recommendation with DiffMM (Jiang et al., ACM MM 2024).

    \b
    Quick start:
      diffmm demo                                   # DiffMM vs LightGCN on synthetic data
      diffmm data stats ../shared/data/tiktok       # what is in a dataset
      diffmm train --model lightgcn --data ../shared/data/baby
      diffmm train --model diffmm --data ../shared/data/tiktok --preset tiktok
      diffmm config --model diffmm --preset tiktok  # every setting, its default and meaning
    """
    from diffmm.utils import keep_freed_memory_for_reuse

    keep_freed_memory_for_reuse()


def _default_run_dir(model: str, data_name: str) -> Path:
    return Path("runs") / f"{model}-{data_name}-{time.strftime('%Y%m%d-%H%M%S')}"


@main.command()
@click.option("--model", "model", default=None, help="Model name: mf, lightgcn or diffmm.")
@click.option("--data", "data", required=True, help=DATA_HELP)
@click.option("--preset", default=None, help="Named settings, e.g. tiktok, baby, sports (DiffMM).")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML file: model = '...', [train] and [<model>] sections.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override one setting, e.g. --set train.epochs=5 --set cl_weight=0.1 (repeatable).",
)
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run directory for config, log and checkpoints [default: runs/<model>-<data>-<time>].",
)
@click.option("--split", default="random", help="How to split unsplit tables: random or loo.")
@_user_errors
def train(
    model: str | None,
    data: str,
    preset: str | None,
    config_file: Path | None,
    overrides: tuple[str, ...],
    out: Path | None,
    split: str,
) -> None:
    """Train a model with validation-based selection; test is scored once at the end."""
    from diffmm.config import resolve_config
    from diffmm.data import load_dataset
    from diffmm.train import train as run_training

    run_config = resolve_config(model, preset, config_file, overrides)
    dataset = load_dataset(data, split=split, seed=run_config.train.seed)
    run_dir = out or _default_run_dir(run_config.model, dataset.name)
    click.echo(f"training {run_config.model} on {dataset.name} -> {run_dir}", err=True)
    summary = run_training(
        run_config, dataset, run_dir, log=lambda line: click.echo(line, err=True)
    )
    click.echo(json.dumps(summary, indent=2, default=float))


@main.command("config")
@click.option("--model", "model", default="diffmm", show_default=True, help="Model name.")
@click.option("--preset", default=None, help="Show the settings of a preset.")
@_user_errors
def show_config(model: str, preset: str | None) -> None:
    """Print every setting of a model with its value and meaning (TOML)."""
    from diffmm.config import TrainConfig, resolve_config
    from diffmm.models import get_model_class

    resolved = resolve_config(model, preset)
    sections = [
        ("train", TrainConfig, resolved.train),
        (resolved.model, get_model_class(resolved.model).Config, resolved.params),
    ]
    click.echo(f'model = "{resolved.model}"')
    if preset:
        click.echo(f'preset = "{preset}"')
    for title, cls, values in sections:
        click.echo(f"\n[{title}]")
        for name, field in cls.model_fields.items():
            click.echo(f"# {field.description}")
            click.echo(f"{name} = {json.dumps(getattr(values, name))}")


@main.group()
def data() -> None:
    """Inspect datasets."""


@data.command("stats")
@click.argument("path")
@click.option("--split", default="random", help="How to split unsplit tables: random or loo.")
@click.option("--seed", default=2024, show_default=True, help="Seed of the split.")
@_user_errors
def data_stats(path: str, split: str, seed: int) -> None:
    """Users, items, interactions per split, density, features, cold users/items."""
    from diffmm.data import dataset_stats, format_stats, load_dataset

    click.echo(format_stats(dataset_stats(load_dataset(path, split=split, seed=seed))))


@main.command()
@click.option("--epochs", default=None, type=int, help="Epochs per model (default: preset).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/demo"))
@_user_errors
def demo(epochs: int | None, out: Path) -> None:
    """Train DiffMM and LightGCN on the built-in synthetic data; print metrics and picks."""
    from diffmm.demo import run_demo

    run_demo(out, epochs=epochs)


if __name__ == "__main__":  # pragma: no cover
    main()
