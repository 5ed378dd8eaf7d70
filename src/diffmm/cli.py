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


GROUPS_HELP = "Lower bounds of the sparsity study's user groups (training interactions)."


def _group_bounds(groups: str) -> list[int]:
    from diffmm.errors import ConfigError

    try:
        return sorted({int(g) for g in groups.split(",")})
    except ValueError:
        raise ConfigError(f"--groups {groups!r}: give integers such as 0,5,10,20") from None


#: Seeds torch and NumPy both accept.
SEED = click.IntRange(0, 2**63 - 1)
RUN_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
OUT_DIR = click.Path(file_okay=False, path_type=Path)
MOVED_DATA_HELP = "Where the run's data are now, if they moved since training."


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a DiffMMError into a one-line message and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
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

    return wrapper


def _out_of_memory(err: Exception) -> bool:
    """Whether ``err`` is host (MemoryError) or device (torch.OutOfMemoryError) exhaustion."""
    torch = sys.modules.get("torch")
    return isinstance(err, MemoryError) or (
        torch is not None and isinstance(err, torch.OutOfMemoryError)
    )


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


def _check_writable_path(path: Path) -> None:
    """A clear error when a parent of an output path is a file."""
    from diffmm.errors import ConfigError

    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(
                    f"{path}: {parent} is a file, not a directory; choose another path"
                )
            return


def _absolute_data(data: str) -> str:
    """``--data`` as an absolute path (the built-in ``synthetic[:...]`` spec as it is)."""
    from diffmm.data import is_synthetic_spec

    return data if is_synthetic_spec(data) else str(Path(data).expanduser().resolve())


def _default_run_dir(model: str, data_name: str) -> Path:
    return Path("runs") / f"{model}-{data_name}-{time.strftime('%Y%m%d-%H%M%S')}"


@main.command()
@click.option(
    "--model",
    "model",
    default=None,
    help="Model name (see `diffmm models`): mf, lightgcn, diffmm, vbpr, ...",
)
@click.option("--data", "data", default=None, help=DATA_HELP)
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
@click.option(
    "--split-seed",
    default=2024,
    show_default=True,
    type=SEED,
    help="Seed of the split of unsplit tables.",
)
@click.option(
    "--features",
    "features",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Folder of extra <modality>.features.* files keyed by item id (diffmm features).",
)
@click.option(
    "--resume",
    "resume",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Continue the interrupted run in this directory from its last checkpoint "
    "(its configuration and data are read from there).",
)
@_user_errors
def train(
    model: str | None,
    data: str | None,
    preset: str | None,
    config_file: Path | None,
    overrides: tuple[str, ...],
    out: Path | None,
    split: str,
    split_seed: int,
    features: str | None,
    resume: Path | None,
) -> None:
    """Train a model with validation-based selection; test is scored once at the end."""
    from diffmm.checkpoint import DataRef
    from diffmm.config import resolve_config
    from diffmm.errors import ConfigError
    from diffmm.train import train as run_training

    if resume is not None:
        _refuse_split_options_on_resume(resume)
        run_config, dataset, data_ref = _resume_inputs(
            resume, model, data, preset, config_file, overrides, out
        )
        run_dir = resume
    else:
        if data is None:
            raise ConfigError("--data is required (or --resume RUN_DIR to continue a run)")
        run_config = resolve_config(model, preset, config_file, overrides)
        data_ref = DataRef.of(data, split, split_seed, features)
        dataset = data_ref.load()
        run_dir = out or _default_run_dir(run_config.model, dataset.name)
        _check_writable_path(run_dir / "config.json")
    click.echo(f"training {run_config.model} on {dataset.name} -> {run_dir}", err=True)
    try:
        summary = run_training(
            run_config,
            dataset,
            run_dir,
            log=lambda line: click.echo(line, err=True),
            data_ref=data_ref,
            resume=resume is not None,
        )
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; continue with `diffmm train --resume {run_dir}`", err=True)
        sys.exit(130)
    click.echo(json.dumps(summary, indent=2, default=float))


