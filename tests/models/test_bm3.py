"""BM3: formulas against a dense reference, stop-gradient targets, learning on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from diffmm.data.dataset import Dataset
from diffmm.data.synthetic import make_synthetic
from diffmm.evaluate import evaluate
from diffmm.models.base import Batch
from diffmm.models.bm3 import BM3, Config
from helpers import fit_bpr, popularity_recall


@pytest.fixture(scope="module")
def small() -> Dataset:
    return make_synthetic(n_users=40, n_items=30, interactions_per_user=6, seed=0)


def _batch(data: Dataset, size: int = 16) -> Batch:
    """The first ``size`` training pairs; negatives are filled in but BM3 ignores them."""
    coo = data.train.tocoo()
    users = torch.from_numpy(coo.row[:size].astype(np.int64))
    items = torch.from_numpy(coo.col[:size].astype(np.int64))
    return Batch(users, items, torch.zeros_like(items))


def _neg_cos(x: Tensor, y: Tensor) -> Tensor:
    return 1 - ((x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1))).mean()


def _reference_loss(model: BM3, batch: Batch, data: Dataset, stop_gradient: bool) -> Tensor:
    """The module docstring's objective with dense matrices, for ``target_dropout=0``."""
    cfg = model.config
    adj = model.adj.to_dense()
    layer = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    total = layer
    for _ in range(cfg.n_layers):
        layer = adj @ layer
        total = total + layer
    mean = total / (cfg.n_layers + 1)
    h_users, h_items = mean[: data.n_users], mean[data.n_users :] + model.item_embedding.weight
    sg = Tensor.detach if stop_gradient else (lambda x: x)
    pred = model.predictor
    h_u, h_i = h_users[batch.users], h_items[batch.pos_items]
    rec = _neg_cos(pred(h_u), sg(h_i)) + _neg_cos(pred(h_i), sg(h_u))
    align = mask = 0.0
    for m, proj in enumerate(model.projections):  # the model's own (trainable) features
        h_m = getattr(model, f"features_{m}")[batch.pos_items] @ proj.weight.T + proj.bias
        align = align + _neg_cos(pred(h_m), sg(h_i))
        mask = mask + _neg_cos(pred(h_m), sg(h_m))
    reg = (h_users.norm() + h_items.norm()) / data.n_items
    return rec + cfg.modality_loss_weight * (align + mask) + cfg.l2_weight * reg


def _grads(model: BM3, loss: Tensor) -> dict[str, Tensor]:
    model.zero_grad()
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def test_config_defaults_follow_the_authors():
    assert BM3.name == "bm3" and BM3.Config is Config
    cfg = Config()
    assert cfg.embedding_dim == 64 and cfg.n_layers == 1
    assert (cfg.target_dropout, cfg.l2_weight, cfg.modality_loss_weight) == (0.5, 0.1, 2.0)
    assert cfg.finetune_features  # the code's nn.Embedding.from_pretrained(freeze=False)
    with pytest.raises(ValueError):
        Config(target_dropout=1.0)


def test_shapes_and_finite_losses(small):
    torch.manual_seed(0)
    model = BM3(Config(embedding_dim=8), small)
    users, items = model.embeddings()
    assert users.shape == (small.n_users, 8) and items.shape == (small.n_items, 8)
    assert model.scores(torch.tensor([1, 2])).shape == (2, small.n_items)
    losses = model.loss(_batch(small))
    assert set(losses) == {"reconstruction", "alignment", "masked", "l2"}
    for value in losses.values():
        assert value.shape == () and torch.isfinite(value)


def test_loss_and_scores_match_dense_reference(small):
    torch.manual_seed(0)
    model = BM3(Config(embedding_dim=8, n_layers=2, target_dropout=0.0), small)
    batch = _batch(small)
    got = sum(model.loss(batch).values())
    want = _reference_loss(model, batch, small, stop_gradient=True)
    torch.testing.assert_close(got, want)
    # scores: dot products of the predictor's outputs (authors' full_sort_predict)
    with torch.no_grad():
        users, items = model.propagate()
        expected = model.predictor(users[:3]) @ model.predictor(items).T
        torch.testing.assert_close(model.scores(torch.arange(3)), expected)


def test_gradients_reach_every_parameter_but_not_through_targets(small):
    torch.manual_seed(0)
    model = BM3(Config(embedding_dim=8, target_dropout=0.0), small)
    batch = _batch(small)
    got = _grads(model, sum(model.loss(batch).values()))
    assert set(got) == {name for name, _ in model.named_parameters()}
    for name, grad in got.items():
        assert grad.abs().sum() > 0, f"no gradient reaches {name}"
    detached = _grads(model, _reference_loss(model, batch, small, stop_gradient=True))
    through = _grads(model, _reference_loss(model, batch, small, stop_gradient=False))
    for name in got:
        torch.testing.assert_close(got[name], detached[name])
    # the check is sensitive: letting gradient into the targets changes it
    assert any(not torch.allclose(got[n], through[n]) for n in got)


def test_target_view_is_a_dropped_out_constant(small):
    torch.manual_seed(0)
    model = BM3(Config(target_dropout=0.5), small)
    h = torch.randn(200, 8, requires_grad=True)
    target = model.target_view(h)
    assert not target.requires_grad and target.grad_fn is None
    kept = target != 0
    torch.testing.assert_close(target[kept], 2 * h.detach()[kept])  # scaled by 1 / (1 - p)
    assert 0.3 < kept.float().mean() < 0.7
    # dropout also applies in eval mode: it builds the training target, not a regulariser
    model.eval()
    assert (model.target_view(h) == 0).any()


def test_frozen_features_and_the_graph_are_non_persistent_buffers(small):
    torch.manual_seed(0)
    model = BM3(Config(embedding_dim=4, finetune_features=False), small)
    assert not any(k.startswith(("features_", "adj")) for k in model.state_dict())
    assert {n for n, _ in model.named_buffers()} == {"features_0", "features_1", "adj"}


def test_finetuned_features_learn_and_leave_the_dataset_alone(small):
    torch.manual_seed(0)
    before = {k: v.copy() for k, v in small.features.items()}
    model = BM3(Config(embedding_dim=4), small)
    assert {"features_0", "features_1"} <= set(model.state_dict())
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    sum(model.loss(_batch(small)).values()).backward()
    optimiser.step()
    touched = _batch(small).pos_items.unique()
    first = torch.from_numpy(before[next(iter(before))])
    assert not torch.allclose(model.features_0[touched].detach(), first[touched])
    for name, feats in small.features.items():
        np.testing.assert_array_equal(feats, before[name])


@pytest.mark.slow
def test_loss_falls_and_beats_popularity():
    # BM3 learns without negatives; on planted data its ranking beats popularity.
    data = make_synthetic(n_users=600, n_items=400, seed=0)
    torch.manual_seed(0)
    model = BM3(Config(), data)
    losses = fit_bpr(model, data, epochs=15, lr=0.01)
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.8 * losses[0]  # about 0.70 with these seeds
    with torch.no_grad():
        emb = model.embeddings()
        recall = evaluate(lambda u: model.scores(u, emb), data, "test", ks=[20])["recall@20"]
    popularity = popularity_recall(data)
    assert recall > popularity + 0.1  # about 0.41 vs 0.23
