"""Bookkeeping of the benchmark scripts: what their results record (no training here)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
RESULTS = BENCHMARKS / "results"
sys.path.insert(0, str(BENCHMARKS))

import common  # noqa: E402  (benchmarks/common.py)
import diffmm_tiktok  # noqa: E402

#: An absolute path of a machine (``/work/main/...``, ``/home/x/...``, ``C:\\...``).
ABSOLUTE = re.compile(r"(?<![\w.~-])(/(work|home|tmp|root|Users|mnt|data)/|[A-Z]:\\)")


def test_tuning_results_have_one_entry_per_setting_and_seed(tmp_path, monkeypatch):
    records = json.loads((RESULTS / "diffmm_tiktok_runs.json").read_text())
    monkeypatch.setattr(diffmm_tiktok, "RESULTS", tmp_path)
    monkeypatch.setattr(diffmm_tiktok, "lightgcn_reference", lambda: None)
    diffmm_tiktok.write_reports(records)
    tuning = json.loads((tmp_path / "diffmm_tiktok.json").read_text())["tuning"]
    tuned = [r for r in records.values() if r["variant"].startswith(diffmm_tiktok.TUNE)]
    assert len(tuning) == len(tuned) and len({r["variant"] for r in tuned}) < len(tuned)
    for r in tuned:
        entry = tuning[f"{r['variant'].removeprefix(diffmm_tiktok.TUNE)}/seed{r['seed']}"]
        assert entry["seed"] == r["seed"] and entry["valid_recall@20"] == r["valid_recall@20"]
        assert entry["test"] == r["test"]
    committed = json.loads((RESULTS / "diffmm_tiktok.json").read_text())["tuning"]
    assert committed == tuning  # the committed report is in this layout


def test_commands_name_paths_relative_to_the_repository():
    run_dir = common.RUNS / "x-seed421"
    cmd = common.train_command("mf", common.shared_data_root() / "tiktok", run_dir, None, [])
    assert cmd[cmd.index("--out") + 1] == "benchmarks/runs/x-seed421"
    assert not Path(cmd[cmd.index("--data") + 1]).is_absolute()
    text = f"diffmm serve {run_dir} --data {common.shared_data_root()}/tiktok"
    relative = common.repo_relative_text(text)
    assert relative.startswith("diffmm serve benchmarks/runs/x-seed421 --data ")
    assert str(common.REPO) not in relative and str(common.shared_data_root()) not in relative


@pytest.mark.parametrize(
    "path",
    sorted(p for p in RESULTS.iterdir() if p.suffix in {".md", ".json", ".csv"}),
    ids=lambda p: p.name,
)
def test_committed_results_record_no_absolute_paths(path):
    found = [m.group(0) for m in ABSOLUTE.finditer(path.read_text())]
    assert not found, f"{path.name} names absolute paths: {found[:3]}"


def test_the_scale_benchmarks_linear_set_is_the_large_preset():
    import scale
    from diffmm.config import resolve_config

    preset = resolve_config("diffmm", "large")
    spelled = resolve_config("diffmm", overrides=scale.OPTIONS["linear"])
    assert preset.train == spelled.train and preset.params == spelled.params


def test_a_scale_option_set_can_change_one_of_its_settings():
    import scale

    changed = scale.settings_of("linear+train.reuse_freed_memory_mb=256+train.seed=7")
    assert changed[: len(scale.OPTIONS["linear"]) - 1] == scale.OPTIONS["linear"][:-1]
    assert changed[-2:] == ["train.reuse_freed_memory_mb=256", "train.seed=7"]
    assert scale.settings_of("off") == []
    with pytest.raises(SystemExit, match="'nope' is not one of"):
        scale.settings_of("nope+train.seed=1")


def test_variant_names_can_be_given_to_variants():
    """--variants is comma-separated: a name with a comma could never be chosen."""
    assert all("," not in name for name in diffmm_tiktok.VARIANTS)


def test_the_verdict_says_help_or_hurt_only_when_every_interval_agrees():
    import ablations

    def row(t, per_user):
        vs = {"seeds": [421, 422, 423], "mean_diff": 0.002, "t_ci95_over_seeds": t}
        if per_user:
            low, high = per_user
            vs["per_user"] = {"diff": 0.002, "ci_low": low, "ci_high": high, "p_value": 0.04}
        return {"w/o DM": {"vs_full": vs}}

    assert "graphs hurt on TikTok" in ablations.verdict(row((0.001, 0.003), (0.0002, 0.004)))
    mixed = ablations.verdict(row((-0.001, 0.005), (0.0002, 0.004)))
    assert "do not help detectably" in mixed and "may hurt slightly" in mixed
    assert "no difference" in ablations.verdict(row((-0.001, 0.005), (-0.001, 0.004)))
    assert "graphs help on TikTok" in ablations.verdict(row((-0.005, -0.001), None))


def _record(name: str, revision: str, recall: float) -> dict:
    return {
        "command": f"diffmm train --out benchmarks/runs/{name} --preset tiktok",
        "revision": revision,
        "test": {"recall@20": recall},
    }


def test_per_user_values_are_committed_and_used_once_the_run_directory_is_gone(
    tmp_path, monkeypatch
):
    import ablations
    import diffmm.compare
    import per_user

    monkeypatch.setattr(ablations, "REPO", tmp_path)
    monkeypatch.setattr(per_user, "STORE", tmp_path / "per_user")
    run_dir = tmp_path / "benchmarks" / "runs" / "x-seed421"
    run_dir.mkdir(parents=True)
    (run_dir / "best.pt").write_bytes(b"")
    values = {"recall@20": [0.5, 0.0, 1.0]}
    monkeypatch.setattr(
        diffmm.compare,
        "per_user_metrics",
        lambda *a, **k: (np.array([2, 0, 1]), {m: np.array(v) for m, v in values.items()}),
    )
    record = _record("x-seed421", "abc", 0.5)
    first = ablations._per_user(record, {})
    assert first.tolist() == [0.0, 1.0, 0.5]  # in user order
    (run_dir / "best.pt").unlink()  # a new machine: only the committed values remain
    assert ablations._per_user(record, {}).tolist() == first.tolist()
    assert ablations._per_user(_record("x-seed421", "def", 0.5), {}) is None  # another run


def test_a_comparison_keeps_its_earlier_per_user_result_only_for_the_same_runs():
    import ablations

    full = {421: _record("f-seed421", "r1", 0.10), 422: _record("f-seed422", "r1", 0.11)}
    variant = {421: _record("v-seed421", "r2", 0.12), 422: _record("v-seed422", "r2", 0.10)}
    fresh = ablations.paired(full, variant, {})  # no run directories, nothing stored
    assert fresh["per_user"] is None
    earlier = {**fresh, "per_user": {"diff": 0.005, "ci_low": -0.001, "ci_high": 0.01}}
    kept = ablations.paired(full, variant, {}, earlier)["per_user"]
    assert kept["diff"] == 0.005 and kept["from_earlier_report"]
    full[421] = _record("f-seed421", "r9", 0.10)  # reproduced exactly at a later revision
    assert ablations.paired(full, variant, {}, earlier)["per_user"]["diff"] == 0.005
    variant[422] = _record("v-seed422", "r3", 0.105)  # a rerun: the old result is not its
    assert ablations.paired(full, variant, {}, earlier)["per_user"] is None


def test_diffmm_is_paired_with_a_baseline_by_seed_and_by_user(monkeypatch):
    import per_user
    import significance

    stored = {"d421": [0.2, 0.4], "d422": [0.2, 0.2], "b421": [0.0, 0.2], "b422": [0.2, 0.0]}
    monkeypatch.setattr(
        per_user,
        "values",
        lambda run_dir, name, *a: np.array(stored[name]) if name in stored else None,
    )

    def runs(prefix, recalls):
        return {
            seed: {"run_dir": None, "name": f"{prefix}{seed}", "revision": "r", "recall": v}
            for seed, v in recalls.items()
        }

    diffmm = runs("d", {421: 0.3, 422: 0.2, 423: 0.25})
    row = significance.versus(diffmm, runs("b", {421: 0.1, 422: 0.1}))
    assert row["seeds"] == [421, 422]  # the seeds both have
    assert row["mean_diff"] == pytest.approx(0.15)
    # per user, averaged over the seeds: DiffMM (0.2, 0.3) against the baseline (0.1, 0.1)
    assert row["per_user"]["diff"] == pytest.approx(0.15) and row["per_user"]["n_users"] == 2
    missing = significance.versus(diffmm, runs("x", {421: 0.1, 422: 0.1}))
    assert missing["per_user"] is None and missing["mean_diff"] == pytest.approx(0.15)


def test_diffmms_configuration_is_chosen_on_validation_among_the_complete_ones():
    import significance

    def runs(valid, test, seeds=(421, 422, 423)):
        return {s: {"valid": valid, "recall": test} for s in seeds}

    candidates = {
        "preset": runs(0.10, 0.12),  # the better test plays no part
        "fair grid": runs(0.11, 0.09),
        "half done": runs(0.50, 0.50, seeds=(421,)),  # not every seed yet: not a candidate
    }
    chosen, valid = significance.chosen_diffmm(candidates)
    assert chosen == "fair grid" and valid == pytest.approx({"preset": 0.10, "fair grid": 0.11})
    with pytest.raises(SystemExit, match="no DiffMM configuration"):
        significance.chosen_diffmm({"half done": candidates["half done"]})


def test_a_choice_at_the_edge_of_the_grid_is_flagged():
    fair_table = pytest.importorskip("fair_table")  # needs pandas (the [dev] extra)

    grid = {"train.lr": ["0.002", "0.005"], "l2_weight": ["1e-3", "1e-2", "1e-1"]}
    assert fair_table.grid_edges(grid, {"train.lr": "0.005", "l2_weight": "1e-2"}) == []
    edge = {"train.lr": "0.002", "l2_weight": "1e-1"}
    assert fair_table.grid_edges(grid, edge) == ["l2_weight=1e-1"]  # 2 values: no inside
    # one geometric step past the edge the choice lies on; nothing where it is inside
    assert fair_table.extended(grid, edge)["l2_weight"] == ["1e-3", "1e-2", "1e-1", "1"]
    low = fair_table.extended(grid, {"train.lr": "0.005", "l2_weight": "1e-3"})
    assert low == {"train.lr": grid["train.lr"], "l2_weight": ["0.0001", "1e-3", "1e-2", "1e-1"]}
    assert fair_table.extended(grid, {"train.lr": "0.005", "l2_weight": "1e-2"}) is None


def test_a_variant_of_the_fair_table_names_its_settings_and_never_reuses_the_plain_runs():
    fair_table = pytest.importorskip("fair_table")

    assert fair_table.label("tiktok", []) == "tiktok"  # the plain table keeps its files
    variant = fair_table.label("tiktok", ["embedding_dim=128", "a B/c=1"])
    assert variant == "tiktok-embedding_dim=128-a-b-c=1"  # a file name, no folders
    # text features are other inputs: their runs are not the genre-only table's
    assert fair_table.label("ml100k", ["embedding_dim=128"], text=True) == (
        "ml100k-text-embedding_dim=128"
    )
    point = {"train.lr": "0.002"}
    plain, other = (fair_table.run_dir(d, "vbpr", point, 421) for d in ("tiktok", variant))
    assert plain != other and plain.name == other.name == "train.lr=0.002-seed421"
    assert fair_table.stored_name(variant, "vbpr", 421) != fair_table.stored_name(
        "tiktok", "vbpr", 421
    )


def test_every_model_gets_as_many_grid_points_and_diffmm_its_own_l2_units():
    fair_table = pytest.importorskip("fair_table")

    assert fair_table.decades(1e-5) == ["1e-06", "1e-05", "0.0001"]  # as the sweep names them
    sizes = {m: [len(v) for v in g.values()] for m, g in fair_table.GRIDS.items()}
    assert set(map(tuple, sizes.values())) == {(2, 3)}
    # DiffMM's whole-table L2 is searched around its own paper default, the rest share one
    default = fair_table.DiffMMConfig.model_fields["l2_weight"].default
    assert fair_table.GRIDS["diffmm"]["l2_weight"][1] == f"{default:g}"
    assert fair_table.GRIDS["mf"] == fair_table.GRIDS["freedom"] == fair_table.LR_L2


def test_results_name_the_command_that_made_them(monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / "scale.py"), "--sizes", "10x5"])
    meta = common.provenance()
    assert meta["command"] == "python benchmarks/scale.py --sizes 10x5"  # repo-relative
    assert meta["revision"] and meta["machine"]["cores"] >= 1


def test_the_tiktok_timing_rotates_its_sides_and_gives_each_variant_its_ratio():
    import tiktok_options

    sides = ["default", "a", "b"]
    orders = [tiktok_options.rotated(sides, i) for i in range(3)]
    assert [o[0] for o in orders] == sides  # each side leads once in three rounds
    assert all(sorted(o) == sorted(sides) for o in orders)

    def run(side: str, modalities: int, seconds: float) -> dict:
        return {"side": side, "modalities": modalities, "phases_median": {"seconds": seconds}}

    runs = [run("default", 2, 40), run("a", 2, 20), run("b", 2, 10), run("default", 2, 44)]
    runs += [run("b", 2, 12), run("a", 2, 22), run("default", 3, 70)]
    two = tiktok_options.summary_of(runs)["2_modalities"]
    assert two["sides"]["default"]["seconds"] == 42  # the median of its runs
    assert two["ratio"]["a"]["seconds"] == pytest.approx(21 / 42)
    assert two["ratio"]["b"]["seconds"] == pytest.approx(11 / 42)
    # a modality count timed without variants has no ratios
    assert tiktok_options.summary_of(runs)["3_modalities"]["ratio"] == {}
    assert common.slug("large-data options, a third") == "large-data-options-a-third"
    assert common.slug("w/o DM with EMA 0.99") == "w-o-dm-with-ema-0.99"


def test_every_model_of_a_fair_table_is_paired_with_mf_on_their_common_seeds():
    fair_table = pytest.importorskip("fair_table")

    def entry(recalls: dict[int, float]) -> dict:
        runs = [{"seed": s, "test": {"recall@20": r}} for s, r in recalls.items()]
        return {"chosen": {"train.lr": "0.002"}, "runs": runs}

    results = {
        "mf": entry({421: 0.08, 422: 0.09, 423: 0.10}),
        "vbpr": entry({421: 0.09, 422: 0.09}),  # a seed short: paired on the two
    }
    rows = fair_table.against_reference("no-such-table", results, "abc")
    assert list(rows) == ["vbpr"]  # MF is the reference, not a row
    assert rows["vbpr"]["seeds"] == [421, 422]
    assert rows["vbpr"]["mean_diff"] == pytest.approx(0.005)
    assert rows["vbpr"]["mf_recall@20"] == [0.08, 0.09]
    assert rows["vbpr"]["per_user"] is None  # no run directories, nothing stored
    assert fair_table.against_reference("t", {"vbpr": results["vbpr"]}, "abc") == {}


def test_finished_fair_runs_are_kept_and_rebuilt_on_a_machine_without_them(tmp_path, monkeypatch):
    import diffmm.compare
    import fair_ledger
    import per_user

    monkeypatch.setattr(fair_ledger, "LEDGER", tmp_path / "kept")
    monkeypatch.setattr(per_user, "STORE", tmp_path / "per_user")
    monkeypatch.setattr(
        diffmm.compare,
        "per_user_metrics",
        lambda *a, **k: (np.array([1, 0]), {"recall@20": np.array([1.0, 0.0])}),
    )
    out = tmp_path / "runs" / "fair-tiktok-mf"
    finished, unpaired, running = (out / "runs" / f"p={v}-seed421" for v in (1, 2, 3))
    for folder in (finished, unpaired, running):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text('{"model": "mf"}')
    for folder in (finished, unpaired):
        (folder / "summary.json").write_text(json.dumps({"test": {"recall@20": 0.5}}))
    (finished / "best.pt").write_bytes(b"")
    assert fair_ledger.record(out) == [finished.name]  # no model, no values: not kept
    assert fair_ledger.record(out) == []  # kept once

    for folder in (finished, unpaired):
        for file in folder.iterdir():
            file.unlink()
        folder.rmdir()
    assert fair_ledger.restore(out) == [finished.name]
    assert json.loads((finished / "summary.json").read_text()) == {"test": {"recall@20": 0.5}}
    assert (finished / "config.json").read_text() == '{"model": "mf"}'
    assert not (finished / "best.pt").exists() and not (running / "summary.json").exists()
    assert per_user.values(finished, "x", "abc", 0.5).tolist() == [0.0, 1.0]  # user order
    assert per_user.values(finished, "y", "abc", 0.25) is None  # made for another result
    (finished / "summary.json").write_text("{}")  # a directory that exists is the user's
    assert fair_ledger.restore(out) == [] and (finished / "summary.json").read_text() == "{}"


def test_a_run_is_added_to_the_runs_file_as_it_is_now_under_its_lock(tmp_path, monkeypatch):
    import threading

    from diffmm.run_lock import RunLock

    state = tmp_path / "runs.json"
    monkeypatch.setattr(diffmm_tiktok, "STATE", state)
    monkeypatch.setattr(diffmm_tiktok, "RUNS", tmp_path)
    state.write_text(json.dumps({"DiffMM/seed421": {"seed": 421}}))  # another invocation's
    other = RunLock(tmp_path, ".diffmm_tiktok_runs.lock")
    other.acquire()
    done = threading.Event()
    thread = threading.Thread(
        target=lambda: (diffmm_tiktok.recorded("w/o CL/seed421", {"seed": 421}), done.set())
    )
    thread.start()
    assert not done.wait(1.5), "wrote the runs file while another invocation held its lock"
    state.write_text(json.dumps({"DiffMM/seed421": {"seed": 421}, "w/o DM/seed421": {}}))
    other.release(remove_file=False)
    thread.join(10)
    assert done.is_set()
    assert set(json.loads(state.read_text())) == {
        "DiffMM/seed421",
        "w/o DM/seed421",
        "w/o CL/seed421",
    }


def test_the_tiktok_preset_is_a_candidate_on_the_plain_tiktok_table_only(monkeypatch):
    import significance

    preset = {s: {"valid": 0.2, "recall": 0.2} for s in (421, 422, 423)}
    monkeypatch.setattr(significance, "preset_runs", lambda: preset)
    runs = [
        {"seed": s, "test": {"recall@20": 0.3}, "valid": {"recall@20": 0.1}}
        for s in (421, 422, 423)
    ]
    saved = {"revision": "r", "models": {"diffmm": {"chosen": {"train.lr": "0.002"}, "runs": runs}}}
    assert set(significance.candidates_of("tiktok", saved)) == {"preset", "fair grid"}
    for other in ("ml100k-text", "tiktok-embedding_dim=128"):  # other data or settings
        grid = significance.candidates_of(other, saved)
        assert list(grid) == ["fair grid"] and grid["fair grid"][421]["valid"] == 0.1
        assert grid["fair grid"][421]["run_dir"].parent.parent.name == f"fair-{other}-diffmm"
    assert significance.candidates_of("ml100k", {"revision": "r", "models": {}}) == {}
