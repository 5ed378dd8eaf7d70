"""LightGCN: propagation, gradients, learning on planted data, the adjacency buffer."""

from __future__ import annotations

import numpy as np
import torch

from diffmm.evaluate import evaluate
from diffmm.models import get_model_class
from diffmm.models.base import Batch
from diffmm.models.lightgcn import Config, LightGCN
from diffmm.models.mf import MF
from diffmm.models.mf import Config as MFConfig
from helpers import fit_bpr, make_dataset, planted_dataset


def test_registry_and_config():
    assert get_model_class("lightgcn") is LightGCN
    assert LightGCN.name == "lightgcn" and LightGCN.Config is Config
    cfg = Config()
    assert (cfg.embedding_dim, cfg.n_layers, cfg.l2_weight) == (64, 2, 1e-4)


def test_propagation_matches_dense_formula():
    torch.manual_seed(0)
    data = make_dataset([[1, 1, 0], [0, 1, 1]])
    model = LightGCN(Config(embedding_dim=3, n_layers=2), data)
    a = model.adj.to_dense()
    e0 = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    expected = (e0 + a @ e0 + a @ (a @ e0)) / 3  # alpha_l = 1 / (L + 1)
    users, items = model.embeddings()
    torch.testing.assert_close(torch.cat([users, items]), expected)
    # no self-loops: the diagonal of the normalised adjacency is zero
    assert torch.diagonal(a).abs().sum() == 0
    zero_layers = LightGCN(Config(embedding_dim=3, n_layers=0), data)
    torch.testing.assert_close(zero_layers.embeddings()[0], zero_layers.user_embedding.weight)


def test_shapes_and_gradients_reach_both_tables():
    torch.manual_seed(0)
    data = planted_dataset()
    model = LightGCN(Config(embedding_dim=8), data)
    assert model.scores(torch.tensor([1, 2])).shape == (2, data.n_items)
    batch = Batch(torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5]))
    losses = model.loss(batch)
    assert set(losses) == {"bpr", "l2"}
    sum(losses.values()).backward()
    for table in (model.user_embedding, model.item_embedding):
        assert table.weight.grad is not None and table.weight.grad.abs().sum() > 0
    # propagation spreads gradient beyond the batch's own rows
    assert (model.user_embedding.weight.grad.abs().sum(1) > 0).sum() > 2


def test_adjacency_is_a_non_persistent_csr_buffer():
    data = planted_dataset()
    model = LightGCN(Config(embedding_dim=4), data)
    assert "adj" not in model.state_dict()  # derived from the data
    assert dict(model.named_buffers())["adj"].layout == torch.sparse_csr


def _recall(model, data) -> float:
    with torch.no_grad():
        emb = model.embeddings()
        return evaluate(lambda u: model.scores(u, emb), data, "test", ks=(10,))["recall@10"]


def test_loss_falls_and_beats_random_and_mf():
    data = planted_dataset()
    torch.manual_seed(0)
    model = LightGCN(Config(embedding_dim=16), data)
    losses = fit_bpr(model, data, epochs=15)
    assert losses[-1] < 0.6 * losses[0]
    lgcn = _recall(model, data)
    assert lgcn > 0.4  # random is about 10 / 51 ~ 0.2
    torch.manual_seed(0)
    mf = MF(MFConfig(embedding_dim=16), data)
    fit_bpr(mf, data, epochs=15)
    assert lgcn > _recall(mf, data)  # about 0.93 vs 0.78 with these seeds
    assert np.isfinite(losses).all()
