"""Ablations of DiffMM on TikTok, paired by seed and by user (issue 15 §1).

Each variant is compared with the full model on the seeds both were run with, two ways:

- over seeds: the mean of the per-seed differences of validation-selected test
  Recall@20, with a t interval over seeds (the spread of training runs);
- over users: the runs' best models scored per user on test (``diffmm.compare``); each
  user's difference is averaged over the seeds, and the paired bootstrap interval and
  sign-flip p-value over users come from :func:`diffmm.compare.paired_comparison` (the
  sampling noise of the fixed test set). Needs the runs' directories; without them the
  row says so.

Used by ``diffmm_tiktok.py``; the runs are its records.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np

import per_user
from common import REPO, mean_std

FULL = "DiffMM"
METRIC = "recall@20"


def run_dir(record: dict[str, Any]) -> Path:
    command = record["command"].split()
    return REPO / command[command.index("--out") + 1]


def _per_user(record: dict[str, Any], cache: dict[str, np.ndarray]) -> np.ndarray | None:
    """The run's test Recall@20 per user (:func:`per_user.values`), or None."""
    folder = run_dir(record)
    key = str(folder)
    if key not in cache:
        cache[key] = per_user.values(
            folder, folder.name, record["revision"], record["test"][METRIC]
        )
    return cache[key]


def t_interval(diffs: list[float], confidence: float = 0.95) -> list[float] | None:
    """The t interval of the mean of ``diffs``; None for fewer than 2 values."""
    from scipy import stats

    if len(diffs) < 2:
        return None
    half = stats.t.ppf((1 + confidence) / 2, len(diffs) - 1) * statistics.stdev(diffs)
    half /= len(diffs) ** 0.5
    mean = statistics.fmean(diffs)
    return [mean - half, mean + half]


def per_user_difference(
    a: list[np.ndarray | None], b: list[np.ndarray | None]
) -> dict[str, Any] | None:
    """``b - a`` per user, each side's values averaged over its runs (one per seed):
    :func:`diffmm.compare.paired_comparison`'s interval and p; None if any run's
    per-user values are missing."""
    from diffmm.compare import paired_comparison

    if any(x is None for x in a + b):
        return None
    result = paired_comparison(np.mean(a, axis=0), np.mean(b, axis=0))
    return {k: result[k] for k in ("diff", "ci_low", "ci_high", "p_value", "p_ttest", "n_users")}


