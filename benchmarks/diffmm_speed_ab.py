"""DiffMM on TikTok: time two revisions of the code back to back, alternating.

Timings on this kind of machine drift by tens of percent within an hour (other tenants,
clock), so a speed-up is quoted as a ratio against a baseline measured in the same run.
Each revision is checked out into a temporary git worktree; the runs alternate
(baseline, candidate, baseline, candidate, ...) and each is a short
``diffmm train --model diffmm --preset tiktok`` whose per-epoch phase times are read
from its log. The report gives every run, the median per revision and the ratios.

    .venv/bin/python benchmarks/diffmm_speed_ab.py --baseline 733c8cf            # vs HEAD
    .venv/bin/python benchmarks/diffmm_speed_ab.py --baseline A --candidate B --rounds 3

Run it on a quiet machine: anything else running makes both sides slower, unevenly.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import (
    PHASES,
    RESULTS,
    RUNS,
    gemm_gflops,
    git,
    git_revision,
    machine_info,
    phase_medians,
    require_dataset,
    run_training,
    train_command,
    write_atomic,
)

#: The phases compared (the checkpoint write is outside the epoch).
COMPARED = [k for k in PHASES if k != "seconds_checkpoint"]


def resolve(rev: str) -> str:
    """The full commit id of ``rev``, or exit with a message."""
    try:
        return git("rev-parse", "--verify", f"{rev}^{{commit}}")
    except subprocess.CalledProcessError:
        sys.exit(f"unknown revision {rev!r}: give a commit, tag or branch of this repository")


def time_run(worktree: Path, run_dir: Path, epochs: int, data: Path) -> dict[str, Any]:
    """One short training run of the code in ``worktree``; its phase medians and peak RSS."""
    sets = [
        f"train.epochs={epochs}",
        "train.seed=421",
        "train.test_every_epoch=true",
        "train.progress=false",
    ]
    cmd = train_command("diffmm", data, run_dir, "tiktok", sets)
    env = {**os.environ, "PYTHONPATH": str(worktree / "src")}
    where = subprocess.run(
        [sys.executable, "-c", "import diffmm; print(diffmm.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(where).is_relative_to(worktree):
        sys.exit(f"the run would import diffmm from {where}, not from {worktree}")
    result = run_training(cmd, run_dir, env=env)
    return {
        "command": result["command"],
        "phases_median": phase_medians(result["log"]),
        "peak_rss_mb": result["summary"]["peak_rss_mb"],
    }


def write_report(runs: list[dict[str, Any]], revs: dict[str, str], command: str) -> None:
    def median_of(role: str, key: str) -> float:
        return statistics.median(r["phases_median"][key] for r in runs if r["role"] == role)

    header = ["run", "revision", "GEMM GFLOP/s", *(PHASES[k] for k in COMPARED), "peak RSS (MB)"]
    lines = [
        "# DiffMM on TikTok: two revisions timed back to back",
        "",
        f"Command: `{command}` (script revision `{revs['script'][:12]}`). Each run is a "
        f"{runs[0]['epochs']}-epoch `diffmm train --preset tiktok` (seed 421, "
        f"{machine_info()['torch_threads']} threads); its "
        "seconds are medians over its epochs. The runs alternate between the revisions; the "
        "GEMM rate is measured just before each run.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for i, r in enumerate(runs, 1):
        p = r["phases_median"]
        cells = [f"{p[k]:.1f}" for k in COMPARED]
        lines.append(
            f"| {i} | {r['role']} `{r['revision'][:7]}` | {r['gemm_gflops']:.0f} | "
            + " | ".join(cells)
            + f" | {r['peak_rss_mb']:.0f} |"
        )
    lines += ["", "Median per revision, and the ratio candidate / baseline:", ""]
    lines += ["| | " + " | ".join(PHASES[k] for k in COMPARED) + " | peak RSS (MB) |"]
    lines += ["|---|" + "---|" * (len(COMPARED) + 1)]
    summary: dict[str, Any] = {"ratio": {}}
    for role in ("baseline", "candidate"):
        medians = {k: median_of(role, k) for k in COMPARED}
        rss = statistics.median(r["peak_rss_mb"] for r in runs if r["role"] == role)
        summary[role] = {"revision": revs[role], "seconds": medians, "peak_rss_mb": rss}
        cells = [f"{medians[k]:.1f}" for k in COMPARED]
        lines.append(f"| {role} `{revs[role][:7]}` | " + " | ".join(cells) + f" | {rss:.0f} |")
    for k in COMPARED:
        summary["ratio"][k] = summary["candidate"]["seconds"][k] / summary["baseline"]["seconds"][k]
    summary["ratio"]["peak_rss_mb"] = (
        summary["candidate"]["peak_rss_mb"] / summary["baseline"]["peak_rss_mb"]
    )
    lines.append(
        "| ratio | "
        + " | ".join(f"{summary['ratio'][k]:.2f}" for k in COMPARED)
        + f" | {summary['ratio']['peak_rss_mb']:.2f} |"
    )
    lines += ["", f"Machine: `{json.dumps(machine_info())}`. Raw records: `diffmm_speed_ab.json`."]
    write_atomic(RESULTS / "diffmm_speed_ab.md", "\n".join(lines) + "\n")
    record = {"command": command, "script_revision": revs["script"], "runs": runs, **summary}
    write_atomic(RESULTS / "diffmm_speed_ab.json", json.dumps(record, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True, help="Revision to compare against.")
    parser.add_argument("--candidate", default="HEAD", help="Revision to time (default HEAD).")
    parser.add_argument("--rounds", type=int, default=2, help="Runs of each revision.")
    parser.add_argument("--epochs", type=int, default=3, help="Epochs of each run.")
    args = parser.parse_args()
    if args.rounds < 1 or args.epochs < 1:
        parser.error("--rounds and --epochs must be at least 1")
    data = require_dataset("tiktok")
    revs = {"baseline": resolve(args.baseline), "candidate": resolve(args.candidate)}
    revs["script"] = git_revision()  # the code running this script
    command = "python benchmarks/diffmm_speed_ab.py " + shlex.join(sys.argv[1:])
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="diffmm-ab-") as tmp:
        trees = {}
        for role, rev in revs.items():
            if role == "script":
                continue
            trees[role] = Path(tmp) / role
            git("worktree", "add", "--detach", str(trees[role]), rev)
        try:
            for round_ in range(args.rounds):
                for role in ("baseline", "candidate"):
                    print(f"round {round_ + 1}: {role} {revs[role][:12]}", flush=True)
                    gflops = gemm_gflops()
                    run_dir = RUNS / f"speed-ab-{role}"
                    result = time_run(trees[role], run_dir, args.epochs, data)
                    runs.append(
                        {
                            "role": role,
                            "revision": revs[role],
                            "epochs": args.epochs,
                            "gemm_gflops": gflops,
                            **result,
                        }
                    )
        finally:
            for tree in trees.values():
                git("worktree", "remove", "--force", str(tree))
    write_report(runs, revs, command)
    print((RESULTS / "diffmm_speed_ab.md").read_text())


if __name__ == "__main__":
    main()