def _refuse_split_options_on_resume(run_dir: Path) -> None:
    """--split/--split-seed/--features given with --resume must be the run's own."""
    from diffmm.checkpoint import RunDir
    from diffmm.errors import ConfigError

    ctx = click.get_current_context()
    ref = RunDir(run_dir).data_ref() if (run_dir / "dataset.json").exists() else None
    own = {"split": ref and ref.split, "split_seed": ref and ref.seed}
    own["features"] = ref and ref.features
    for name, flag in (
        ("split", "--split"),
        ("split_seed", "--split-seed"),
        ("features", "--features"),
    ):
        if ctx.get_parameter_source(name) != click.core.ParameterSource.COMMANDLINE:
            continue
        given = ctx.params[name]
        if name == "features" and given is not None:
            given = str(Path(given).expanduser().resolve())
        if ref is None or given != own[name]:
            raise ConfigError(
                f"{flag} {ctx.params[name]} differs from the run's own ({own[name]}); a resumed "
                f"run keeps its split and features: drop {flag}"
            )


def _resume_inputs(
    run_dir: Path,
    model: str | None,
    data: str | None,
    preset: str | None,
    config_file: Path | None,
    overrides: tuple[str, ...],
    out: Path | None,
) -> tuple[Any, Any, Any]:
    """The stored configuration and data of a run; options given again must agree."""
    from diffmm.checkpoint import RunDir
    from diffmm.config import resolve_config
    from diffmm.errors import ConfigError

    if out is not None and out.resolve() != run_dir.resolve():
        raise ConfigError(f"--out {out} and --resume {run_dir} name different runs; drop --out")
    run = RunDir(run_dir)
    run.require_run()
    stored = run.read_config()
    if model or preset or config_file or overrides:
        given = resolve_config(model or stored.model, preset, config_file, overrides).to_dict()
        if given != stored.to_dict():
            raise ConfigError(
                f"the settings given differ from those of the run in {run_dir}; a run "
                "continues with its own configuration: drop --model/--preset/--config/--set "
                "or start a new run with another --out"
            )
    data_ref = run.data_ref(moved_to=data)
    return stored, data_ref.load(), data_ref


