"""DiffMM against the tuned baselines, with confidence intervals (issue 15's README target).

DiffMM's runs are chosen on validation between its tuned configurations, each with
seeds 421-423: on the plain TikTok table, the TikTok preset (``diffmm_tiktok.py``, the
authors' settings) and the point its fair-table grid chose (``fair_table.py``), by mean
validation Recall@20 over the seeds; on any other fair table, its grid's point. They
are paired with each baseline's confirmation runs of the fair table (the model's grid
point chosen on validation, the same seeds), on validation-selected test Recall@20, two
ways as in the ablations (``ablations.py``):

- over seeds: DiffMM minus the baseline, seed by seed, with a t interval;
- per user: each run scored per user on test (``diffmm report compare``'s protocol,
  :func:`diffmm.compare.per_user_metrics`), each user's value averaged over the seeds,
  then :func:`diffmm.compare.paired_comparison`'s bootstrap interval and sign-flip p.

The per-user values come from ``results/per_user/`` (or the run directories, and are
then stored there). The best multi-modal baseline is the one of the fair table with the highest mean
validation Recall@20 over its seeds (test chooses nothing).
Writes ``benchmarks/results/significance_<dataset>.{md,json}``.

    python benchmarks/significance.py --dataset tiktok
    python benchmarks/significance.py --dataset ml100k-text   # any fair table's name
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

import numpy as np

import ablations
import fair_table
import per_user
from common import RESULTS, provenance, write_atomic
from diffmm_tiktok import HEADLINE_SEEDS, STATE

#: The baselines that use item content (the rest are ID-only).
MULTIMODAL = ("vbpr", "lightgcn_m", "lattice", "bm3", "freedom")


def preset_runs() -> dict[int, dict[str, Any]]:
    """DiffMM's preset runs by seed: run directory, stored name, revision, test and
    validation R@20."""
    records = json.loads(STATE.read_text()) if STATE.exists() else {}
    out = {}
    for r in records.values():
        if r["variant"] == "DiffMM" and r["seed"] in HEADLINE_SEEDS:
            folder = ablations.run_dir(r)
            out[r["seed"]] = {
                "run_dir": folder,
                "name": folder.name,
                "revision": r["revision"],
                "recall": r["test"]["recall@20"],
                "valid": r["valid_recall@20"],
            }
    return out


def chosen_diffmm(
    candidates: dict[str, dict[int, dict[str, Any]]],
) -> tuple[str, dict[str, float]]:
    """The configuration with the best mean validation R@20 among the ``candidates`` that
    have every seed of :data:`HEADLINE_SEEDS` with its validation value (test chooses
    nothing), and each such candidate's mean validation R@20."""
    complete = {
        name: statistics.fmean(runs[s]["valid"] for s in HEADLINE_SEEDS)
        for name, runs in candidates.items()
        if set(HEADLINE_SEEDS) <= set(runs)
        and all(runs[s]["valid"] is not None for s in HEADLINE_SEEDS)
    }
    if not complete:
        raise SystemExit(f"no DiffMM configuration has all of seeds {HEADLINE_SEEDS} yet")
    return max(complete, key=complete.__getitem__), complete


def baseline_runs(
    dataset: str, model: str, entry: dict[str, Any], revision: str
) -> dict[int, dict[str, Any]]:
    """A fair-table model's confirmation runs by seed, in the same form; ``revision`` is
    the table's, for a model recorded without its own."""
    return {
        run["seed"]: {
            "run_dir": fair_table.run_dir(dataset, model, entry["chosen"], run["seed"]),
            "name": fair_table.stored_name(dataset, model, run["seed"]),
            "revision": entry.get("revision", revision),
            "recall": run["test"]["recall@20"],
            "valid": run.get("valid", {}).get("recall@20"),  # None: not recorded
        }
        for run in entry["runs"]
    }


def _values(run: dict[str, Any]) -> np.ndarray | None:
    return per_user.values(run["run_dir"], run["name"], run["revision"], run["recall"])


def versus(
    diffmm: dict[int, dict],
    baseline: dict[int, dict],
    sides: tuple[str, str] = ("diffmm", "baseline"),
) -> dict[str, Any] | None:
    """DiffMM minus the baseline over their common seeds (see the module docstring);
    ``sides`` names the two in the row's keys (``diffmm_recall@20``, ...)."""
    seeds = sorted(set(diffmm) & set(baseline))
    if not seeds:
        return None
    diffs = [diffmm[s]["recall"] - baseline[s]["recall"] for s in seeds]
    row: dict[str, Any] = {
        "seeds": seeds,
        **{
            f"{side}_recall@20": [runs[s]["recall"] for s in seeds]
            for side, runs in zip(sides, (diffmm, baseline), strict=True)
        },
        "mean_diff": statistics.fmean(diffs),
        "t_ci95_over_seeds": ablations.t_interval(diffs),
        "revisions": {
            side: sorted({runs[s]["revision"] for s in seeds})
            for side, runs in zip(sides, (diffmm, baseline), strict=True)
        },
    }
    row["per_user"] = ablations.per_user_difference(  # None: the values are not here
        [_values(baseline[s]) for s in seeds], [_values(diffmm[s]) for s in seeds]
    )
    return row


