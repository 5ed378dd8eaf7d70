"""Trust in the run directory: no code from checkpoints, no lost or mixed files, no
diverged model selected, and one-line errors for what a run directory refuses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import Result

import helpers
from diffmm import utils
from diffmm.checkpoint import DataRef, RunDir, RunLockedError, load_checkpoint
from diffmm.config import resolve_config
from diffmm.errors import ConfigError, DataError, DivergedError, WriteError
from diffmm.trainer import train
from helpers import cli, diffmm_command

DATA = "synthetic:n_users=60,n_items=40,interactions_per_user=8"
QUICK = ["--set", "train.epochs=2", "--set", "train.progress=false"]


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))


def user_error(result: Result) -> str:
    """A user error (see :func:`helpers.user_error`) of exactly one line."""
    message = helpers.user_error(result)
    assert message.count("\n") == 1, message
    return message


def lightgcn_run(path: Path, epochs: int = 2, data: str = DATA) -> Path:
    config = resolve_config(
        "lightgcn", overrides=[f"train.epochs={epochs}", "train.progress=false"]
    )
    ref = DataRef.of(data)
    train(config, ref.load(), path, data_ref=ref)
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lightgcn_run(tmp_path_factory.mktemp("runs") / "run")


# ----------------------------------------------------------------------------- no code runs
class _Payload:
    """Unpickling this runs ``touch MARKER``, as an attacker's checkpoint would."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("name", ["best.pt", "last.pt"])
def test_a_checkpoint_with_a_pickled_payload_is_refused_and_never_runs(
    finished_run: Path, tmp_path: Path, name: str
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    marker = tmp_path / "pwned"
    state = torch.load(run / name, weights_only=True)
    state["model"]["evil"] = _Payload(marker)
    torch.save(state, run / name)
    if name == "best.pt":
        result = cli("recommend", run, "--user", "0")
    else:
        result = cli("train", "--resume", run)
    message = user_error(result)
    assert f"{name}: refused" in message and "could run code" in message
    assert not marker.exists()


def test_checkpoints_load_with_weights_only(finished_run: Path) -> None:
    for name in ("best.pt", "last.pt"):
        assert torch.load(finished_run / name, weights_only=True)["epoch"] >= 1


# ----------------------------------------------------------------------------- files kept
def test_a_new_run_into_a_folder_with_other_files_is_refused_and_deletes_nothing() -> None:
    out = Path("mine")
    out.mkdir()
    for name in ("best.pt", "summary.json", "log.jsonl"):
        (out / name).write_text(f"the user's own {name}")
    message = user_error(cli("train", "--model", "mf", "--data", DATA, "--out", out, *QUICK))
    assert "--out mine is not empty" in message
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "log.jsonl", "summary.json"]
    assert (out / "best.pt").read_text() == "the user's own best.pt"


def test_a_new_run_goes_into_an_empty_folder() -> None:
    Path("empty").mkdir()
    assert cli("train", "--model", "mf", "--data", DATA, "--out", "empty", *QUICK).exit_code == 0
    assert (Path("empty") / "summary.json").exists()


