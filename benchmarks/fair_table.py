"""A fair comparison (issue 15 §3): every model gets the same tuning budget on validation.

For each model, ``diffmm sweep`` trains one seed (421) at every point of the model's grid
(its most sensitive settings; the same number of points for every model, listed in the
results), chooses the point with the best validation Recall@20, and trains that point
with seeds 421, 422 and 423 (the first is the sweep's own run, reused). Test is shown
for every point but never used to choose. Writes
``benchmarks/results/fair_table_<dataset>.{md,json}``.

    .venv/bin/python benchmarks/fair_table.py --dataset tiktok --models mf,vbpr
    .venv/bin/python benchmarks/fair_table.py --dataset ml100k --models mf,vbpr,lightgcn
    .venv/bin/python benchmarks/fair_table.py --models mf,vbpr --set embedding_dim=128

``--set`` adds a setting to every run and makes the table a variant of its own
(``fair_table_tiktok-embedding_dim=128``, its runs apart), tuned by the same rules.

MovieLens-100K gets its genres as multi-hot features (``diffmm features multihot``), and
with ``--text`` also the sentence embedding of title + genres that Table 1 uses (needs
the [text] extra and its model).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd

import fair_ledger
import per_user
from common import (
    RESULTS,
    RUNS,
    ml100k_features,
    provenance,
    repo_path,
    require_dataset,
    slug,
)
from common import write_atomic as write
from diffmm.models.diffmm_config import DiffMMConfig


def decades(centre: float) -> list[str]:
    """Three values a decade apart around ``centre``, written as the sweep names them."""
    return [f"{centre * factor:g}" for factor in (0.1, 1, 10)]


#: Each model's grid: learning rate and L2 weight, six points (the same budget for every
#: model), around the settings that tuned MF and LightGCN on TikTok (baselines.md).
LR_L2 = {"train.lr": ["0.002", "0.005"], "l2_weight": ["1e-3", "1e-2", "1e-1"]}
MODELS = ("mf", "vbpr", "lightgcn", "lightgcn_m", "lattice", "bm3", "freedom", "diffmm")
GRIDS: dict[str, dict[str, list[str]]] = {
    **dict.fromkeys(MODELS, LR_L2),
    # DiffMM's L2 is λ2 (|E_U|² + |E_I|²) on the whole tables at every step (spec §5), not
    # the batch's rows over the batch size, so one weight penalises it some thousands of
    # times harder than the others: the shared decades would try only over-regularised
    # points. Its L2 decades (as many, as far apart) are centred on its paper default.
    "diffmm": {**LR_L2, "l2_weight": decades(DiffMMConfig.model_fields["l2_weight"].default)},
}
SEEDS = (421, 422, 423)  # what `--seeds 3` trains
#: What a table's items carry, by (dataset, --text), as its report says.
FEATURES = {
    ("tiktok", False): "visual and acoustic (the dataset's own)",
    ("ml100k", False): "genres (multi-hot)",
    ("ml100k", True): "genres (multi-hot) and text (all-MiniLM-L6-v2 embedding of title + genres)",
}
#: The ID-only model every other one is paired with: what content or a graph must beat.
REFERENCE = "mf"
#: A grid whose best point lies on its edge is extended by one step past that edge, at
#: most this often: the same rule for every model, so the budget grows only where a grid
#: was too narrow, and every point tried is listed.
MAX_EXTENSIONS = 2
#: The protocol of baselines.md: large batches, validation every 5 epochs, stop after 10
#: validations without improvement (MF needs a few hundred epochs on TikTok).
FIXED = [
    "train.epochs=1000",
    "train.batch_size=4096",
    "train.eval_every=5",
    "train.patience=10",
    "train.progress=false",
]


def sweep(
    data: list[str],
    model: str,
    grid: dict[str, list[str]],
    seeds: str,
    out: Path,
    extra: list[str],
    jobs: int = 1,
) -> Path:
    exe = Path(sys.executable).with_name("diffmm")
    cmd = [str(exe), "sweep", "--model", model, *data, "--seeds", seeds, "--jobs", str(jobs)]
    cmd += ["--out", repo_path(out)]
    for key, values in grid.items():
        cmd += ["--grid", f"{key}={','.join(values)}"]
    for s in [*FIXED, *extra]:
        cmd += ["--set", s]
    print(shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out / "sweep.csv"


def label(dataset: str, extra: list[str], text: bool = False) -> str:
    """The name of a table and its runs: the dataset, ``text`` if its items also have text
    features, then each of ``extra``'s settings (``tiktok-embedding_dim=128``), so that a
    variant never reuses the plain table's runs."""
    return "-".join([dataset, *(["text"] if text else []), *map(slug, extra)])


