"""The paper's Table 1 on a shared dataset: every model, 3 seeds, one protocol.

Runs ``diffmm benchmark`` (epoch selected on validation Recall@20, test read once per
run) and copies its table, CSV and plots to ``benchmarks/results/table1_<dataset>.*``
with the command, the git revision and the machine.

    .venv/bin/python benchmarks/table1.py --dataset ml100k
    .venv/bin/python benchmarks/table1.py --dataset tiktok --models diffmm,lightgcn

MovieLens-100K gets two modalities the project computes itself (``diffmm features``):
a sentence embedding of title + genres (all-MiniLM-L6-v2, offline; needs the [text]
extra) and a genre multi-hot vector; its interactions are split per user 8:1:1 with
split seed 2024. TikTok uses its visual and acoustic features (its text features are
not available) and the authors' split.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from common import (
    REPO,
    RESULTS,
    RUNS,
    git_revision,
    machine_info,
    ml100k_features,
    repo_path,
    repo_relative_text,
    require_dataset,
    write_atomic,
)

MODELS = "mf,lightgcn,vbpr,lightgcn_m,lattice,bm3,freedom,diffmm"
# Per-dataset settings on top of every model's paper defaults.
SETTINGS = {
    "ml100k": {"preset": None, "sets": ["train.epochs=100"]},
    # DiffMM: the authors' 50 epochs; baselines: up to 300, early-stopped on validation.
    # TikTok's test users have 0-3 training interactions, or 30 and more (69 users).
    "tiktok": {
        "preset": "tiktok",
        "sets": ["train.epochs=300", "diffmm.train.epochs=50"],
        "groups": "0,2,3,4",
    },
}


def diffmm(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("diffmm")), *args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(SETTINGS), required=True)
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--seeds", default="3")
    args = parser.parse_args()

    settings = SETTINGS[args.dataset]
    out = RUNS / f"table1-{args.dataset}"
    # Paths as typed in the repository, where the command runs: the results record it.
    cmd = ["benchmark", "--models", args.models, "--seeds", args.seeds, "--out", repo_path(out)]
    if args.dataset == "ml100k":
        data = require_dataset("ml-100k") / "ml-100k.inter"
        features = ml100k_features(text=True)
        cmd += ["--data", repo_path(data), "--features", repo_path(features)]
    else:
        cmd += ["--data", repo_path(require_dataset(args.dataset))]
    if settings.get("groups"):
        cmd += ["--groups", settings["groups"]]
    if settings["preset"]:
        cmd += ["--preset", settings["preset"]]
    models = args.models.split(",")
    for assignment in settings["sets"]:
        scope = assignment.partition("=")[0].split(".")[0]
        if scope in MODELS.split(",") and scope not in models:
            continue  # a model's own setting, and that model is not run
        cmd += ["--set", assignment]
    revision = git_revision()
    print("diffmm " + shlex.join(cmd), flush=True)
    subprocess.run(diffmm(*cmd), check=True, cwd=REPO)

    stem = f"table1_{args.dataset}"
    table = (out / "results.md").read_text()
    for name in ("valid_recall.png", "test_recall.png", "sparsity.png"):
        if (out / name).exists():
            shutil.copyfile(out / name, RESULTS / f"{stem}_{name}")
            table = table.replace(f"({name})", f"({stem}_{name})")
    sparsity = (out / "sparsity.md").read_text().replace("(sparsity.png)", f"({stem}_sparsity.png)")
    table = table.replace("[sparsity.md](sparsity.md)", "below")
    header = [
        f"Command: `python benchmarks/table1.py {shlex.join(sys.argv[1:])}` → `diffmm "
        f"{shlex.join(cmd)}`",
        f"Revision: `{revision}`; machine: `{json.dumps(machine_info())}`",
        "",
    ]
    text = "\n".join(header) + table + "\n" + sparsity
    write_atomic(RESULTS / f"{stem}.md", repo_relative_text(text))  # the CLI's absolute paths
    shutil.copyfile(out / "results.csv", RESULTS / f"{stem}.csv")
    print((RESULTS / f"{stem}.md").read_text())


if __name__ == "__main__":
    main()
