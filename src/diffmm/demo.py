"""The demo behind ``make demo``: DiffMM next to LightGCN on the built-in synthetic data.

The synthetic data (:func:`diffmm.data.make_synthetic`) plants user and item factors;
one item modality ("visual") is a noisy projection of the item factors and the other
("acoustic") is mostly noise, so a multi-modal model has something to learn from.
Both models are trained under the project's protocol (selection on validation, test
once) and the same budget: the same epoch limit, patience and learning rate (LightGCN's
best of 0.005 and 0.02 on validation; DiffMM's ``cl_anchor=main`` is its better anchor on
validation too; see ``benchmarks/results/demo.md``), so the
comparison says which model learns more from these data, not which one was stopped
early. The demo prints their metrics side by side and DiffMM's picks for a few users.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import torch

from diffmm import logs
from diffmm.checkpoint import DataRef
from diffmm.config import resolve_config
from diffmm.data import make_synthetic
from diffmm.data.dataset import Dataset
from diffmm.errors import ConfigError
from diffmm.evaluate import top_k_items
from diffmm.inference import load
from diffmm.models.base import Recommender
from diffmm.trainer import train

#: The budget both models get: at most this many epochs, early stopping after this many
#: validations without improvement, one learning rate.
EPOCHS = 100
BUDGET = [f"train.epochs={EPOCHS}", "train.patience=10", "train.lr=0.005"]
#: Each model's own settings on top of the budget.
DEMO_RUNS: dict[str, list[str]] = {
    "lightgcn": [*BUDGET],
    "diffmm": [*BUDGET, "cl_anchor=main"],
}
METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "precision@20")


def _train(name: str, dataset: Dataset, out: Path, epochs: int | None) -> tuple[dict, Recommender]:
    overrides = list(DEMO_RUNS[name])
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    config = resolve_config(name, overrides=overrides)
    start = time.perf_counter()
    # The runs are complete run directories: `diffmm recommend runs/demo-.../diffmm` works.
    with logs.quiet("diffmm.trainer"):  # the demo prints its own lines
        summary = train(config, dataset, out / name, data_ref=DataRef("synthetic"))
    summary["seconds"] = time.perf_counter() - start
    return summary, load(out / name, device=config.train.device).model


def run_demo(out: Path, epochs: int | None = None, n_users_shown: int = 3) -> dict[str, dict]:
    """Train both models into the new folder ``out``; print a comparison and a few picks.

    An ``out`` that holds anything is refused (ConfigError): the demo writes only new files.
    """
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise ConfigError(
            f"{out}: exists and is not an empty folder; the demo writes its runs to a new "
            "folder: name another --out"
        )
    dataset = make_synthetic()
    click.echo(
        f"synthetic data: {dataset.n_users} users, {dataset.n_items} items, "
        f"{dataset.train.nnz} training interactions, modalities "
        + ", ".join(f"{k} ({v.shape[1]}-d)" for k, v in dataset.features.items())
    )
    summaries, models = {}, {}
    for name in ("lightgcn", "diffmm"):
        click.echo(f"training {name} ...")
        summaries[name], models[name] = _train(name, dataset, out, epochs)

    click.echo(
        f"\nboth models had the same budget (at most {epochs or EPOCHS} epochs, patience 10, "
        "lr 0.005);"
        "\ntest metrics at the epoch each one selected on validation:"
    )
    click.echo(f"{'model':<10}" + "".join(f"{m:>14}" for m in METRICS) + f"{'epoch':>7}{'s':>7}")
    for name, summary in summaries.items():
        row = "".join(f"{summary['test'][m]:>14.4f}" for m in METRICS)
        click.echo(f"{name:<10}{row}{summary['best_epoch']:>7}{summary['seconds']:>7.0f}")

    model = models["diffmm"].eval()
    users = torch.arange(n_users_shown, device=model.device)
    with torch.no_grad():
        items, _ = top_k_items(model.scores(users), 5, exclude=dataset.train[:n_users_shown])
    held_out = dataset.test[:n_users_shown]
    click.echo("\nDiffMM's top-5 for a few users (training items excluded; * = a test item):")
    for u, row in zip(users.tolist(), items.cpu().tolist(), strict=True):
        test_items = set(held_out[u].indices.tolist())
        picks = ", ".join(
            f"{dataset.item_ids[i] if dataset.item_ids is not None else i}"
            + ("*" if i in test_items else "")
            for i in row
        )
        raw = dataset.user_ids[u] if dataset.user_ids is not None else u
        click.echo(f"  user {raw}: {picks}")
    click.echo(f"\nrun directories: {out}/lightgcn, {out}/diffmm")
    click.echo(f"next: diffmm recommend {out}/diffmm --user 0 -k 10")
    return summaries
