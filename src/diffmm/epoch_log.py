"""The trainer's human-readable lines: one per epoch, and metrics as text."""

from __future__ import annotations

from typing import Any


def metrics_text(metrics: dict[str, float], keys: list[str]) -> str:
    """``"recall@20 0.1234 ndcg@20 0.0567"``: the ``keys`` that ``metrics`` holds."""
    return " ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics)


def epoch_line(record: dict[str, Any], metric: str) -> str:
    """One epoch's log record (see :class:`diffmm.trainer.Trainer`) as one line: losses,
    validation ``metric`` and NDCG at its cut-off (``*`` if improved), times."""
    parts = [f"epoch {record['epoch']:>3}"]
    parts.append(" ".join(f"{k} {v:.4f}" for k, v in record["losses"].items()))
    keys = [metric, f"ndcg@{metric.partition('@')[2]}"]
    if "valid" in record:
        improved = " *" if record["improved"] else ""
        parts.append("valid " + metrics_text(record["valid"], keys) + improved)
    if "test_parity" in record:
        parts.append("test(parity) " + metrics_text(record["test_parity"], keys))
    parts.append(
        f"{record['seconds']:.1f}s (begin {record['seconds_begin_epoch']:.1f}, "
        f"train {record['seconds_train']:.1f}, eval {record['seconds_eval']:.1f})"
    )
    return " | ".join(parts)
