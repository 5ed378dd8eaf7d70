"""Progress reporting: log lines per phase and epoch, progress bars, logging set-up and
TensorBoard (with a fake writer: the package is an optional extra)."""

from __future__ import annotations

import io
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from diffmm import logs, tensorboard_log
from diffmm.checkpoint import DataRef
from diffmm.config import resolve_config
from diffmm.errors import ConfigError
from diffmm.trainer import train
from helpers import cli

DATA = "synthetic:n_users=80,n_items=50,interactions_per_user=8"
DIFFMM = ["denoiser_hidden_dims=[16]", "diffusion_batch_size=32"]


def _train(model: str, run_dir: Path | None, *sets: str) -> dict:
    overrides = ["train.epochs=2", "train.progress=false", *sets]
    if model == "diffmm":
        overrides += DIFFMM
    config = resolve_config(model, overrides=overrides)
    ref = DataRef.of(DATA)
    return train(config, ref.load(), run_dir, data_ref=ref)


def _trainer_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "diffmm.trainer"]


def test_diffmm_logs_a_line_per_phase_then_the_epoch_line(caplog):
    caplog.set_level(logging.INFO, logger="diffmm")
    _train("diffmm", None)
    heads = [" ".join(line.split()[:3]) for line in _trainer_lines(caplog)]
    assert heads[:6] == [
        "epoch 1 diffusion",
        "epoch 1 graphs",
        "epoch 1 |",
        "epoch 2 diffusion",
        "epoch 2 graphs",
        "epoch 2 |",
    ]
    assert len(heads) == 7 and heads[6].startswith("selected epoch")
    diffusion = _trainer_lines(caplog)[0]
    assert "elbo_" in diffusion and "msi_" in diffusion and "s (" in diffusion


def test_a_model_without_per_epoch_work_logs_no_phase_lines(caplog):
    caplog.set_level(logging.INFO, logger="diffmm")
    _train("mf", None)
    lines = _trainer_lines(caplog)
    assert [line[:11] for line in lines[:2]] == ["epoch   1 |", "epoch   2 |"]
    assert len(lines) == 3 and lines[2].startswith("selected epoch")


@pytest.mark.parametrize("progress", [True, False])
def test_the_generator_draws_bars_only_when_progress_is_on(monkeypatch, capsys, progress):
    made: list[tuple[str, bool]] = []
    real_bar = logs.bar

    def spy(iterable: Any, *, total: int | None, desc: str, **kw: Any) -> Any:
        made.append((desc, logs.bars_on()))
        return real_bar(iterable, total=total, desc=desc, **kw)

    monkeypatch.setattr(logs, "bar", spy)
    _train("diffmm", None, f"train.progress={str(progress).lower()}", "train.epochs=1")
    descs = {desc for desc, _ in made}
    assert {"diffusion", "epoch 1"} <= descs
    assert any(desc.startswith("graphs ") for desc in descs)  # one per modality
    assert {on for _, on in made} == {progress}
    if not progress:
        err = capsys.readouterr().err
        assert "\r" not in err and "it/s" not in err  # no bar was drawn


@pytest.fixture
def bare_logger() -> Iterator[logging.Logger]:
    """The "diffmm" logger without handlers or level, restored afterwards."""
    logger = logging.getLogger("diffmm")
    handlers, level = logger.handlers[:], logger.level
    logger.handlers = []
    logger.setLevel(logging.NOTSET)
    yield logger
    logger.handlers = handlers
    logger.setLevel(level)


def test_log_to_stderr_adds_one_handler_and_passes_rank_0_only(bare_logger, monkeypatch, capsys):
    logger = bare_logger
    logs.log_to_stderr()
    logs.log_to_stderr()
    (handler,) = logger.handlers
    assert isinstance(handler, logs.StderrHandler) and logger.level == logging.INFO
    logging.getLogger("diffmm.trainer").info("epoch   1 | loss 0.5")
    monkeypatch.setenv("RANK", "1")
    logging.getLogger("diffmm.trainer").info("from rank 1")
    assert capsys.readouterr().err == "epoch   1 | loss 0.5\n"


