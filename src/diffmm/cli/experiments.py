"""Experiments over runs: ``benchmark``, ``sweep``, ``report sparsity|compare``, ``explain``."""

from __future__ import annotations

from pathlib import Path

import click

from diffmm.cli.common import (
    FORCE_HELP,
    GROUPS_HELP,
    MOVED_DATA_HELP,
    OUT_DIR,
    RUN_DIR,
    DataSource,
    data_options,
    group_bounds,
    jobs_option,
    refuse_existing,
    seed_list,
    user_errors,
)


@click.command()
@data_options(required=True)
@click.option(
    "--models", required=True, help="Comma-separated model names, e.g. diffmm,lightgcn,vbpr."
)
@click.option(
    "--seeds",
    default="3",
    show_default=True,
    help="A count up to 100 (3 = 421,422,423) or a list (421,424 or 421,).",
)
@click.option(
    "--preset", default=None, help="Applied to the models that have a preset of that name."
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="train.KEY for all models, MODEL.KEY or MODEL.train.KEY for one, KEY for those "
    "that have it.",
)
@click.option("--out", "out", required=True, type=OUT_DIR, help="Folder for runs, tables, plots.")
@click.option("--groups", default="0,5,10,20", show_default=True, help=GROUPS_HELP)
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@jobs_option
@user_errors
def benchmark(
    models: str,
    seeds: str,
    preset: str | None,
    overrides: tuple[str, ...],
    out: Path,
    source: DataSource,
    groups: str,
    no_plots: bool,
    jobs: int,
) -> None:
    """Train several models over seeds; write a Markdown/CSV table, plots, a sparsity study."""
    from diffmm.experiments import BenchmarkSpec, markdown_table, run_benchmark

    seeds_chosen = seed_list(seeds)
    spec = BenchmarkSpec(
        models=[m.strip() for m in models.split(",") if m.strip()],
        seeds=seeds_chosen,
        preset=preset,
        sets=list(overrides),
        **source.spec_fields(),
    )
    table = run_benchmark(
        spec,
        out,
        plots=not no_plots,
        groups=group_bounds(groups),
        jobs=jobs,
    )
    click.echo(markdown_table(table))
    click.echo(f"\nwritten to {out}/results.md, results.csv", err=True)


@click.command()
@data_options(required=True)
@click.option("--model", "model", required=True, help="The model to sweep.")
@click.option(
    "--grid",
    "grid",
    multiple=True,
    required=True,
    metavar="KEY=V1,V2",
    help="Values of one setting (repeatable); the authors' flag names work too (ssl_reg, temp).",
)
@click.option(
    "--seeds", default="1", show_default=True, help="A count up to 100 (1 = 421) or a list (421,)."
)
@click.option("--preset", default=None, help="Named settings the grid starts from.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Fixed settings.")
@click.option("--out", "out", required=True, type=OUT_DIR, help="Folder for runs, table, plot.")
@jobs_option
@user_errors
def sweep(
    model: str,
    grid: tuple[str, ...],
    seeds: str,
    preset: str | None,
    overrides: tuple[str, ...],
    out: Path,
    source: DataSource,
    jobs: int,
) -> None:
    """Train a model over a grid of settings; choose on validation, report test too."""
    from diffmm.experiments import BenchmarkSpec, parse_grid, run_sweep

    spec = BenchmarkSpec(
        models=[model],
        seeds=seed_list(seeds),
        preset=preset,
        sets=list(overrides),
        **source.spec_fields(),
    )
    spec.validate()
    run_sweep(spec, parse_grid(grid), out, jobs=jobs)
    click.echo((out / "sweep.md").read_text())


