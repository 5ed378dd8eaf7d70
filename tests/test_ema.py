"""train.ema_decay: the moving average of the parameters, and what a run does with it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffmm.checkpoint import load_checkpoint
from diffmm.config import RunConfig, TrainConfig
from diffmm.ema import ParameterAverage
from diffmm.models.mf import Config as MFConfig
from diffmm.trainer import train
from helpers import make_dataset, planted_dataset


def test_the_average_follows_the_ema_rule_and_swaps_exactly():
    p = nn.Parameter(torch.zeros(3))
    ema = ParameterAverage([p], decay=0.9)
    with torch.no_grad():
        p.fill_(1.0)
    ema.update()
    ema.update()
    torch.testing.assert_close(ema.shadow[0], torch.full((3,), 0.19))  # 0.1, then 0.19
    raw = p.detach().clone()
    with ema.swapped():
        torch.testing.assert_close(p.detach(), torch.full((3,), 0.19))
    assert torch.equal(p.detach(), raw)
    state = ema.state_dict()
    other = ParameterAverage([nn.Parameter(torch.ones(3))], decay=0.9)
    other.load_state_dict(state)
    assert torch.equal(other.shadow[0], ema.shadow[0])
    with pytest.raises(ValueError, match="expected 1 averaged tensors, got 2"):
        other.load_state_dict(state * 2)


def test_a_run_with_ema_selects_saves_and_tests_the_average(tmp_path):
    """No validation data: the last epoch is kept, and it is its average that is saved."""
    planted = planted_dataset()
    data = make_dataset(planted.train.toarray(), None, planted.test.toarray())
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.05, progress=False, seed=7, ema_decay=0.8)
    summary = train(
        RunConfig(model="mf", train=cfg, params=MFConfig(embedding_dim=8)), data, tmp_path
    )
    last, best = load_checkpoint(tmp_path / "last.pt"), load_checkpoint(tmp_path / "best.pt")
    averaged = dict(
        zip(["user_embedding.weight", "item_embedding.weight"], last["ema"], strict=True)
    )
    for name, value in averaged.items():
        assert torch.equal(best["model"][name], value)
        assert not torch.equal(last["model"][name], value)  # the raw parameters differ
    plain = train(
        RunConfig(
            model="mf",
            train=cfg.model_copy(update={"ema_decay": None}),
            params=MFConfig(embedding_dim=8),
        ),
        data,
        None,
    )
    assert summary["test"] != plain["test"]  # the average, not the raw model, was tested


def test_ema_decay_is_a_fraction():
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="ema_decay"):
            TrainConfig(ema_decay=bad)
