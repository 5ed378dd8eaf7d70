"""Bookkeeping of the benchmark scripts: what their results record (no training here)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

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