def paired(
    full: dict[int, dict[str, Any]],
    variant: dict[int, dict[str, Any]],
    cache: dict,
    earlier: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The variant minus the full model, over their common seeds. ``earlier`` is this
    comparison as last reported: its per-user part is kept, marked, when the same results
    are paired again (the same seeds and per-seed differences) but their per-user values
    are not on this machine."""
    seeds = sorted(set(full) & set(variant))
    if not seeds:
        return None
    diffs = [variant[s]["test"][METRIC] - full[s]["test"][METRIC] for s in seeds]
    out: dict[str, Any] = {
        "seeds": seeds,
        "full_revision": [full[s]["revision"] for s in seeds],
        "diff_per_seed": diffs,
        "mean_diff": statistics.fmean(diffs),
        "t_ci95_over_seeds": t_interval(diffs),
    }
    out["per_user"] = per_user_difference(
        [_per_user(full[s], cache) for s in seeds], [_per_user(variant[s], cache) for s in seeds]
    )
    if out["per_user"] is None and (
        earlier
        and earlier.get("per_user")
        # the same results, e.g. a run that a later revision reproduced bit for bit
        and all(earlier.get(k) == out[k] for k in ("seeds", "diff_per_seed"))
    ):
        out["per_user"] = {**earlier["per_user"], "from_earlier_report": True}
    return out


def summary(
    records: dict[str, dict[str, Any]],
    variants: list[str],
    earlier: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``{variant: {"val_selected_test_recall@20": [per seed], ..., "vs_full": ...}}``;
    ``earlier`` is the same summary as last reported (see :func:`paired`)."""
    by_variant: dict[str, dict[int, dict[str, Any]]] = {}
    for r in records.values():
        if r["variant"] in variants:
            by_variant.setdefault(r["variant"], {})[int(r["seed"])] = r
    cache: dict[str, np.ndarray] = {}
    out = {}
    for variant in variants:
        runs = by_variant.get(variant, {})
        if not runs:
            continue
        seeds = sorted(runs)
        recall = [runs[s]["test"][METRIC] for s in seeds]
        out[variant] = {
            "seeds": seeds,
            "val_selected_test_recall@20": recall,
            "valid_recall@20": [runs[s]["valid_recall@20"] for s in seeds],
            "best_epoch": [runs[s]["best_epoch"] for s in seeds],
            "revision": [runs[s]["revision"] for s in seeds],
            "mean": statistics.fmean(recall),
            "std": statistics.stdev(recall) if len(recall) > 1 else None,
        }
        if variant != FULL and FULL in by_variant:
            before = ((earlier or {}).get(variant) or {}).get("vs_full")
            out[variant]["vs_full"] = paired(by_variant[FULL], runs, cache, before)
    return out


def verdict(ablations: dict[str, Any], variant: str = "w/o DM") -> str | None:
    """One sentence: do the diffusion graphs help here? Both intervals where they exist:
    help (or hurt) is said only when every interval excludes zero on the same side."""
    row = ablations.get(variant, {}).get("vs_full")
    if not row:
        return None
    seeds = ", ".join(map(str, row["seeds"]))
    intervals: list[tuple[float, float]] = []
    parts = []
    if row["t_ci95_over_seeds"] is not None:
        low, high = row["t_ci95_over_seeds"]
        intervals.append((low, high))
        parts.append(
            f"{row['mean_diff']:+.4f} over seeds {seeds} (95% t interval, the spread of "
            f"training runs: [{low:+.4f}, {high:+.4f}])"
        )
    pu = row.get("per_user")
    if pu is not None:
        intervals.append((pu["ci_low"], pu["ci_high"]))
        parts.append(
            f"{pu['diff']:+.4f} per user (95% bootstrap interval, the test set's sampling "
            f"noise: [{pu['ci_low']:+.4f}, {pu['ci_high']:+.4f}], p = {pu['p_value']:.3g})"
        )
    if not parts:
        parts.append(f"{row['mean_diff']:+.4f} with seed {seeds}")
    where = "; ".join(parts)
    if len(row["seeds"]) < 2:
        where += "; one seed: nothing measures the spread of training runs"
    if not intervals:
        answer = "one seed gives no interval, so this does not answer whether they help yet"
    elif all(high < 0 for _, high in intervals):
        answer = "the diffusion-generated graphs help on TikTok"
    elif all(low > 0 for low, _ in intervals):
        answer = "the diffusion-generated graphs hurt on TikTok"
    elif any(high < 0 or low > 0 for low, high in intervals):
        side = "hurt" if row["mean_diff"] > 0 else "help"
        answer = (
            f"the diffusion-generated graphs do not help detectably on TikTok: one interval "
            f"excludes zero (they may {side} slightly), the other does not"
        )
    else:
        answer = (
            "on TikTok the diffusion-generated graphs make no difference that these runs can detect"
        )
    return (
        "w/o DM (a random edge-dropped training graph in place of the diffusion-generated "
        f"ones) minus the full model, validation-selected test Recall@20: {where}; {answer}."
    )


def section(ablations: dict[str, Any], title: str = "Ablations, paired by seed and by user"):
    """The report's table of :func:`summary` rows (and :func:`verdict`'s sentence)."""
    if len(ablations) < 2:
        return []
    lines = [
        "",
        f"## {title}",
        "",
        "Validation-selected test Recall@20; the difference is the variant minus the full "
        "model on the same seeds: over seeds with a t interval (training noise), and per "
        "user averaged over those seeds with a paired bootstrap interval and sign-flip p "
        "(test-set noise).",
        "",
        "| variant | seeds | test recall@20 | Δ over seeds [95% t] | Δ per user [95% bootstrap] "
        "| p | revisions (variant / full model) |",
        "|---|---|---|---|---|---|---|",
    ]
    carried = False
    for variant, row in ablations.items():
        vs = row.get("vs_full")
        over_seeds = per_user = p = "–"
        if vs:
            over_seeds = f"{vs['mean_diff']:+.4f}"
            if vs["t_ci95_over_seeds"]:
                lo, hi = vs["t_ci95_over_seeds"]
                over_seeds += f" [{lo:+.4f}, {hi:+.4f}]"
            if vs.get("per_user"):
                pu = vs["per_user"]
                per_user = f"{pu['diff']:+.4f} [{pu['ci_low']:+.4f}, {pu['ci_high']:+.4f}]"
                if pu.get("from_earlier_report"):
                    per_user += " †"
                    carried = True
                p = f"{pu['p_value']:.3g}"
            else:
                per_user = "per-user values absent"
        revisions = ", ".join(sorted({r[:7] for r in row["revision"]}))
        if vs:  # the full model's runs it is paired with
            revisions += " / " + ", ".join(sorted({r[:7] for r in vs["full_revision"]}))
        lines.append(
            f"| {variant} | {', '.join(map(str, row['seeds']))} | "
            f"{mean_std(row['val_selected_test_recall@20'])} | {over_seeds} | {per_user} | "
            f"{p} | {revisions} |"
        )
    if carried:
        lines += [
            "",
            "† as last reported: these runs' per-user values were computed on an earlier "
            "machine from run directories that are not here (runs since keep theirs in "
            "`results/per_user/`).",
        ]
    sentence = verdict(ablations)
    if sentence:
        lines += ["", sentence]
    return lines
