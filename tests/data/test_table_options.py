"""Table options: column names, --min-rating, --k-core, the temporal split, the cache dir."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from diffmm.data import load_dataset
from diffmm.data.options import TableOptions, k_core_mask
from diffmm.data.ref import DataRef
from diffmm.errors import DataError


def _write(path: Path, rows: dict[str, list]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _pairs(ds, split: str) -> set[tuple]:
    m = getattr(ds, split).tocoo()
    return {
        (ds.user_ids[u].item(), ds.item_ids[i].item()) for u, i in zip(m.row, m.col, strict=True)
    }


def _size(ds) -> int:
    return ds.train.nnz + ds.valid.nnz + ds.test.nnz


def _all_pairs(ds) -> set[tuple]:
    return _pairs(ds, "train") | _pairs(ds, "valid") | _pairs(ds, "test")


# --------------------------------------------------------------------- column names
def test_custom_column_names_are_read(tmp_path):
    table = _write(
        tmp_path / "t.csv",
        {"uid": [1, 1, 1, 2, 2, 2], "movieId": [10, 11, 12, 10, 11, 13], "x": [0] * 6},
    )
    with pytest.raises(DataError, match=r"t.csv: no user column .*columns found: uid, movieId"):
        load_dataset(table)
    ds = load_dataset(table, table=TableOptions(user_col="uid", item_col="movieid"))
    assert (ds.n_users, ds.n_items) == (2, 4)
    assert list(ds.item_ids) == [10, 11, 12, 13]
    with pytest.raises(DataError, match=r"t.csv: no column 'nope' \(--user-col\); columns found"):
        load_dataset(table, table=TableOptions(user_col="nope", item_col="movieId"))


def test_a_named_user_column_wins_over_the_default_names(tmp_path):
    table = _write(
        tmp_path / "t.csv",
        {"user": [1, 1, 1, 1], "uid": [5, 5, 6, 6], "item": [1, 2, 3, 4], "split": [0, 2, 0, 2]},
    )
    assert load_dataset(table).n_users == 1
    assert list(load_dataset(table, table=TableOptions(user_col="uid")).user_ids) == [5, 6]


# --------------------------------------------------------------------- min rating
RATINGS = {
    "user": [1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3],
    "item": [1, 2, 3, 4, 5, 1, 2, 3, 4, 1, 2, 3],
    "rating": [5, 4, 3.5, 4, 1, 4, 4, 4, 2, 5, 4, 4.5],
}


def test_min_rating_drops_low_ratings_before_the_split(tmp_path):
    table = _write(tmp_path / "r.csv", RATINGS)
    everything = load_dataset(table)
    assert _size(everything) == 12 and everything.n_items == 5
    ds = load_dataset(table, table=TableOptions(min_rating=4))
    assert _size(ds) == 9 and ds.n_items == 4  # item 5 (rated 1) is gone
    kept = {(u, i) for u, i, r in zip(*RATINGS.values(), strict=True) if r >= 4}
    assert _all_pairs(ds) == kept


def test_min_rating_with_a_named_rating_column_and_without_one(tmp_path):
    rows = {"user": RATINGS["user"], "item": RATINGS["item"], "grade": RATINGS["rating"]}
    rows["split"] = ["train"] * 11 + ["test"]  # too few left to split per user
    table = _write(tmp_path / "r.csv", rows)
    with pytest.raises(
        DataError, match=r"r.csv: --min-rating needs a rating column .*--rating-col"
    ):
        load_dataset(table, table=TableOptions(min_rating=4))
    ds = load_dataset(table, table=TableOptions(rating_col="grade", min_rating=4.5))
    assert _size(ds) == 3  # ratings 5, 5 and 4.5
    with pytest.raises(
        DataError,
        match=r"r.csv: no interactions are left after --rating-col grade --min-rating 9.0 \(of 12",
    ):
        load_dataset(table, table=TableOptions(rating_col="grade", min_rating=9))


# --------------------------------------------------------------------- k-core
def test_k_core_cascades_until_stable():
    # users 0-2 x items 0-1 are a 2-core; user 3 has items 1, 2; item 2 only has user 3
    # and user 4; user 4 has only item 2. Dropping user 4 (1 item) drops item 2 under 2,
    # which drops user 3 under 2 too.
    users = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4])
    items = np.array([0, 1, 0, 1, 0, 1, 1, 2, 2])
    keep = k_core_mask(users, items, 2)
    assert keep.tolist() == [True] * 6 + [False] * 3
    assert k_core_mask(users, items, 1).all()
    assert not k_core_mask(users, items, 4).any()


def test_k_core_on_a_table_counts_distinct_pairs_and_follows_min_rating(tmp_path):
    rows = {
        "user": ["a", "a", "a", "b", "b", "b", "c", "c", "c", "c", "d"],
        "item": ["x", "y", "y", "x", "y", "z", "x", "y", "z", "w", "w"],
        "rating": [5, 5, 5, 5, 5, 5, 5, 5, 1, 5, 5],
        "split": ["train"] * 7 + ["test"] + ["train"] * 3,  # too few to split per user
    }
    table = _write(tmp_path / "k.csv", rows)
    ds = load_dataset(table, table=TableOptions(k_core=2))
    # d (1 item) goes, then w (only c left) goes; a keeps x, y (the duplicate counts once)
    assert list(ds.user_ids) == ["a", "b", "c"] and list(ds.item_ids) == ["x", "y", "z"]
    ds = load_dataset(table, table=TableOptions(k_core=2, min_rating=4))
    # without c's rating-1 z, z has only b: z goes, and b, c keep x, y
    assert list(ds.item_ids) == ["x", "y"] and _size(ds) == 6


def test_filters_apply_to_a_table_that_is_already_split(tmp_path):
    rows = {**RATINGS, "split": ["train", "train", "train", "valid", "test"] * 2 + ["train"] * 2}
    table = _write(tmp_path / "s.csv", rows)
    ds = load_dataset(table, table=TableOptions(min_rating=4))
    assert _size(ds) == 9 and ds.test.nnz == 1


def test_bad_option_values_are_refused():
    with pytest.raises(DataError, match="--k-core 0: give an integer >= 1"):
        TableOptions(k_core=0)
    with pytest.raises(DataError, match="--min-rating nan: give a finite number"):
        TableOptions(min_rating=float("nan"))


def test_table_options_are_refused_for_data_that_are_not_tables(tmp_path, write_authors):
    d = write_authors(tmp_path / "authors")
    with pytest.raises(DataError, match="--min-rating 4.0 apply only to tables"):
        load_dataset(d, table=TableOptions(min_rating=4))
    with pytest.raises(DataError, match="--k-core 2 apply only to tables"):
        load_dataset("synthetic", table=TableOptions(k_core=2))


# --------------------------------------------------------------------- temporal split
TIMED = {
    "user": [1, 1, 1, 1, 2, 2, 2, 2, 3, 3],
    "item": [1, 2, 3, 4, 1, 2, 3, 4, 1, 2],
    "timestamp": [40, 10, 30, 20, 5, 5, 5, 1, 1, 2],
}


def test_temporal_split_leaves_the_last_interactions_out(tmp_path):
    table = _write(tmp_path / "t.csv", TIMED)
    ds = load_dataset(table, split="temporal")
    # user 1: last by time is item 1 (40), then item 3 (30); user 2: items 1-3 tie at 5,
    # the later row is later: item 3 to test, item 2 to valid; user 3 has < 3: train only
    assert _pairs(ds, "test") == {(1, 1), (2, 3)}
    assert _pairs(ds, "valid") == {(1, 3), (2, 2)}
    assert _pairs(ds, "train") == {(1, 2), (1, 4), (2, 1), (2, 4), (3, 1), (3, 2)}
    again = load_dataset(table, split="temporal", seed=7)  # the seed plays no part
    assert _pairs(again, "test") == _pairs(ds, "test")
    loo = load_dataset(table, split="loo")  # same order where no timestamps tie
    assert (1, 1) in _pairs(loo, "test") and (1, 3) in _pairs(loo, "valid")


def test_temporal_split_with_a_named_time_column(tmp_path):
    rows = {"user": TIMED["user"], "item": TIMED["item"], "when": TIMED["timestamp"]}
    table = _write(tmp_path / "t.csv", rows)
    ds = load_dataset(table, split="temporal", table=TableOptions(time_col="when"))
    assert _pairs(ds, "test") == {(1, 1), (2, 3)}


def test_temporal_split_without_a_time_column_is_refused(tmp_path):
    table = _write(tmp_path / "t.csv", {"user": TIMED["user"], "item": TIMED["item"]})
    with pytest.raises(
        DataError,
        match=r"t.csv: --split temporal needs a time column \(accepted names: timestamp, "
        r"time, ts; or --time-col NAME\); columns found: user, item",
    ):
        load_dataset(table, split="temporal")


# --------------------------------------------------------------------- split cache
def test_filtered_tables_get_their_own_split_cache(tmp_path):
    table = _write(tmp_path / "r.csv", RATINGS)
    load_dataset(table)
    load_dataset(table, table=TableOptions(min_rating=4))
    names = sorted(p.name for p in (tmp_path / ".diffmm_splits").glob("*.csv"))
    assert names[0] == "r.random-2024.csv" and len(names) == 2
    assert names[1].startswith("r.random-2024.opts-")


def test_the_cache_dir_moves_with_the_option_and_the_environment(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    table = _write(tmp_path / "data" / "r.csv", RATINGS)
    first = load_dataset(table, cache_dir=tmp_path / "opt")
    assert not (tmp_path / "data" / ".diffmm_splits").exists()
    assert len(list((tmp_path / "opt").glob("r-*.random-2024.csv"))) == 1
    monkeypatch.setenv("DIFFMM_CACHE_DIR", str(tmp_path / "env"))
    second = load_dataset(table, seed=3)
    assert len(list((tmp_path / "env").glob("r-*.random-3.csv"))) == 1
    load_dataset(table, seed=3, cache_dir=tmp_path / "opt")  # the option wins
    assert len(list((tmp_path / "opt").glob("r-*.random-3.csv"))) == 1
    assert not (tmp_path / "data" / ".diffmm_splits").exists()
    assert _size(first) == _size(second) == 12
    ref = DataRef.of(str(table), cache_dir=tmp_path / "opt")
    assert (tmp_path / "opt").resolve() in ref.paths()


def test_a_cache_dir_that_is_a_file_is_refused_not_passed_over(tmp_path, monkeypatch):
    table = _write(tmp_path / "r.csv", RATINGS)
    (tmp_path / "afile").write_text("mine")
    monkeypatch.setenv("DIFFMM_CACHE_DIR", str(tmp_path / "afile"))
    with pytest.raises(DataError, match=r"afile: \$DIFFMM_CACHE_DIR is a file, not a folder"):
        load_dataset(table)
    monkeypatch.delenv("DIFFMM_CACHE_DIR")
    with pytest.raises(DataError, match="afile: the split cache folder is a file"):
        load_dataset(table, cache_dir=tmp_path / "afile")
    assert (tmp_path / "afile").read_text() == "mine"
    assert not (tmp_path / ".diffmm_splits").exists()


# --------------------------------------------------------------------- recorded in a run
def test_data_ref_records_the_options_and_old_records_still_load(tmp_path):
    from diffmm.checkpoint import RunDir

    opts = TableOptions(user_col="uid", min_rating=4, k_core=2)
    ref = DataRef.of("r.csv", "temporal", 1, table=opts)
    (tmp_path / "dataset.json").write_text(json.dumps({"load": _asdict(ref), "fingerprint": {}}))
    assert RunDir(tmp_path).data_ref() == ref
    old = {"path": "/x/r.csv", "split": "loo", "seed": 3, "features": None}
    (tmp_path / "dataset.json").write_text(json.dumps({"load": old, "fingerprint": {}}))
    assert RunDir(tmp_path).data_ref() == DataRef("/x/r.csv", "loo", 3)
    assert ref.moved_to("/y/r.csv").table == opts


def _asdict(ref: DataRef) -> dict:
    from dataclasses import asdict

    return asdict(ref)


def test_benchmark_commands_pass_the_table_options_on():
    from diffmm.experiments import BenchmarkSpec

    opts = TableOptions(user_col="uid", min_rating=4, k_core=2)
    spec = BenchmarkSpec("r.csv", ["mf"], [421], table=opts, cache_dir="/c", split="temporal")
    cmd = spec.command("mf", 421, Path("run"))
    text = " ".join(cmd)
    assert "--user-col uid --min-rating 4.0 --k-core 2 --cache-dir /c" in text
    assert "--split temporal" in text


@pytest.mark.slow
def test_a_filtered_run_reopens_and_resume_refuses_other_options(tmp_path):
    import diffmm
    from diffmm.cli import main

    rng = np.random.default_rng(0)
    n = 600
    rows = {
        "uid": rng.integers(0, 40, n),
        "movieId": rng.integers(0, 30, n),
        "stars": rng.integers(1, 6, n),
        "ts": rng.integers(0, 10_000, n),
    }
    table = _write(tmp_path / "ratings.csv", rows)
    out = tmp_path / "run"
    flags = ["--user-col", "uid", "--item-col", "movieId", "--min-rating", "4", "--k-core", "2"]
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["train", "--model", "mf", "--data", str(table), "--out", str(out), *flags,
         "--split", "temporal", "--set", "train.epochs=1", "--set", "train.progress=false"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    load = json.loads((out / "dataset.json").read_text())["load"]
    assert load["table"]["min_rating"] == 4.0 and load["table"]["user_col"] == "uid"
    rec = diffmm.load(out, device="cpu")
    assert rec.dataset.n_users < 40  # users whose ratings were all low are gone
    user = str(rec.dataset.user_ids[0])
    shown = runner.invoke(main, ["recommend", str(out), "--user", user, "-k", "3"])
    assert shown.exit_code == 0, shown.output
    assert shown.output.startswith(f"{user}\t") and len(shown.output.split("\t")[1].split()) == 3
    refused = runner.invoke(main, ["train", "--resume", str(out), "--min-rating", "3"])
    assert refused.exit_code == 2
    assert "--min-rating 3.0 differs from the run's own (4.0)" in refused.output
    same = runner.invoke(main, ["train", "--resume", str(out), "--min-rating", "4"])
    assert "differs" not in same.output


def test_data_stats_takes_the_table_options_and_the_cache_dir(tmp_path, monkeypatch):
    from diffmm.cli import main

    table = _write(tmp_path / "r.csv", {**RATINGS, "user": [f"u{u}" for u in RATINGS["user"]]})
    runner = CliRunner()
    args = ["data", "stats", str(table), "--min-rating", "4", "--cache-dir", str(tmp_path / "c")]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "c").glob("r-*.random-2024.opts-*.csv"))) == 1
    monkeypatch.setenv("DIFFMM_CACHE_DIR", str(tmp_path / "e"))
    assert runner.invoke(main, ["data", "stats", str(table)]).exit_code == 0
    assert len(list((tmp_path / "e").glob("r-*.random-2024.csv"))) == 1
    assert not (tmp_path / ".diffmm_splits").exists()
    bad = runner.invoke(main, ["data", "stats", str(table), "--k-core", "0"])
    assert bad.exit_code == 2 and "Invalid value for '--k-core'" in bad.output
    no_time = runner.invoke(main, ["data", "stats", str(table), "--split", "temporal"])
    assert no_time.exit_code == 2 and "--split temporal needs a time column" in no_time.output


def test_the_cli_table_options_are_the_data_layers():
    from dataclasses import fields

    from diffmm.cli.common import TABLE_OPTIONS
    from diffmm.data.options import FLAGS

    assert TABLE_OPTIONS == tuple(f.name for f in fields(TableOptions)) == tuple(FLAGS)
