"""Helpers shared by the benchmark scripts: data location, revision, machine, runs."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
RUNS = REPO / "benchmarks" / "runs"  # git-ignored run directories
#: Seconds of a DiffMM epoch in its log line, by phase.
PHASES = {
    "seconds_diffusion": "diffusion training",
    "seconds_graphs": "graph regeneration",
    "seconds_train": "recommender pass",
    "seconds_eval": "evaluation (valid + test)",
    "seconds": "epoch",
    "seconds_checkpoint": "checkpoint write (not in epoch)",
}


def shared_data_root() -> Path:
    """``$DIFFMM_SHARED_DATA`` or ``<repo>/../shared/data``."""
    env = os.environ.get("DIFFMM_SHARED_DATA")
    return Path(env).expanduser().resolve() if env else (REPO.parent / "shared" / "data").resolve()


def require_dataset(name: str) -> Path:
    """The folder of a shared dataset, or exit with a message saying what is missing."""
    path = shared_data_root() / name
    if not path.is_dir():
        sys.exit(
            f"benchmark data {path} not found: these benchmarks need the shared data "
            "(set DIFFMM_SHARED_DATA to its folder)"
        )
    return path


def git(*args: str) -> str:
    """Run ``git`` in the repository; its standard output, stripped."""
    return subprocess.run(
        ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


def git_revision() -> str:
    """``git rev-parse HEAD``, plus ``-dirty`` when a tracked file has changed.

    The benchmarks' own outputs (``benchmarks/results``) do not count: a script that
    runs several trainings rewrites them between runs.
    """
    try:
        rev = git("rev-parse", "HEAD")
        changed = git("diff", "--name-only", "HEAD").splitlines()  # staged or not
        dirty = any(not path.startswith("benchmarks/results/") for path in changed)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("-dirty" if dirty else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> dict[str, Any]:
    import torch

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def gemm_gflops(n: int = 2048, repeats: int = 7) -> float:
    """This machine's float32 matrix-product rate now (median of ``repeats``), GFLOP/s.

    Timings of the same code vary with the VM's state; this rate, measured in the same
    run, is the baseline they can be read against.
    """
    import time

    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def provenance() -> dict[str, Any]:
    """What every results file records: this script's command line, revision, machine."""
    script = f"benchmarks/{Path(sys.argv[0]).name}"
    return {
        "command": shlex.join(["python", script, *sys.argv[1:]]),
        "revision": git_revision(),
        "machine": machine_info(),
    }


def repo_path(path: str | Path) -> str:
    """``path`` relative to the repository root (``benchmarks/runs/x``, ``../shared/data``).

    Results record paths this way, as typed in the repository (the commands run there),
    never as absolute paths of the machine they ran on.
    """
    return os.path.relpath(Path(path).resolve(), REPO)


def repo_relative_text(text: str) -> str:
    """``text`` with this checkout's and the shared data's absolute paths made relative."""
    data = shared_data_root()
    return text.replace(str(data), repo_path(data)).replace(f"{REPO}/", "")


def slug(text: str) -> str:
    """``text`` as a piece of a file name: lower case, each run of other characters than
    letters, digits and ``._=-`` one ``-`` (``"w/o DM"`` -> ``w-o-dm``)."""
    return re.sub(r"[^a-z0-9._=-]+", "-", text.lower()).strip("-")


def train_command(model: str, data: Path, run_dir: Path, preset: str | None, sets: list[str]):
    """The ``diffmm train`` command line of one run (what a user would type in the repo)."""
    data, run_dir = repo_path(data), repo_path(run_dir)
    cmd = ["diffmm", "train", "--model", model, "--data", data, "--out", run_dir]
    if preset:
        cmd += ["--preset", preset]
    for assignment in sets:
        cmd += ["--set", assignment]
    return cmd


def run_training(
    cmd: list[str], run_dir: Path, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run one ``diffmm train`` in a child process; its summary and per-epoch log.

    A child process gives each run its own peak RSS and a clean timing. ``env`` replaces
    the child's environment (e.g. a ``PYTHONPATH`` to another checkout's code).
    """
    shutil.rmtree(run_dir, ignore_errors=True)  # the benchmark's own run: start afresh
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    exe = Path(sys.executable).with_name("diffmm")
    # next to the run: a new run goes only into an empty directory
    with run_dir.with_name(f"{run_dir.name}.stdout.txt").open("w") as out:
        subprocess.run(
            [str(exe), *cmd[1:]],
            cwd=REPO,
            env=env,
            check=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    summary = json.loads((run_dir / "summary.json").read_text())
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return {"summary": summary, "log": log, "command": shlex.join(cmd)}


def mean_std(values: list[float], digits: int = 4) -> str:
    """``mean ± std`` (std over runs; just the value for one run)."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def chosen_variants(variants: dict[str, Any], only: str | None) -> dict[str, Any]:
    """The variants a study's ``--only`` names (comma-separated; all when None)."""
    return variants if only is None else {name: variants[name] for name in only.split(",")}


def saved_results(stem: Path) -> dict[str, Any]:
    """What a study's ``<stem>.json`` holds so far (``{}`` before its first run): the
    studies rerun some variants and keep the others' records."""
    path = stem.with_suffix(".json")
    return json.loads(path.read_text()) if path.exists() else {}


def write_results(
    stem: Path, result: dict[str, Any], saved: dict[str, Any], markdown: Callable[..., str]
) -> None:
    """Write a study's ``<stem>.json`` and ``.md`` (and print the latter), keeping the
    ``findings`` written into the saved file after reading its runs."""
    if "findings" in saved:
        result["findings"] = saved["findings"]
    write_atomic(stem.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    write_atomic(stem.with_suffix(".md"), markdown(result))
    print(stem.with_suffix(".md").read_text())


def phase_medians(log: list[dict[str, Any]]) -> dict[str, float]:
    """Median seconds of each phase over the epochs of one run."""
    out = {}
    for key in PHASES:
        values = [r.get(key, (r.get("begin_epoch") or {}).get(key)) for r in log]
        values = [v for v in values if v is not None]
        if values:
            out[key] = statistics.median(values)
    return out


def ml100k_features(text: bool) -> Path:
    """A folder of MovieLens-100K's genre features (multi-hot) and, with ``text``, a
    sentence embedding of title + genres (needs the [text] extra and its model), computed
    once by ``diffmm features``. ``--features`` reads every file of its folder, so the two
    sets live in folders of their own."""
    folder = RUNS / ("ml100k-features-text" if text else "ml100k-features")
    items = require_dataset("ml-100k") / "ml-100k.item"
    exe = str(Path(sys.executable).with_name("diffmm"))
    if text and not (folder / "text.features.npz").exists():
        columns = ["--columns", "movie_title,class", "--out", str(folder)]
        subprocess.run([exe, "features", "text", str(items), *columns], check=True)
    if not (folder / "genre.features.npz").exists():
        multihot = ["--column", "class", "--out", str(folder)]
        subprocess.run([exe, "features", "multihot", str(items), *multihot], check=True)
    return folder
