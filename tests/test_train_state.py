"""The selected model without a run directory: kept in memory, restored at the end."""

from __future__ import annotations

import torch
from torch import nn

from diffmm.ema import ParameterAverage
from diffmm.selection import Selection
from diffmm.train_state import SelectedModel


class _Tiny(nn.Module):
    device = torch.device("cpu")

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0]))


def _set(model: _Tiny, value: float) -> None:
    with torch.no_grad():
        model.w.fill_(value)


def test_the_best_epoch_not_the_last_is_restored_in_memory():
    model, selection = _Tiny(), Selection()
    selected = SelectedModel(None, model, "recall@20", selection, None)
    assert selection.observe(1, {"recall@20": 0.5}, "recall@20")
    selected.keep(1)
    _set(model, 5.0)  # a worse later epoch
    assert not selection.observe(2, {"recall@20": 0.4}, "recall@20")
    assert selected.restore(epochs_run=2, has_valid=True) == (1, "best valid recall@20")
    assert model.w.item() == 1.0


def test_the_kept_model_is_the_average_and_training_goes_on_with_the_raw_one():
    model, selection = _Tiny(), Selection()
    average = ParameterAverage(list(model.parameters()), decay=0.5)
    _set(model, 3.0)
    average.update()  # 0.5 * 1 + 0.5 * 3
    selected = SelectedModel(None, model, "recall@20", selection, average)
    selection.observe(1, {"recall@20": 0.5}, "recall@20")
    selected.keep(1)
    assert model.w.item() == 3.0  # the raw parameters, back after keeping
    selected.restore(epochs_run=1, has_valid=True)
    assert model.w.item() == 2.0


def test_without_validation_the_last_epoch_is_kept():
    model = _Tiny()
    selected = SelectedModel(None, model, "recall@20", Selection(), None)
    _set(model, 7.0)
    epoch, why = selected.restore(epochs_run=3, has_valid=False)
    assert (epoch, model.w.item()) == (3, 7.0) and "no validation" in why
