"""DiffMM on TikTok: seconds per epoch with the large-data options against today's default.

Issue 13's target: with the options on, a TikTok epoch takes at most half the default's,
measured in the same run on image + audio and on image + audio + a random 768-d
stand-in for text. The runs alternate (default, options, options, default, ...; the
order flips every round) and each is a short ``diffmm train --model diffmm --preset
tiktok`` whose per-epoch phase times are read from its log; the report gives every run,
the median per side and the ratios. Accuracy is measured apart, over 3 full seeded runs
(``benchmarks/diffmm_tiktok.py --variants 'large-data options'``).

    .venv/bin/python benchmarks/tiktok_options.py                 # 2 rounds of 3 epochs
    .venv/bin/python benchmarks/tiktok_options.py --rounds 3 --modalities 2

Run it on a quiet machine: anything else running makes both sides slower, unevenly.
"""

from __future__ import annotations

import argparse
import json
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
    train_command,
    write_atomic,
)

#: The large-data options of issue 13 that apply at TikTok's size (its 59 batches per
#: epoch are below any ``train.max_batches_per_epoch`` worth setting).
OPTIONS = ["contrastive_negatives=sampled", "diffusion_space=latent"]
TEXT_DIM = 768


def text_stand_in(folder: Path, n_items: int) -> Path:
    """A ``text.features.npz`` of seeded random 768-d rows, one per TikTok item."""
    from diffmm.features import write_features

    values = np.random.default_rng(0).normal(size=(n_items, TEXT_DIM)).astype(np.float32)
    write_features(folder, "text", np.arange(n_items), values)
    return folder


def one_run(data: Path, side: str, modalities: int, epochs: int, features: Path | None):
    sets = [f"train.epochs={epochs}", "train.seed=421", "train.progress=false"]
    sets += OPTIONS if side == "options" else []
    run_dir = RUNS / f"tiktok-options-{side}-{modalities}m"
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


def summary_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in sorted({r["modalities"] for r in runs}):
        sides = {}
        for side in ("default", "options"):
            mine = [r for r in runs if r["modalities"] == m and r["side"] == side]
            sides[side] = {
                k: statistics.median(r["phases_median"][k] for r in mine)
                for k in PHASES
                if mine and all(k in r["phases_median"] for r in mine)
            }
        ratio = {
            k: sides["options"][k] / sides["default"][k]
            for k in sides["options"]
            if sides["default"].get(k)
        }
        out[f"{m}_modalities"] = {**sides, "ratio": ratio}
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
        "Options: " + ", ".join(f"`{o}`" for o in OPTIONS) + ". Medians over each run's "
        "epochs, then over the runs of a side; ratio = options / default.",
        "",
        "| modalities | side | " + " | ".join(PHASES.values()) + " |",
        "|---|---|" + "---:|" * len(PHASES),
    ]
    for key, sides in summary.items():
        for side in ("default", "options", "ratio"):
            cells = [
                (f"{sides[side][k]:.2f}x" if side == "ratio" else f"{sides[side][k]:.1f}")
                if k in sides[side]
                else "–"
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
    args = parser.parse_args()
    data = require_dataset("tiktok")
    meta = {
        "command": "python benchmarks/tiktok_options.py "
        f"--rounds {args.rounds} --epochs {args.epochs} --modalities {args.modalities}",
        "revision": git_revision(),
        "machine": machine_info(),
        "gemm_gflops_before": gemm_gflops(),
        "options": OPTIONS,
    }
    from diffmm.data import load_dataset

    n_items = load_dataset(data).n_items
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in (int(x) for x in args.modalities.split(",")):
            features = text_stand_in(Path(tmp), n_items) if m == 3 else None
            for i in range(args.rounds):
                order = ("default", "options") if i % 2 == 0 else ("options", "default")
                for side in order:
                    print(f"{m} modalities, round {i + 1}, {side}", flush=True)
                    runs.append(one_run(data, side, m, args.epochs, features))
    summary = summary_of(runs)
    result = {**meta, "runs": runs, "summary": summary}
    write_atomic(RESULTS / "tiktok_options.json", json.dumps(result, indent=2) + "\n")
    write_atomic(RESULTS / "tiktok_options.md", markdown(meta, runs, summary))
    print((RESULTS / "tiktok_options.md").read_text())


if __name__ == "__main__":
    main()
