"""Experiments over several models and seeds: the comparison table, the sparsity study, sweeps.

:func:`run_benchmark` trains every (model, seed) pair with ``diffmm train`` in a child
process (so each run's peak memory is its own), under the project's protocol (epoch
selected on validation, test read once), and writes to ``out``:

* ``runs/<model>-seed<seed>/``   each run directory;
* ``results.md``, ``results.csv`` Recall/NDCG/Precision at each run's cut-offs, mean ± std
  over seeds, selected epoch, seconds per epoch, peak memory;
* ``valid_recall.png``           each model's validation metric per epoch (mean over seeds);
* ``test_recall.png``            each model's test value of that metric (mean ± std);
* ``sparsity.md/.csv/.png``      metrics per group of users by training interactions
  (paper Fig. 2), from :func:`~diffmm.sparsity.sparsity_study`.

The protocol is each run's own (:class:`Protocol`, read from its ``config.json``): the
validation metric is ``train.metric`` and the cut-offs are ``train.ks`` plus the metric's.
When models are run with different cut-offs the table has the union of their columns,
with ``–`` where a model's runs did not evaluate one; the plots' file names stay the
same whatever the metric.

A finished run is reused and an interrupted one resumed, so the whole benchmark can be
started again after a crash and only the missing work is done.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diffmm.config import RunConfig, TrainConfig, presets_of, resolve_config, setting_names
from diffmm.data.options import TableOptions
from diffmm.errors import ConfigError
from diffmm.models import get_model_class, model_names
from diffmm.reuse import refuse_other_runs, require_study_folder
from diffmm.runner import run_all
from diffmm.sparsity import DEFAULT_GROUPS, sparsity_study, write_sparsity
from diffmm.sweep import parse_grid, run_sweep
from diffmm.utils import atomic_write_bytes

__all__ = [
    "DEFAULT_GROUPS",
    "BenchmarkSpec",
    "Protocol",
    "markdown_table",
    "parse_grid",
    "run_benchmark",
    "run_sweep",
    "sparsity_study",
    "write_sparsity",
]

#: Metrics of the tables, at each of a run's cut-offs (``hit@k`` is in each run's files).
TABLE_METRICS = ("recall", "ndcg", "precision")


@dataclass(frozen=True)
class Protocol:
    """How a run was selected and read: its validation metric and its cut-offs."""

    metric: str
    ks: tuple[int, ...]

    @classmethod
    def of(cls, run_dir: str | Path) -> Protocol:
        """The protocol in ``run_dir``'s ``config.json``."""
        from diffmm.checkpoint import RunDir

        train = RunDir(run_dir).read_config().train
        k = int(train.metric.partition("@")[2])
        return cls(train.metric, tuple(sorted({*train.ks, k})))

    def columns(self) -> list[str]:
        """The test metrics a table shows for the run; the validation metric among them."""
        return metric_columns([f"{m}@{k}" for m in TABLE_METRICS for k in self.ks] + [self.metric])


def metric_columns(names: Iterable[str]) -> list[str]:
    """The metric names (``recall@20``) among ``names``, once each, ordered recall, ndcg,
    precision, others, then by cut-off."""

    def order(name: str) -> tuple[int, str, int]:
        metric, _, k = name.partition("@")
        rank = TABLE_METRICS.index(metric) if metric in TABLE_METRICS else len(TABLE_METRICS)
        return rank, metric, int(k)

    return sorted({n for n in names if re.fullmatch(r"[a-z]+@[0-9]+", n)}, key=order)


