"""Experiments over several models and seeds: the comparison table, the sparsity study.

:func:`run_benchmark` trains every (model, seed) pair with ``diffmm train`` in a child
process (so each run's peak memory is its own), under the project's protocol (epoch
selected on validation, test read once), and writes to ``out``:

* ``runs/<model>-seed<seed>/``   each run directory;
* ``results.md``, ``results.csv`` Recall/NDCG/Precision@10/20 mean ± std over seeds,
  selected epoch, seconds per epoch, peak memory;
* ``valid_recall.png``           validation Recall@20 per epoch (mean over seeds);
* ``test_recall.png``            test Recall@20 per model (mean ± std);
* ``sparsity.md/.csv/.png``      metrics per group of users by training interactions
  (paper Fig. 2), from :func:`sparsity_study`.

A finished run is reused and an interrupted one resumed, so the whole benchmark can be
started again after a crash and only the missing work is done.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diffmm.config import PRESETS, TrainConfig, resolve_config
from diffmm.errors import ConfigError
from diffmm.models import get_model_class, model_names
from diffmm.utils import atomic_write_bytes

METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "precision@10", "precision@20")
#: User groups of the sparsity study: number of training interactions in [lo, hi).
DEFAULT_GROUPS = (0, 5, 10, 20)


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

    def model_sets(self, model: str) -> list[str]:
        """The ``--set`` assignments that apply to ``model``.

        ``train.KEY`` applies to every model, ``<model>.KEY`` and ``<model>.train.KEY``
        to that model only, and a bare ``KEY`` to every model whose settings have it.
        """
        fields = set(get_model_class(model).Config.model_fields)
        out = []
        for assignment in self.sets:
            key = assignment.partition("=")[0].strip()
            section, _, name = key.rpartition(".")
            if section in ("train", model, f"{model}.train"):
                out.append(assignment)
            elif not section and (name in fields or name in TrainConfig.model_fields):
                out.append(assignment)
        return out

    def validate(self) -> None:
        unknown = [m for m in self.models if m not in model_names()]
        if unknown or not self.models:
            raise ConfigError(
                f"unknown model(s) {unknown or '(none given)'}; available: "
                f"{', '.join(model_names())}"
            )
        if not self.seeds:
            raise ConfigError("give at least one seed")
        for assignment in self.sets:
            key = assignment.partition("=")[0].strip()
            section, _, name = key.rpartition(".")
            if section and section != "train" and section.split(".")[0] not in self.models:
                raise ConfigError(f"--set {assignment}: {section!r} is not one of the models")
            if not section and not any(
                name in get_model_class(m).Config.model_fields or name in TrainConfig.model_fields
                for m in self.models
            ):
                raise ConfigError(f"--set {assignment}: no model here has a setting {name!r}")
        for model in self.models:  # every model's settings resolve before anything runs
            resolve_config(model, self.preset_for(model), None, self._for_resolve(model))

    def _for_resolve(self, model: str) -> list[str]:
        return [
            a.split(".", 1)[1] if a.startswith(f"{model}.") else a for a in self.model_sets(model)
        ]

    def preset_for(self, model: str) -> str | None:
        """The preset if ``model`` has one of that name, else None (its defaults)."""
        return self.preset if self.preset in PRESETS.get(model, {}) else None

    def command(self, model: str, seed: int, run_dir: Path) -> list[str]:
        cmd = ["train", "--model", model, "--data", self.data, "--out", str(run_dir)]
        cmd += ["--split", self.split, "--split-seed", str(self.split_seed)]
        if self.features:
            cmd += ["--features", self.features]
        if self.preset_for(model):
            cmd += ["--preset", self.preset_for(model)]
        for assignment in [*self._for_resolve(model), f"train.seed={seed}"]:
            cmd += ["--set", assignment]
        return [*cmd, "--set", "train.progress=false"]


def _run_one(cmd: list[str], run_dir: Path, log: Callable[[str], None]) -> None:
    if (run_dir / "summary.json").exists():
        log(f"reusing finished run {run_dir}")
        return
    if (run_dir / "config.json").exists():
        log(f"resuming {run_dir}")
        cmd = ["train", "--resume", str(run_dir)]
    else:
        log("diffmm " + " ".join(cmd))
    # The command's output goes next to the run: a new run needs an empty directory.
    output = run_dir.with_name(f"{run_dir.name}.output.txt")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with output.open("a") as out:
        done = subprocess.run(
            [sys.executable, "-m", "diffmm.cli", *cmd],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    if done.returncode != 0:
        tail = "".join(output.read_text().splitlines(True)[-5:])
        raise ConfigError(f"run {run_dir} failed (exit {done.returncode}):\n{tail}")


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def collect(out: Path, spec: BenchmarkSpec) -> pd.DataFrame:
    """One row per (model, seed) from the run directories' summaries."""
    rows = []
    for model in spec.models:
        for seed in spec.seeds:
            run_dir = out / "runs" / f"{model}-seed{seed}"
            summary = json.loads((run_dir / "summary.json").read_text())
            rows.append(
                {
                    "model": model,
                    "seed": seed,
                    "run_dir": str(run_dir),
                    **{m: summary["test"][m] for m in METRICS},
                    "valid_recall@20": summary["valid"].get("recall@20"),
                    "best_epoch": summary["best_epoch"],
                    "epochs_run": summary["epochs_run"],
                    "seconds_per_epoch": summary["seconds_per_epoch"],
                    "peak_rss_mb": summary["peak_rss_mb"],
                }
            )
    return pd.DataFrame(rows)


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per model (columns ``<metric>`` and ``<metric>_std``)."""
    out = []
    for model, group in runs.groupby("model", sort=False):
        row: dict[str, Any] = {"model": model, "seeds": len(group)}
        for m in METRICS:
            row[m], row[f"{m}_std"] = _mean_std(group[m].tolist())
        row["best_epoch"] = float(group["best_epoch"].mean())
        row["seconds_per_epoch"] = float(statistics.median(group["seconds_per_epoch"]))
        row["peak_rss_mb"] = float(group["peak_rss_mb"].max())
        out.append(row)
    return pd.DataFrame(out)


def markdown_table(table: pd.DataFrame) -> str:
    head = ["model", "seeds", *METRICS, "epoch", "s/epoch", "peak RSS MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        cells = [r["model"], str(r["seeds"])]
        cells += [f"{r[m]:.4f} ± {r[f'{m}_std']:.4f}" for m in METRICS]
        cells += [
            f"{r['best_epoch']:.1f}",
            f"{r['seconds_per_epoch']:.2f}",
            f"{r['peak_rss_mb']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def validation_curves(runs: pd.DataFrame) -> dict[str, tuple[list[int], list[float]]]:
    """Validation Recall@20 per epoch, averaged over each model's seeds."""
    curves = {}
    for model, group in runs.groupby("model", sort=False):
        per_epoch: dict[int, list[float]] = {}
        for run_dir in group["run_dir"]:
            for line in (Path(run_dir) / "log.jsonl").read_text().splitlines():
                record = json.loads(line)
                if "valid" in record:
                    per_epoch.setdefault(record["epoch"], []).append(record["valid"]["recall@20"])
        epochs = sorted(per_epoch)
        curves[model] = (epochs, [float(np.mean(per_epoch[e])) for e in epochs])
    return curves


