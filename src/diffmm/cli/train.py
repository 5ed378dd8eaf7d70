"""``diffmm train``: a new run, or ``--resume`` of an interrupted one."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from diffmm.cli.common import DataSource, check_writable_path, data_options, user_errors


def _default_run_dir(model: str, data_name: str) -> Path:
    return Path("runs") / f"{model}-{data_name}-{time.strftime('%Y%m%d-%H%M%S')}"


@click.command()
@click.option(
    "--model",
    "model",
    default=None,
    help="Model name (see `diffmm models`): mf, lightgcn, diffmm, vbpr, ... "
    "[default: none; required unless --resume, which uses the run's model].",
)
@data_options(required=False)
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
@click.option(
    "--resume",
    "resume",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Continue the interrupted run in this directory from its last checkpoint "
    "(its configuration and data are read from there).",
)
@user_errors
def train(
    model: str | None,
    preset: str | None,
    config_file: Path | None,
    overrides: tuple[str, ...],
    out: Path | None,
    source: DataSource,
    resume: Path | None,
) -> None:
    """Train a model with validation-based selection; test is scored once at the end."""
    from diffmm.config import load_config_file, resolve_config
    from diffmm.distributed import launched_as_main
    from diffmm.errors import ConfigError
    from diffmm.trainer import train as run_training
    from diffmm.utils import keep_freed_memory_for_reuse

    if resume is not None:
        _refuse_split_options_on_resume(resume)
        run_config, dataset, data_ref = _resume_inputs(
            resume, model, source.data, preset, config_file, overrides, out, source.cache_dir
        )
        run_dir = resume
    else:
        if source.data is None:
            raise ConfigError("--data is required (or --resume RUN_DIR to continue a run)")
        run_config = resolve_config(model, preset, config_file, overrides)
        if model is None and not (config_file and load_config_file(config_file).get("model")):
            raise ConfigError(
                "--model is required (e.g. --model diffmm; `diffmm models` lists them), or a "
                'model = "..." line in --config'
            )
        data_ref = source.ref()
        dataset = data_ref.load()
        run_dir = out or _default_run_dir(run_config.model, dataset.name)
        check_writable_path(run_dir / "config.json")
    keep_freed_memory_for_reuse(run_config.train.reuse_freed_memory_mb << 20)
    # under torchrun every process runs this; rank 0 alone prints (and writes run_dir)
    echo = click.echo if launched_as_main() else lambda *_, **__: None
    echo(f"training {run_config.model} on {dataset.name} -> {run_dir}", err=True)
    try:
        summary = run_training(
            run_config,
            dataset,
            run_dir,
            data_ref=data_ref,
            resume=resume is not None,
        )
    except KeyboardInterrupt:
        echo(f"\ninterrupted; continue with `diffmm train --resume {run_dir}`", err=True)
        sys.exit(130)
    echo(json.dumps(summary, indent=2, default=float))


def _refuse_split_options_on_resume(run_dir: Path) -> None:
    """--split/--split-seed/--features and the table options given with --resume must be
    the run's own."""
    from diffmm.checkpoint import RunDir
    from diffmm.cli.common import TABLE_OPTIONS
    from diffmm.errors import ConfigError

    ctx = click.get_current_context()
    ref = RunDir(run_dir).data_ref() if (run_dir / "dataset.json").exists() else None
    own = {"split": ref and ref.split, "split_seed": ref and ref.seed}
    own["features"] = ref and ref.features
    own.update({name: ref and getattr(ref.table, name) for name in TABLE_OPTIONS})
    for name in own:
        flag = "--" + name.replace("_", "-")
        if ctx.get_parameter_source(name) != click.core.ParameterSource.COMMANDLINE:
            continue
        given = ctx.params[name]
        if name == "features" and given is not None:
            given = str(Path(given).expanduser().resolve())
        if ref is None or given != own[name]:
            raise ConfigError(
                f"{flag} {ctx.params[name]} differs from the run's own ({own[name]}); a resumed "
                f"run keeps its split, features and table options: drop {flag}"
            )


def _resume_inputs(
    run_dir: Path,
    model: str | None,
    data: str | None,
    preset: str | None,
    config_file: Path | None,
    overrides: tuple[str, ...],
    out: Path | None,
    cache_dir: str | None,
) -> tuple[Any, Any, Any]:
    """The stored configuration and data of a run; options given again must agree.

    ``--data`` and ``--cache-dir`` say where the data and the split cache are now (the
    data's fingerprint is checked, so either may have moved).
    """
    from diffmm.checkpoint import RunDir
    from diffmm.config import apply_override, resolve_config, run_config_from_dict
    from diffmm.errors import ConfigError
    from diffmm.reuse import config_differences

    if out is not None and out.resolve() != run_dir.resolve():
        raise ConfigError(f"--out {out} and --resume {run_dir} name different runs; drop --out")
    run = RunDir(run_dir)
    run.require_run()
    stored = run.read_config()
    if model or preset or config_file:  # a whole configuration, resolved from the defaults
        wanted = resolve_config(model or stored.model, preset, config_file, overrides)
    else:  # --set alone changes the run's own configuration
        raw = stored.to_dict()
        for assignment in overrides:
            apply_override(raw, stored.model, assignment)
        wanted = run_config_from_dict(raw)
    differences = config_differences(stored, wanted)
    if wanted.model != stored.model or differences:
        raise ConfigError(
            f"the settings given differ from those of the run in {run_dir} "
            f"({'; '.join(differences) or f'model {wanted.model}, not {stored.model}'}); a run "
            "continues with its own configuration: drop --model/--preset/--config/--set "
            "(only how it runs may change: device, progress, tensorboard, eval_batch_size, "
            "reuse_freed_memory_mb) or start a new run with another --out"
        )
    data_ref = run.data_ref(moved_to=data)
    if cache_dir is not None:
        data_ref = replace(data_ref, cache_dir=str(Path(cache_dir).expanduser().resolve()))
    return wanted, data_ref.load(), data_ref