@dataclass
class BenchmarkSpec:
    """What to run: data, models, seeds and settings (``--set`` scoped per model)."""

    data: str
    models: list[str]
    seeds: list[int]
    preset: str | None = None
    sets: list[str] = field(default_factory=list)
    split: str = "random"
    split_seed: int = 2024
    features: str | None = None
    table: TableOptions = field(default_factory=TableOptions)  # column names, filters
    cache_dir: str | None = None  # where split caches go (None: the default)

    def model_sets(self, model: str) -> list[str]:
        """The ``--set`` assignments that apply to ``model``.

        ``train.KEY`` applies to every model, ``<model>.KEY`` and ``<model>.train.KEY``
        to that model only, and a bare ``KEY`` (a setting's name or alias) to every model
        whose settings have it.
        """
        names = {*setting_names(get_model_class(model).Config), *setting_names(TrainConfig)}
        out = []
        for assignment in self.sets:
            key = assignment.partition("=")[0].strip()
            section, _, name = key.rpartition(".")
            if section in ("train", model, f"{model}.train"):
                out.append(assignment)
            elif not section and name in names:
                out.append(assignment)
        return out

    def validate(self) -> None:
        unknown = [m for m in self.models if m not in model_names()]
        if unknown or not self.models:
            raise ConfigError(
                f"unknown model(s) {unknown or '(none given)'}; available: "
                f"{', '.join(model_names())}"
            )
        repeated = sorted({m for m in self.models if self.models.count(m) > 1})
        if repeated:
            raise ConfigError(f"--models names {', '.join(repeated)} twice; give each model once")
        if not self.seeds:
            raise ConfigError("give at least one seed")
        if len(set(self.seeds)) < len(self.seeds):
            raise ConfigError(f"the seeds {self.seeds} repeat one; give each seed once")
        for assignment in self.sets:
            key = assignment.partition("=")[0].strip()
            section, _, name = key.rpartition(".")
            if section and section != "train" and section.split(".")[0] not in self.models:
                raise ConfigError(f"--set {assignment}: {section!r} is not one of the models")
            if (
                not section
                and not any(name in setting_names(get_model_class(m).Config) for m in self.models)
                and name not in setting_names(TrainConfig)
            ):
                raise ConfigError(f"--set {assignment}: no model here has a setting {name!r}")
        for model in self.models:  # every model's settings resolve before anything runs
            self.resolved(model)

    def resolved(self, model: str) -> RunConfig:
        """The configuration ``model``'s runs get (before their seed)."""
        return resolve_config(model, self.preset_for(model), None, self._for_resolve(model))

    def _for_resolve(self, model: str) -> list[str]:
        return [
            a.split(".", 1)[1] if a.startswith(f"{model}.") else a for a in self.model_sets(model)
        ]

    def preset_for(self, model: str) -> str | None:
        """The preset if ``model`` has one of that name, else None (its defaults)."""
        return self.preset if self.preset in presets_of(model) else None

    def _run_sets(self, model: str, seed: int) -> list[str]:
        return [*self._for_resolve(model), f"train.seed={seed}", "train.progress=false"]

    def run_config(self, model: str, seed: int) -> RunConfig:
        """The configuration of ``model``'s run with ``seed`` (what :meth:`command` trains)."""
        return resolve_config(model, self.preset_for(model), None, self._run_sets(model, seed))

    def data_fingerprint(self) -> dict[str, Any]:
        """The fingerprint of the data every run is trained on (loads them)."""
        from diffmm.data.ref import DataRef

        ref = DataRef.of(
            self.data, self.split, self.split_seed, self.features, self.table, self.cache_dir
        )
        return ref.load().fingerprint()

    def command(self, model: str, seed: int, run_dir: Path) -> list[str]:
        cmd = ["train", "--model", model, "--data", self.data, "--out", str(run_dir)]
        cmd += ["--split", self.split, "--split-seed", str(self.split_seed)]
        if self.features:
            cmd += ["--features", self.features]
        cmd += self.table.cli_args()
        if self.cache_dir:
            cmd += ["--cache-dir", self.cache_dir]
        if self.preset_for(model):
            cmd += ["--preset", self.preset_for(model)]
        for assignment in self._run_sets(model, seed):
            cmd += ["--set", assignment]
        return cmd


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def collect(out: Path, spec: BenchmarkSpec) -> pd.DataFrame:
    """One row per (model, seed) from the run directories' configs and summaries.

    A row has the run's validation ``metric``, its value ``valid_<metric>`` and the test
    metrics of :meth:`Protocol.columns`; a column another run has is NaN.
    """
    rows = []
    for model in spec.models:
        for seed in spec.seeds:
            run_dir = out / "runs" / f"{model}-seed{seed}"
            protocol = Protocol.of(run_dir)
            summary = json.loads((run_dir / "summary.json").read_text())
            rows.append(
                {
                    "model": model,
                    "seed": seed,
                    "run_dir": str(run_dir),
                    "metric": protocol.metric,
                    **{m: summary["test"][m] for m in protocol.columns()},
                    f"valid_{protocol.metric}": summary["valid"].get(protocol.metric),
                    "best_epoch": summary["best_epoch"],
                    "epochs_run": summary["epochs_run"],
                    "seconds_per_epoch": summary["seconds_per_epoch"],
                    "peak_rss_mb": summary["peak_rss_mb"],
                }
            )
    runs = pd.DataFrame(rows)
    first = ["model", "seed", "run_dir", "metric"]
    shown = metric_columns(runs.columns)
    return runs[[*first, *shown, *(c for c in runs.columns if c not in {*first, *shown})]]


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per model (columns ``<metric>`` and ``<metric>_std``).

    ``metric`` is the model's validation metric; a cut-off its runs did not evaluate is NaN.
    """
    columns = metric_columns(runs.columns)
    out = []
    for model, group in runs.groupby("model", sort=False):
        row: dict[str, Any] = {"model": model, "seeds": len(group)}
        row["metric"] = group["metric"].iloc[0]
        for m in columns:
            values = group[m].dropna().tolist()
            row[m], row[f"{m}_std"] = _mean_std(values) if values else (np.nan, np.nan)
        row["best_epoch"] = float(group["best_epoch"].mean())
        row["seconds_per_epoch"] = float(statistics.median(group["seconds_per_epoch"]))
        row["peak_rss_mb"] = float(group["peak_rss_mb"].max())
        out.append(row)
    return pd.DataFrame(out)


def markdown_table(table: pd.DataFrame) -> str:
    """The summary as Markdown: mean ± std of each metric, ``–`` where none was evaluated."""
    metrics = metric_columns(table.columns)
    extra = [c for c in table.columns if str(c).startswith("Δ")]
    head = ["model", "seeds", *metrics, "epoch", "s/epoch", "peak RSS MB", *extra]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        cells = [r["model"], str(r["seeds"])]
        cells += ["–" if pd.isna(r[m]) else f"{r[m]:.4f} ± {r[f'{m}_std']:.4f}" for m in metrics]
        cells += [
            f"{r['best_epoch']:.1f}",
            f"{r['seconds_per_epoch']:.2f}",
            f"{r['peak_rss_mb']:.0f}",
        ]
        cells += [str(r[c]) for c in extra]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _shared_metric(table: pd.DataFrame) -> tuple[str | None, dict[str, str]]:
    """The validation metric all models share (None if they differ), and a label per model
    (the model, with its metric when they differ)."""
    metrics = dict(zip(table["model"], table["metric"], strict=True))
    shared = next(iter(metrics.values())) if len(set(metrics.values())) == 1 else None
    return shared, {m: m if shared else f"{m} ({metric})" for m, metric in metrics.items()}


def validation_curves(runs: pd.DataFrame) -> dict[str, tuple[list[int], list[float]]]:
    """Each model's validation metric per epoch, averaged over its seeds."""
    curves = {}
    for model, group in runs.groupby("model", sort=False):
        metric = group["metric"].iloc[0]
        per_epoch: dict[int, list[float]] = {}
        for run_dir in group["run_dir"]:
            for line in (Path(run_dir) / "log.jsonl").read_text().splitlines():
                record = json.loads(line)
                if "valid" in record:
                    per_epoch.setdefault(record["epoch"], []).append(record["valid"][metric])
        epochs = sorted(per_epoch)
        curves[model] = (epochs, [float(np.mean(per_epoch[e])) for e in epochs])
    return curves


