"""Model selection on the validation split, and early stopping.

:class:`Selection` is the trainer's record of what a run has selected so far; it is
saved in ``last.pt`` (as a plain dict) so that a resumed run selects as an uninterrupted
one would.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

PARITY_NOTE = "authors' protocol (best epoch chosen on test), for parity only; never used"


@dataclass
class Selection:
    """Early-stopping state: what the run has selected so far (saved in ``last.pt``).

    A validation improves when its ``metric`` is strictly greater than the best so far
    (a NaN never improves); ``bad_validations`` counts validations since the last
    improvement. ``best_on_test`` is the parity report of the authors' protocol: the
    best test value of each metric and its epoch, never used to select anything.
    """

    best_value: float = -float("inf")
    best_epoch: int = 0
    best_valid: dict[str, float] = field(default_factory=dict)
    bad_validations: int = 0
    stopped_early: bool = False
    best_on_test: dict[str, dict[str, float]] = field(default_factory=dict)
    epoch_seconds: list[float] = field(default_factory=list)
    resumed_after: list[int] = field(default_factory=list)

    def observe(self, epoch: int, valid: dict[str, float], metric: str) -> bool:
        """Record ``epoch``'s validation metrics; returns whether ``metric`` improved."""
        if valid[metric] > self.best_value:
            self.best_value, self.best_epoch, self.best_valid = valid[metric], epoch, valid
            self.bad_validations = 0
            return True
        self.bad_validations += 1
        return False

    def observe_test(self, epoch: int, test: dict[str, float]) -> None:
        """Record ``epoch``'s test metrics for the parity report (``best_on_test``)."""
        for key, value in test.items():
            if key != "n_users" and (
                key not in self.best_on_test or value > self.best_on_test[key]["value"]
            ):
                self.best_on_test[key] = {"value": value, "epoch": epoch}

    def should_stop(self, patience: int) -> bool:
        """Whether ``patience`` validations in a row have not improved."""
        return self.bad_validations >= patience

    def summary_fields(self) -> dict[str, Any]:
        """What the run's ``summary.json`` reports of the selection: the selected epoch's
        validation metrics, early stopping, epoch times, resumptions and (when test was
        scored at every validation) the parity report."""
        fields: dict[str, Any] = {
            "valid": self.best_valid,
            "stopped_early": self.stopped_early,
            "seconds_per_epoch": statistics.median(self.epoch_seconds or [0.0]),
            "seconds_total": float(sum(self.epoch_seconds)),
        }
        if self.resumed_after:
            fields["resumed_after_epochs"] = self.resumed_after
        if self.best_on_test:
            fields["best_on_test"] = {"note": PARITY_NOTE, **self.best_on_test}
        return fields
