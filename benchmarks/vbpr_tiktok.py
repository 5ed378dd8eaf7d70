"""Why VBPR stays at or below MF on TikTok (fair table, issue 15 §3): which part ranks.

VBPR's score is the sum of three parts (:mod:`diffmm.models.vbpr`): the ID part
``gamma_u . gamma_i``, the content part ``theta_u . E f_i`` and the item bias
``beta_i + beta' . f_i``. This script trains VBPR on TikTok (seed 421, the fair table's
fixed settings) at the fair table's chosen point for raw features (lr 0.002, L2 0.1) in
these forms: with the raw features it had until ffbb002, alone and with the L2 on its
content columns (``theta_u`` and ``E f_i``) scaled by 0.1, 0.01 and 0.001 (not in the
library), and with the centred features the library now gives it (each column's mean
over the items removed: the same predictors, since ``theta_u . E m`` and ``beta' . m``
are constant over a user's items, but 85% of the image rows' squared norm is that mean,
which the L2 on ``E f_i`` paid for). For each run it ranks validation by each part
alone and records each part's per-user spread of scores (the mean over users of the
standard deviation over items). MF at its own chosen point and a popularity ranking
give the scale. Test is shown; nothing is chosen by it. Writes
``benchmarks/results/vbpr_tiktok.{md,json}``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vbpr_tiktok.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

import diffmm
import fair_table
from bm3_ml100k import popularity_recall, train_counts
from common import (
    RESULTS,
    RUNS,
    chosen_variants,
    provenance,
    require_dataset,
    saved_results,
    slug,
    write_results,
)
from diffmm.evaluate import evaluate
from diffmm.models import vbpr
from diffmm.models.common import bpr_loss, l2_on_batch

K = 20
#: The fair table's fixed settings and seed (as ``diffmm.train`` keywords).
FIXED: dict[str, Any] = {
    "seed": 421,
    "epochs": 1000,
    "batch_size": 4096,
    "eval_every": 5,
    "patience": 10,
    "progress": False,
}
assert {f"train.{k}={v}".lower() for k, v in FIXED.items() if k != "seed"} == {
    s.lower() for s in fair_table.FIXED
}, "FIXED must follow fair_table.FIXED"
#: VBPR's and MF's chosen points in fair_table_tiktok.md.
VBPR_POINT = {"lr": 0.002, "l2_weight": 0.1}
MF_POINT = {"lr": 0.005, "l2_weight": 0.1}


@contextlib.contextmanager
def content_l2(factor: float) -> Iterator[None]:
    """VBPR with the L2 on its content columns (``theta_u``, ``E f_i``) times ``factor``."""

    def loss(self: vbpr.VBPR, batch: Any) -> dict[str, torch.Tensor]:
        u = self.user_repr(batch.users)
        pos_repr, neg_repr = self.item_repr(batch.pos_items), self.item_repr(batch.neg_items)
        pos, neg = (u * pos_repr).sum(-1), (u * neg_repr).sum(-1)
        ids, content, _ = parts(self)
        rest = [r[:, ids] for r in (u, pos_repr, neg_repr)] + [pos_repr[:, -1:], neg_repr[:, -1:]]
        l2 = l2_on_batch(*rest) + factor * l2_on_batch(
            *(r[:, content] for r in (u, pos_repr, neg_repr))
        )
        return {"bpr": bpr_loss(pos, neg), "l2": self.config.l2_weight * l2}

    with patched(vbpr.VBPR, "loss", loss):
        yield


@contextlib.contextmanager
def raw_features() -> Iterator[None]:
    """VBPR fed the raw features, as before ffbb002 (the library now centres them)."""
    original = vbpr.VBPR.__init__

    def init(self: vbpr.VBPR, config: vbpr.Config, dataset: Any) -> None:
        original(self, config, dataset)
        raw = np.concatenate(list(dataset.features.values()), axis=1)
        self.features = torch.from_numpy(raw).to(self.features.device)

    with patched(vbpr.VBPR, "__init__", init):
        yield


@contextlib.contextmanager
def raw_with_content_l2(factor: float) -> Iterator[None]:
    with raw_features(), content_l2(factor):
        yield


@contextlib.contextmanager
def patched(cls: type, name: str, value: Callable[..., Any]) -> Iterator[None]:
    original = getattr(cls, name)
    setattr(cls, name, value)
    try:
        yield
    finally:
        setattr(cls, name, original)


#: name: (model, its point, how the model is changed while it trains and is read)
VARIANTS: dict[str, tuple[str, dict[str, float], Callable[[], Any]]] = {
    "raw features": ("vbpr", VBPR_POINT, raw_features),
    "raw, content L2 x 0.1": ("vbpr", VBPR_POINT, lambda: raw_with_content_l2(0.1)),
    "raw, content L2 x 0.01": ("vbpr", VBPR_POINT, lambda: raw_with_content_l2(0.01)),
    "raw, content L2 x 0.001": ("vbpr", VBPR_POINT, lambda: raw_with_content_l2(0.001)),
    "centred features": ("vbpr", VBPR_POINT, contextlib.nullcontext),
    "centred features, lr 0.005": ("vbpr", {**VBPR_POINT, "lr": 0.005}, contextlib.nullcontext),
    "MF (reference)": ("mf", MF_POINT, contextlib.nullcontext),
}


def parts(model: vbpr.VBPR) -> tuple[slice, slice, slice]:
    """Columns of VBPR's representations: ID factors, content factors, the bias column."""
    k, c = model.item_gamma.weight.shape[1], model.user_theta.weight.shape[1]
    return slice(0, k), slice(k, k + c), slice(k + c, None)


