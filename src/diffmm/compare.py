"""Is the difference real? Paired, per-user significance of a metric between two runs.

Two runs on the same test set are scored per user (the trainer's all-rank protocol, the
runs' best models). For a metric with per-user values ``a_u`` (reference) and ``b_u``,
the per-user paired differences are ``d_u = b_u - a_u`` over the ``n`` evaluated users,
and :func:`paired_comparison` reports

* ``diff``    = mean(d) = mean(b) - mean(a);
* ``ci_low``, ``ci_high``: the percentile bootstrap confidence interval of mean(d):
  ``n_boot`` resamples of the ``n`` users with replacement, the ``(1 - confidence) / 2``
  and ``(1 + confidence) / 2`` quantiles of their means (``numpy.quantile``, linear);
* ``p_value``: two-sided paired sign-flip permutation (randomisation) test of
  "mean(d) = 0, d symmetric about 0": each ``d_u`` has its sign flipped at random and
  ``p = #{|mean(d*)| >= |mean(d)|} / 2^n`` over all ``2^n`` sign patterns when
  ``n <= exact_max_users`` (exact), otherwise ``p = (1 + #{|mean(d*)| >= |mean(d)|}) /
  (1 + n_boot)`` over ``n_boot`` random patterns (Monte Carlo, never 0);
* ``p_ttest``: the paired t-test's two-sided p-value (``scipy.stats.ttest_rel``), a
  second opinion that assumes normal mean differences.

:func:`compare_runs` compares each run with the first (the reference) and refuses runs on
different interactions; :func:`significance_column` is the benchmark table's column.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffmm.errors import ConfigError, DataError

#: Up to this many users the permutation test enumerates every sign pattern (2^16).
EXACT_MAX_USERS = 16
#: Numbers drawn per block of bootstrap / permutation replicates (memory bound).
_BLOCK_ELEMENTS = 1 << 22
PERMUTATION_TEST = "paired sign-flip permutation test (two-sided)"


def parse_metric(name: str) -> tuple[str, int]:
    """``"recall@20"`` as ``("recall", 20)``; :class:`ConfigError` unless a per-user metric."""
    from diffmm.evaluate import USER_METRICS
    from diffmm.models.base import MAX_COUNT

    metric, _, k = str(name).strip().partition("@")
    if (
        metric not in USER_METRICS
        or not (k.isascii() and k.isdigit())
        or not 1 <= int(k) <= MAX_COUNT
    ):
        raise ConfigError(
            f"metric must be a per-user metric at a cut-off from 1 to {MAX_COUNT}, e.g. "
            f"recall@20 ({', '.join(USER_METRICS)}), got {name!r}"
        )
    return metric, int(k)


def per_user_metrics(
    run_dir: str | Path,
    split: str = "test",
    ks: Sequence[int] = (20,),
    metrics: Sequence[str] | None = None,
    data: Any = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Each evaluated user's metrics of the run's best model on ``split``.

    Returns ``(user indices, {"recall@20": array, ...})``, aligned; the protocol is the
    trainer's (:meth:`diffmm.inference.TrainedRecommender.evaluate`). ``metrics`` are
    per-user metric names (default recall, ndcg, precision, hit); ``data`` is where the
    run's data are now, if they moved.
    """
    from diffmm.inference import load

    rec = load(run_dir, data=data, device="cpu")
    result = rec.evaluate(split, ks=ks, metrics=metrics, per_user=True)
    per = dict(result["per_user"])
    users = np.asarray(per.pop("user"))
    return users, {name: np.asarray(values, dtype=np.float64) for name, values in per.items()}


