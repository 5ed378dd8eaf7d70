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


def test_train_sets_how_much_freed_memory_malloc_keeps(tmp_path, monkeypatch):
    """The command's malloc setting follows train.reuse_freed_memory_mb (the large preset
    bounds it), applied after the one every command starts with."""
    import diffmm.utils

    kept: list[int] = []

    def keep(threshold_bytes: int = 1 << 30) -> bool:
        kept.append(threshold_bytes)
        return True

    monkeypatch.setattr(diffmm.utils, "keep_freed_memory_for_reuse", keep)
    for setting, expected in ((None, 1024), ("train.reuse_freed_memory_mb=32", 32)):
        sets = ["--set", "train.epochs=1", "--set", "train.progress=false"]
        sets += ["--set", setting] if setting else []
        out = ["--out", str(tmp_path / f"run{expected}")]
        result = run("train", "--model", "mf", "--data", TINY, *out, *sets)
        assert result.exit_code == 0, result.output
        assert kept[-1] == expected << 20
    from diffmm.config import resolve_config

    assert resolve_config("diffmm", "large").train.reuse_freed_memory_mb == 32


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


def _table(tmp_path):
    """An unsplit CSV of 30 users x 6 items (split by the loader, cached per method+seed)."""
    path = tmp_path / "inter.csv"
    path.write_text(
        "user,item\n" + "".join(f"{u},{(u + j) % 12}\n" for u in range(30) for j in range(6))
    )
    return path


DATA_COMMANDS = (["train"], ["benchmark"], ["sweep"], ["data", "stats"])


def test_the_data_commands_share_one_set_of_split_options():
    def option(command: list[str], name: str):
        group = main
        for word in command:
            group = group.commands[word]
        (param,) = (p for p in group.params if p.name == name)
        return param.opts, param.type.to_info_dict(), param.default, param.help

    names = ("split", "split_seed", "features", "user_col", "item_col", "rating_col")
    for name in (*names, "time_col", "min_rating", "k_core", "cache_dir"):
        first, *others = (option(command, name) for command in DATA_COMMANDS)
        assert all(other == first for other in others), name
    for command in DATA_COMMANDS:
        result = run(*command, "--help")
        assert result.exit_code == 0
        text = " ".join(result.output.split())  # unwrapped
        assert "--split [random|loo|temporal]" in text and "--split-seed INTEGER RANGE" in text
        assert "Seed of the split of tables without a split column. [default: 2024;" in text


def test_the_cli_split_choices_and_default_seed_are_the_data_layers():
    from diffmm.cli.common import DEFAULT_SPLIT_SEED, SPLIT_METHODS
    from diffmm.data.ref import DEFAULT_SPLIT_SEED as DATA_DEFAULT_SEED
    from diffmm.data.split import SPLIT_METHODS as DATA_METHODS

    assert SPLIT_METHODS == DATA_METHODS and DEFAULT_SPLIT_SEED == DATA_DEFAULT_SEED


def test_an_unknown_split_method_is_a_usage_error_naming_the_choices(tmp_path):
    for command in (["data", "stats", TINY], ["train", "--data", TINY]):
        result = run(*command, "--split", "bogus")
        assert result.exit_code == 2, command
        assert "Usage:" in result.output and "Traceback" not in result.output
        assert "Invalid value for '--split'" in result.output
        assert "'bogus' is not one of 'random', 'loo', 'temporal'" in result.output


def test_data_stats_splits_with_the_split_seed_given(tmp_path):
    table = _table(tmp_path)
    result = run("data", "stats", str(table), "--split-seed", "7")
    assert result.exit_code == 0, result.output
    assert "30" in result.output
    cached = sorted(p.name for p in (tmp_path / ".diffmm_splits").glob("*.csv"))
    assert cached == ["inter.random-7.csv"]


def test_data_stats_still_takes_the_old_seed_option_and_says_it_is_deprecated(tmp_path):
    table = _table(tmp_path)
    result = run("data", "stats", str(table), "--seed", "9")
    assert result.exit_code == 0, result.output
    assert "--seed is deprecated; use --split-seed" in result.stderr
    assert (tmp_path / ".diffmm_splits" / "inter.random-9.csv").exists()
    assert "--seed" not in run("data", "stats", "--help").output.replace("--split-seed", "")
    clash = run("data", "stats", str(table), "--seed", "9", "--split-seed", "8")
    assert clash.exit_code == 2 and "give only --split-seed" in clash.stderr


