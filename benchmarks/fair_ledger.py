"""The committed record of the fair tables' finished runs (``results/fair_runs/``).

Run directories are git-ignored and stay on the machine that trained them, and a model's
grid (six to ten runs, each up to an hour for DiffMM on TikTok) does not always finish on
one machine. :func:`record` keeps each finished run's ``config.json`` and ``summary.json``
and its test Recall@20 per user (``per_user.IN_RUN``); :func:`restore` writes them back
into a run directory that is absent, so that ``diffmm sweep`` reuses the run (it reuses
any run directory with a summary) and ``per_user.values`` pairs it without its model.
A run directory that exists is never touched: a run in progress resumes as before.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import per_user
from common import RESULTS
from common import write_atomic as write

LEDGER = RESULTS / "fair_runs"
#: What a kept run holds besides its per-user values; the summary marks it as finished.
KEPT = ("config.json", "summary.json")


def _kept(out: Path) -> Path:
    return LEDGER / out.name / "runs"


def record(out: Path) -> list[str]:
    """Keep each finished run under ``out/runs`` that is not kept yet and whose per-user
    values can be computed; returns the names of those kept now."""
    done = []
    for summary in sorted((out / "runs").glob("*/summary.json")):
        folder, target = summary.parent, _kept(out) / summary.parent.name
        if (target / "summary.json").exists():
            continue
        recorded = json.loads(summary.read_text())["test"][per_user.METRIC]
        if not per_user.keep_in_run(folder, target, recorded):
            continue  # neither a model nor a copy: the run cannot be paired, so not kept
        for name in KEPT:
            write(target / name, (folder / name).read_text())
        done.append(folder.name)
    return done


def restore(out: Path) -> list[str]:
    """Rebuild each kept run of ``out`` whose run directory is absent; returns their names."""
    done = []
    for summary in sorted(_kept(out).glob("*/summary.json")):
        source, folder = summary.parent, out / "runs" / summary.parent.name
        if folder.exists():
            continue
        # built aside, then renamed whole: a half-rebuilt run would be taken for one to resume
        part = folder.with_name(folder.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        shutil.copytree(source, part)
        os.replace(part, folder)
        done.append(folder.name)
    return done