def run_dir(dataset: str, model: str, point: dict[str, str], seed: int) -> Path:
    """The run directory of one run of ``model`` at grid ``point`` (what the sweep makes)."""
    label = ",".join(f"{k}={v}" for k, v in point.items())
    return RUNS / f"fair-{dataset}-{model}" / "runs" / f"{label}-seed{seed}"


def stored_name(dataset: str, model: str, seed: int) -> str:
    """The name of a confirmation run's per-user values in ``results/per_user/``."""
    return f"fair-{dataset}-{model}-seed{seed}"


def _edge(values: list[str], value: str) -> int | None:
    """0 or -1 when ``value`` is the first or last of 3 or more ``values``, else None."""
    if len(values) < 3 or value not in (values[0], values[-1]):
        return None
    return 0 if value == values[0] else -1


def extended(grid: dict[str, list[str]], chosen: dict[str, str]) -> dict[str, list[str]] | None:
    """``grid`` with one more value past each edge (:func:`grid_edges`) that ``chosen``
    lies on, a geometric step as between the two values at that end; None if none."""
    wider = {key: list(values) for key, values in grid.items()}
    for key, value in chosen.items():
        end = _edge(grid[key], value)
        if end is None:
            continue
        outer, inner = float(grid[key][end]), float(grid[key][1 if end == 0 else -2])
        wider[key].insert(len(wider[key]) if end else 0, f"{outer**2 / inner:g}")
    return wider if wider != grid else None


def tune(
    data: list[str], dataset: str, model: str, revision: str, extra: list[str], jobs: int = 1
) -> dict[str, Any]:
    """Tune ``model`` on its grid, then confirm the chosen point with every seed; ``extra``
    settings apply to every run (``dataset`` then names the variant, see :func:`label`);
    ``jobs`` runs train at a time (``diffmm sweep --jobs``)."""
    out = RUNS / f"fair-{dataset}-{model}"
    grid = GRIDS[model]

    if restored := fair_ledger.restore(out):
        print(f"{model}: {len(restored)} finished runs rebuilt from {fair_ledger.LEDGER}")

    def swept(grid: dict[str, list[str]], seeds: str) -> pd.DataFrame:
        # --seeds is a count (1 = seed 421, 3 = seeds 421-423) or a list with commas
        csv = sweep(data, model, grid, seeds, out, extra, jobs)
        fair_ledger.record(out)
        return pd.read_csv(csv, dtype={k: str for k in grid})

    def chosen_on(grid: dict[str, list[str]]) -> tuple[pd.DataFrame, dict[str, str]]:
        table = swept(grid, "1")
        best = table[table["selected"] == "*"].iloc[0]
        return table, {k: str(best[k]) for k in grid}

    table, point = chosen_on(grid)
    extensions = 0
    while extensions < MAX_EXTENSIONS and (wider := extended(grid, point)) is not None:
        grid, extensions = wider, extensions + 1  # the sweep reuses the finished points
        table, point = chosen_on(grid)
    confirm = swept({k: [v] for k, v in point.items()}, str(len(SEEDS)))
    runs = []
    for seed in SEEDS:
        folder = run_dir(dataset, model, point, seed)
        summary = json.loads((folder / "summary.json").read_text())
        runs.append({"seed": seed, "valid": summary["valid"], "test": summary["test"]})
        # kept for the paired comparisons with DiffMM (significance.py)
        name, recorded = stored_name(dataset, model, seed), summary["test"]["recall@20"]
        per_user.values(folder, name, revision, recorded)
    recall = [r["test"]["recall@20"] for r in runs]
    return {
        "grid": grid,
        "grid_extensions": extensions,
        "points": table.drop(columns=["selected"]).to_dict(orient="records"),
        "chosen": point,
        "runs": runs,
        "test_recall@20": recall,
        "mean": statistics.fmean(recall),
        "std": statistics.stdev(recall),
        "confirmation_table": confirm.to_dict(orient="records"),
    }


