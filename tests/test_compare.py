"""Paired per-user significance (diffmm.compare, `diffmm report compare`): known answers."""

from __future__ import annotations

import inspect
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from diffmm.cli import main
from diffmm.compare import (
    compare_runs,
    paired_comparison,
    parse_metric,
    per_user_metrics,
    significance_column,
)
from diffmm.errors import ConfigError, DataError

DATA = "synthetic:n_users=80,n_items=50,interactions_per_user=8"


def _train(out: Path, model: str, data: str = DATA, seed: int = 421) -> Path:
    from diffmm.checkpoint import DataRef
    from diffmm.config import resolve_config
    from diffmm.trainer import train

    config = resolve_config(
        model, overrides=["train.epochs=2", "train.progress=false", f"train.seed={seed}"]
    )
    ref = DataRef.of(data, "random", 2024)
    quiet = {"log": lambda _: None} if "log" in inspect.signature(train).parameters else {}
    train(config, ref.load(), out, data_ref=ref, **quiet)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compare")
    return {
        "mf": _train(root / "mf", "mf"),
        "lightgcn": _train(root / "lightgcn", "lightgcn"),
        "mf2": _train(root / "mf-422", "mf", seed=422),
        "other": _train(
            root / "other", "mf", data="synthetic:n_users=60,n_items=50,interactions_per_user=8"
        ),
    }


# ---------------------------------------------------------------- the statistics
def test_constant_difference_collapses_the_interval() -> None:
    a = np.linspace(0.0, 0.5, 200)
    r = paired_comparison(a, a + 0.1, n_boot=2000, seed=3)
    assert r["diff"] == pytest.approx(0.1)
    assert r["ci_low"] == pytest.approx(0.1) and r["ci_high"] == pytest.approx(0.1)
    # only the all-positive patterns are as extreme as the data: p = (1 + 0) / (1 + 2000)
    assert r["p_value"] == pytest.approx(1 / 2001)
    assert r["p_ttest"] == 0.0
    assert r["n_users"] == 200 and "random sign patterns" in r["test"]


def test_identical_runs_differ_by_nothing() -> None:
    a = np.random.default_rng(0).random(50)
    r = paired_comparison(a, a.copy(), n_boot=500)
    assert r["diff"] == 0.0 and r["ci_low"] == 0.0 and r["ci_high"] == 0.0
    assert r["p_value"] == 1.0 and r["p_ttest"] == 1.0
    assert r["mean_a"] == r["mean_b"] == pytest.approx(a.mean())


def test_exact_permutation_p_value_of_four_users() -> None:
    # d = (0.3, 0.1, 0.2, -0.1), mean 0.125 (sum 0.5). Sign patterns with |sum| >= 0.5:
    # sums of (±.3, ±.1, ±.2, ±.1) are ±0.7, ±0.5 (twice each: flip either 0.1), ±0.3 ...
    a = np.array([0.1, 0.5, 0.2, 0.4])
    b = a + np.array([0.3, 0.1, 0.2, -0.1])
    d = b - a
    sums = [abs(np.dot(s, d)) for s in itertools.product((1, -1), repeat=4)]
    extreme = sum(x >= 0.5 - 1e-12 for x in sums)
    assert extreme == 6  # ±0.7 and ±0.5 twice: 2 + 4
    r = paired_comparison(a, b, n_boot=1000)
    assert r["p_value"] == pytest.approx(6 / 16)
    assert "exact over all 2^4" in r["test"]
    assert r["p_ttest"] == pytest.approx(stats.ttest_rel(b, a).pvalue)
    # the Monte Carlo test approximates the exact one
    mc = paired_comparison(a, b, n_boot=20_000, exact_max_users=0)
    assert mc["p_value"] == pytest.approx(6 / 16, abs=0.015)


def test_bootstrap_interval_matches_its_definition() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.random(30), rng.random(30)
    r = paired_comparison(a, b, n_boot=4000, seed=5)
    assert r["ci_low"] < r["diff"] < r["ci_high"]
    # the normal approximation of the bootstrap: mean ± 1.96 sd/sqrt(n), roughly
    d = b - a
    half = 1.96 * d.std() / np.sqrt(d.size)
    assert r["ci_low"] == pytest.approx(d.mean() - half, abs=0.03)
    assert r["ci_high"] == pytest.approx(d.mean() + half, abs=0.03)


def test_seeded_and_deterministic() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.random(300), rng.random(300)
    first = paired_comparison(a, b, n_boot=3000, seed=7)
    assert paired_comparison(a, b, n_boot=3000, seed=7) == first
    other = paired_comparison(a, b, n_boot=3000, seed=8)
    assert other["ci_low"] != first["ci_low"]


