"""DiffMM on TikTok: seconds per epoch with the large-data options against today's default.

Issue 13's target: with the options on, a TikTok epoch takes at most half the default's,
measured in the same run on image + audio and on image + audio + a random 768-d
stand-in for text. Each side is the default or one of ``diffmm_tiktok.py``'s option
variants (``--variants``); the runs alternate (the order of the sides rotates every
round) and each is a short ``diffmm train --model diffmm --preset tiktok`` whose
per-epoch phase times are read from its log; the report gives every run, the median per
side and each variant's ratios to the default. Accuracy is measured apart, over 3 full
seeded runs of the same variants (``benchmarks/diffmm_tiktok.py --variants ...``).

    .venv/bin/python benchmarks/tiktok_options.py                 # 2 rounds of 3 epochs
    .venv/bin/python benchmarks/tiktok_options.py --rounds 3 --modalities 2
    .venv/bin/python benchmarks/tiktok_options.py --variants "large-data options,\
large-data options with a third of the users per epoch"

Run it on a quiet machine: anything else running makes both sides slower, unevenly.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from common import (
    PHASES,
    RESULTS,
    RUNS,
    gemm_gflops,
    git_revision,
    machine_info,
    phase_medians,
    require_dataset,
    run_training,
    slug,
    train_command,
    write_atomic,
)
from diffmm_tiktok import OPTION_VARIANTS

#: The side every variant is timed against: the preset as it is.
DEFAULT = "default"
#: The large-data options of issue 13 that apply at TikTok's size (its 59 batches per
#: epoch are below any ``train.max_batches_per_epoch`` worth setting).
FIRST_VARIANT = "large-data options"
TEXT_DIM = 768


def text_stand_in(folder: Path, n_items: int) -> Path:
    """A ``text.features.npz`` of seeded random 768-d rows, one per TikTok item."""
    from diffmm.features import write_features

    values = np.random.default_rng(0).normal(size=(n_items, TEXT_DIM)).astype(np.float32)
    write_features(folder, "text", np.arange(n_items), values, overwrite=True)  # seeded
    return folder


def one_run(data: Path, side: str, modalities: int, epochs: int, features: Path | None):
    sets = [f"train.epochs={epochs}", "train.seed=421", "train.progress=false"]
    sets += OPTION_VARIANTS.get(side, [])
    run_dir = RUNS / f"tiktok-options-{slug(side)}-{modalities}m"
    cmd = train_command("diffmm", data, run_dir, "tiktok", sets)
    if features is not None:
        cmd += ["--features", str(features)]
    result = run_training(cmd, run_dir)
    return {
        "side": side,
        "modalities": modalities,
        "command": result["command"].replace(str(features), "TEXT_STAND_IN")
        if features
        else result["command"],
        "phases_median": phase_medians(result["log"]),
        "peak_rss_mb": result["summary"]["peak_rss_mb"],
        "valid_recall@20_last": result["log"][-1]["valid"]["recall@20"],
    }


def rotated(sides: list[str], round_index: int) -> list[str]:
    """The order of the sides in one round: each side leads in turn, so that none always
    runs first (a cold cache, a machine still busy with what ran before)."""
    shift = round_index % len(sides)
    return sides[shift:] + sides[:shift]


def summary_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per modality count: each side's median phases, and ``ratio``: variant / default."""
    out: dict[str, Any] = {}
    for m in sorted({r["modalities"] for r in runs}):
        sides: dict[str, dict[str, float]] = {}
        for side in dict.fromkeys(r["side"] for r in runs if r["modalities"] == m):
            mine = [r for r in runs if r["modalities"] == m and r["side"] == side]
            sides[side] = {
                k: statistics.median(r["phases_median"][k] for r in mine)
                for k in PHASES
                if all(k in r["phases_median"] for r in mine)
            }
        base = sides.get(DEFAULT, {})
        ratio = {
            side: {k: v / base[k] for k, v in phases.items() if base.get(k)}
            for side, phases in sides.items()
            if side != DEFAULT
        }
        out[f"{m}_modalities"] = {"sides": sides, "ratio": ratio}
    return out


