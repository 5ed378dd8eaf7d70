"""The trainer: learning, early stopping and selection, determinism, test-once, files."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import diffmm.trainer as train_mod
from diffmm.checkpoint import RunDir, load_checkpoint
from diffmm.config import RunConfig, TrainConfig
from diffmm.epoch_log import Reporter
from diffmm.evaluate import evaluate as real_evaluate
from diffmm.models.lightgcn import Config as LightGCNConfig
from diffmm.models.mf import MF
from diffmm.models.mf import Config as MFConfig
from diffmm.trainer import Trainer, train
from helpers import make_dataset, planted_dataset


def run_config(model: str = "mf", **train_kw) -> RunConfig:
    params = MFConfig(embedding_dim=16) if model == "mf" else LightGCNConfig(embedding_dim=16)
    base = dict(epochs=6, batch_size=128, lr=0.05, progress=False, device="cpu", seed=7)
    base.update(train_kw)
    return RunConfig(model=model, train=TrainConfig(**base), params=params)


@contextmanager
def new_run(path: Path, model: MF, cfg: TrainConfig, data) -> Iterator[RunDir]:
    """A run directory created and held for a Trainer, as :func:`train` does."""
    run = RunDir(path)
    with run.owned():
        run.create(RunConfig(model="mf", train=cfg, params=model.config), data, None)
        yield run


def read_log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_loss_falls_and_files_are_written(tmp_path):
    data = planted_dataset()
    summary = train(run_config("lightgcn"), data, tmp_path)
    log = read_log(tmp_path)
    assert [r["epoch"] for r in log] == list(range(1, 7))
    assert log[-1]["losses"]["bpr"] < 0.7 * log[0]["losses"]["bpr"]
    for record in log:
        assert {"bpr", "l2", "loss"} <= set(record["losses"])
        assert {"seconds_begin_epoch", "seconds_train", "seconds_eval", "seconds"} <= set(record)
        assert "recall@20" in record["valid"] and "begin_epoch" in record
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert summary["model"] == "lightgcn" and summary["epochs_run"] == 6
    assert summary["selection"]["metric"] == "recall@20"
    assert summary["test"]["recall@20"] > 0.5  # random would be about 20 / 51
    assert summary["peak_rss_mb"] > 0 and summary["seconds_per_epoch"] > 0
    assert "best_on_test" not in summary
    assert summary["software"]["torch"] == torch.__version__
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"] == "lightgcn" and config["train"]["seed"] == 7
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == summary["best_epoch"]
    assert not list(tmp_path.glob("*.tmp"))  # no temporary files left behind


def test_same_seed_same_results():
    data = planted_dataset()
    a = train(run_config("lightgcn", epochs=3), data, None)
    b = train(run_config("lightgcn", epochs=3), data, None)
    assert a["test"] == b["test"] and a["valid"] == b["valid"]
    c = train(run_config("lightgcn", epochs=3, seed=8), data, None)
    assert c["test"] != a["test"] or c["valid"] != a["valid"]


class ScriptedEvaluate:
    """Stands in for ``evaluate``: scripted valid values, a fingerprint of the model."""

    def __init__(self, valid_values):
        self.valid_values = list(valid_values)
        self.calls: list[str] = []
        self.fingerprints: list[float] = []

    def __call__(self, score_fn, dataset, split, ks=(10, 20), **kw):
        self.calls.append(split)
        fingerprint = float(score_fn(torch.tensor([0])).sum())
        if split == "valid":
            self.fingerprints.append(fingerprint)
            value = self.valid_values.pop(0)
        else:
            value = 0.0
        out = {f"{m}@{k}": value for k in ks for m in ("recall", "ndcg", "precision", "hit")}
        out["n_users"] = 1
        out["fingerprint"] = fingerprint
        return out


def test_early_stopping_restores_the_best_validation_state(tmp_path, monkeypatch):
    data = planted_dataset()
    spy = ScriptedEvaluate([0.1, 0.3, 0.2, 0.25, 0.9, 0.9])
    monkeypatch.setattr(train_mod, "evaluate", spy)
    torch.manual_seed(0)
    model = MF(MFConfig(embedding_dim=8), data)
    cfg = TrainConfig(epochs=10, patience=2, lr=0.05, batch_size=128, progress=False)
    with new_run(tmp_path, model, cfg, data) as run:
        summary = Trainer(model, data, cfg, run).fit()
    # best at epoch 2; epochs 3 and 4 do not improve -> stop after epoch 4
    assert summary["best_epoch"] == 2 and summary["stopped_early"] is True
    assert summary["epochs_run"] == 4
    assert summary["valid"]["recall@20"] == 0.3
    # the test split was scored once, at the end, with the epoch-2 parameters
    assert spy.calls == ["valid"] * 4 + ["test"]
    assert summary["test"]["fingerprint"] == spy.fingerprints[1]
    assert spy.fingerprints[1] != spy.fingerprints[3]
    log = read_log(tmp_path)
    assert [r["improved"] for r in log] == [True, True, False, False]
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 2


def test_test_split_is_evaluated_exactly_once(monkeypatch):
    calls = []

    def spy(score_fn, dataset, split, **kw):
        calls.append(split)
        return real_evaluate(score_fn, dataset, split, **kw)

    monkeypatch.setattr(train_mod, "evaluate", spy)
    summary = train(run_config(epochs=4, eval_every=2), planted_dataset(), None)
    assert calls == ["valid", "valid", "test"]
    assert summary["epochs_run"] == 4


def test_test_every_epoch_is_reported_for_parity_only(tmp_path, monkeypatch):
    data = planted_dataset()
    spy = ScriptedEvaluate([0.5, 0.1, 0.1, 0.1])
    monkeypatch.setattr(train_mod, "evaluate", spy)
    cfg = TrainConfig(epochs=4, patience=5, progress=False, test_every_epoch=True)
    model = MF(MFConfig(embedding_dim=8), data)
    with new_run(tmp_path, model, cfg, data) as run:
        summary = Trainer(model, data, cfg, run).fit()
    assert summary["best_epoch"] == 1  # still selected on validation
    assert spy.calls == ["valid", "test"] * 4 + ["test"]
    assert "authors' protocol" in summary["best_on_test"]["note"]
    assert summary["best_on_test"]["recall@20"]["epoch"] in range(1, 5)
    assert all("test_parity" in r for r in read_log(tmp_path))


def test_no_validation_data_selects_the_last_epoch(caplog):
    planted = planted_dataset()
    data = make_dataset(planted.train.toarray(), None, planted.test.toarray())
    summary = train(run_config(epochs=3), data, None)
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.name == "diffmm.trainer" and "no validation" in warning.getMessage()
    assert summary["best_epoch"] == 3 and summary["epochs_run"] == 3
    assert "last epoch" in summary["selected_by"] and summary["valid"] == {}
    assert summary["test"]["n_users"] == data.n_users


def test_metric_k_outside_ks_is_still_computed():
    cfg = run_config(epochs=1, metric="ndcg@5", ks=[10])
    summary = train(cfg, planted_dataset(), None)
    assert "ndcg@5" in summary["valid"] and "recall@10" in summary["test"]


@pytest.mark.parametrize("model", ["mf", "lightgcn"])
def test_trains_each_baseline(model):
    summary = train(run_config(model, epochs=2), planted_dataset(), None)
    assert summary["model"] == model and summary["test"]["n_users"] > 0


def test_epoch_phases_run_in_order_timed_with_memory_given_back_after_each(monkeypatch):
    events: list[str] = []

    def phases(self, epoch):
        def phase(name):
            def run():
                events.append(f"{name}{epoch}")
                return {f"{name}_stat": float(epoch)}

            return name, run

        return [phase("first"), phase("second")]

    monkeypatch.setattr(MF, "epoch_phases", phases)
    monkeypatch.setattr(train_mod, "release_free_memory", lambda: events.append("release"))
    monkeypatch.setattr(train_mod, "evaluate", ScriptedEvaluate([0.1, 0.2]))
    data = planted_dataset()
    cfg = TrainConfig(epochs=2, lr=0.05, batch_size=128, progress=False)
    records = []
    trainer = Trainer(MF(MFConfig(embedding_dim=8), data), data, cfg)
    monkeypatch.setattr(Reporter, "epoch", lambda _self, record, _metric: records.append(record))
    trainer.fit()
    # a release after each phase, then one after the recommender pass
    per_epoch = [[f"first{e}", "release", f"second{e}", "release", "release"] for e in (1, 2)]
    assert events == per_epoch[0] + per_epoch[1]
    for epoch, record in enumerate(records, start=1):
        stats = record["begin_epoch"]
        assert stats["first_stat"] == stats["second_stat"] == epoch
        assert list(stats) == ["first_stat", "seconds_first", "second_stat", "seconds_second"]
        phases_seconds = stats["seconds_first"] + stats["seconds_second"]
        assert 0 < phases_seconds <= record["seconds_begin_epoch"]


def test_a_model_without_phases_runs_begin_epoch_as_its_one_phase(tmp_path):
    summary = train(run_config(epochs=2), planted_dataset(), tmp_path)
    assert summary["epochs_run"] == 2
    for record in read_log(tmp_path):
        assert set(record["begin_epoch"]) == {"seconds_begin_epoch"}


def test_evaluation_gives_memory_back_before_every_score_batch(monkeypatch):
    hooks = []

    def spy(score_fn, dataset, split, **kw):
        hooks.append(kw.get("before_batch"))
        return real_evaluate(score_fn, dataset, split, **kw)

    monkeypatch.setattr(train_mod, "evaluate", spy)
    train(run_config(epochs=1), planted_dataset(), None)
    assert hooks == [train_mod.release_free_memory] * 2  # valid, then test


def test_max_batches_per_epoch_grows_the_batch_and_the_lr(caplog, monkeypatch):
    """Large data: a fixed number of steps per epoch, lr by the square-root rule."""
    planted = planted_dataset()
    pairs = planted.train.nnz
    lrs: list[float] = []
    sizes: list[int] = []
    adam, batches = torch.optim.Adam, train_mod.bpr_epoch_batches

    def spy_adam(params, lr):
        lrs.append(lr)
        return adam(params, lr=lr)

    def spy_batches(*args):
        for batch in batches(*args):
            sizes.append(len(batch[0]))
            yield batch

    monkeypatch.setattr(train_mod.torch.optim, "Adam", spy_adam)
    monkeypatch.setattr(train_mod, "bpr_epoch_batches", spy_batches)
    caplog.set_level(logging.INFO, logger="diffmm.trainer")
    train(run_config(epochs=1, batch_size=16, max_batches_per_epoch=3), planted, None)
    batch = -(-pairs // 3)
    assert pairs > 16 * 3 and len(sizes) == 3 and max(sizes) == batch and sum(sizes) == pairs
    assert lrs == [pytest.approx(0.05 * (batch / 16) ** 0.5)]
    assert any(f"batches of {batch} pairs" in r.getMessage() for r in caplog.records)
    lrs.clear(), sizes.clear()  # small enough data: batches of batch_size, lr as set
    train(run_config(epochs=1, batch_size=16, max_batches_per_epoch=10**6), planted, None)
    assert lrs == [0.05] and max(sizes) == 16


@pytest.mark.parametrize("metric", ["mrr@10", "map@5"])
def test_rank_metrics_can_select_the_epoch(metric):
    summary = train(run_config(epochs=2, metric=metric), planted_dataset(), None)
    assert summary["selection"]["metric"] == metric
    assert metric in summary["valid"] and metric in summary["test"]
    assert "recall@20" in summary["test"]  # the usual metrics as well


def test_validation_users_validates_a_fixed_sample_and_tests_every_user(monkeypatch):
    seen: dict[str, list] = {"valid": [], "test": []}

    def spy(score_fn, dataset, split, **kw):
        result = real_evaluate(score_fn, dataset, split, **kw)
        seen[split].append(result["n_users"])
        if split == "valid":
            seen.setdefault("users", []).append(kw["users"])
        return result

    monkeypatch.setattr(train_mod, "evaluate", spy)
    data = planted_dataset()
    summary = train(run_config(epochs=3, validation_users=20), data, None)
    assert seen["valid"] == [20, 20, 20] and summary["valid"]["n_users"] == 20
    assert all((u == seen["users"][0]).all() for u in seen["users"])  # the same users
    everyone = real_evaluate(lambda u: torch.zeros(len(u), data.n_items), data, "test")
    assert seen["test"] == [everyone["n_users"]] and everyone["n_users"] > 20
    with pytest.raises(ValueError, match="validation_users"):
        TrainConfig(validation_users=0)


def test_the_software_record_names_the_checkout_and_whether_src_differs(tmp_path, monkeypatch):
    import subprocess

    import diffmm
    from diffmm.utils import software

    def run(*args):
        subprocess.run(args, cwd=tmp_path, check=True, capture_output=True)

    package = tmp_path / "src" / "diffmm"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("x = 1\n")
    monkeypatch.setattr(diffmm, "__file__", str(package / "__init__.py"))
    record = software()  # not a checkout yet: the versions only
    assert record["diffmm"] == diffmm.__version__ and "source_revision" not in record
    run("git", "init", "-q")
    run("git", "add", "-A")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip
    assert software()["source_revision"] == head and software()["source_modified"] is False
    (tmp_path / "notes.txt").write_text("outside src")
    assert software()["source_modified"] is False
    (package / "__init__.py").write_text("x = 2\n")
    assert software()["source_modified"] is True