def test_log_to_stderr_unless_any_keeps_an_applications_configuration(bare_logger, monkeypatch):
    monkeypatch.setattr(logging.getLogger(), "handlers", [logging.NullHandler()])
    logs.log_to_stderr(unless_any=True)
    assert bare_logger.handlers == [] and bare_logger.level == logging.NOTSET


def test_the_command_prints_the_epoch_lines_on_stderr(tmp_path):
    result = cli(
        "train", "--model", "mf", "--data", DATA, "--out", tmp_path / "run",
        "--set", "train.epochs=2", "--set", "train.progress=false",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines[0].startswith("training mf on ")
    assert [line[:11] for line in lines[1:3]] == ["epoch   1 |", "epoch   2 |"]
    assert lines[3].startswith("selected epoch")
    assert "epoch" not in result.stdout.split("{", 1)[0]  # stdout: the summary only


def test_tensorboard_is_refused_in_one_line_without_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(tensorboard_log, "available", lambda: False)
    with pytest.raises(ConfigError, match=r"pip install 'diffmm\[tensorboard\]'") as err:
        _train("mf", tmp_path / "run", "train.tensorboard=true")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


class FakeWriter:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.scalars: list[tuple[str, float, int]] = []
        self.closed = False

    def add_scalar(self, tag: str, scalar_value: float, global_step: int) -> None:
        self.scalars.append((tag, scalar_value, global_step))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_tensorboard_gets_losses_metrics_and_seconds_per_phase(monkeypatch, tmp_path):
    writers: list[FakeWriter] = []

    def fake(log_dir: Path) -> FakeWriter:
        writers.append(FakeWriter(log_dir))
        return writers[-1]

    monkeypatch.setattr(tensorboard_log, "available", lambda: True)
    monkeypatch.setattr(tensorboard_log, "summary_writer", fake)
    _train("diffmm", tmp_path / "run", "train.tensorboard=true")
    (writer,) = writers
    assert writer.log_dir == tmp_path / "run" / "tensorboard" and writer.closed
    by_tag: dict[str, list[int]] = {}
    for tag, value, step in writer.scalars:
        assert isinstance(value, float)
        by_tag.setdefault(tag, []).append(step)
    for tag in ["loss/loss", "loss/bpr", "valid/recall@20", "valid/ndcg@20"]:
        assert by_tag.get(tag) == [1, 2], tag
    for phase in ["diffusion", "graphs", "train", "eval", "checkpoint", "epoch"]:
        assert by_tag.get(f"seconds/{phase}") == [1, 2], phase
    assert any(tag.startswith("phase/elbo_") for tag in by_tag)
    assert "valid/n_users" not in by_tag  # a count, not a metric


def test_without_the_setting_nothing_goes_to_tensorboard(monkeypatch, tmp_path):
    monkeypatch.setattr(tensorboard_log, "summary_writer", pytest.fail)
    _train("mf", tmp_path / "run")
    assert not (tmp_path / "run" / "tensorboard").exists()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_runs_bar_counts_finished_runs_on_a_terminal(monkeypatch):
    from diffmm.runner import runs_bar

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with runs_bar(["a", "b", "c"]) as bar:
        for _ in bar:
            time.sleep(0.12)  # past tqdm's refresh interval
    drawn = terminal.getvalue()
    assert "runs:" in drawn and "0/3" in drawn and "2/3" in drawn
    assert bar.n == 3


def test_no_runs_bar_off_a_terminal(capsys):
    from diffmm.runner import runs_bar

    with runs_bar(["a", "b"]) as bar:
        assert list(bar) == ["a", "b"]
    assert capsys.readouterr().err == ""