def run_benchmark(
    spec: BenchmarkSpec,
    out: str | Path,
    log: Callable[[str], None] = print,
    plots: bool = True,
    groups: Sequence[int] = DEFAULT_GROUPS,
) -> pd.DataFrame:
    """Train every model for every seed, then write the tables and plots; returns the summary.

    ``groups`` are the lower bounds of the sparsity study's user groups.
    """
    from diffmm import plots as figures

    spec.validate()
    out = Path(out)
    for model in spec.models:
        for seed in spec.seeds:
            run_dir = out / "runs" / f"{model}-seed{seed}"
            _run_one(spec.command(model, seed, run_dir), run_dir, log)
    runs = collect(out, spec)
    table = summarise(runs)
    atomic_write_bytes(out / "results.csv", table.to_csv(index=False).encode())
    atomic_write_bytes(out / "runs.csv", runs.to_csv(index=False).encode())
    lines = [
        f"# Benchmark on {spec.data}",
        "",
        "Test metrics at the epoch selected on validation Recall@20 (test read once per "
        f"run), mean ± std over seeds {', '.join(map(str, spec.seeds))}.",
        "",
        markdown_table(table),
        "",
        "Commands (one per run): see `runs/<model>-seed<seed>/config.json`; settings: "
        f"preset {spec.preset or '(none)'} where a model has it, --set {spec.sets or '(none)'}.",
    ]
    if plots:
        figures.line_plot(
            validation_curves(runs),
            out / "valid_recall.png",
            title="Validation Recall@20 per epoch (mean over seeds)",
            xlabel="epoch",
            ylabel="Recall@20",
        )
        figures.bar_plot(
            {r["model"]: (r["recall@20"], r["recall@20_std"]) for _, r in table.iterrows()},
            out / "test_recall.png",
            title="Test Recall@20 (validation-selected epoch; mean ± std over seeds)",
            ylabel="Recall@20",
        )
        lines += ["", "![validation curves](valid_recall.png)", "![test](test_recall.png)"]
    sparsity = sparsity_study({m: g["run_dir"].tolist() for m, g in runs.groupby("model")}, groups)
    write_sparsity(sparsity, out, plots=plots)
    lines += ["", "Sparsity study: [sparsity.md](sparsity.md)."]
    atomic_write_bytes(out / "results.md", ("\n".join(lines) + "\n").encode())
    return table


