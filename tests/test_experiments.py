"""The experiment runner, sweeps, the sparsity study and DiffMM explanations, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import diffmm
from diffmm.checkpoint import DataRef
from diffmm.cli import main
from diffmm.config import resolve_config
from diffmm.errors import ConfigError
from diffmm.experiments import BenchmarkSpec, parse_grid, run_benchmark, run_sweep, sparsity_study
from diffmm.trainer import train

pytest.importorskip("matplotlib", reason="reports need the [report] extra")
DATA = "synthetic:n_users=120,n_items=90,interactions_per_user=12"
PNG = b"\x89PNG\r\n\x1a\n"


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.mark.slow
def test_benchmark_writes_table_csv_plots_and_reuses_finished_runs(tmp_path):
    args = [
        "benchmark", "--data", DATA, "--models", "mf,lightgcn", "--seeds", "2",
        "--set", "train.epochs=2", "--set", "lightgcn.n_layers=1", "--out", str(tmp_path),
    ]  # fmt: skip
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "results.csv")
    assert table["model"].tolist() == ["mf", "lightgcn"] and (table["seeds"] == 2).all()
    runs = pd.read_csv(tmp_path / "runs.csv")
    for model in ("mf", "lightgcn"):
        recall = runs.loc[runs["model"] == model, "recall@20"]
        row = table[table["model"] == model].iloc[0]
        assert row["recall@20"] == pytest.approx(recall.mean())
        assert row["recall@20_std"] == pytest.approx(recall.std(ddof=1))
    config = json.loads((tmp_path / "runs/lightgcn-seed422/config.json").read_text())
    assert config["lightgcn"]["n_layers"] == 1 and config["train"]["seed"] == 422
    assert json.loads((tmp_path / "runs/mf-seed421/config.json").read_text())["model"] == "mf"
    for png in ("valid_recall.png", "test_recall.png", "sparsity.png"):
        assert (tmp_path / png).read_bytes().startswith(PNG)
    assert "| lightgcn | 2 |" in (tmp_path / "results.md").read_text()
    delta = table.set_index("model")["Δrecall@20 vs mf"]  # per-user paired, seeds matched
    assert delta["mf"] == "reference" and " p=" in delta["lightgcn"]
    gap = table.set_index("model")["recall@20"]
    assert float(delta["lightgcn"].split()[0]) == pytest.approx(
        gap["lightgcn"] - gap["mf"], abs=1e-4
    )
    before = (tmp_path / "runs/mf-seed421/summary.json").stat().st_mtime_ns
    default_groups = set(pd.read_csv(tmp_path / "sparsity.csv")["group"])
    assert default_groups and default_groups <= {"0-5", "5-10", "10-20", "20+"}
    again = invoke(*args, "--groups", "0,30")
    assert again.exit_code == 0 and "reusing finished run" in again.output
    assert (tmp_path / "runs/mf-seed421/summary.json").stat().st_mtime_ns == before
    groups = set(pd.read_csv(tmp_path / "sparsity.csv")["group"])
    assert groups and groups <= {"0-30", "30+"}
    bad = invoke(*args, "--groups", "0,five")
    assert bad.exit_code == 2 and "give integers" in bad.output


def test_settings_are_scoped_per_model_and_bad_ones_refused():
    sets = ["cl_weight=0.5", "train.lr=0.01", "diffmm.train.epochs=3", "mf.l2_weight=0.1"]
    spec = BenchmarkSpec(DATA, ["mf", "diffmm"], [421], sets=sets)
    assert spec.model_sets("mf") == ["train.lr=0.01", "mf.l2_weight=0.1"]
    assert spec.model_sets("diffmm") == ["cl_weight=0.5", "train.lr=0.01", "diffmm.train.epochs=3"]
    command = spec.command("diffmm", 421, Path("run"))
    assert "train.epochs=3" in command and "diffmm.train.epochs=3" not in command
    assert "train.epochs=3" not in spec.command("mf", 421, Path("run"))
    spec.validate()
    with pytest.raises(ConfigError, match="no model here has a setting 'nope'"):
        BenchmarkSpec(DATA, ["mf"], [421], sets=["nope=1"]).validate()
    with pytest.raises(ConfigError, match="unknown model"):
        BenchmarkSpec(DATA, ["mf", "nomodel"], [421]).validate()


@pytest.mark.slow
def test_benchmark_tables_and_plots_follow_each_runs_metric_and_ks(tmp_path):
    sets = ["train.ks=[20]", "train.metric=ndcg@20", "epoch=2"]
    spec = BenchmarkSpec(DATA, ["mf"], [421], sets=sets)
    table = run_benchmark(spec, tmp_path, groups=(0, 10))
    for frame in (table, pd.read_csv(tmp_path / "results.csv")):
        assert {"ndcg@20", "recall@20", "precision@20"} <= set(frame.columns)
        assert not [c for c in frame.columns if "@10" in c]
    text = (tmp_path / "results.md").read_text()
    assert "selected on validation ndcg@20," in text and "recall@10" not in text
    assert "| model | seeds | recall@20 | ndcg@20 | precision@20 | epoch |" in text
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert runs["valid_ndcg@20"].notna().all() and "valid_recall@20" not in runs
    assert {"ndcg@20", "recall@20"} <= set(pd.read_csv(tmp_path / "sparsity.csv").columns)
    sparsity = (tmp_path / "sparsity.md").read_text()
    assert "| 0-10 (ndcg@20) |" in sparsity and "Recall per group is in sparsity.csv" in sparsity
    for png in ("valid_recall.png", "test_recall.png", "sparsity.png"):
        assert (tmp_path / png).read_bytes().startswith(PNG)
    # The mf run is reused (the same settings, scoped to mf now), and its protocol read
    # from its config.json: the table shows the union of the models' cut-offs, "–" where
    # a model's runs have none.
    sets = ["mf.train.ks=[20]", "mf.train.metric=ndcg@20", "mf.train.epochs=2"]
    spec = BenchmarkSpec(DATA, ["mf", "lightgcn"], [421], sets=[*sets, "lightgcn.epochs=1"])
    table = run_benchmark(spec, tmp_path, plots=False).set_index("model")
    assert {"recall@10", "recall@20", "ndcg@10"} <= set(table.columns)
    assert pd.isna(table.loc["mf", "recall@10"]) and not pd.isna(table.loc["lightgcn", "ndcg@10"])
    text = (tmp_path / "results.md").read_text()
    assert "(mf: ndcg@20, lightgcn: recall@20)" in text
    assert text.count("| – |") == 3 and "| mf | 1 | – | " in text  # recall, ndcg, precision@10


def test_sweep_grid_keeps_the_names_as_typed_and_refuses_one_setting_twice(tmp_path):
    assert parse_grid(["ssl_reg=0.1,1", "temp=0.5"]) == {"ssl_reg": ["0.1", "1"], "temp": ["0.5"]}
    spec = BenchmarkSpec(DATA, ["diffmm"], [421])
    grid = parse_grid(["ssl_reg=0.1", "cl_weight=0.2"])
    with pytest.raises(ConfigError, match="'ssl_reg' and 'cl_weight' are the same setting"):
        run_sweep(spec, grid, tmp_path)
    grid = parse_grid(["train.metric=recall@20,ndcg@20"])
    with pytest.raises(ConfigError, match="one validation metric"):
        run_sweep(BenchmarkSpec(DATA, ["mf"], [421]), grid, tmp_path)
    with pytest.raises(ConfigError, match="seeds come from --seeds N"):
        run_sweep(BenchmarkSpec(DATA, ["mf"], [421]), parse_grid(["train.seed=1,2"]), tmp_path)
    for bad in ("lr=,,", "=1,2"):
        with pytest.raises(ConfigError, match="use KEY=V1,V2"):
            parse_grid([bad])
    with pytest.raises(ConfigError, match="a value of 'lr' repeats"):
        parse_grid(["lr=0.1,0.1"])
    assert not any(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.slow
def test_sweep_selects_on_the_configured_metric(tmp_path):
    sets = ["train.epochs=1", "train.ks=[5]", "train.metric=ndcg@5"]
    spec = BenchmarkSpec(DATA, ["lightgcn"], [421], sets=sets)
    table = run_sweep(spec, parse_grid(["n_layers=0,1"]), tmp_path)
    assert {"valid_ndcg@5", "test_ndcg@5", "test_recall@5"} <= set(table.columns)
    assert not [c for c in table.columns if "@20" in c]
    chosen = table[table["selected"] == "*"]
    assert len(chosen) == 1 and chosen["valid_ndcg@5"].iloc[0] == table["valid_ndcg@5"].max()
    assert "validation ndcg@5" in (tmp_path / "sweep.md").read_text()


@pytest.mark.slow
def test_sweep_selects_on_validation(tmp_path):
    result = invoke(
        "sweep", "--data", DATA, "--model", "lightgcn", "--grid", "n_layers=0,2",
        "--set", "train.epochs=2", "--out", str(tmp_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "sweep.csv", keep_default_na=False)
    chosen = table[table["selected"] == "*"]
    assert len(chosen) == 1
    assert chosen["valid_recall@20"].iloc[0] == table["valid_recall@20"].max()
    assert (tmp_path / "sweep.png").read_bytes().startswith(PNG)


@pytest.fixture(scope="module")
def diffmm_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("explain") / "diffmm"
    config = resolve_config(
        "diffmm", overrides=["train.epochs=2", "train.progress=false", "denoiser_hidden_dims=[32]"]
    )
    ref = DataRef.of(DATA, "random", 2024)
    train(config, ref.load(), run_dir, data_ref=ref)
    return run_dir


def test_sparsity_groups_partition_the_evaluated_users(diffmm_run):
    table = sparsity_study({"diffmm": [str(diffmm_run)]}, bounds=(0, 8, 12))
    rec = diffmm.load(diffmm_run)
    n_test_users = int((rec.dataset.test.getnnz(axis=1) > 0).sum())
    assert table["users"].sum() == n_test_users
    assert set(table["group"]) <= {"0-8", "8-12", "12+"}


def test_explain_lists_denoised_items_with_feature_similarities(diffmm_run, tmp_path):
    result = invoke("explain", str(diffmm_run), "--user", "3", "--top", "4", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "## User 3" in result.output and "### visual" in result.output
    assert result.output.count("| 4 |") == 2  # four rows per modality, two modalities
    assert (tmp_path / "explain_user_3.png").read_bytes().startswith(PNG)
    (tmp_path / "explain.md").write_text("the user's notes")  # replaced only with --force
    again = invoke("explain", str(diffmm_run), "--user", "3", "--out", str(tmp_path))
    assert again.exit_code == 2 and "explain.md exists; pass --force" in again.output
    assert (tmp_path / "explain.md").read_text() == "the user's notes"
    forced = invoke("explain", str(diffmm_run), "--user", "3", "--out", str(tmp_path), "--force")
    assert forced.exit_code == 0 and "## User 3" in (tmp_path / "explain.md").read_text()
    wrong = invoke("explain", str(diffmm_run), "--user", "nobody")
    assert wrong.exit_code == 2 and "nobody" in wrong.output


def test_file_stem_keeps_plain_ids_and_makes_any_other_text_safe():
    from diffmm.utils import file_stem

    assert file_stem("3") == "3" and file_stem("user_7.b-2") == "user_7.b-2"
    for text in ("q/../../escaped", "..", "a b", "/etc/passwd", "", "x" * 300):
        stem = file_stem(text)
        assert "/" not in stem and stem not in ("", ".", "..") and len(stem) <= 73
    assert file_stem("a/b") != file_stem("a_b") and file_stem("a/b") != file_stem("a:b")


def test_explain_keeps_each_file_inside_out_whatever_the_user_ids(tmp_path):
    rng = np.random.default_rng(0)
    users = ["q/../../escaped", "a/b", *map(str, range(20))]
    rows = [(u, f"i{i}") for u in users for i in rng.choice(15, 8, replace=False)]
    data = tmp_path / "data"
    data.mkdir()
    pd.DataFrame(rows, columns=["user", "item"]).to_csv(data / "t.csv", index=False)
    feats = pd.DataFrame(rng.normal(size=(15, 4)), columns=list("abcd"))
    feats.insert(0, "item", [f"i{i}" for i in range(15)])
    feats.to_csv(data / "image.features.csv", index=False)
    run = tmp_path / "run"
    trained = invoke("train", "--model", "diffmm", "--data", str(data / "t.csv"), "--out",
                     str(run), "--set", "train.epochs=1", "--set", "train.progress=false",
                     "--set", "denoiser_hidden_dims=[16]")  # fmt: skip
    assert trained.exit_code == 0, trained.output
    victim = tmp_path / "escaped.png"  # where the id would lead from out/
    victim.write_text("the user's own file")
    out = tmp_path / "deep" / "out"
    result = invoke("explain", str(run), "--user", "q/../../escaped", "--user", "a/b",
                    "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "the user's own file"
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 3 and all(p.is_file() for p in out.iterdir())  # no subfolders
    assert all(f"]({name})" in (out / "explain.md").read_text() for name in written[1:])


@pytest.mark.slow
def test_a_sweep_on_data_without_validation_is_one_line(tmp_path):
    rows = [(u, i, "test" if i == u % 7 else "train") for u in range(30) for i in range(7)]
    table = tmp_path / "clicks.csv"
    table.write_text("user,item,split\n" + "".join(f"{u},{i},{s}\n" for u, i, s in rows))
    result = invoke(
        "sweep", "--data", str(table), "--model", "mf", "--grid", "embedding_dim=4,8",
        "--set", "train.epochs=1", "--out", str(tmp_path / "sweep"),
    )  # fmt: skip
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "no sweep point has a validation recall@20" in result.output


def test_a_sweep_refuses_a_run_selected_on_another_metric_before_training_any(tmp_path):
    args = ["sweep", "--data", DATA, "--model", "mf", "--set", "train.epochs=1"]
    first = invoke(*args, "--grid", "l2_weight=0.1", "--set", "train.metric=ndcg@20",
                   "--out", str(tmp_path))  # fmt: skip
    assert first.exit_code == 0, first.output
    again = invoke(*args, "--grid", "l2_weight=0.01,0.1", "--out", str(tmp_path))
    assert again.exit_code == 2 and "selected on validation ndcg@20, not recall@20" in again.output
    assert not (tmp_path / "runs" / "l2_weight=0.01-seed421").exists()  # nothing trained


def test_a_sweep_refuses_a_run_of_another_model_or_settings_before_training_any(tmp_path):
    args = ["sweep", "--data", DATA, "--set", "train.epochs=1", "--out", str(tmp_path)]
    first = invoke(*args, "--model", "mf", "--set", "embedding_dim=8", "--grid", "lr=0.01")
    assert first.exit_code == 0, first.output
    for other in (
        ["--model", "lightgcn", "--set", "embedding_dim=8", "--grid", "lr=0.01,0.02"],
        ["--model", "mf", "--set", "embedding_dim=16", "--grid", "lr=0.01,0.02"],
    ):
        again = invoke(*args, *other)
        assert again.exit_code == 2 and "Traceback" not in again.output, again.output
        assert "lr=0.01-seed421 holds a run with other settings" in again.output
        assert not (tmp_path / "runs" / "lr=0.02-seed421").exists()  # nothing trained
    # what only says how a run goes on a machine may differ: the run is reused
    same = invoke(*args, "--model", "mf", "--set", "embedding_dim=8", "--grid", "lr=0.01",
                  "--set", "train.eval_batch_size=7")  # fmt: skip
    assert same.exit_code == 0 and "reusing finished run" in same.output, same.output


def test_a_benchmark_refuses_a_model_or_a_seed_given_twice_before_training_any(tmp_path):
    result = invoke("benchmark", "--data", DATA, "--models", "mf,,mf", "--out", str(tmp_path / "b"))
    assert result.exit_code == 2 and "--models names mf twice" in result.output
    with pytest.raises(ConfigError, match=r"the seeds \[1, 1\] repeat one"):
        BenchmarkSpec(DATA, ["mf"], [1, 1]).validate()
    assert not (tmp_path / "b").exists()


def test_a_benchmark_refuses_a_run_on_other_data_before_training_any(tmp_path):
    args = ["benchmark", "--models", "mf", "--seeds", "1", "--set", "train.epochs=1",
            "--no-plots", "--out", str(tmp_path)]  # fmt: skip
    assert invoke(*args, "--data", DATA).exit_code == 0
    other = invoke(*args, "--data", DATA.replace("n_users=120", "n_users=100"))
    assert other.exit_code == 2 and "Traceback" not in other.output, other.output
    assert "mf-seed421 holds a run on other data than synthetic:n_users=100" in other.output


def test_settings_that_say_how_a_run_goes_do_not_make_another_run():
    from diffmm.reuse import config_differences

    base = resolve_config("mf", None, None, ["train.seed=1"])
    how = ["train.progress=false", "train.device=cpu", "train.tensorboard=true"]
    moved = resolve_config("mf", None, None, ["train.seed=1", *how])
    assert config_differences(base, moved) == []
    other = resolve_config("mf", None, None, ["train.seed=2", "l2_weight=0.5"])
    found = config_differences(base, other)
    assert len(found) == 2 and found[1].startswith("train.seed: 1 in the run, 2 asked")


def test_a_study_never_writes_into_a_folder_of_the_users_own_files(tmp_path):
    (tmp_path / "results.md").write_text("the user's results")
    args = ["--data", DATA, "--set", "train.epochs=1", "--out", str(tmp_path)]
    for command in (["benchmark", "--models", "mf", "--seeds", "1", "--no-plots"],
                    ["sweep", "--model", "mf", "--grid", "lr=0.01"]):  # fmt: skip
        result = invoke(*command, *args)
        assert (
            result.exit_code == 2 and "is not the folder of a benchmark or sweep" in result.output
        )
    assert (tmp_path / "results.md").read_text() == "the user's results"
    assert not (tmp_path / "runs").exists()
