"""Datasets and their features: ``data stats``, ``features text``, ``features multihot``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from diffmm.cli.common import OUT_DIR, SEED, DataSource, split_options, user_errors


@click.group()
def data() -> None:
    """Inspect datasets."""


def _old_seed_name(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None:
        click.echo("warning: --seed is deprecated; use --split-seed", err=True)
    return value


@data.command("stats")
@click.argument("path")
@split_options
@click.option(
    "--seed", "old_seed", type=SEED, default=None, hidden=True, callback=_old_seed_name
)  # the former name of --split-seed
@user_errors
def data_stats(
    path: str,
    source: DataSource,
    old_seed: int | None,
) -> None:
    """Users, items, interactions per split, density, features, cold users/items."""
    from diffmm.data import dataset_stats, format_stats, load_dataset
    from diffmm.errors import ConfigError

    if old_seed is not None:
        given = click.get_current_context().get_parameter_source("split_seed")
        if given == click.core.ParameterSource.COMMANDLINE and old_seed != source.split_seed:
            raise ConfigError("--seed is the old name of --split-seed: give only --split-seed")
        source = replace(source, split_seed=old_seed)
    dataset = load_dataset(
        path,
        split=source.split,
        seed=source.split_seed,
        features=source.features,
        table=source.table,
        cache_dir=source.cache_dir,
    )
    click.echo(format_stats(dataset_stats(dataset)))


@click.group()
def features() -> None:
    """Compute item features from an item table (for --features DIR)."""


@features.command("text")
@click.argument("items", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--columns", required=True, help="Text columns, comma-separated (e.g. title,genres).")
@click.option("--out", "out", required=True, type=OUT_DIR, help="Folder to write into.")
@click.option("--modality", default="text", show_default=True, help="Name of the modality.")
@click.option("--batch-size", default=64, show_default=True, help="Texts encoded at a time.")
@click.option("--no-cache", is_flag=True, help="Recompute even if cached.")
@click.option("--force", is_flag=True, help="Replace the modality's file if it exists.")
@user_errors
def features_text(
    items: Path,
    columns: str,
    out: Path,
    modality: str,
    batch_size: int,
    no_cache: bool,
    force: bool,
) -> None:
    """Sentence embeddings (all-MiniLM-L6-v2, offline) of text columns of an item table."""
    from diffmm.features import (
        feature_file,
        item_texts,
        read_item_table,
        text_features,
        write_features,
    )

    feature_file(out, modality, force)  # before the embeddings are computed
    df, id_col = read_item_table(items)
    texts = item_texts(df, items, [c.strip() for c in columns.split(",") if c.strip()])
    values = text_features(texts, batch_size=batch_size, cache=not no_cache)
    path = write_features(out, modality, df[id_col].to_numpy(), values, overwrite=force)
    click.echo(f"wrote {path} ({values.shape[0]} items x {values.shape[1]})", err=True)


@features.command("multihot")
@click.argument("items", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--column", required=True, help="Column of tokens (e.g. genres).")
@click.option("--sep", default=" ", show_default=True, help="Token separator.")
@click.option("--out", "out", required=True, type=OUT_DIR, help="Folder to write into.")
@click.option("--modality", default="genre", show_default=True, help="Name of the modality.")
@click.option("--force", is_flag=True, help="Replace the modality's file if it exists.")
@user_errors
def features_multihot(
    items: Path, column: str, sep: str, out: Path, modality: str, force: bool
) -> None:
    """A multi-hot vector of the tokens of one column of an item table."""
    from diffmm.features import feature_file, multi_hot_features, read_item_table, write_features

    feature_file(out, modality, force)
    df, id_col = read_item_table(items)
    values = multi_hot_features(df, items, column, sep)
    path = write_features(out, modality, df[id_col].to_numpy(), values, overwrite=force)
    click.echo(f"wrote {path} ({values.shape[0]} items x {values.shape[1]})", err=True)