@click.command()
@click.argument("run_dir", type=RUN_DIR)
@click.option("--user", "users", multiple=True, help="Raw user id (repeatable).")
@click.option(
    "--sample",
    default=0,
    type=click.IntRange(min=0),
    help="Also explain this many users drawn at random.",
)
@click.option(
    "--top",
    default=10,
    show_default=True,
    type=click.IntRange(min=1),
    help="Denoised items shown per modality.",
)
@click.option("--out", "out", type=OUT_DIR, default=None, help="Folder for the PNGs and table.")
@click.option("--force", is_flag=True, help=FORCE_HELP)
@click.option("--data", default=None, help=MOVED_DATA_HELP)
@user_errors
def explain(
    run_dir: Path,
    users: tuple[str, ...],
    sample: int,
    top: int,
    out: Path | None,
    force: bool,
    data: str | None,
) -> None:
    """What DiffMM's diffusion adds to users' modality graphs, with feature similarities."""
    from diffmm.errors import ConfigError
    from diffmm.explain import explain_user, format_explanation, plot_explanation, sample_users
    from diffmm.inference import load
    from diffmm.utils import atomic_write_bytes, file_stem

    rec = load(run_dir, data=data, device="cpu")
    chosen: list = list(users) + (sample_users(rec, sample) if sample else [])
    if not chosen:
        raise ConfigError("name a user with --user ID, or --sample N users")
    explained = [explain_user(rec, user, top) for user in chosen]
    # a user id is data, not a path: it names its file only through file_stem
    pngs = [f"explain_user_{file_stem(str(exp['user']))}.png" for exp in explained]
    if out is not None:
        refuse_existing(out, ["explain.md", *pngs], force)
    parts = []
    for exp, png in zip(explained, pngs, strict=True):
        parts.append(format_explanation(exp))
        if out is not None:
            plot_explanation(exp, out / png)
            parts.append(f"\n![user {exp['user']}]({png})")
    text = "\n\n".join(parts) + "\n"
    if out is not None:
        atomic_write_bytes(out / "explain.md", text.encode())
    click.echo(text)


@click.group()
def report() -> None:
    """Reports over trained runs."""


@report.command("sparsity")
@click.argument("run_dirs", nargs=-1, required=True, type=RUN_DIR)
@click.option("--out", "out", required=True, type=OUT_DIR, help="Folder for the table and plot.")
@click.option("--groups", default="0,5,10,20", show_default=True, help=GROUPS_HELP)
@click.option("--force", is_flag=True, help=FORCE_HELP)
@user_errors
def report_sparsity(run_dirs: tuple[Path, ...], out: Path, groups: str, force: bool) -> None:
    """Test metrics per group of users by number of training interactions (paper Fig. 2)."""
    from diffmm.checkpoint import RunDir
    from diffmm.experiments import sparsity_study, write_sparsity

    refuse_existing(out, ["sparsity.csv", "sparsity.md", "sparsity.png"], force)
    bounds = group_bounds(groups)
    runs: dict[str, list[str]] = {}
    for run_dir in run_dirs:
        model = RunDir(run_dir).read_config().model
        runs.setdefault(model, []).append(str(run_dir))
    table = sparsity_study(runs, bounds)
    out.mkdir(parents=True, exist_ok=True)
    write_sparsity(table, out)
    click.echo((out / "sparsity.md").read_text())


@report.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=RUN_DIR)
@click.option(
    "--split",
    default="test",
    show_default=True,
    type=click.Choice(["test", "valid"]),
    help="The split the runs are scored on.",
)
@click.option(
    "--metric",
    "metrics",
    multiple=True,
    help="Per-user metric at a cut-off, e.g. recall@20 (repeatable or a comma list) "
    "[default: the first run's validation metric].",
)
@click.option(
    "--boot",
    default=10_000,
    show_default=True,
    type=click.IntRange(min=1, max=1_000_000),
    help="Bootstrap resamples (and random sign patterns of the permutation test).",
)
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--out", "out", type=OUT_DIR, default=None, help="Folder for compare.md/.json.")
@click.option("--force", is_flag=True, help=FORCE_HELP)
@click.option("--data", default=None, help=MOVED_DATA_HELP)
@user_errors
def report_compare(
    run_dirs: tuple[Path, ...],
    split: str,
    metrics: tuple[str, ...],
    boot: int,
    seed: int,
    out: Path | None,
    force: bool,
    data: str | None,
) -> None:
    """Is the difference real? Per-user paired differences from the first run (the
    reference): mean, 95% bootstrap CI, permutation and t-test p-values."""
    from diffmm.compare import compare_runs, markdown, write_comparison

    if out is not None:
        refuse_existing(out, ["compare.md", "compare.json"], force)
    chosen = [m.strip() for given in metrics for m in given.split(",") if m.strip()]
    rows = compare_runs(
        [str(r) for r in run_dirs], split, chosen or None, n_boot=boot, seed=seed, data=data
    )
    if out is not None:
        write_comparison(rows, out, split)
    click.echo(markdown(rows, split))
