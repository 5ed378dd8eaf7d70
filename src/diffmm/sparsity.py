"""The sparsity study (paper Fig. 2): test metrics per group of users by training interactions.

:func:`sparsity_study` scores trained runs per user and averages over the users of each
group; :func:`write_sparsity` writes the table, CSV and plot. The cut-off ``k`` is the
runs' own (see :func:`cut_off_of`) unless given.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from diffmm.utils import atomic_write_bytes

#: User groups of the sparsity study: number of training interactions in [lo, hi).
DEFAULT_GROUPS = (0, 5, 10, 20)


def _group_labels(bounds: Sequence[int]) -> list[str]:
    labels = [f"{lo}-{hi}" for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    return [*labels, f"{bounds[-1]}+"]


def cut_off_of(run_dirs: Sequence[str | Path]) -> int:
    """The cut-off the runs are read at: that of their validation metric when they share
    one (``train.metric``), else the largest cut-off every run evaluated (``train.ks`` and
    the metric's), else the first run's metric's."""
    from diffmm.checkpoint import RunDir

    trains = [RunDir(run_dir).read_config().train for run_dir in run_dirs]
    metric_ks = [int(t.metric.partition("@")[2]) for t in trains]
    if len(set(metric_ks)) == 1:
        return metric_ks[0]
    common = set.intersection(*({*t.ks, k} for t, k in zip(trains, metric_ks, strict=True)))
    return max(common) if common else metric_ks[0]


def sparsity_study(
    runs: dict[str, list[str]],
    bounds: Sequence[int] = DEFAULT_GROUPS,
    split: str = "test",
    k: int | None = None,
) -> pd.DataFrame:
    """Recall@k and NDCG@k per group of users by training interactions (paper Fig. 2).

    ``runs`` maps a label (a model) to its run directories (e.g. one per seed); metrics
    are averaged over the users of each group, then over the label's runs. ``k`` defaults
    to the runs' configured cut-off (:func:`cut_off_of`).
    """
    from diffmm.evaluate import evaluate
    from diffmm.inference import load

    if k is None:
        k = cut_off_of([run_dir for run_dirs in runs.values() for run_dir in run_dirs])
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


def write_sparsity(
    table: pd.DataFrame, out: Path, plots: bool = True, metric: str | None = None
) -> None:
    """``sparsity.csv``, ``sparsity.md`` and (with ``plots``) ``sparsity.png`` in ``out``.

    The Markdown and the plot show ``metric`` when the table has it (e.g. the runs'
    validation metric ``ndcg@20``), else Recall; the other metric is in the CSV.
    """
    from diffmm import plots as figures

    atomic_write_bytes(out / "sparsity.csv", table.to_csv(index=False).encode())
    recall = next(c for c in table.columns if c.startswith("recall@"))
    metric = metric if metric in table.columns else recall
    other = recall.replace("recall", "ndcg") if metric == recall else recall
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
    name = {"recall": "Recall", "ndcg": "NDCG"}[other.partition("@")[0]]
    lines += ["", f"{name} per group is in sparsity.csv ({other})."]
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