def test_the_cli_and_its_help_start_without_torch():
    import subprocess
    import sys

    code = (
        "import sys; from diffmm.cli import main\n"
        "for args in ([], ['train'], ['data', 'stats'], ['serve']):\n"
        "    main([*args, '--help'], standalone_mode=False)\n"
        "print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_python_m_diffmm_cli_runs_the_command():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "diffmm.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "Commands:" in out.stdout and "train" in out.stdout


def test_evaluate_prints_the_runs_test_metrics(trained_run, tmp_path):
    import shutil

    summary = json.loads((trained_run / "summary.json").read_text())
    result = run("evaluate", str(trained_run), "--ks", "10,20", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["split"] == "test" and shown["epoch"] == summary["best_epoch"]
    for key in ("recall@10", "recall@20", "ndcg@20", "precision@10", "hit@10", "n_users"):
        assert shown[key] == summary["test"][key]
    # an interrupted run (best.pt, no summary.json) is scored too: same model, same table
    unfinished = tmp_path / "unfinished"
    shutil.copytree(trained_run, unfinished)
    (unfinished / "summary.json").unlink()
    table = run(
        "evaluate", str(unfinished), "--split", "valid", "--ks", "20", "--metrics", "recall,mrr"
    )
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert "on valid" in lines[0] and "run unfinished" in lines[0]
    assert lines[1].split() == ["k", "recall", "mrr"]
    assert lines[2].split()[0] == "20"
    assert float(lines[2].split()[1]) == round(summary["valid"]["recall@20"], 4)


def test_evaluate_refuses_bad_cut_offs_and_metrics(trained_run):
    for options, needle in (
        (["--ks", "ten"], "--ks 'ten': give positive integers"),
        (["--ks", "0,10"], "--ks '0,10': give positive integers"),
        (["--metrics", "recall,auc"], "unknown metric(s) ['auc']"),
    ):
        result = run("evaluate", str(trained_run), *options)
        assert result.exit_code == 2 and needle in result.output, result.output


def test_export_writes_embeddings_and_top_k_together(trained_run, tmp_path):
    import numpy as np

    emb, top = tmp_path / "emb.npz", tmp_path / "top.csv"
    result = run("export", str(trained_run), "--embeddings", str(emb), "--out", str(top), "-k", "2")
    assert result.exit_code == 0, result.output
    with np.load(emb) as npz:
        assert npz["user_embeddings"].shape[0] == len(npz["user_ids"]) == 150
        assert npz["item_embeddings"].dtype == np.float32
    assert top.read_text().startswith("user,rank,item,score")
    again = run("export", str(trained_run), "--embeddings", str(emb))
    assert again.exit_code == 2 and "--force" in again.output
    assert run("export", str(trained_run), "--embeddings", str(emb), "--force").exit_code == 0
    nothing = run("export", str(trained_run))
    assert nothing.exit_code == 2 and "give --out FILE" in nothing.output


def test_resume_reads_the_split_cache_where_cache_dir_now_says(tmp_path):
    table, out = _table(tmp_path), tmp_path / "run"
    first, moved = tmp_path / "cache-a", tmp_path / "cache-b"
    common = ["--set", "train.epochs=1", "--set", "train.progress=false"]
    args = ["train", "--model", "mf", "--data", str(table), "--out", str(out)]
    result = run(*args, "--cache-dir", str(first), *common)
    assert result.exit_code == 0, result.output
    assert any(first.iterdir())
    result = run("train", "--resume", str(out), "--cache-dir", str(moved))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in moved.iterdir()) == sorted(p.name for p in first.iterdir())


def test_a_bare_seed_number_is_not_taken_for_hundreds_of_runs():
    from diffmm.cli.common import seed_list

    assert seed_list("3") == [421, 422, 423] and seed_list("421,") == [421]
    result = run("benchmark", "--data", TINY, "--models", "mf", "--seeds", "421", "--out", "x")
    assert result.exit_code == 2
    assert "--seeds 421: a bare number is a count" in result.output
    assert "write --seeds 421," in result.output