def difference_cells(row: dict[str, Any]) -> tuple[str, str, str]:
    """A :func:`versus` row's table cells: Δ over seeds [t], Δ per user [bootstrap], p."""
    over = f"{row['mean_diff']:+.4f}"
    if row["t_ci95_over_seeds"]:
        lo, hi = row["t_ci95_over_seeds"]
        over += f" [{lo:+.4f}, {hi:+.4f}]"
    if not (u := row["per_user"]):
        return over, "per-user values absent", "–"
    per_user = f"{u['diff']:+.4f} [{u['ci_low']:+.4f}, {u['ci_high']:+.4f}]"
    return over, per_user, f"{u['p_value']:.3g}"


#: What each DiffMM configuration is, in the report.
CONFIGURATIONS = {
    "preset": "the TikTok preset (the authors' settings, `diffmm_tiktok.md`)",
    "fair grid": "the point of its fair-table grid (`fair_table_{dataset}.md`)",
}


def chosen_text(meta: dict[str, Any]) -> str:
    """Which DiffMM configuration the rows use, and why, in one clause."""
    valid = meta["diffmm_valid_recall@20"]
    shown = CONFIGURATIONS[meta["diffmm"]].format(dataset=meta["dataset"])
    if len(valid) == 1:
        return f"{shown}, its only configuration with seeds 421-423 here"
    means = ", ".join(f"{name} {v:.4f}" for name, v in valid.items())
    return f"{shown}, chosen on mean validation Recall@20 over the seeds ({means})"


def markdown(meta: dict[str, Any], rows: dict[str, Any]) -> str:
    lines = [
        f"# DiffMM against the tuned baselines on {meta['dataset']}",
        "",
        f"Command: `{meta['command']}`; revision `{meta['revision']}`; machine "
        f"{meta['machine']['cpu']}, {meta['machine']['cores']} cores, {meta['machine']['date']}.",
        "",
        "Validation-selected test Recall@20. DiffMM: "
        + chosen_text(meta)
        + "; each baseline: its fair-table point (`fair_table_"
        f"{meta['dataset']}.md`). Δ is DiffMM minus the baseline: over seeds with a 95% t "
        "interval (training noise), and per user averaged over the seeds with a 95% paired "
        "bootstrap interval and sign-flip p (test-set noise).",
        "",
        "| baseline | seeds | baseline R@20 | DiffMM R@20 | Δ over seeds [95% t] "
        "| Δ per user [95% bootstrap] | p | revisions (DiffMM / baseline) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, r in rows.items():
        label = model + (" (best multi-modal)" if model == meta["best_multimodal"] else "")
        seeds = ", ".join(map(str, r["seeds"]))
        over, pu, p = difference_cells(r)
        revisions = " / ".join(
            ", ".join(x[:7] for x in r["revisions"][k]) for k in ("diffmm", "baseline")
        )
        lines.append(
            f"| {label} | {seeds} | {statistics.fmean(r['baseline_recall@20']):.4f} | "
            f"{statistics.fmean(r['diffmm_recall@20']):.4f} | {over} | {pu} | {p} | "
            f"{revisions} |"
        )
    missing = [m for m in MULTIMODAL if m not in rows]
    if missing:
        lines += ["", f"Not in the fair table yet: {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def candidates_of(table: str, saved: dict[str, Any]) -> dict[str, dict[int, dict[str, Any]]]:
    """DiffMM's tuned configurations for the fair table ``table`` (``saved``, its JSON):
    the TikTok preset's runs for the plain TikTok table only (they are its data and its
    settings), and the table's own DiffMM point where it has one."""
    candidates = {"preset": preset_runs()} if table == "tiktok" else {}
    if "diffmm" in saved.get("models", {}):
        fair = saved["models"]["diffmm"]
        candidates["fair grid"] = baseline_runs(table, "diffmm", fair, saved["revision"])
    return candidates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dataset",
        default="tiktok",
        metavar="TABLE",
        help="A fair table's name, as in results/fair_table_<TABLE>.json (tiktok, "
        "ml100k-text, ...).",
    )
    args = parser.parse_args()
    table = RESULTS / f"fair_table_{args.dataset}.json"
    if not table.exists():
        known = sorted(
            p.stem.removeprefix("fair_table_") for p in RESULTS.glob("fair_table_*.json")
        )
        parser.error(f"no fair table {table.name}; run fair_table.py first, or pick one of {known}")
    saved = json.loads(table.read_text())
    candidates = candidates_of(args.dataset, saved)
    chosen, valid_means = chosen_diffmm(candidates)
    diffmm = candidates[chosen]
    models = {m: e for m, e in saved.get("models", {}).items() if m != "diffmm"}
    rows = {}
    for model, entry in models.items():
        row = versus(diffmm, baseline_runs(args.dataset, model, entry, saved["revision"]))
        if row is not None:
            rows[model] = row
    # the best multi-modal baseline by its validation Recall@20 (test chooses nothing)
    valid = {
        m: statistics.fmean(r["valid"]["recall@20"] for r in e["runs"]) for m, e in models.items()
    }
    multimodal = [m for m in rows if m in MULTIMODAL]
    best = max(multimodal, key=valid.__getitem__) if multimodal else None
    meta = {
        "dataset": args.dataset,
        **provenance(),
        "best_multimodal": best,
        "diffmm": chosen,
        "diffmm_valid_recall@20": valid_means,
    }
    stem = RESULTS / f"significance_{args.dataset}"
    write_atomic(stem.with_suffix(".json"), json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    write_atomic(stem.with_suffix(".md"), markdown(meta, rows))
    print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
