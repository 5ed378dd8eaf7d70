"""Per-user test values of benchmark runs, kept in ``results/per_user/`` (committed).

Run directories are git-ignored and stay on the machine that trained them; the paired,
per-user comparisons of the reports (``diffmm.compare.paired_comparison``) need each
run's test metric per user. :func:`values` computes it once from the run directory's
best model (``diffmm.compare.per_user_metrics``, the ``diffmm report compare`` protocol)
and stores it with the run's revision and recorded result, so that a later machine can
pair a new run with this one. A stored file is used only for the run it was made from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from common import RESULTS

STORE = RESULTS / "per_user"
METRIC = "recall@20"


def _matches(stored: Any, revision: str, recorded: float) -> bool:
    return str(stored["revision"]) == revision and float(stored["recorded"]) == recorded


#: A run directory's own copy of its per-user values, for a run directory rebuilt from a
#: committed record without its model (``fair_ledger.restore``).
IN_RUN = "test_per_user.npz"


def _save(path: Path, **arrays: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")  # written whole, then renamed; umask honoured
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)


def compute(run_dir: Path, recorded: float) -> tuple[np.ndarray, np.ndarray] | None:
    """The run's users and their test Recall@20, in user order: from its own copy
    (:data:`IN_RUN`, if made for ``recorded``) or its best model; None if it has neither."""
    from diffmm.compare import per_user_metrics

    if (run_dir / IN_RUN).exists():
        with np.load(run_dir / IN_RUN) as kept:
            if float(kept["recorded"]) == recorded:
                return kept["users"], kept["values"]
    if not (run_dir / "best.pt").exists():
        return None
    users, per = per_user_metrics(run_dir, "test", ks=(20,), metrics=[METRIC.split("@")[0]])
    order = np.argsort(users)
    users, result = users[order], per[METRIC][order]
    if abs(result.mean() - recorded) > 1e-6:
        print(
            f"warning: {run_dir}'s best model gives test {METRIC} {result.mean():.6f}, "
            f"the run recorded {recorded:.6f}",
            flush=True,
        )
    return users, result


def keep_in_run(run_dir: Path, target: Path, recorded: float) -> bool:
    """Write ``run_dir``'s per-user values as ``target``/:data:`IN_RUN`; False if it has none."""
    found = compute(run_dir, recorded)
    if found is None:
        return False
    target.mkdir(parents=True, exist_ok=True)
    _save(target / IN_RUN, users=found[0], values=found[1], recorded=recorded)
    return True


def values(run_dir: Path, name: str, revision: str, recorded: float) -> np.ndarray | None:
    """The run's test Recall@20 per user, in user order, or None if neither its stored
    copy (``STORE/name.npz``, matching ``revision`` and ``recorded``) nor its run
    directory (:func:`compute`) has them. ``recorded`` is the run's own test Recall@20."""
    path = STORE / f"{name}.npz"
    if path.exists():
        with np.load(path) as stored:
            if _matches(stored, revision, recorded):
                return stored["values"]
    found = compute(run_dir, recorded)
    if found is None:
        return None
    STORE.mkdir(parents=True, exist_ok=True)
    users, result = found
    _save(path, users=users, values=result, revision=revision, recorded=recorded)
    return result
