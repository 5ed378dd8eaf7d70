"""Sweeps: one model trained over a grid of settings, a point chosen on validation.

A grid names settings as ``--set`` does (a setting's name or alias, e.g. the DiffMM
authors' ``ssl_reg``; ``train.KEY``); the points are labelled with the names as typed.
Every point is selected and chosen on the runs' configured validation metric
(``train.metric``, which the grid may not vary); test is reported, never used to choose.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from diffmm.config import setting_of
from diffmm.errors import ConfigError, DataError
from diffmm.utils import atomic_write_bytes

if TYPE_CHECKING:
    from diffmm.experiments import BenchmarkSpec


def parse_grid(grid: Sequence[str]) -> dict[str, list[str]]:
    """``["ssl_reg=1e-2,1e-1"]`` -> ``{"ssl_reg": ["1e-2", "1e-1"]}`` (names as typed)."""
    out: dict[str, list[str]] = {}
    for item in grid:
        key, eq, values = item.partition("=")
        key = key.strip()
        if not eq or not values.strip():
            raise ConfigError(f"--grid {item!r}: use KEY=V1,V2,... (e.g. temp=0.1,0.5,1)")
        if key in out:
            raise ConfigError(f"--grid {item!r}: {key!r} appears twice")
        out[key] = [v.strip() for v in values.split(",") if v.strip()]
        if not key or not out[key]:
            raise ConfigError(f"--grid {item!r}: use KEY=V1,V2,... (e.g. temp=0.1,0.5,1)")
        if len(set(out[key])) < len(out[key]):
            raise ConfigError(f"--grid {item!r}: a value of {key!r} repeats; give each once")
    if not out:
        raise ConfigError("give at least one --grid KEY=V1,V2,...")
    return out


def _check_distinct(model: str, names: list[str]) -> None:
    """Refuse two grid keys that are one setting (a name and its alias)."""
    seen: dict[tuple[str, str], str] = {}
    for key in names:
        own = key.startswith(f"{model}.") and "." not in key[len(model) + 1 :]
        setting = setting_of(model, key if own else key.removeprefix(f"{model}."))
        if setting == ("train", "seed"):
            raise ConfigError(f"--grid {key!r}: a sweep's seeds come from --seeds N, not --grid")
        if setting in seen:
            raise ConfigError(
                f"--grid: {seen[setting]!r} and {key!r} are the same setting "
                f"({'.'.join(setting)}); give it once"
            )
        seen[setting] = key


def _number_or_text(values: list[str]) -> list[float] | list[str]:
    try:
        return [float(v) for v in values]
    except ValueError:
        return values


def run_sweep(
    spec: BenchmarkSpec,
    grid: dict[str, list[str]],
    out: str | Path,
    plots: bool = True,
    jobs: int = 1,
) -> pd.DataFrame:
    """Train ``spec.models[0]`` for every point of ``grid``; select on validation.

    ``jobs`` runs train at a time, sharing the cores (:func:`diffmm.runner.run_all`).

    Writes ``sweep.md``, ``sweep.csv`` and a plot (a line per split for a 1-d grid, heat
    maps of the validation and test metric for a 2-d grid). The metric is the runs'
    ``train.metric``; the table also has test Recall and NDCG at its cut-off.
    """
    from diffmm import plots as figures
    from diffmm.experiments import BenchmarkSpec, Protocol
    from diffmm.reuse import refuse_other_runs, require_study_folder
    from diffmm.runner import run_all

    out = Path(out)
    require_study_folder(out)
    (model,) = spec.models
    names = list(grid)
    _check_distinct(model, names)
    points = []
    for values in itertools.product(*(grid[n] for n in names)):
        point = dict(zip(names, values, strict=True))
        sets = [*spec.sets, *(f"{n}={v}" for n, v in point.items())]
        point_spec = BenchmarkSpec(**{**spec.__dict__, "sets": sets})
        point_spec.validate()
        points.append((point, point_spec))
    metrics = {p.resolved(model).train.metric for _, p in points}
    if len(metrics) > 1:
        raise ConfigError(
            f"a sweep chooses on one validation metric, and its points have {sorted(metrics)}: "
            "set train.metric with --set, not --grid"
        )
    (metric,) = metrics
    k = metric.partition("@")[2]
    shown = list(dict.fromkeys([metric, f"recall@{k}", f"ndcg@{k}"]))  # all evaluated
    runs_of, wanted = [], []
    for point, point_spec in points:
        label = ",".join(f"{n}={v}" for n, v in point.items()).replace("/", "_")
        for seed in spec.seeds:
            run_dir = out / "runs" / f"{label}-seed{seed}"
            runs_of.append((point, seed, point_spec.command(model, seed, run_dir), run_dir))
            wanted.append((point_spec.run_config(model, seed), run_dir))
    for *_, run_dir in runs_of:  # a run reused or resumed from elsewhere: before any trains
        if (run_dir / "config.json").exists() and Protocol.of(run_dir).metric != metric:
            raise ConfigError(
                f"{run_dir} was selected on validation {Protocol.of(run_dir).metric}, "
                f"not {metric}: remove it or sweep into another --out"
            )
    refuse_other_runs(wanted, spec.data_fingerprint, spec.data)  # before anything trains
    run_all([(cmd, run_dir) for _, _, cmd, run_dir in runs_of], jobs)
    rows = []
    for point, seed, _, run_dir in runs_of:
        summary = json.loads((run_dir / "summary.json").read_text())
        rows.append(
            {
                **point,
                "seed": seed,
                f"valid_{metric}": summary["valid"].get(metric, np.nan),
                **{f"test_{m}": summary["test"][m] for m in shown},
                "best_epoch": summary["best_epoch"],
            }
        )
    valid, test = f"valid_{metric}", f"test_{metric}"
    runs = pd.DataFrame(rows)
    table = runs.groupby(names, sort=False).mean(numeric_only=True).reset_index()
    table = table.drop(columns=["seed"])
    if table[valid].isna().all():
        raise DataError(
            f"no sweep point has a validation {metric}: the data {spec.data} have no "
            "validation interactions, and a sweep chooses on validation; use data with a "
            "validation split (or an unsplit table, which is split 8:1:1)"
        )
    best = int(table[valid].idxmax())
    table["selected"] = ["*" if i == best else "" for i in range(len(table))]
    atomic_write_bytes(out / "sweep.csv", table.to_csv(index=False).encode())
    head = [*names, f"valid {metric}", *(f"test {m}" for m in shown), "epoch", ""]
    lines = [
        f"# Sweep of {model} on {spec.data}",
        "",
        f"Seeds {', '.join(map(str, spec.seeds))}; each point's epoch is selected on validation "
        f"{metric}; the point marked * has the best validation {metric} (the choice). "
        "Test is shown for every point and never used to choose.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for _, r in table.iterrows():
        cells = [str(r[n]) for n in names]
        cells += [f"{r[valid]:.4f}", *(f"{r[f'test_{m}']:.4f}" for m in shown)]
        cells += [f"{r['best_epoch']:.0f}", r["selected"]]
        lines.append("| " + " | ".join(cells) + " |")
    if plots and len(names) == 1:
        x = _number_or_text([str(v) for v in table[names[0]]])
        figures.line_plot(
            {"validation": (x, table[valid].tolist()), "test": (x, table[test].tolist())},
            out / "sweep.png",
            title=f"{metric} of {model} against {names[0]}",
            xlabel=names[0],
            ylabel=metric,
        )
        lines += ["", "![sweep](sweep.png)"]
    elif plots and len(names) == 2:
        rows_v, cols_v = grid[names[0]], grid[names[1]]
        for split, column in (("valid", valid), ("test", test)):
            matrix = np.full((len(rows_v), len(cols_v)), np.nan)
            for _, r in table.iterrows():
                matrix[rows_v.index(str(r[names[0]])), cols_v.index(str(r[names[1]]))] = r[column]
            figures.heatmap(
                matrix,
                rows_v,
                cols_v,
                out / f"sweep_{split}.png",
                title=f"{split} {metric} of {model}",
                xlabel=names[1],
                ylabel=names[0],
            )
        lines += ["", "![valid](sweep_valid.png) ![test](sweep_test.png)"]
    atomic_write_bytes(out / "sweep.md", ("\n".join(lines) + "\n").encode())
    return table