def decompose(run: diffmm.Run) -> dict[str, dict[str, float]]:
    """Validation Recall@20 of each part of VBPR's score alone, and its per-user spread."""
    model, dataset = run.recommender.model, run.recommender.dataset
    names = ("all", "ID", "content", "bias")
    with torch.no_grad():
        users, items = model.embeddings()
        columns = [slice(0, None), *parts(model)]
        out = {}
        for name, cols in zip(names, columns, strict=True):
            u, i = users[:, cols], items[:, cols]
            recall = evaluate(lambda b, u=u, i=i: u[b] @ i.T, dataset, "valid", ks=[K])
            spread = (u[:1000] @ i.T).std(1).mean()
            out[name] = {"valid": recall[f"recall@{K}"], "spread": float(spread)}
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# VBPR on TikTok: which part of its score ranks",
        "",
        f"Command: `{result['command']}`; revision `{result['revision']}`; machine "
        f"{result['machine']['cpu']}, {result['machine']['cores']} cores.",
        "",
        "Seed 421, the fair table's fixed settings; VBPR at the point chosen there for raw "
        "features (lr 0.002, L2 0.1) unless the row says otherwise, MF at its own "
        "(lr 0.005, L2 0.1). "
        "Each part column: validation Recall@20 when items are ranked by that part of the "
        "score alone, and (in brackets) its per-user spread, the mean over users of the "
        "standard deviation of that part over the items.",
        "",
        "| run | best epoch | valid R@20 | test R@20 | ID part | content part | bias part |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for name, row in result["runs"].items():
        cells = [
            f"{row['parts'][p]['valid']:.4f} ({row['parts'][p]['spread']:.3f})"
            if p in row["parts"]
            else "–"
            for p in ("ID", "content", "bias")
        ]
        lines.append(
            f"| {name} | {row['best_epoch']} | {row['valid']:.4f} | {row['test']:.4f} | "
            + " | ".join(cells)
            + " |"
        )
    pop = result["popularity"]
    lines += [
        f"| popularity (no training) | – | {pop['valid']:.4f} | {pop['test']:.4f} | – | – | – |",
        "",
        *result.get("findings", []),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=None, help="Comma-separated variant names.")
    args = parser.parse_args()
    data = require_dataset("tiktok")
    stem = RESULTS / "vbpr_tiktok"
    saved = saved_results(stem)
    runs = saved.get("runs", {})
    pop = None
    for name, (model, point, change) in chosen_variants(VARIANTS, args.only).items():
        run_dir = RUNS / "vbpr-tiktok" / slug(name)
        shutil.rmtree(run_dir, ignore_errors=True)  # the benchmark's own run: start afresh
        with change():
            run = diffmm.train(model, data, out=run_dir, **point, **FIXED)
            dataset = run.recommender.dataset
            pop = pop or popularity_recall(dataset, train_counts(dataset))
            summary = run.summary
            runs[name] = {
                "model": model,
                "settings": point,
                "best_epoch": summary["best_epoch"],
                "valid": summary["valid"][f"recall@{K}"],
                "test": summary["test"][f"recall@{K}"],
                "parts": decompose(run) if model == "vbpr" else {},
            }
        print(name, json.dumps(runs[name]), flush=True)
    result = {**provenance(), "popularity": pop or saved.get("popularity"), "runs": runs}
    write_results(stem, result, saved, markdown)


if __name__ == "__main__":
    main()