# ----------------------------------------------------------------------------- sparsity
def _group_labels(bounds: Sequence[int]) -> list[str]:
    labels = [f"{lo}-{hi}" for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    return [*labels, f"{bounds[-1]}+"]


def sparsity_study(
    runs: dict[str, list[str]],
    bounds: Sequence[int] = DEFAULT_GROUPS,
    split: str = "test",
    k: int = 20,
) -> pd.DataFrame:
    """Recall@k and NDCG@k per group of users by training interactions (paper Fig. 2).

    ``runs`` maps a label (a model) to its run directories (e.g. one per seed); metrics
    are averaged over the users of each group, then over the label's runs.
    """
    from diffmm.evaluate import evaluate
    from diffmm.inference import load

    labels = _group_labels(bounds)
    rows = []
    for name, run_dirs in runs.items():
        per_run = []
        for run_dir in run_dirs:
            rec = load(run_dir, device="cpu")
            data = rec.dataset
            emb = (rec.user_emb, rec.item_emb)
            result = evaluate(
                lambda u, rec=rec, emb=emb: rec.model.scores(u, emb),
                data,
                split,
                ks=[k],
                per_user=True,
            )
            users = result["per_user"]["user"]
            degree = np.diff(data.train.indptr)[users]
            group = np.searchsorted(np.asarray(bounds), degree, side="right") - 1
            frame = pd.DataFrame(
                {
                    "group": np.asarray(labels)[np.clip(group, 0, len(labels) - 1)],
                    "recall": result["per_user"][f"recall@{k}"],
                    "ndcg": result["per_user"][f"ndcg@{k}"],
                }
            )
            per_run.append(frame.groupby("group").agg(["mean", "size"]))
        for label in labels:
            present = [f.loc[label] for f in per_run if label in f.index]
            if present:
                rows.append(
                    {
                        "model": name,
                        "group": label,
                        "users": int(present[0][("recall", "size")]),
                        f"recall@{k}": float(np.mean([p[("recall", "mean")] for p in present])),
                        f"ndcg@{k}": float(np.mean([p[("ndcg", "mean")] for p in present])),
                    }
                )
    return pd.DataFrame(rows)


def write_sparsity(table: pd.DataFrame, out: Path, plots: bool = True) -> None:
    """``sparsity.csv``, ``sparsity.md`` and (with ``plots``) ``sparsity.png`` in ``out``."""
    from diffmm import plots as figures

    atomic_write_bytes(out / "sparsity.csv", table.to_csv(index=False).encode())
    metric = next(c for c in table.columns if c.startswith("recall@"))
    ndcg = metric.replace("recall", "ndcg")
    groups = list(dict.fromkeys(table["group"]))
    lines = [
        "# Metrics per user group (training interactions)",
        "",
        "| model | " + " | ".join(f"{g} ({metric})" for g in groups) + " |",
        "|---|" + "---|" * len(groups),
    ]
    values = {}
    for model, g in table.groupby("model", sort=False):
        by_group = dict(zip(g["group"], g[metric], strict=True))
        values[model] = [by_group.get(x, float("nan")) for x in groups]
        lines.append(f"| {model} | " + " | ".join(f"{v:.4f}" for v in values[model]) + " |")
    users = dict(zip(table["group"], table["users"], strict=False))
    lines += ["", "Users per group: " + ", ".join(f"{g}: {users[g]}" for g in groups)]
    lines += ["", f"NDCG per group is in sparsity.csv ({ndcg})."]
    if plots:
        figures.grouped_bar_plot(
            groups,
            values,
            out / "sparsity.png",
            title=f"Test {metric} per user group",
            xlabel="training interactions of the user",
            ylabel=metric,
        )
        lines += ["", "![sparsity](sparsity.png)"]
    atomic_write_bytes(out / "sparsity.md", ("\n".join(lines) + "\n").encode())


# ----------------------------------------------------------------------------- sweeps
#: The DiffMM authors' flag names accepted in sweep grids, and the setting each one is.
AUTHOR_FLAGS = {
    "reg": "l2_weight",
    "ssl_reg": "cl_weight",
    "e_loss": "msi_weight",
    "temp": "temperature",
    "ris_lambda": "residual_weight",
    "ris_adj_lambda": "generated_graph_weight",
    "keepRate": "keep_rate",
    "steps": "diffusion_steps",
    "sampling_steps": "sampling_steps",
    "d_emb_size": "step_embedding_dim",
    "latdim": "embedding_dim",
    "gnn_layer": "n_layers",
    "batch": "train.batch_size",
    "lr": "train.lr",
}


def parse_grid(grid: Sequence[str]) -> dict[str, list[str]]:
    """``["ssl_reg=1e-2,1e-1"]`` -> ``{"cl_weight": ["1e-2", "1e-1"]}`` (authors' names mapped)."""
    out: dict[str, list[str]] = {}
    for item in grid:
        key, eq, values = item.partition("=")
        key = key.strip()
        if not eq or not values.strip():
            raise ConfigError(f"--grid {item!r}: use KEY=V1,V2,... (e.g. temp=0.1,0.5,1)")
        name = AUTHOR_FLAGS.get(key, key)
        if name in out:
            raise ConfigError(f"--grid {item!r}: {name!r} appears twice")
        out[name] = [v.strip() for v in values.split(",") if v.strip()]
    if not out:
        raise ConfigError("give at least one --grid KEY=V1,V2,...")
    return out


def run_sweep(
    spec: BenchmarkSpec,
    grid: dict[str, list[str]],
    out: str | Path,
    log: Callable[[str], None] = print,
    plots: bool = True,
) -> pd.DataFrame:
    """Train ``spec.models[0]`` for every point of ``grid``; select on validation Recall@20.

    Writes ``sweep.md``, ``sweep.csv`` and a plot (a line per setting for a 1-d grid, heat
    maps of validation and test Recall@20 for a 2-d grid). Test is reported for every
    point but never used to choose one.
    """
    import itertools

    from diffmm import plots as figures

    out = Path(out)
    (model,) = spec.models
    names = list(grid)
    rows = []
    for values in itertools.product(*(grid[n] for n in names)):
        point = dict(zip(names, values, strict=True))
        label = ",".join(f"{n}={v}" for n, v in point.items())
        point_spec = BenchmarkSpec(
            **{**spec.__dict__, "sets": [*spec.sets, *(f"{n}={v}" for n, v in point.items())]}
        )
        point_spec.validate()
        for seed in spec.seeds:
            run_dir = out / "runs" / f"{label.replace('/', '_')}-seed{seed}"
            _run_one(point_spec.command(model, seed, run_dir), run_dir, log)
            summary = json.loads((run_dir / "summary.json").read_text())
            rows.append(
                {
                    **point,
                    "seed": seed,
                    "valid_recall@20": summary["valid"].get("recall@20", float("nan")),
                    "test_recall@20": summary["test"]["recall@20"],
                    "test_ndcg@20": summary["test"]["ndcg@20"],
                    "best_epoch": summary["best_epoch"],
                }
            )
    runs = pd.DataFrame(rows)
    table = runs.groupby(names, sort=False).mean(numeric_only=True).reset_index()
    table = table.drop(columns=["seed"])
    best = int(table["valid_recall@20"].idxmax())
    table["selected"] = ["*" if i == best else "" for i in range(len(table))]
    atomic_write_bytes(out / "sweep.csv", table.to_csv(index=False).encode())
    lines = [
        f"# Sweep of {model} on {spec.data}",
        "",
        f"Seeds {', '.join(map(str, spec.seeds))}; each point's epoch is selected on validation "
        "Recall@20; the point marked * has the best validation Recall@20 (the choice). "
        "Test is shown for every point and never used to choose.",
        "",
        "| " + " | ".join([*names, "valid R@20", "test R@20", "test NDCG@20", "epoch", ""]) + " |",
        "|" + "---|" * (len(names) + 5),
    ]
    for _, r in table.iterrows():
        cells = [str(r[n]) for n in names]
        cells += [f"{r['valid_recall@20']:.4f}", f"{r['test_recall@20']:.4f}"]
        cells += [f"{r['test_ndcg@20']:.4f}", f"{r['best_epoch']:.0f}", r["selected"]]
        lines.append("| " + " | ".join(cells) + " |")
    if plots and len(names) == 1:
        x = [float(v) for v in table[names[0]]]
        figures.line_plot(
            {
                "validation": (x, table["valid_recall@20"].tolist()),
                "test": (x, table["test_recall@20"].tolist()),
            },
            out / "sweep.png",
            title=f"Recall@20 of {model} against {names[0]}",
            xlabel=names[0],
            ylabel="Recall@20",
        )
        lines += ["", "![sweep](sweep.png)"]
    elif plots and len(names) == 2:
        rows_v, cols_v = grid[names[0]], grid[names[1]]
        for split in ("valid", "test"):
            matrix = np.full((len(rows_v), len(cols_v)), np.nan)
            for _, r in table.iterrows():
                matrix[rows_v.index(str(r[names[0]])), cols_v.index(str(r[names[1]]))] = r[
                    f"{split}_recall@20"
                ]
            figures.heatmap(
                matrix,
                rows_v,
                cols_v,
                out / f"sweep_{split}.png",
                title=f"{split} Recall@20 of {model}",
                xlabel=names[1],
                ylabel=names[0],
            )
        lines += ["", "![valid](sweep_valid.png) ![test](sweep_test.png)"]
    atomic_write_bytes(out / "sweep.md", ("\n".join(lines) + "\n").encode())
    return table