def _blocks(total: int, n: int) -> list[int]:
    size = max(1, _BLOCK_ELEMENTS // max(n, 1))
    return [min(size, total - start) for start in range(0, total, size)]


def bootstrap_means(d: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_boot`` resamples of ``d`` with replacement (drawn in blocks)."""
    n = d.size
    parts = [d[rng.integers(0, n, size=(b, n))].mean(axis=1) for b in _blocks(n_boot, n)]
    return np.concatenate(parts)


def sign_flip_p_value(
    d: np.ndarray, n_perm: int, rng: np.random.Generator, exact_max_users: int = EXACT_MAX_USERS
) -> tuple[float, str]:
    """Two-sided sign-flip permutation p-value of mean(d) = 0, and how it was computed."""
    n = d.size
    observed = abs(d.mean())
    # sums of the same numbers in another order may differ in the last bits
    tol = 1e-12 * max(float(np.abs(d).max()), 1e-300)
    if n <= exact_max_users:
        patterns = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
        means = ((1 - 2 * patterns) @ d) / n
        extreme = int((np.abs(means) >= observed - tol).sum())
        return extreme / 2**n, f"{PERMUTATION_TEST}, exact over all 2^{n} sign patterns"
    extreme = 0
    for b in _blocks(n_perm, n):
        signs = 1.0 - 2.0 * rng.integers(0, 2, size=(b, n), dtype=np.int8)
        extreme += int((np.abs(signs @ d / n) >= observed - tol).sum())
    return (1 + extreme) / (1 + n_perm), f"{PERMUTATION_TEST}, {n_perm} random sign patterns"


def paired_ttest(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided paired t-test p-value (scipy.stats.ttest_rel); 1 or 0 for constant d."""
    from scipy import stats

    d = b - a
    scale = float(np.abs(d).max())
    if np.ptp(d) <= 1e-12 * scale or scale == 0:  # no spread: t is 0/0 or infinite
        return 1.0 if scale == 0 else 0.0
    return float(stats.ttest_rel(b, a).pvalue)


def paired_comparison(
    a: np.ndarray,
    b: np.ndarray,
    n_boot: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
    exact_max_users: int = EXACT_MAX_USERS,
) -> dict[str, Any]:
    """Paired difference ``b - a`` of per-user values: mean, bootstrap CI, p-values.

    See the module docstring for the definitions. ``n_boot`` is the number of bootstrap
    resamples and of random sign patterns (Monte Carlo permutation test); the bootstrap
    and the permutation test draw from independent streams of ``seed``, so results are
    reproducible. Returns ``{"mean_a", "mean_b", "diff", "ci_low", "ci_high", "p_value",
    "p_ttest", "n_users", "confidence", "n_boot", "test"}``.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise DataError(
            f"per-user values must be two 1-d arrays of one length, got {a.shape} and {b.shape}"
        )
    if a.size < 2:
        raise DataError(f"a paired comparison needs at least 2 users, got {a.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise DataError("per-user values must be finite (no NaN or inf)")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise ConfigError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be between 0 and 1, got {confidence!r}")
    boot_rng, perm_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    d = b - a
    means = bootstrap_means(d, int(n_boot), boot_rng)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    p_value, test = sign_flip_p_value(d, int(n_boot), perm_rng, exact_max_users)
    return {
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "diff": float(d.mean()),
        "ci_low": float(low),
        "ci_high": float(high),
        "p_value": float(p_value),
        "p_ttest": paired_ttest(a, b),
        "n_users": int(a.size),
        "confidence": float(confidence),
        "n_boot": int(n_boot),
        "test": test,
    }


def interactions_digest(run_dir: str | Path) -> str:
    """Digest of the run's interactions (sizes, train/valid/test splits; features aside).

    Two runs with equal digests were trained and are evaluated on the same interactions,
    whatever item features each model read.
    """
    import hashlib
    import json

    from diffmm import checkpoint as ckpt
    from diffmm.run_files import read_json

    path = Path(run_dir) / ckpt.DATASET
    recorded = read_json(path)
    fingerprint = recorded.get("fingerprint") if isinstance(recorded, dict) else None
    if not isinstance(fingerprint, dict) or not isinstance(fingerprint.get("splits"), dict):
        raise DataError(f"{path}: no data fingerprint; the run cannot be compared")
    keys = ("n_users", "n_items", "splits")
    canonical = json.dumps({k: fingerprint.get(k) for k in keys}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_same_data(run_dirs: Sequence[str | Path]) -> None:
    """:class:`DataError` naming the first run whose interactions differ from the first's."""
    from diffmm.inference import open_run

    reference = run_dirs[0]
    expected = interactions_digest(open_run(reference).path)
    for run_dir in run_dirs[1:]:
        if interactions_digest(open_run(run_dir).path) != expected:
            raise DataError(
                f"runs {reference} and {run_dir} were trained on different data (their "
                "dataset.json fingerprints differ); compare only runs on the same data and split"
            )


def _scores(
    run_dirs: Sequence[str | Path], split: str, metrics: Sequence[str], data: Any = None
) -> list[dict[str, np.ndarray]]:
    """Per-user ``metrics`` of each run, checked to cover the same users in the same order."""
    parsed = [parse_metric(m) for m in metrics]
    names = sorted({m for m, _ in parsed})
    ks = sorted({k for _, k in parsed})
    check_same_data(run_dirs)
    out, reference_users = [], None
    for run_dir in run_dirs:
        users, values = per_user_metrics(run_dir, split, ks, names, data)
        if reference_users is None:
            reference_users = users
        elif not np.array_equal(users, reference_users):
            raise DataError(
                f"runs {run_dirs[0]} and {run_dir} evaluate different {split} users "
                f"({reference_users.size} and {users.size}); they cannot be paired"
            )
        out.append({m: values[m] for m in metrics})
    return out


def compare_runs(
    run_dirs: Sequence[str | Path],
    split: str = "test",
    metrics: Sequence[str] | str | None = None,
    n_boot: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
    data: Any = None,
) -> list[dict[str, Any]]:
    """Compare each run with the first (the reference), per user, on ``split``.

    ``metrics`` are names like ``"recall@20"`` (default: the reference run's validation
    metric, ``train.metric``). Returns one row per (run, metric): ``run``, ``model``,
    ``metric``, ``reference`` (bool) and ``mean``; the other runs' rows also hold
    :func:`paired_comparison`'s result against the reference. Refuses runs on different
    interactions, or that evaluate different users, with :class:`DataError`.
    """
    from diffmm.inference import open_run

    if len(run_dirs) < 2:
        raise ConfigError(
            f"compare needs at least 2 runs (a reference and another), got {len(run_dirs)}"
        )
    if split not in ("valid", "test"):
        raise ConfigError(f"split must be 'test' or 'valid', got {split!r}")
    configs = [open_run(r).read_config() for r in run_dirs]
    if metrics is None:
        metrics = [configs[0].train.metric]
    given = [metrics] if isinstance(metrics, str) else list(metrics)
    metrics = list(dict.fromkeys(f"{m}@{k}" for m, k in map(parse_metric, given)))
    if not metrics:
        raise ConfigError("name at least one metric to compare, e.g. recall@20")
    scores = _scores(run_dirs, split, metrics, data)
    rows = []
    for metric in metrics:
        a = scores[0][metric]
        for i, (run_dir, config) in enumerate(zip(run_dirs, configs, strict=True)):
            row: dict[str, Any] = {"run": str(run_dir), "model": config.model, "metric": metric}
            if i == 0:
                row.update(reference=True, mean=float(a.mean()), n_users=int(a.size))
            else:
                result = paired_comparison(a, scores[i][metric], n_boot, confidence, seed)
                row.update(reference=False, mean=result["mean_b"], **result)
            rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], split: str = "test") -> str:
    """The comparison as a Markdown table, with a line saying what the columns are."""
    confidence = next((r["confidence"] for r in rows if not r["reference"]), 0.95)
    level = f"{confidence * 100:g}%"
    head = ["run", "model", "metric", "mean", "diff vs reference", f"{level} CI"]
    head += ["p (permutation)", "p (t-test)", "users"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"`{r['run']}`", r["model"], r["metric"], f"{r['mean']:.4f}"]
        if r["reference"]:
            cells += ["(reference)", "", "", ""]
        else:
            cells += [
                f"{r['diff']:+.4f}",
                f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]",
                f"{r['p_value']:.4g}",
                f"{r['p_ttest']:.4g}",
            ]
        cells.append(str(r["n_users"]))
        lines.append("| " + " | ".join(cells) + " |")
    tests = sorted({r["test"] for r in rows if not r["reference"]})
    note = (
        f"Per-user paired differences (run − reference) on the {split} split; {level} "
        f"percentile bootstrap CI over users; p (permutation): {'; '.join(tests)}; "
        "p (t-test): paired t-test (scipy.stats.ttest_rel)."
    )
    return "\n".join([*lines, "", note])


