"""Run directories: what a run writes, resuming after a crash, refusing to lose a run."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from diffmm.checkpoint import DataRef, RunDir, load_checkpoint
from diffmm.config import resolve_config
from diffmm.errors import ConfigError, DataError
from diffmm.trainer import train
from helpers import diffmm_command

DATA = "synthetic:n_users=160,n_items=90,interactions_per_user=10"


def _config(model: str = "diffmm", epochs: int = 4, *more: str):
    overrides = [f"train.epochs={epochs}", "train.progress=false", "train.patience=50", *more]
    if model == "diffmm":
        overrides += ["denoiser_hidden_dims=[32]", "diffusion_batch_size=64"]
    return resolve_config(model, overrides=overrides)


def _train(run_dir: Path, config, *, resume: bool = False, crash_after: int | None = None) -> dict:
    """Train; with ``crash_after`` raise :class:`Crash` once that epoch's line is logged
    (after its checkpoint), as a process killed then would stop."""
    ref = DataRef.of(DATA, "random", config.train.seed)
    with _crash_after(crash_after):
        return train(config, ref.load(), run_dir, data_ref=ref, resume=resume)


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


class Crash(Exception):
    pass


class _CrashHandler(logging.Handler):
    def __init__(self, epoch: int) -> None:
        super().__init__(logging.INFO)
        self.epoch = epoch

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(f"epoch {self.epoch:>3} | "):  # the epoch's line
            raise Crash


@contextmanager
def _crash_after(epoch: int | None) -> Iterator[None]:
    logger = logging.getLogger("diffmm.trainer")
    if epoch is None:
        yield
        return
    handler, level = _CrashHandler(epoch), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_a_run_directory_holds_config_data_ids_log_and_checkpoints(tmp_path):
    run = tmp_path / "run"
    config = _config("lightgcn", epochs=2)
    summary = _train(run, config)
    run_dir = RunDir(run)
    assert run_dir.read_config() == config
    assert run_dir.data_ref() == DataRef(DATA, "random", config.train.seed)
    dataset = DataRef(DATA, "random", config.train.seed).load()
    run_dir.check_fingerprint(dataset)  # the same data pass
    users, items = run_dir.read_ids(dataset.n_users, dataset.n_items)
    assert len(users) == dataset.n_users and len(items) == dataset.n_items
    last = load_checkpoint(run / "last.pt")
    assert last["epoch"] == 2
    assert {"model", "optimizer", "rng", "selection", "model_extra"} <= set(last)
    assert last["selection"]["best_epoch"] == summary["best_epoch"]
    assert load_checkpoint(run / "best.pt")["epoch"] == summary["best_epoch"]
    assert [r["epoch"] for r in _log(run)] == [1, 2]


RESUMED = {
    "lightgcn": [],
    "diffmm": [],
    "lightgcn+ema": ["train.ema_decay=0.9"],
    # rows refreshed in turn: the stored rows of the other users must come back
    "diffmm+rolling": ["graph_users_per_epoch=50"],
    # the window of past graphs must come back too
    "diffmm+window": ["graph_average_epochs=3"],
}


@pytest.mark.parametrize("variant", list(RESUMED))
def test_a_resumed_run_ends_exactly_like_an_uninterrupted_one(tmp_path, variant):
    config = _config(variant.partition("+")[0], 4, *RESUMED[variant])
    full = _train(tmp_path / "full", config)
    with pytest.raises(Crash):
        _train(tmp_path / "crashed", config, crash_after=2)
    assert load_checkpoint(tmp_path / "crashed" / "last.pt")["epoch"] == 2
    assert not (tmp_path / "crashed" / "summary.json").exists()
    torch.manual_seed(12345)  # the resumed run must not depend on the process's RNG state
    resumed = _train(tmp_path / "crashed", config, resume=True)
    assert resumed["test"] == full["test"]
    assert resumed["best_epoch"] == full["best_epoch"]
    assert resumed["resumed_after_epochs"] == [2]
    full_log, resumed_log = _log(tmp_path / "full"), _log(tmp_path / "crashed")
    assert [r["losses"] for r in resumed_log] == [r["losses"] for r in full_log]
    assert [r["valid"] for r in resumed_log] == [r["valid"] for r in full_log]


def test_resume_recovers_the_best_state_if_the_run_died_before_writing_best_pt(tmp_path):
    run = tmp_path / "run"
    config = _config("lightgcn", epochs=2)
    with pytest.raises(Crash):
        _train(run, config, crash_after=1)
    (run / "best.pt").unlink()  # as if killed between last.pt and best.pt
    (run / "log.jsonl").unlink()  # ... and before the log line
    _train(run, config, resume=True)
    best = load_checkpoint(run / "best.pt")
    assert best["epoch"] in (1, 2)
    assert [r["epoch"] for r in _log(run)] == [2]


def test_resume_drops_log_lines_of_epochs_the_checkpoint_does_not_have(tmp_path):
    run = tmp_path / "run"
    config = _config("lightgcn", epochs=3)
    with pytest.raises(Crash):
        _train(run, config, crash_after=2)
    lines = (run / "log.jsonl").read_text().splitlines()
    ghost = json.loads(lines[-1]) | {"epoch": 3}
    (run / "log.jsonl").write_text("\n".join([*lines, json.dumps(ghost)]) + "\n")
    _train(run, config, resume=True)
    assert [r["epoch"] for r in _log(run)] == [1, 2, 3]


def test_a_new_run_into_an_existing_run_directory_is_refused(tmp_path):
    run = tmp_path / "run"
    config = _config("lightgcn", epochs=1)
    _train(run, config)
    before = (run / "best.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a training run; continue it"):
        _train(run, config)
    assert (run / "best.pt").read_bytes() == before


def test_resume_with_other_data_is_refused(tmp_path):
    run = tmp_path / "run"
    config = _config("lightgcn", epochs=1)
    _train(run, config)
    other = DataRef.of("synthetic:n_users=160,n_items=90,interactions_per_user=11", "random", 1)
    with pytest.raises(DataError, match="not the data"):
        train(config, other.load(), run, data_ref=other, resume=True)


def test_a_truncated_checkpoint_is_reported_not_loaded(tmp_path):
    run = tmp_path / "run"
    config = _config("lightgcn", epochs=1)
    _train(run, config)
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="last.pt: cannot read this checkpoint"):
        _train(run, config, resume=True)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    """The real thing: a `diffmm train` process killed with SIGKILL, then --resume."""
    args = [
        "--model", "diffmm", "--data", DATA,
        "--set", "train.epochs=4", "--set", "train.progress=false",
        "--set", "denoiser_hidden_dims=[64]", "--set", "diffusion_batch_size=32",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(
        diffmm_command("train", *args, "--out", str(full)), env=env, check=True, capture_output=True
    )
    proc = subprocess.Popen(
        diffmm_command("train", *args, "--out", str(killed)),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = killed / "log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.exists() and len(log.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before the kill"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # now inside epoch 3
    proc.wait()
    assert not (killed / "summary.json").exists()
    assert 2 <= load_checkpoint(killed / "last.pt")["epoch"] < 4
    subprocess.run(
        diffmm_command("train", "--resume", str(killed)), env=env, check=True, capture_output=True
    )
    a = json.loads((full / "summary.json").read_text())
    b = json.loads((killed / "summary.json").read_text())
    assert b["test"] == a["test"] and b["best_epoch"] == a["best_epoch"]
    assert b["resumed_after_epochs"]
    assert [r["losses"] for r in _log(killed)] == [r["losses"] for r in _log(full)]


def test_a_model_state_that_does_not_fit_is_named_in_one_line():
    from diffmm.state import load_model_state

    model = torch.nn.Linear(3, 2)
    good = {k: v.clone() + 1 for k, v in model.state_dict().items()}
    load_model_state(model, good, "x.pt")
    torch.testing.assert_close(model.weight, good["weight"])
    cases = {
        "weight is [2, 4] in the checkpoint, [2, 3] in the model": {
            **good,
            "weight": torch.zeros(2, 4),
        },
        "lacks bias": {"weight": good["weight"]},
        "has scale, which the model lacks": {**good, "scale": torch.ones(1)},
        "no mapping": [good["weight"]],
    }
    for needle, state in cases.items():
        with pytest.raises(DataError) as info:
            load_model_state(model, state, "x.pt")
        message = str(info.value)
        assert message.startswith("x.pt: does not fit the model") and needle in message
        assert "\n" not in message
    torch.testing.assert_close(model.weight, good["weight"])  # left as it was
