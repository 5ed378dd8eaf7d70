"""Training runs in child processes, for ``benchmark`` and ``sweep``: one at a time, or
several at once with the machine's cores shared out between them.

Each run is ``diffmm train`` in its own process (so its peak memory is its own), its
output in ``<run_dir>.output.txt``. A finished run is reused and a started one resumed.
Runs side by side each get ``cores // jobs`` threads (``OMP_NUM_THREADS``, which torch
reads at start-up), because every process taking all cores makes them all many times
slower than one thread each; a thread count the user exported is kept.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from diffmm import logs
from diffmm.errors import ConfigError

logger = logging.getLogger("diffmm.experiments")

#: The variables each library's thread pool reads (torch's intra-op pool reads the first).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def available_cores() -> int:
    """The cores this process may run on (its affinity mask where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def child_environment(jobs: int) -> dict[str, str]:
    """The environment of one of ``jobs`` runs side by side: unbuffered output, and each
    run's share of the cores as its thread count (unless the user exported one)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = str(max(1, available_cores() // jobs))
        env.update(dict.fromkeys(THREAD_VARIABLES, threads))
    return env


def runs_bar(jobs: Sequence[Any]) -> Any:
    """The overall bar of a benchmark or sweep: iterate it over ``jobs``, one training
    run each; it counts the finished runs (drawn on a terminal only)."""
    with logs.progress_bars(True):
        return logs.bar(jobs, total=len(jobs), desc="runs", unit="run")


def run_one(cmd: list[str], run_dir: Path, env: dict[str, str] | None = None) -> None:
    """Train one run in a child process (reuse it if finished, resume it if started); its
    output goes to ``<run_dir>.output.txt``, a line saying what is done to the log."""
    if (run_dir / "summary.json").exists():
        logger.info(f"reusing finished run {run_dir}")
        return
    if (run_dir / "config.json").exists():
        logger.info(f"resuming {run_dir}")
        cmd = ["train", "--resume", str(run_dir)]
    else:
        logger.info("diffmm " + " ".join(cmd))
    # The command's output goes next to the run: a new run needs an empty directory.
    output = run_dir.with_name(f"{run_dir.name}.output.txt")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with output.open("a") as out:
        done = subprocess.run(
            [sys.executable, "-m", "diffmm.cli", *cmd],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env if env is not None else child_environment(1),
        )
    if done.returncode != 0:
        tail = "".join(output.read_text().splitlines(True)[-5:])
        raise ConfigError(f"run {run_dir} failed (exit {done.returncode}):\n{tail}")


def run_all(runs: Sequence[tuple[list[str], Path]], jobs: int = 1) -> None:
    """Train every ``(command, run_dir)`` of ``runs``, up to ``jobs`` at a time, in order
    (a run directory given twice is one run).

    When a run fails, no further run starts; those already running finish (each is a
    resumable run directory), then the first failure is raised.
    """
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: give 1 or more runs at a time")
    first: dict[Path, tuple[list[str], Path]] = {}
    for cmd, run_dir in runs:
        first.setdefault(run_dir, (cmd, run_dir))
    runs = list(first.values())
    env = child_environment(jobs)
    if jobs == 1:
        with runs_bar(runs) as bar:
            for cmd, run_dir in bar:
                run_one(cmd, run_dir, env)
        return
    # the bar counts runs as they finish, in any order
    with runs_bar(range(len(runs))) as bar, ThreadPoolExecutor(max_workers=jobs) as pool:
        pending = list(runs)
        running: set[Future[None]] = set()
        failure: BaseException | None = None
        while (pending and failure is None) or running:
            while pending and failure is None and len(running) < jobs:
                cmd, run_dir = pending.pop(0)
                running.add(pool.submit(run_one, cmd, run_dir, env))
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                bar.update()
                if failure is None and future.exception() is not None:
                    failure = future.exception()
        if failure is not None:
            raise failure
