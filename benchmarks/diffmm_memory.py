"""Peak memory (and time per phase) of DiffMM training on TikTok and on Baby-sized data.

Each run is a real ``diffmm train`` in a child process (its own peak RSS), for a few
epochs: the peak is reached in the first epoch (diffusion training, graph generation,
recommender pass, evaluation, checkpoints) and stays flat after it.

* ``tiktok``: the shared TikTok data, visual + acoustic features, the TikTok preset.
* ``baby``: the shared Amazon-Baby interactions (19,445 users x 7,050 items), which
  come without features, with two random feature matrices of the sizes the paper used
  for Baby (visual 4096-d, text 384-d) written by this script, and the Baby preset.
  Random features do not change the work or the memory, only the accuracy, which is
  not reported here.

    .venv/bin/python benchmarks/diffmm_memory.py               # both, 2 epochs each
    .venv/bin/python benchmarks/diffmm_memory.py --datasets baby --epochs 1
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from common import (
    PHASES,
    REPO,
    RESULTS,
    RUNS,
    git_revision,
    machine_info,
    phase_medians,
    require_dataset,
    run_training,
    train_command,
    write_atomic,
)
from diffmm.features import write_features

#: Feature sizes of the paper's Baby data (image, text).
BABY_FEATURES = {"image": 4096, "text": 384}


def baby_sized_features(n_items: int, folder: Path) -> Path:
    """Random standard-normal features of the paper's Baby sizes, keyed by item index."""
    rng = np.random.default_rng(0)
    for modality, dim in BABY_FEATURES.items():
        if not (folder / f"{modality}.features.npz").exists():
            values = rng.standard_normal((n_items, dim), dtype=np.float32)
            write_features(folder, modality, np.arange(n_items), values)
    return folder


def run(dataset: str, epochs: int) -> dict:
    sets = [f"train.epochs={epochs}", "train.progress=false"]
    extra: list[str] = []
    if dataset == "tiktok":
        data = require_dataset("tiktok")
    else:
        from diffmm.data import load_dataset

        data = require_dataset("baby")
        features = baby_sized_features(load_dataset(data).n_items, RUNS / "baby-sized-features")
        extra = ["--features", os.path.relpath(features, REPO)]
    run_dir = RUNS / f"diffmm-memory-{dataset}"
    cmd = train_command("diffmm", data, run_dir, dataset, sets) + extra
    print("running " + " ".join(cmd), flush=True)
    revision = git_revision()
    result = run_training(cmd, run_dir)
    log, summary = result["log"], result["summary"]
    return {
        "dataset": dataset,
        "command": result["command"],
        "revision": revision,
        "epochs": summary["epochs_run"],
        "peak_rss_mb": summary["peak_rss_mb"],
        "seconds_per_epoch_median": summary["seconds_per_epoch"],
        "phases_median": phase_medians(log),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="tiktok,baby")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    records = [run(d.strip(), args.epochs) for d in args.datasets.split(",") if d.strip()]
    targets = {"tiktok": 1024, "baby": 1536}
    lines = [
        "# DiffMM peak memory and time per phase",
        "",
        "Peak RSS of a whole `diffmm train` process (data, model, denoisers and their "
        "optimiser states, every phase, checkpoints, final test). Seconds are medians over "
        "the run's epochs. Baby-sized: the Baby interactions with random features of the "
        "paper's Baby sizes (visual 4096-d, text 384-d).",
        "",
        "| data | epochs | peak RSS (MB) | target (MB) | " + " | ".join(PHASES.values()) + " |",
        "|---|---|---|---|" + "---|" * len(PHASES),
    ]
    for r in records:
        p = r["phases_median"]
        lines.append(
            f"| {r['dataset']} | {r['epochs']} | {r['peak_rss_mb']:.0f} | "
            f"{targets.get(r['dataset'], '–')} | "
            + " | ".join(f"{p[k]:.1f}" if k in p else "–" for k in PHASES)
            + " |"
        )
    lines += ["", "Commands:", ""]
    lines += [f"- `{r['command']}` (revision `{r['revision']}`)" for r in records]
    lines += ["", f"Machine: `{json.dumps(machine_info())}`", ""]
    text = "\n".join(lines)
    write_atomic(RESULTS / "diffmm_memory.md", text)
    write_atomic(RESULTS / "diffmm_memory.json", json.dumps(records, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
