"""Training from Python: diffmm.train / diffmm.benchmark, settings by name, reopening runs."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import diffmm
from diffmm.api import settings_overrides
from diffmm.checkpoint import DataRef
from diffmm.config import resolve_config
from diffmm.errors import ConfigError, DataError

TINY = "synthetic:n_users=60,n_items=40,interactions_per_user=8"
QUIET = {"progress": False}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> diffmm.Run:
    out = tmp_path_factory.mktemp("api") / "run"
    return diffmm.train("lightgcn", TINY, out=out, epochs=2, embedding_dim=16, **QUIET)


def test_train_writes_a_run_that_reopens_with_load(run: diffmm.Run) -> None:
    assert run.summary["model"] == "lightgcn" and run.summary["epochs_run"] == 2
    config = json.loads((run.run_dir / "config.json").read_text())
    assert config["train"]["epochs"] == 2 and config["train"]["progress"] is False
    assert config["lightgcn"]["embedding_dim"] == 16
    rec = diffmm.load(run.run_dir, device="cpu")
    assert rec.recommend([3], k=5) == run.recommend([3], k=5)
    assert rec.user_emb.shape == (60, 16)


def test_run_evaluate_reproduces_the_trainers_test_score(run: diffmm.Run) -> None:
    test = run.evaluate("test", ks=(10, 20))
    for key in ("recall@10", "ndcg@20", "precision@20", "hit@10", "n_users"):
        assert test[key] == pytest.approx(run.summary["test"][key], abs=1e-12)
    valid = run.evaluate("valid", ks=(20,))
    assert valid["recall@20"] == pytest.approx(run.summary["valid"]["recall@20"], abs=1e-12)
    extra = run.evaluate("test", ks=(5,), metrics=("mrr", "coverage"))
    assert set(extra) == {"mrr@5", "coverage@5", "n_users"}
    assert 0.0 <= extra["mrr@5"] <= 1.0 and 0.0 < extra["coverage@5"] <= 1.0


def test_settings_map_to_their_sections_as_json() -> None:
    overrides = settings_overrides(
        "diffmm",
        {
            "epochs": 2,
            "ssl_reg": 0.01,
            "denoiser_hidden_dims": (32, 16),
            "device": "cpu",
            "test_every_epoch": True,
            "metric": "ndcg@10",
            "seed": np.int64(7),
            "train.lr": 0.5,
        },
    )
    assert overrides == [
        "train.epochs=2",
        "diffmm.ssl_reg=0.01",
        "diffmm.denoiser_hidden_dims=[32, 16]",
        'train.device="cpu"',
        "train.test_every_epoch=true",
        'train.metric="ndcg@10"',
        "train.seed=7",
        "train.lr=0.5",
    ]
    config = resolve_config("diffmm", overrides=overrides)
    assert config.train.epochs == 2 and config.train.seed == 7 and config.train.lr == 0.5
    assert config.params.cl_weight == 0.01  # the authors' alias
    assert config.params.denoiser_hidden_dims == [32, 16]
    assert config.train.test_every_epoch is True and config.train.metric == "ndcg@10"


def test_a_string_that_looks_like_a_number_stays_a_string() -> None:
    (text,) = settings_overrides("lightgcn", {"device": "1"})
    assert text == 'train.device="1"'


def test_a_python_float_for_an_integer_setting_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"train\.epochs.*got 2\.5"):
        resolve_config("lightgcn", overrides=settings_overrides("lightgcn", {"epochs": 2.5}))


def test_unknown_and_unusable_settings_are_named_without_cli_flags() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'epoch_s'.*'epochs'") as err:
        settings_overrides("lightgcn", {"epoch_s": 2})
    assert "--" not in str(err.value)
    with pytest.raises(ConfigError, match="not a number, string, boolean or list"):
        settings_overrides("lightgcn", {"epochs": object()})


def test_a_name_both_sections_have_is_ambiguous(monkeypatch: pytest.MonkeyPatch) -> None:
    import diffmm.config as config

    real = config.setting_names
    monkeypatch.setattr(
        config,
        "setting_names",
        lambda cls: real(cls) + ([] if cls is config.TrainConfig else ["epochs"]),
    )
    with pytest.raises(ConfigError, match="'epochs' is both.*'train.epochs'"):
        settings_overrides("lightgcn", {"epochs": 2})


def test_a_run_on_a_dataset_object_needs_data_to_reopen(tmp_path: Path) -> None:
    dataset = DataRef.of(TINY).load()
    run = diffmm.train("mf", dataset, out=tmp_path / "run", epochs=1, **QUIET)
    load_ref = json.loads((tmp_path / "run" / "dataset.json").read_text())["load"]
    assert load_ref is None
    with pytest.raises(DataError, match=r"trained on a Dataset.*pass data=\.\.\."):
        diffmm.load(tmp_path / "run")
    rec = diffmm.load(tmp_path / "run", data=dataset)
    assert rec.recommend([0], k=3) == run.recommend([0], k=3)
    assert diffmm.load(tmp_path / "run", data=TINY).recommend([0], k=3) == rec.recommend([0], k=3)


def test_a_non_empty_out_is_refused_in_python_terms(run: diffmm.Run, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="already holds a training run.*resume=True") as err:
        diffmm.train("lightgcn", TINY, out=run.run_dir, epochs=1, **QUIET)
    assert "--" not in str(err.value)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"is not empty \(notes.txt\).*another out=") as err:
        diffmm.train("lightgcn", TINY, out=tmp_path, epochs=1, **QUIET)
    assert "--" not in str(err.value)


def test_resume_continues_with_the_runs_own_settings(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = diffmm.train("mf", TINY, out=out, epochs=2, **QUIET)
    again = diffmm.train("mf", None, out=out, resume=True, **QUIET)
    assert again.summary["epochs_run"] == 2 and again.summary["resumed_after_epochs"] == [2]
    assert again.summary["test"] == first.summary["test"]
    assert diffmm.train("mf", None, out=out, resume=True, epochs=2, **QUIET).summary
    with pytest.raises(ConfigError, match="differ from those of the run"):
        diffmm.train("mf", None, out=out, resume=True, epochs=3, **QUIET)
    with pytest.raises(ConfigError, match="resume=True needs out="):
        diffmm.train("mf", None, resume=True, **QUIET)


def test_benchmark_returns_the_table(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="diffmm")
    table = diffmm.benchmark(TINY, "mf", seeds=1, out=tmp_path, epochs=1, plots=False)
    assert table["model"].tolist() == ["mf"] and table["seeds"].tolist() == [1]
    config = json.loads((tmp_path / "runs" / "mf-seed421" / "config.json").read_text())
    assert config["train"]["epochs"] == 1 and config["train"]["seed"] == 421
    assert (tmp_path / "results.md").exists()
    (line,) = [r.getMessage() for r in caplog.records if r.name == "diffmm.experiments"]
    assert line.startswith("diffmm train --model mf")


def test_train_logs_its_lines_and_still_takes_the_deprecated_log_callback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="diffmm")
    handlers = list(logging.getLogger("diffmm").handlers)
    lines: list[str] = []
    with pytest.warns(DeprecationWarning, match="log= is deprecated"):
        diffmm.train("mf", TINY, out=tmp_path / "run", epochs=2, progress=False, log=lines.append)
    logged = [r.getMessage() for r in caplog.records if r.name == "diffmm.trainer"]
    assert [line[:9] for line in logged[:2]] == ["epoch   1", "epoch   2"]
    assert logged[-1].startswith("selected epoch")
    assert lines == logged  # the callback got the same lines
    assert logging.getLogger("diffmm").handlers == handlers  # the callback's handler went


def test_benchmark_refuses_bad_arguments_before_running(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no model of \\['mf'\\] has a setting 'cl_weight'"):
        diffmm.benchmark(TINY, ["mf"], out=tmp_path, cl_weight=0.1)
    with pytest.raises(ConfigError, match="seeds must be a count"):
        diffmm.benchmark(TINY, ["mf"], seeds=0, out=tmp_path)
    with pytest.raises(ConfigError, match="not a Dataset"):
        diffmm.benchmark(DataRef.of(TINY).load(), ["mf"], out=tmp_path)
    assert not list(tmp_path.iterdir())


def test_import_stays_light_and_train_is_the_api_function() -> None:
    code = (
        "import sys, inspect, diffmm; assert 'torch' not in sys.modules; "
        "import diffmm.trainer; from diffmm.api import train; "
        "assert diffmm.train is train; "
        "assert inspect.signature(diffmm.train).parameters['model']; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr
    assert {"train", "benchmark", "load", "Run"} <= set(diffmm.__all__)