def against_reference(name: str, results: dict[str, Any], revision: str) -> dict[str, Any]:
    """Each model minus :data:`REFERENCE` over their common seeds, and per user averaged
    over those seeds (:func:`significance.versus`); ``name`` is the table's
    (:func:`label`), ``revision`` its own for models recorded without one."""
    import significance  # it imports this module

    if REFERENCE not in results:
        return {}
    reference = significance.baseline_runs(name, REFERENCE, results[REFERENCE], revision)
    rows = {}
    for model, entry in results.items():
        runs = significance.baseline_runs(name, model, entry, revision)
        sides = ("model", REFERENCE)
        if model != REFERENCE and (row := significance.versus(runs, reference, sides)):
            rows[model] = row
    return rows


def grid_edges(grid: dict[str, list[str]], chosen: dict[str, str]) -> list[str]:
    """The settings whose chosen value is the grid's smallest or largest (of 3 or more):
    the best point may lie beyond the grid."""
    return [f"{k}={v}" for k, v in chosen.items() if _edge(grid[k], v) is not None]


def markdown(meta: dict[str, Any], results: dict[str, Any], versus: dict[str, Any]) -> str:
    lines = [
        f"# Fair comparison on {meta['dataset']}: the same tuning budget for every model",
        "",
        *(
            [f"Every run also sets {', '.join(f'`{s}`' for s in meta['sets'])}.", ""]
            if meta.get("sets")
            else []
        ),
        *([f"Item features: {meta['features']}.", ""] if meta.get("features") else []),
        f"Last command: `{meta['command']}` (earlier ones tuned the models of other "
        f"revisions in the table); revision `{meta['revision']}`; machine "
        f"{meta['machine']['cpu']}, {meta['machine']['cores']} cores, {meta['machine']['date']}.",
        "",
        "Each model: its grid with seed 421, the point with the best validation Recall@20, "
        "then that point with seeds 421-423 (test Recall@20, mean ± std). A grid whose best "
        f"point lay on its edge was extended by one step past it, up to {MAX_EXTENSIONS} "
        "times (the same rule for every model; the grid column shows the final grid, and "
        "every point is listed below). Rows tuned before that rule say `–` in its column. "
        "DiffMM's L2 is on its whole embedding tables at every step, not on the batch's "
        "rows, so its L2 decades are centred on its paper default rather than shared.",
        "",
        "| model | grid | extensions | chosen | test recall@20 (3 seeds) | revision |",
        "|---|---|---|---|---|---|",
    ]
    edges = {}
    for model, r in results.items():
        grid = "; ".join(f"`{k}` {', '.join(v)}" for k, v in r["grid"].items())
        chosen = ", ".join(f"`{k}={v}`" for k, v in r["chosen"].items())
        revision = r.get("revision", meta["revision"])[:7]
        if found := grid_edges(r["grid"], r["chosen"]):
            edges[model] = found
            chosen += " †"
        lines.append(
            f"| {model} | {grid} | {r.get('grid_extensions', '–')} | {chosen} | "
            f"{r['mean']:.4f} ± {r['std']:.4f} | {revision} |"
        )
    if edges:
        where = "; ".join(f"{m}: {', '.join(f'`{e}`' for e in v)}" for m, v in edges.items())
        lines += [
            "",
            f"† chosen at the edge of a grid of 3 or more values ({where}): a wider grid may "
            "find a better point, so this model may be under-tuned.",
        ]
    if versus:
        from significance import difference_cells

        lines += [
            "",
            f"## Against {REFERENCE}, paired by seed and by user",
            "",
            f"Δ is the model minus {REFERENCE} on the same seeds: over seeds with a 95% t "
            "interval (training noise), and per user averaged over the seeds with a 95% "
            "paired bootstrap interval and sign-flip p (test-set noise).",
            "",
            f"| model | seeds | {REFERENCE} R@20 | model R@20 | Δ over seeds [95% t] | "
            "Δ per user [95% bootstrap] | p |",
            "|---|---|---|---|---|---|---|",
        ]
        for model, row in versus.items():
            cells = " | ".join(difference_cells(row))
            lines.append(
                f"| {model} | {', '.join(map(str, row['seeds']))} | "
                f"{statistics.fmean(row[REFERENCE + '_recall@20']):.4f} | "
                f"{statistics.fmean(row['model_recall@20']):.4f} | {cells} |"
            )
    commands = [f"- {m}: `{r['command']}`" for m, r in results.items() if r.get("command")]
    if commands:
        lines += ["", "Commands (the others: the last command above, or earlier ones):", ""]
        lines += commands
    for model, r in results.items():
        lines += ["", f"## {model}: every point (seed 421)", ""]
        keys = list(r["points"][0])
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for p in r["points"]:
            cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in p.values()]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="tiktok")
    parser.add_argument("--models", default="mf,vbpr")
    parser.add_argument("--text", action="store_true", help="ml100k: also text features.")
    parser.add_argument(
        "--report-only", action="store_true", help="Rewrite the reports, training nothing."
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="A setting for every run of the listed models (repeatable); the table and its "
        "runs are then a variant of their own, fair_table_<dataset>-<settings>.",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="Runs at a time, the cores shared out (diffmm sweep --jobs); the numbers do "
        "not depend on it.",
    )
    parser.add_argument(
        "--record-only",
        action="store_true",
        help="Keep the listed models' finished runs in results/fair_runs (for runs that "
        "another command trained), training nothing.",
    )
    args = parser.parse_args()
    if args.text and args.dataset != "ml100k":
        parser.error(f"--text: only ml100k has item texts here, not {args.dataset}")
    name = label(args.dataset, args.set, text=args.text)
    stem = RESULTS / f"fair_table_{name}"
    if args.record_only:
        for model in args.models.split(","):
            kept = fair_ledger.record(RUNS / f"fair-{name}-{model}")
            print(f"{model}: kept {len(kept)} finished runs: {', '.join(kept) or '-'}")
        return
    if args.report_only:
        saved = json.loads(stem.with_suffix(".json").read_text())
        saved.setdefault("features", FEATURES.get((args.dataset, args.text)))
        versus = against_reference(name, saved["models"], saved["revision"])
        saved["versus_" + REFERENCE] = versus
        write(stem.with_suffix(".json"), json.dumps(saved, indent=2) + "\n")
        write(stem.with_suffix(".md"), markdown(saved, saved["models"], versus))
        return
    if args.dataset == "ml100k":  # a table: --data names the file, features come apart
        features = ml100k_features(text=args.text)
        inter = require_dataset("ml-100k") / "ml-100k.inter"
        data = ["--data", repo_path(inter), "--features", repo_path(features)]
    else:
        data = ["--data", repo_path(require_dataset(args.dataset))]
    meta = {
        "dataset": args.dataset,
        **provenance(),
        "fixed": FIXED,
        "sets": args.set,
        "features": FEATURES.get((args.dataset, args.text)),
    }
    # models tuned by an earlier command stay, each with the revision it ran at
    saved = (
        json.loads(stem.with_suffix(".json").read_text())
        if stem.with_suffix(".json").exists()
        else {}
    )
    results = {m: {"revision": saved["revision"], **r} for m, r in saved.get("models", {}).items()}
    for model in args.models.split(","):
        tuned = tune(data, name, model, meta["revision"], args.set, args.jobs)
        results[model] = {**tuned, "revision": meta["revision"], "command": meta["command"]}
    versus = against_reference(name, results, meta["revision"])
    result = {**meta, "models": results, "versus_" + REFERENCE: versus}
    write(stem.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    write(stem.with_suffix(".md"), markdown(meta, results, versus))
    print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