@pytest.mark.slow
def test_a_second_process_is_refused_while_a_run_is_in_progress(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    with run.owned():
        holder = os.getpid()
        code = (
            "import sys; from diffmm.checkpoint import RunDir\n"
            f"with RunDir({str(run.path)!r}).owned(): pass\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode != 0
        assert f"in use by another diffmm process (PID {holder})" in proc.stderr
        with pytest.raises(RunLockedError):  # another handle in this process too
            with RunDir(run.path).owned():
                pass


def test_two_trainings_into_one_run_directory_do_not_interleave(finished_run: Path) -> None:
    run = Path("run")
    shutil.copytree(finished_run, run)
    (run / "summary.json").unlink()  # an unfinished run, so --resume has work to do
    with RunDir(run).owned():
        message = user_error(cli("train", "--resume", run))
    assert f"{run} is in use by another diffmm process (PID {os.getpid()})" in message


@pytest.mark.slow
def test_a_killed_run_leaves_no_lock_that_blocks_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["--model", "mf", "--data", DATA, "--out", str(run), "--set", "train.epochs=400"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        diffmm_command("train", *args, "--set", "train.progress=false"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not (run / "last.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert (run / ".lock").read_text().strip() == str(proc.pid)  # the stale lock file
    with RunDir(run).owned():  # the kernel released the lock with the process
        pass


def test_a_checkpoint_of_another_run_is_refused(finished_run: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", lightgcn_run(tmp_path / "b")
    shutil.copytree(finished_run, a)
    (a / "summary.json").unlink()
    best_before = (a / "best.pt").read_bytes()
    shutil.copy(b / "last.pt", a / "last.pt")  # same sizes, same data, another run
    message = user_error(cli("train", "--resume", a))
    assert "last.pt: belongs to another run" in message
    assert (a / "best.pt").read_bytes() == best_before
    shutil.copy(b / "best.pt", a / "best.pt")
    assert "best.pt: belongs to another run" in user_error(cli("recommend", a, "--user", "0"))


def test_export_never_replaces_a_file_without_force_nor_the_runs_data(
    finished_run: Path, tmp_path: Path
) -> None:
    table = tmp_path / "clicks.csv"
    rng = np.random.default_rng(0)
    rows = {(int(u), int(rng.integers(12))) for u in range(15) for _ in range(6)}
    table.write_text("user,item\n" + "".join(f"{u},{i}\n" for u, i in sorted(rows)))
    run = lightgcn_run(tmp_path / "run", epochs=1, data=str(table))
    before = table.read_bytes()
    for extra in ([], ["--force"]):
        message = user_error(cli("export", run, "--out", table, *extra))
        assert "part of the run or of the data it was trained on" in message
        assert table.read_bytes() == before
    assert "part of the run" in user_error(cli("export", run, "--out", run / "ids.json", "--force"))
    mine = Path("topk.csv")
    mine.write_text("mine")
    assert "--force" in user_error(cli("export", run, "--out", mine))
    assert mine.read_text() == "mine"
    result = cli("export", run, "--out", mine, "--force", "-k", "5")
    assert result.exit_code == 0, result.output
    assert mine.read_text().startswith("user,rank,item,score")


def test_written_files_honour_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        utils.atomic_write_bytes(tmp_path / "a.bin", b"x")
        os.umask(0o077)
        utils.atomic_write_json(tmp_path / "b.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full to simulate a full disk")
    path = tmp_path / "last.pt"
    utils.atomic_torch_save(path, {"epoch": 1})
    real_open = os.open

    def full_disk(file, flags, mode=0o777):  # the temporary file lands on a full disk
        if str(file).endswith(".tmp"):
            return real_open("/dev/full", os.O_WRONLY)
        return real_open(file, flags, mode)

    monkeypatch.setattr(utils.os, "open", full_disk)
    with pytest.raises(WriteError) as err:
        utils.atomic_torch_save(path, {"epoch": 2, "w": torch.zeros(100_000)})
    assert f"cannot write {path}" in str(err.value) and "previous version is intact" in str(
        err.value
    )
    assert "\n" not in str(err.value)
    assert torch.load(path, weights_only=True) == {"epoch": 1}


# ----------------------------------------------------------------------------- divergence
def test_a_diverged_model_is_never_selected_saved_or_reported() -> None:
    out = Path("run")
    result = cli("train", "--model", "mf", "--data", DATA, "--out", out, "--set", "train.lr=1e30")
    message = user_error(result)
    assert "training diverged in epoch" in message and "non-finite loss" in message
    assert "train.lr=1e+30" in message
    assert not (out / "summary.json").exists()  # nothing reported
    for name in ("best.pt", "last.pt"):  # what was kept is finite
        state = load_checkpoint(out / name)
        assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_loss_that_is_not_finite_before_any_update_blames_the_data_not_the_lr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from diffmm.models.mf import MF

    real_loss = MF.loss
    monkeypatch.setattr(
        MF, "loss", lambda self, b: {**real_loss(self, b), "bpr": torch.tensor(1e39)}
    )
    message = user_error(cli("train", "--model", "mf", "--data", DATA, "--out", "run", *QUICK))
    assert "diverged in epoch 1: non-finite loss" in message and "at step 1" in message
    assert "the data or the model's settings, not the learning rate" in message
    assert "epoch 0" not in message and "train.lr=" not in message
    assert not Path("run").exists()


def test_a_non_finite_parameter_after_the_per_epoch_phase_stops_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from diffmm.models.mf import MF

    def poison(self, epoch):
        with torch.no_grad():
            self.user_embedding.weight[0, 0] = float("inf")
        return {}

    with monkeypatch.context() as patch:
        patch.setattr(MF, "begin_epoch", poison)
        message = user_error(cli("train", "--model", "mf", "--data", DATA, "--out", "run", *QUICK))
    assert "diverged in epoch 1: non-finite parameter 'user_embedding.weight' after the per-" in (
        message
    )
    assert "Likely cause: train.lr=0.001 too large" in message and "epoch 0" not in message
    # nothing half-made: the same --out can be used again at once
    assert not Path("run").exists()
    assert cli("train", "--model", "mf", "--data", DATA, "--out", "run", *QUICK).exit_code == 0


def test_divergence_after_a_good_epoch_keeps_the_good_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffmm.models.mf import MF

    real_loss = MF.loss
    calls = {"n": 0}

    def poisoned(self, batch):  # finite in epoch 1, NaN from some step of epoch 2 on
        calls["n"] += 1
        losses = real_loss(self, batch)
        if calls["n"] > 1:  # one step per epoch on this data
            losses["bpr"] = losses["bpr"] * float("nan")
        return losses

    monkeypatch.setattr(MF, "loss", poisoned)
    config = resolve_config("mf", overrides=["train.epochs=3", "train.progress=false"])
    ref = DataRef.of(DATA)
    with pytest.raises(DivergedError, match="epoch 2: non-finite loss .*bpr"):
        train(config, ref.load(), tmp_path / "run", data_ref=ref)
    run = RunDir(tmp_path / "run")
    for name in ("best.pt", "last.pt"):
        state = load_checkpoint(run.path / name)
        assert state["epoch"] == 1
        assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_run_that_fails_before_its_first_epoch_leaves_nothing_behind(tmp_path: Path) -> None:
    # DiffMM needs item features; a table of interactions alone cannot work.
    bare = tmp_path / "bare.csv"
    bare.write_text(
        "user,item\n" + "".join(f"{u},{i}\n" for u in range(20) for i in range(u % 7, 12))
    )
    result = cli("train", "--model", "diffmm", "--data", bare, "--out", "run", *QUICK)
    user_error(result)
    assert not Path("run").exists()
    result = cli("train", "--model", "mf", "--data", bare, "--out", "run", *QUICK)
    assert result.exit_code == 0, result.output


# ----------------------------------------------------------------------------- one-line refusals
def test_a_corrupt_log_line_on_resume_is_one_line(finished_run: Path) -> None:
    run = Path("run")
    shutil.copytree(finished_run, run)
    (run / "summary.json").unlink()
    with (run / "log.jsonl").open("a") as fh:
        fh.write("{not json\n")
    assert "log.jsonl: line 3 is not a log record" in user_error(cli("train", "--resume", run))


def test_a_corrupt_config_in_report_sparsity_is_one_line(finished_run: Path) -> None:
    run = Path("run")
    shutil.copytree(finished_run, run)
    (run / "config.json").write_text("{broken")
    message = user_error(cli("report", "sparsity", run, "--out", "report"))
    assert "config.json: not valid JSON" in message


@pytest.mark.parametrize("option", [["--split-seed", "7"], ["--split", "loo"], ["--features", "."]])
def test_resume_refuses_split_options_that_are_not_the_runs_own(
    finished_run: Path, option: list[str]
) -> None:
    run = Path("run")
    shutil.copytree(finished_run, run)
    message = user_error(cli("train", "--resume", run, *option))
    assert f"{option[0]} " in message and "drop" in message


def test_resume_accepts_the_runs_own_split_options(finished_run: Path) -> None:
    run = Path("run")
    shutil.copytree(finished_run, run)
    result = cli("train", "--resume", run, "--split-seed", "2024", "--split", "random")
    assert result.exit_code == 0, result.output


def test_a_table_named_like_the_builtin_data_is_still_a_path(tmp_path: Path) -> None:
    ref = DataRef.of("synthetic_clicks.csv")
    assert ref.path == str(tmp_path / "synthetic_clicks.csv")
    assert DataRef.of("synthetic:n_users=10").path == "synthetic:n_users=10"


def test_the_data_reference_has_one_split_seed_default(finished_run: Path) -> None:
    ref = RunDir(finished_run).data_ref(moved_to="elsewhere.csv")
    assert ref.seed == 2024 and ref.path == str(Path("elsewhere.csv").resolve())


def test_errors_are_refused_as_diffmm_errors() -> None:
    with pytest.raises(DataError, match="no such run directory"):
        RunDir("nowhere").require_run()
    Path("plain").mkdir()
    with pytest.raises(DataError, match="not a run directory"):
        RunDir("plain").require_run()
    with pytest.raises(ConfigError, match="not empty"):
        run = RunDir(Path("full"))
        Path("full").mkdir()
        (Path("full") / "x").write_text("")
        with run.owned():
            run.create(resolve_config("mf"), DataRef.of(DATA).load(), None)


def test_a_run_whose_metadata_cannot_be_written_leaves_the_folder_empty(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import diffmm.checkpoint as checkpoint

    real = checkpoint.atomic_write_json

    def fail_on_ids(path, obj, **kw):
        if Path(path).name == "ids.json":
            raise TypeError("Object of type datetime is not JSON serializable")
        real(path, obj, **kw)

    monkeypatch.setattr(checkpoint, "atomic_write_json", fail_on_ids)
    run = RunDir(Path("new"))
    with pytest.raises(TypeError), run.owned():
        run.create(resolve_config("mf"), DataRef.of(DATA).load(), None)
    assert not Path("new").exists() or [p.name for p in Path("new").iterdir()] == []
    monkeypatch.setattr(checkpoint, "atomic_write_json", real)
    with run.owned():  # the same --out takes the retry
        run.create(resolve_config("mf"), DataRef.of(DATA).load(), None)


def test_running_out_of_memory_is_one_line_and_leaves_no_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import diffmm.trainer as train_mod

    def too_big(name):
        raise MemoryError

    monkeypatch.setattr(train_mod, "get_model_class", too_big)
    message = user_error(cli("train", "--model", "mf", "--data", DATA, "--out", "run", *QUICK))
    assert message.startswith("out of memory") and "embedding_dim" in message
    assert not Path("run").exists()