def markdown(meta: dict[str, Any], runs: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    lines = [
        "# TikTok: large-data options against today's default, seconds per epoch",
        "",
        f"Command: `{meta['command']}`; revision `{meta['revision']}`; machine "
        f"{meta['machine']['cpu']}, {meta['machine']['cores']} cores, "
        f"{meta['machine']['date']}; float32 GEMM {meta['gemm_gflops_before']:.0f} GFLOP/s "
        "before the runs.",
        "",
        "Sides: the preset (default) and "
        + "; ".join(
            f"{v}: " + ", ".join(f"`{o}`" for o in OPTION_VARIANTS[v]) for v in meta["variants"]
        )
        + ". Medians over each run's epochs, then over the runs of a side; ratio = the "
        "variant / the default of the same modalities.",
        "",
        "| modalities | side | " + " | ".join(PHASES.values()) + " |",
        "|---|---|" + "---:|" * len(PHASES),
    ]
    for key, found in summary.items():
        rows = [(side, phases, "") for side, phases in found["sides"].items()]
        rows += [(f"{side}, ratio", phases, "x") for side, phases in found["ratio"].items()]
        for side, phases, unit in rows:
            cells = [
                (f"{phases[k]:.2f}x" if unit else f"{phases[k]:.1f}") if k in phases else "–"
                for k in PHASES
            ]
            lines.append(f"| {key.split('_')[0]} | {side} | " + " | ".join(cells) + " |")
    lines += ["", "## Runs", ""]
    for r in runs:
        lines.append(
            f"- {r['modalities']} modalities, {r['side']}: `{r['command']}`: epoch "
            f"{r['phases_median'].get('seconds', float('nan')):.1f} s, peak RSS "
            f"{r['peak_rss_mb']:.0f} MB"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="Runs of each side.")
    parser.add_argument("--epochs", type=int, default=3, help="Epochs of each run.")
    parser.add_argument("--modalities", default="2,3", help="2 (image+audio), 3 (+ text).")
    parser.add_argument(
        "--variants",
        default=FIRST_VARIANT,
        help="Option variants of diffmm_tiktok.py to time against the default, by name, "
        "with commas. One of: " + "; ".join(OPTION_VARIANTS),
    )
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := [v for v in variants if v not in OPTION_VARIANTS]:
        parser.error(f"--variants: no variant {unknown[0]!r}; one of: {list(OPTION_VARIANTS)}")
    data = require_dataset("tiktok")
    meta = {
        "command": "python benchmarks/tiktok_options.py "
        f"--rounds {args.rounds} --epochs {args.epochs} --modalities {args.modalities} "
        f"--variants {shlex.quote(','.join(variants))}",
        "revision": git_revision(),
        "machine": machine_info(),
        "gemm_gflops_before": gemm_gflops(),
        "variants": variants,
        "options": {v: OPTION_VARIANTS[v] for v in variants},
    }
    from diffmm.data import load_dataset

    n_items = load_dataset(data).n_items
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in (int(x) for x in args.modalities.split(",")):
            features = text_stand_in(Path(tmp), n_items) if m == 3 else None
            for i in range(args.rounds):
                for side in rotated([DEFAULT, *variants], i):
                    print(f"{m} modalities, round {i + 1}, {side}", flush=True)
                    runs.append(one_run(data, side, m, args.epochs, features))
    summary = summary_of(runs)
    result = {**meta, "runs": runs, "summary": summary}
    write_atomic(RESULTS / "tiktok_options.json", json.dumps(result, indent=2) + "\n")
    write_atomic(RESULTS / "tiktok_options.md", markdown(meta, runs, summary))
    print((RESULTS / "tiktok_options.md").read_text())


if __name__ == "__main__":
    main()
