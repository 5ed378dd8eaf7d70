"""The `diffmm` command end to end on small data the tests make themselves."""

from __future__ import annotations

import json

from click.testing import CliRunner

from diffmm.cli import main

TINY = "synthetic:n_users=120,n_items=90,interactions_per_user=12"


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_help_names_the_commands():
    result = run("--help")
    assert result.exit_code == 0
    for command in ("train", "data", "config", "demo"):
        assert command in result.output


def test_train_writes_a_run_directory(tmp_path):
    out = tmp_path / "run"
    result = run(
        "train", "--model", "lightgcn", "--data", TINY, "--out", str(out),
        "--set", "train.epochs=3", "--set", "train.progress=false",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "lightgcn" and summary["epochs_run"] == 3
    assert 0.0 <= summary["test"]["recall@20"] <= 1.0
    assert len((out / "log.jsonl").read_text().splitlines()) == 3
    assert (out / "best.pt").exists()


def test_train_diffmm_with_a_config_file(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(
        'model = "diffmm"\n[train]\nepochs = 2\nprogress = false\n'
        "[diffmm]\ndenoiser_hidden_dims = [32]\n"
    )
    out = tmp_path / "run"
    result = run("train", "--data", TINY, "--config", str(config), "--out", str(out))
    assert result.exit_code == 0, result.output
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {"seconds_diffusion", "seconds_graphs"} <= set(log[0]["begin_epoch"])


def test_data_stats_prints_sizes():
    result = run("data", "stats", TINY)
    assert result.exit_code == 0
    assert "120" in result.output and "90" in result.output


def test_config_shows_every_setting_with_its_meaning():
    result = run("config", "--model", "diffmm", "--preset", "tiktok")
    assert result.exit_code == 0
    assert "keep_rate = 0.5" in result.output and "# Edge keep rate" in result.output


def test_user_errors_exit_2_without_traceback(tmp_path):
    for args in (
        ("train", "--model", "nope", "--data", TINY),
        ("train", "--model", "mf", "--data", str(tmp_path / "missing")),
        ("train", "--model", "mf", "--data", TINY, "--set", "train.lr=-1"),
        ("data", "stats", str(tmp_path / "missing.csv")),
    ):
        result = run(*args)
        assert result.exit_code == 2, args
        assert "error:" in result.output and "Traceback" not in result.output


def test_diffmm_refuses_an_id_only_dataset(tmp_path):
    table = tmp_path / "inter.csv"
    table.write_text(
        "user,item\n" + "".join(f"{u},{(u * 7 + j) % 15}\n" for u in range(20) for j in range(5))
    )
    result = run("train", "--model", "diffmm", "--data", str(table), "--out", str(tmp_path / "r"))
    assert result.exit_code == 2
    assert "--model lightgcn" in result.output