def run_benchmark(
    spec: BenchmarkSpec,
    out: str | Path,
    plots: bool = True,
    groups: Sequence[int] = DEFAULT_GROUPS,
    jobs: int = 1,
) -> pd.DataFrame:
    """Train every model for every seed, then write the tables and plots; returns the summary.

    ``jobs`` runs train at a time, sharing the cores (:func:`diffmm.runner.run_all`).

    A line per run goes to the ``diffmm.experiments`` logger, and an overall bar counts
    the finished runs.

    ``groups`` are the lower bounds of the sparsity study's user groups.
    """
    from diffmm import plots as figures

    spec.validate()
    out = Path(out)
    require_study_folder(out)
    dirs = {(m, s): out / "runs" / f"{m}-seed{s}" for m in spec.models for s in spec.seeds}
    wanted = [(spec.run_config(m, s), d) for (m, s), d in dirs.items()]
    refuse_other_runs(wanted, spec.data_fingerprint, spec.data)  # before anything trains
    run_all([(spec.command(m, s, d), d) for (m, s), d in dirs.items()], jobs)
    runs = collect(out, spec)
    table = summarise(runs)
    shared, labels = _shared_metric(table)
    if shared and len(spec.models) > 1:  # per-user paired difference from the first model
        from diffmm.compare import significance_column

        by_model = {m: g["run_dir"].tolist() for m, g in runs.groupby("model", sort=False)}
        column = significance_column(by_model, spec.models[0], shared)
        table[f"Δ{shared} vs {spec.models[0]}"] = table["model"].map(column)
    atomic_write_bytes(out / "results.csv", table.to_csv(index=False).encode())
    atomic_write_bytes(out / "runs.csv", runs.to_csv(index=False).encode())
    pairs = ", ".join(f"{m}: {k}" for m, k in zip(table["model"], table["metric"], strict=True))
    selected_on = f"validation {shared}" if shared else f"each model's validation metric ({pairs})"
    lines = [
        f"# Benchmark on {spec.data}",
        "",
        f"Test metrics at the epoch selected on {selected_on}, test read once per run; mean "
        f"± std over seeds {', '.join(map(str, spec.seeds))}; – where a model's runs did not "
        "evaluate that cut-off (`train.ks`). Δ: the per-user paired difference of the test "
        "metric from the first model (averaged over seeds per user), its 95% bootstrap "
        "interval and a sign-flip permutation p-value (`diffmm report compare`).",
        "",
        markdown_table(table),
        "",
        "Commands (one per run): see `runs/<model>-seed<seed>/config.json`; settings: "
        f"preset {spec.preset or '(none)'} where a model has it, --set {spec.sets or '(none)'}.",
    ]
    if plots:
        figures.line_plot(
            {labels[m]: curve for m, curve in validation_curves(runs).items()},
            out / "valid_recall.png",
            title=f"Validation {shared or 'metric'} per epoch (mean over seeds)",
            xlabel="epoch",
            ylabel=shared or "validation metric (in the legend)",
        )
        figures.bar_plot(
            {
                labels[r["model"]]: (r[r["metric"]], r[f"{r['metric']}_std"])
                for _, r in table.iterrows()
            },
            out / "test_recall.png",
            title=f"Test {shared or 'metric'} (validation-selected epoch; mean ± std over seeds)",
            ylabel=shared or "test value of the validation metric",
        )
        lines += ["", "![validation curves](valid_recall.png)", "![test](test_recall.png)"]
    sparsity = sparsity_study({m: g["run_dir"].tolist() for m, g in runs.groupby("model")}, groups)
    write_sparsity(sparsity, out, plots=plots, metric=shared)
    lines += ["", "Sparsity study: [sparsity.md](sparsity.md)."]
    atomic_write_bytes(out / "results.md", ("\n".join(lines) + "\n").encode())
    return table