@main.command()
@click.option("--data", "data", required=True, help=DATA_HELP)
@click.option(
    "--models", required=True, help="Comma-separated model names, e.g. diffmm,lightgcn,vbpr."
)
@click.option(
    "--seeds", default="3", show_default=True, help="A count (3 = 421,422,423) or a list."
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
@click.option("--split", default="random", help="How to split unsplit tables: random or loo.")
@click.option("--split-seed", default=2024, show_default=True, type=SEED, help="Seed of the split.")
@click.option(
    "--features",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Folder of extra <modality>.features.* files keyed by item id.",
)
@click.option("--groups", default="0,5,10,20", show_default=True, help=GROUPS_HELP)
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@_user_errors
def benchmark(
    data: str,
    models: str,
    seeds: str,
    preset: str | None,
    overrides: tuple[str, ...],
    out: Path,
    split: str,
    split_seed: int,
    features: str | None,
    groups: str,
    no_plots: bool,
) -> None:
    """Train several models over seeds; write a Markdown/CSV table, plots, a sparsity study."""
    from diffmm.experiments import BenchmarkSpec, markdown_table, run_benchmark

    seed_list = _seed_list(seeds)
    data_arg = _absolute_data(data)
    spec = BenchmarkSpec(
        data=data_arg,
        models=[m.strip() for m in models.split(",") if m.strip()],
        seeds=seed_list,
        preset=preset,
        sets=list(overrides),
        split=split,
        split_seed=split_seed,
        features=str(Path(features).resolve()) if features else None,
    )
    table = run_benchmark(
        spec,
        out,
        log=lambda line: click.echo(line, err=True),
        plots=not no_plots,
        groups=_group_bounds(groups),
    )
    click.echo(markdown_table(table))
    click.echo(f"\nwritten to {out}/results.md, results.csv", err=True)


@main.command()
@click.option("--data", "data", required=True, help=DATA_HELP)
@click.option("--model", "model", required=True, help="The model to sweep.")
@click.option(
    "--grid",
    "grid",
    multiple=True,
    required=True,
    metavar="KEY=V1,V2",
    help="Values of one setting (repeatable); the authors' flag names work too (ssl_reg, temp).",
)
@click.option("--seeds", default="1", show_default=True, help="A count (1 = 421) or a list.")
@click.option("--preset", default=None, help="Named settings the grid starts from.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Fixed settings.")
@click.option("--out", "out", required=True, type=OUT_DIR, help="Folder for runs, table, plot.")
@click.option("--split", default="random", help="How to split unsplit tables: random or loo.")
@click.option("--split-seed", default=2024, show_default=True, type=SEED, help="Seed of the split.")
@click.option("--features", type=click.Path(exists=True, file_okay=False), default=None)
@_user_errors
def sweep(
    data: str,
    model: str,
    grid: tuple[str, ...],
    seeds: str,
    preset: str | None,
    overrides: tuple[str, ...],
    out: Path,
    split: str,
    split_seed: int,
    features: str | None,
) -> None:
    """Train a model over a grid of settings; choose on validation, report test too."""
    from diffmm.experiments import BenchmarkSpec, parse_grid, run_sweep

    spec = BenchmarkSpec(
        data=_absolute_data(data),
        models=[model],
        seeds=_seed_list(seeds),
        preset=preset,
        sets=list(overrides),
        split=split,
        split_seed=split_seed,
        features=str(Path(features).resolve()) if features else None,
    )
    spec.validate()
    run_sweep(spec, parse_grid(grid), out, log=lambda line: click.echo(line, err=True))
    click.echo((out / "sweep.md").read_text())


def _seed_list(seeds: str) -> list[int]:
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
    return chosen


@main.command()
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
@click.option("--data", default=None, help=MOVED_DATA_HELP)
@_user_errors
def explain(
    run_dir: Path, users: tuple[str, ...], sample: int, top: int, out: Path | None, data: str | None
) -> None:
    """What DiffMM's diffusion adds to users' modality graphs, with feature similarities."""
    from diffmm.errors import ConfigError
    from diffmm.explain import explain_user, format_explanation, plot_explanation, sample_users
    from diffmm.inference import load
    from diffmm.utils import atomic_write_bytes

    rec = load(run_dir, data=data, device="cpu")
    chosen: list = list(users) + (sample_users(rec, sample) if sample else [])
    if not chosen:
        raise ConfigError("name a user with --user ID, or --sample N users")
    parts = []
    for user in chosen:
        exp = explain_user(rec, user, top)
        parts.append(format_explanation(exp))
        if out is not None:
            plot_explanation(exp, out / f"explain_user_{exp['user']}.png")
            parts.append(f"\n![user {exp['user']}](explain_user_{exp['user']}.png)")
    text = "\n\n".join(parts) + "\n"
    if out is not None:
        atomic_write_bytes(out / "explain.md", text.encode())
    click.echo(text)


@main.group()
def report() -> None:
    """Reports over trained runs."""


@report.command("sparsity")
@click.argument("run_dirs", nargs=-1, required=True, type=RUN_DIR)
@click.option("--out", "out", required=True, type=OUT_DIR, help="Folder for the table and plot.")
@click.option("--groups", default="0,5,10,20", show_default=True, help=GROUPS_HELP)
@_user_errors
def report_sparsity(run_dirs: tuple[Path, ...], out: Path, groups: str) -> None:
    """Test metrics per group of users by number of training interactions (paper Fig. 2)."""
    from diffmm.checkpoint import RunDir
    from diffmm.experiments import sparsity_study, write_sparsity

    bounds = _group_bounds(groups)
    runs: dict[str, list[str]] = {}
    for run_dir in run_dirs:
        model = RunDir(run_dir).read_config().model
        runs.setdefault(model, []).append(str(run_dir))
    table = sparsity_study(runs, bounds)
    out.mkdir(parents=True, exist_ok=True)
    write_sparsity(table, out)
    click.echo((out / "sparsity.md").read_text())


@main.command("models")
def list_models() -> None:
    """List the models --model accepts, with the paper each one implements."""
    from diffmm.models import get_model_class, model_names

    for name in model_names():
        module_doc = sys.modules[get_model_class(name).__module__].__doc__ or ""
        click.echo(f"{name:<12} {module_doc.strip().splitlines()[0]}")


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
@click.option(
    "--features",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Folder of extra <modality>.features.* files keyed by item id.",
)
@_user_errors
def data_stats(path: str, split: str, seed: int, features: str | None) -> None:
    """Users, items, interactions per split, density, features, cold users/items."""
    from diffmm.data import dataset_stats, format_stats, load_dataset

    dataset = load_dataset(path, split=split, seed=seed, features=features)
    click.echo(format_stats(dataset_stats(dataset)))


@main.group()
def features() -> None:
    """Compute item features from an item table (for --features DIR)."""


@features.command("text")
@click.argument("items", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--columns", required=True, help="Text columns, comma-separated (e.g. title,genres).")
@click.option("--out", "out", required=True, type=OUT_DIR, help="Folder to write into.")
@click.option("--modality", default="text", show_default=True, help="Name of the modality.")
@click.option("--batch-size", default=64, show_default=True, help="Texts encoded at a time.")
@click.option("--no-cache", is_flag=True, help="Recompute even if cached.")
@_user_errors
def features_text(
    items: Path, columns: str, out: Path, modality: str, batch_size: int, no_cache: bool
) -> None:
    """Sentence embeddings (all-MiniLM-L6-v2, offline) of text columns of an item table."""
    from diffmm.features import item_texts, read_item_table, text_features, write_features

    df, id_col = read_item_table(items)
    texts = item_texts(df, items, [c.strip() for c in columns.split(",") if c.strip()])
    values = text_features(texts, batch_size=batch_size, cache=not no_cache)
    path = write_features(out, modality, df[id_col].to_numpy(), values)
    click.echo(f"wrote {path} ({values.shape[0]} items x {values.shape[1]})", err=True)


@features.command("multihot")
@click.argument("items", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--column", required=True, help="Column of tokens (e.g. genres).")
@click.option("--sep", default=" ", show_default=True, help="Token separator.")
@click.option("--out", "out", required=True, type=OUT_DIR, help="Folder to write into.")
@click.option("--modality", default="genre", show_default=True, help="Name of the modality.")
@_user_errors
def features_multihot(items: Path, column: str, sep: str, out: Path, modality: str) -> None:
    """A multi-hot vector of the tokens of one column of an item table."""
    from diffmm.features import multi_hot_features, read_item_table, write_features

    df, id_col = read_item_table(items)
    values = multi_hot_features(df, items, column, sep)
    path = write_features(out, modality, df[id_col].to_numpy(), values)
    click.echo(f"wrote {path} ({values.shape[0]} items x {values.shape[1]})", err=True)


@main.command()
@click.argument("run_dir", type=RUN_DIR)
@click.option("--user", "users", multiple=True, required=True, help="Raw user id (repeatable).")
@click.option("-k", "k", default=20, show_default=True, help="Items per user.")
@click.option(
    "--include-seen", is_flag=True, help="Also recommend items the user already interacted with."
)
@click.option("--scores", is_flag=True, help="Print each item's score too.")
@click.option("--data", default=None, help=MOVED_DATA_HELP)
@_user_errors
def recommend(
    run_dir: Path,
    users: tuple[str, ...],
    k: int,
    include_seen: bool,
    scores: bool,
    data: str | None,
) -> None:
    """Print the top-K items (raw ids, best first) for users of a trained run."""
    from diffmm.inference import load

    rec = load(run_dir, data=data)
    results = rec.recommend_scored(list(users), k, exclude_seen=not include_seen)
    for user, (items, item_scores) in zip(users, results, strict=True):
        if scores:
            picks = " ".join(f"{i}:{s:.4f}" for i, s in zip(items, item_scores, strict=True))
        else:
            picks = " ".join(str(i) for i in items)
        click.echo(f"{user}\t{picks}")


@main.command()
@click.argument("run_dir", type=RUN_DIR)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output file: .csv, .tsv or .parquet (columns user, rank, item, score).",
)
@click.option("-k", "k", default=20, show_default=True, help="Items per user.")
@click.option("--batch-size", default=1024, show_default=True, help="Users scored at a time.")
@click.option("--include-seen", is_flag=True, help="Also recommend items already interacted with.")
@click.option("--data", default=None, help=MOVED_DATA_HELP)
@click.option("--force", is_flag=True, help="Replace --out if it exists (never the run's data).")
@_user_errors
def export(
    run_dir: Path,
    out: Path,
    k: int,
    batch_size: int,
    include_seen: bool,
    data: str | None,
    force: bool,
) -> None:
    """Write the top-K items of every user to a CSV or Parquet file."""
    from diffmm.export import check_export_path, export_top_k
    from diffmm.inference import load

    _check_writable_path(out)
    check_export_path(out, run_dir, overwrite=force)
    rec = load(run_dir, data=data)
    rows = export_top_k(
        rec, out, k=k, batch_size=batch_size, exclude_seen=not include_seen, overwrite=force
    )
    click.echo(f"wrote {rows} rows ({rec.n_users} users, top {k}) to {out}", err=True)


@main.command()
@click.argument("run_dir", type=RUN_DIR)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--data", default=None, help=MOVED_DATA_HELP)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:i].")
@click.option("--access-log", is_flag=True, help="Log every request.")
@click.option(
    "--token-file",
    type=click.Path(path_type=Path),
    default=None,
    help="File holding a bearer token that every endpoint but /health then requires "
    "(default: $DIFFMM_SERVE_TOKEN, else no token). Use one beyond loopback.",
)
@click.option(
    "--max-body-bytes",
    default=64 * 1024,
    show_default=True,
    type=click.IntRange(min=1),
    help="Larger request bodies are refused (413).",
)
@click.option(
    "--max-results",
    default=100_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Most recommendations (users x k) one request may ask for (422 beyond).",
)
@_user_errors
def serve(
    run_dir: Path,
    host: str,
    port: int,
    data: str | None,
    device: str,
    access_log: bool,
    token_file: Path | None,
    max_body_bytes: int,
    max_results: int,
) -> None:
    """Serve a trained run over HTTP (FastAPI): /health, /metadata, /users/{id}/recommendations."""
    from diffmm import serve as serving

    serving.serve(
        run_dir,
        host=host,
        port=port,
        data=data,
        device=device,
        access_log=access_log,
        token_file=token_file,
        max_body_bytes=max_body_bytes,
        max_results=max_results,
    )


@main.command()
@click.option("--epochs", default=None, type=int, help="Epochs per model (default: preset).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="A new folder for the demo's runs [default: runs/demo-<time>].",
)
@_user_errors
def demo(epochs: int | None, out: Path | None) -> None:
    """Train DiffMM and LightGCN on the built-in synthetic data; print metrics and picks."""
    from diffmm.demo import run_demo

    run_demo(out or Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}", epochs=epochs)


if __name__ == "__main__":  # pragma: no cover
    main()