def test_bad_inputs_are_one_line_errors() -> None:
    with pytest.raises(DataError, match="at least 2 users"):
        paired_comparison(np.ones(1), np.ones(1))
    with pytest.raises(DataError, match="one length"):
        paired_comparison(np.ones(3), np.ones(4))
    with pytest.raises(ConfigError, match="confidence"):
        paired_comparison(np.ones(3), np.zeros(3), confidence=1.5)
    with pytest.raises(ConfigError, match="per-user metric"):
        parse_metric("coverage@20")
    assert parse_metric("ndcg@10") == ("ndcg", 10)


# ---------------------------------------------------------------- trained runs
def test_per_user_metrics_average_to_the_evaluation(runs: dict[str, Path]) -> None:
    from diffmm.inference import load

    users, values = per_user_metrics(runs["mf"], ks=(10, 20), metrics=["recall", "ndcg"])
    overall = load(runs["mf"], device="cpu").evaluate("test", ks=(10, 20))
    assert users.size == overall["n_users"] == values["recall@20"].size
    assert values["recall@20"].mean() == pytest.approx(overall["recall@20"])
    assert values["ndcg@10"].mean() == pytest.approx(overall["ndcg@10"])


def test_report_compare_prints_and_writes_the_table(runs: dict[str, Path], tmp_path) -> None:
    out = tmp_path / "cmp"
    result = CliRunner().invoke(
        main,
        ["report", "compare", str(runs["mf"]), str(runs["lightgcn"]), "--metric",
         "recall@20,ndcg@10", "--boot", "500", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "| run | model | metric | mean | diff vs reference | 95% CI |" in result.output
    assert "(reference)" in result.output and "lightgcn" in result.output
    assert (out / "compare.md").read_text().strip() == result.output.strip()
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [(r["model"], r["metric"]) for r in rows] == [
        ("mf", "recall@20"), ("lightgcn", "recall@20"), ("mf", "ndcg@10"), ("lightgcn", "ndcg@10")
    ]  # fmt: skip
    # the reported numbers are those of the per-user arrays
    _, a = per_user_metrics(runs["mf"], ks=(20,), metrics=["recall"])
    _, b = per_user_metrics(runs["lightgcn"], ks=(20,), metrics=["recall"])
    expected = paired_comparison(a["recall@20"], b["recall@20"], n_boot=500, seed=0)
    assert rows[1]["diff"] == pytest.approx(expected["diff"])
    assert rows[1]["p_value"] == expected["p_value"] and rows[1]["ci_low"] == expected["ci_low"]
    # written again, the report replaces its own files only when asked to
    (out / "compare.md").write_text("the user's notes")
    args = ["report", "compare", str(runs["mf"]), str(runs["lightgcn"]), "--boot", "50"]
    again = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert again.exit_code == 2 and f"{out / 'compare.md'} exists; pass --force" in again.output
    assert (out / "compare.md").read_text() == "the user's notes"
    assert CliRunner().invoke(main, [*args, "--out", str(out), "--force"]).exit_code == 0
    assert (out / "compare.md").read_text().startswith("| run |")


def test_a_run_compared_with_itself(runs: dict[str, Path]) -> None:
    rows = compare_runs([runs["mf"], runs["mf"]], n_boot=200)
    assert rows[0]["metric"] == "recall@20"  # the run's validation metric
    assert rows[1]["diff"] == 0.0 and rows[1]["p_value"] == 1.0


def test_runs_on_different_data_are_refused(runs: dict[str, Path]) -> None:
    with pytest.raises(DataError, match="different data"):
        compare_runs([runs["mf"], runs["other"]], n_boot=10)
    result = CliRunner().invoke(main, ["report", "compare", str(runs["mf"]), str(runs["other"])])
    assert result.exit_code == 2
    assert "different data" in result.output and "Traceback" not in result.output
    with pytest.raises(ConfigError, match="at least 2 runs"):
        compare_runs([runs["mf"]])


def test_significance_column_pairs_seeds(runs: dict[str, Path]) -> None:
    by_model = {"mf": [str(runs["mf"])], "lightgcn": [str(runs["lightgcn"])]}
    cells = significance_column(by_model, "mf", "recall@20", n_boot=300)
    assert cells["mf"] == "reference"
    row = compare_runs([runs["mf"], runs["lightgcn"]], n_boot=300)[1]
    assert cells["lightgcn"] == (
        f"{row['diff']:+.4f} [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}] p={row['p_value']:.2g}"
    )
    # two seeds of mf against one of lightgcn: seed 422 has no partner
    with pytest.raises(ConfigError, match="seed"):
        significance_column(
            {"mf": [str(runs["mf"]), str(runs["mf2"])], "lightgcn": [str(runs["lightgcn"])]},
            "mf",
            "recall@20",
            n_boot=10,
        )
