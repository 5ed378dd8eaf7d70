"""Using trained runs and the built-in help: ``recommend``, ``evaluate``, ``export``,
``serve``, ``demo``, ``models``, ``config``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from diffmm.cli.common import MOVED_DATA_HELP, RUN_DIR, check_writable_path, user_errors


@click.command()
@click.argument("run_dir", type=RUN_DIR)
@click.option("--user", "users", multiple=True, required=True, help="Raw user id (repeatable).")
@click.option("-k", "k", default=20, show_default=True, help="Items per user.")
@click.option(
    "--include-seen", is_flag=True, help="Also recommend items the user already interacted with."
)
@click.option("--scores", is_flag=True, help="Print each item's score too.")
@click.option("--data", default=None, help=MOVED_DATA_HELP)
@user_errors
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


@click.command()
@click.argument("run_dir", type=RUN_DIR)
@click.option(
    "--split",
    default="test",
    show_default=True,
    type=click.Choice(["test", "valid"]),
    help="The split to score (test masks the validation items too).",
)
@click.option("--ks", default="10,20", show_default=True, help="Comma-separated cut-offs.")
@click.option(
    "--metrics",
    default="recall,ndcg,precision,hit",
    show_default=True,
    help="Comma-separated: recall, ndcg, precision, hit, mrr, map, coverage.",
)
@click.option("--data", default=None, help=MOVED_DATA_HELP)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:i].")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@user_errors
def evaluate(
    run_dir: Path,
    split: str,
    ks: str,
    metrics: str,
    data: str | None,
    device: str,
    as_json: bool,
) -> None:
    """Score a run's best model (best.pt) on the test or validation split, all-rank.

    Works on an unfinished run too. The protocol is training's: each user's training
    items are masked (and for test the validation items).
    """
    from diffmm.errors import ConfigError
    from diffmm.inference import load
    from diffmm.models.base import MAX_COUNT

    try:
        cutoffs = [int(k) for k in ks.split(",") if k.strip()]
    except ValueError:
        raise ConfigError(f"--ks {ks!r}: give positive integers such as 10,20,50") from None
    if not cutoffs or min(cutoffs) < 1 or max(cutoffs) > MAX_COUNT:
        raise ConfigError(f"--ks {ks!r}: give positive integers up to {MAX_COUNT} such as 10,20,50")
    names = [m.strip() for m in metrics.split(",") if m.strip()]
    rec = load(run_dir, data=data, device=device)
    result = rec.evaluate(split, ks=cutoffs, metrics=names)
    epoch = rec.metadata["epoch"]
    if as_json:
        click.echo(json.dumps({"split": split, "epoch": epoch, **result}, indent=2))
        return
    state = "" if rec.metadata["finished"] else ", run unfinished"
    click.echo(
        f"{rec.metadata['model']} on {split} ({result['n_users']} users, epoch {epoch}{state})"
    )
    chosen = list(dict.fromkeys(names))
    click.echo(f"{'k':>6}" + "".join(f"{m:>11}" for m in chosen))
    for k in sorted(set(cutoffs)):
        click.echo(f"{k:>6}" + "".join(f"{result[f'{m}@{k}']:>11.4f}" for m in chosen))


@click.command()
@click.argument("run_dir", type=RUN_DIR)
@click.option(
    "--out",
    "out",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Top-K file: .csv, .tsv or .parquet (columns user, rank, item, score).",
)
@click.option(
    "--embeddings",
    "embeddings",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Embeddings file: .npz (user_ids, user_embeddings, item_ids, item_embeddings) or "
    ".parquet (kind, id, embedding); float32, scored by dot product.",
)
@click.option("-k", "k", default=20, show_default=True, help="Items per user.")
@click.option("--batch-size", default=1024, show_default=True, help="Users scored at a time.")
@click.option("--include-seen", is_flag=True, help="Also recommend items already interacted with.")
@click.option("--data", default=None, help=MOVED_DATA_HELP)
@click.option(
    "--force", is_flag=True, help="Replace the output files if they exist (never the run's data)."
)
@user_errors
def export(
    run_dir: Path,
    out: Path | None,
    embeddings: Path | None,
    k: int,
    batch_size: int,
    include_seen: bool,
    data: str | None,
    force: bool,
) -> None:
    """Write every user's top-K items (--out) and/or the user and item embeddings
    (--embeddings)."""
    from diffmm.errors import ConfigError
    from diffmm.export import check_export_path, export_embeddings, export_top_k
    from diffmm.inference import load

    outputs = [p for p in (out, embeddings) if p is not None]
    if not outputs:
        raise ConfigError("give --out FILE (top-K lists) and/or --embeddings FILE")
    if out is not None and embeddings is not None and out.resolve() == embeddings.resolve():
        raise ConfigError(f"--out and --embeddings name the same file {out}; give two files")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    for path in outputs:
        check_writable_path(path)
        check_export_path(path, run_dir, overwrite=force)
    rec = load(run_dir, data=data)
    if embeddings is not None:
        dim = export_embeddings(rec, embeddings, overwrite=force)
        click.echo(
            f"wrote {rec.n_users} user and {rec.n_items} item embeddings (dim {dim}) to "
            f"{embeddings}",
            err=True,
        )
    if out is not None:
        rows = export_top_k(
            rec, out, k=k, batch_size=batch_size, exclude_seen=not include_seen, overwrite=force
        )
        click.echo(f"wrote {rows} rows ({rec.n_users} users, top {k}) to {out}", err=True)


@click.command()
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
@user_errors
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


@click.command()
@click.option(
    "--epochs", default=None, type=click.IntRange(min=1), help="Epochs per model [default: 100]."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="A new folder for the demo's runs [default: runs/demo-<time>].",
)
@user_errors
def demo(epochs: int | None, out: Path | None) -> None:
    """Train DiffMM and LightGCN on the built-in synthetic data; print metrics and picks."""
    from diffmm.demo import run_demo

    run_demo(out or Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}", epochs=epochs)


@click.command("models")
def list_models() -> None:
    """List the models --model accepts, with the paper each one implements."""
    from diffmm.models import get_model_class, model_names

    for name in model_names():
        cls = get_model_class(name)
        module_doc = sys.modules[cls.__module__].__doc__ or ""
        summary = module_doc.strip().splitlines()[0] if module_doc.strip() else ""
        paper = getattr(cls, "paper", "")
        click.echo(f"{name:<12} {summary}" + (f"\n{'':<12} {paper}" if paper else ""))


@click.command("config")
@click.option("--model", "model", default="diffmm", show_default=True, help="Model name.")
@click.option("--preset", default=None, help="Show the settings of a preset.")
@user_errors
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