def significance_column(
    runs_by_model: dict[str, list[str]],
    reference: str,
    metric: str,
    split: str = "test",
    n_boot: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, str]:
    """A benchmark-table cell per model: its per-user difference from ``reference``.

    Runs are matched by their training seed (``train.seed``); each model needs the
    reference's seeds. For each user the difference is averaged over the seed-matched
    pairs, ``d_u = mean_s (b_{s,u} - a_{s,u})``, and one :func:`paired_comparison` runs
    over users (users are the sampling unit; seed noise is averaged into each user's
    difference, and mean(d) is the difference of the table's seed means). A cell reads
    ``"+0.0105 [+0.0040, +0.0170] p=0.002"`` (permutation p); the reference's reads
    ``"reference"``.
    """
    from diffmm.checkpoint import RunDir

    metric = "{}@{}".format(*parse_metric(metric))
    if reference not in runs_by_model:
        raise ConfigError(f"reference model {reference!r} is not among {sorted(runs_by_model)}")
    seeds = {
        model: [RunDir(r).read_config().train.seed for r in dirs]
        for model, dirs in runs_by_model.items()
    }
    ref_seeds = seeds[reference]
    if len(set(ref_seeds)) != len(ref_seeds):
        raise ConfigError(f"the runs of {reference} repeat a seed; give one run per seed")
    every = [d for dirs in runs_by_model.values() for d in dirs]
    values = dict(zip(every, (v[metric] for v in _scores(every, split, [metric])), strict=True))
    a = np.mean([values[d] for d in runs_by_model[reference]], axis=0)
    cells = {}
    for model, dirs in runs_by_model.items():
        if model == reference:
            cells[model] = "reference"
            continue
        by_seed = dict(zip(seeds[model], dirs, strict=True))
        missing = [s for s in ref_seeds if s not in by_seed]
        if missing:
            raise ConfigError(f"{model} has no run with seed(s) {missing} that {reference} has")
        b = np.mean([values[by_seed[s]] for s in ref_seeds], axis=0)
        r = paired_comparison(a, b, n_boot, confidence, seed)
        cells[model] = (
            f"{r['diff']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] p={r['p_value']:.2g}"
        )
    return cells


def write_comparison(rows: list[dict[str, Any]], out: Path, split: str = "test") -> None:
    """``compare.md`` and ``compare.json`` in ``out``."""
    import json

    from diffmm.utils import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "compare.md", (markdown(rows, split) + "\n").encode())
    atomic_write_bytes(
        out / "compare.json", (json.dumps({"split": split, "rows": rows}, indent=2) + "\n").encode()
    )
