"""Model selection on hand-made sequences of validation metrics."""

from __future__ import annotations

import math
from dataclasses import asdict

from diffmm.selection import Selection


def observe_all(values: list[float], patience: int) -> tuple[Selection, list[bool], int | None]:
    """Feed ``recall@20`` values epoch by epoch as the trainer does; returns the
    selection, each epoch's ``improved`` and the epoch the run stopped at (or None)."""
    sel = Selection()
    improved = []
    for epoch, value in enumerate(values, start=1):
        improved.append(sel.observe(epoch, {"recall@20": value, "ndcg@20": -value}, "recall@20"))
        if sel.should_stop(patience):
            return sel, improved, epoch
    return sel, improved, None


def test_the_best_epoch_is_the_first_with_the_highest_value():
    sel, improved, stopped = observe_all([0.1, 0.3, 0.3, 0.2, 0.25], patience=5)
    assert improved == [True, True, False, False, False]  # a tie does not improve
    assert (sel.best_epoch, sel.best_value, sel.bad_validations) == (2, 0.3, 3)
    assert sel.best_valid == {"recall@20": 0.3, "ndcg@20": -0.3}
    assert stopped is None


def test_stops_after_patience_validations_without_improvement():
    _, _, stopped = observe_all([0.1, 0.3, 0.2, 0.25, 0.9], patience=2)
    assert stopped == 4
    # an improvement resets the count
    sel, _, stopped = observe_all([0.1, 0.0, 0.2, 0.1, 0.3, 0.2], patience=2)
    assert stopped is None and sel.best_epoch == 5 and sel.bad_validations == 1


def test_patience_one_stops_at_the_first_validation_without_improvement():
    _, _, stopped = observe_all([0.5, 0.6, 0.6], patience=1)
    assert stopped == 3


def test_a_nan_never_improves_and_counts_as_a_bad_validation():
    sel, improved, _ = observe_all([math.nan, math.nan, 0.2, math.nan], patience=10)
    assert improved == [False, False, True, False]
    assert sel.best_epoch == 3 and sel.bad_validations == 1
    sel, _, stopped = observe_all([math.nan] * 3, patience=3)
    assert stopped == 3 and sel.best_epoch == 0 and sel.best_valid == {}


def test_best_on_test_keeps_each_metrics_best_value_and_epoch():
    sel = Selection()
    sel.observe_test(1, {"recall@20": 0.2, "ndcg@20": 0.5, "n_users": 10})
    sel.observe_test(2, {"recall@20": 0.4, "ndcg@20": 0.1, "n_users": 10})
    sel.observe_test(3, {"recall@20": 0.4, "ndcg@20": 0.5, "n_users": 10})
    assert sel.best_on_test == {
        "recall@20": {"value": 0.4, "epoch": 2},
        "ndcg@20": {"value": 0.5, "epoch": 1},
    }
    assert sel.best_epoch == 0  # the test split never selects


def test_the_state_survives_a_round_trip_through_a_plain_dict():
    sel, _, _ = observe_all([0.1, 0.3, 0.2], patience=5)
    sel.epoch_seconds.append(1.5)
    again = Selection(**asdict(sel))  # as last.pt stores it
    assert again == sel
    assert again.observe(4, {"recall@20": 0.25}, "recall@20") is False
    assert again.bad_validations == 2
