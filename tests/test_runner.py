"""Runs in child processes: several at a time, the cores shared out, failures stop the rest."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from diffmm import runner
from diffmm.cli import main
from diffmm.errors import ConfigError

DATA = "synthetic:n_users=80,n_items=60,interactions_per_user=10"


def test_runs_side_by_side_share_the_cores_and_a_users_thread_count_is_kept(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runner, "available_cores", lambda: 8)
    assert "OMP_NUM_THREADS" not in runner.child_environment(1)  # one run: as today
    env = runner.child_environment(3)
    assert {env[v] for v in runner.THREAD_VARIABLES} == {"2"}
    assert runner.child_environment(16)["OMP_NUM_THREADS"] == "1"  # never 0
    assert runner.child_environment(1)["PYTHONUNBUFFERED"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert runner.child_environment(3)["OMP_NUM_THREADS"] == "4"


class _FakeRuns:
    """Stands in for ``run_one``: records how many run at once; ``fail`` names a run that
    fails after a short while."""

    def __init__(self, fail: str | None = None) -> None:
        self.fail, self.now, self.most = fail, 0, 0
        self.started: list[str] = []
        self.finished: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, cmd: list[str], run_dir: Path, env: dict[str, str]) -> None:
        with self.lock:
            self.started.append(run_dir.name)
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(0.05 if run_dir.name == self.fail else 0.3)
        with self.lock:
            self.now -= 1
        if run_dir.name == self.fail:
            raise ConfigError(f"run {run_dir} failed (exit 1)")
        with self.lock:
            self.finished.append(run_dir.name)


def test_run_all_keeps_jobs_runs_going_and_counts_a_repeated_directory_once(monkeypatch):
    fake = _FakeRuns()
    monkeypatch.setattr(runner, "run_one", fake)
    runs = [(["train"], Path(f"r{i}")) for i in range(5)] + [(["train"], Path("r0"))]
    runner.run_all(runs, jobs=2)
    assert sorted(fake.finished) == [f"r{i}" for i in range(5)]
    assert fake.started == [f"r{i}" for i in range(5)]  # in the order given
    assert fake.most == 2
    with pytest.raises(ConfigError, match="--jobs 0"):
        runner.run_all(runs, jobs=0)


def test_after_a_failure_no_run_starts_and_the_running_ones_finish(monkeypatch):
    fake = _FakeRuns(fail="r0")
    monkeypatch.setattr(runner, "run_one", fake)
    runs = [(["train"], Path(f"r{i}")) for i in range(6)]
    with pytest.raises(ConfigError, match="run r0 failed"):
        runner.run_all(runs, jobs=2)
    # r0 fails first; r1, already running, finishes; nothing starts in r0's place
    assert fake.started == ["r0", "r1"] and fake.finished == ["r1"]


@pytest.mark.slow
def test_a_sweep_with_two_jobs_matches_one_job_and_each_run_gets_its_share(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    args = ["sweep", "--data", DATA, "--model", "mf", "--grid", "l2_weight=1e-3,1e-1"]
    args += ["--seeds", "421,422", "--set", "train.epochs=2"]
    tables = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        result = CliRunner().invoke(main, [*args, "--out", str(out), "--jobs", str(jobs)])
        assert result.exit_code == 0, result.output
        tables[jobs] = pd.read_csv(out / "sweep.csv")
        summaries = [json.loads(p.read_text()) for p in out.glob("runs/*/summary.json")]
        assert len(summaries) == 4
        if jobs == 2:  # two runs side by side: each its half of the cores
            assert {s["threads"] for s in summaries} == {max(1, runner.available_cores() // 2)}
    pd.testing.assert_frame_equal(tables[1], tables[2])  # same runs, same numbers
