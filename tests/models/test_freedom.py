"""FREEDOM: frozen item graph, degree-sensitive pruning, gradients, learning."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from diffmm.data.dataset import Dataset
from diffmm.data.synthetic import make_synthetic
from diffmm.evaluate import evaluate
from diffmm.models.base import Batch
from diffmm.models.freedom import (
    FREEDOM,
    FREEDOMConfig,
    degree_sensitive_sample,
    modality_graph_weights,
)
from helpers import fit_bpr, popularity_recall


def tiny_dataset(n_modalities: int = 2, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    n_users, n_items = 30, 20
    dense = rng.random((n_users, n_items)) < 0.25
    dense[np.arange(n_users), rng.integers(0, n_items, n_users)] = True  # nobody is empty
    train = sp.csr_matrix(dense.astype(np.float32))
    empty = sp.csr_matrix((n_users, n_items), dtype=np.float32)
    feats = {
        f"m{i}": rng.normal(size=(n_items, 8 + i)).astype(np.float32) for i in range(n_modalities)
    }
    return Dataset("tiny", n_users, n_items, train, empty, empty.copy(), feats)


def small_config(**kw) -> FREEDOMConfig:
    return FREEDOMConfig(**{"embedding_dim": 8, "feature_embedding_dim": 8, "knn_k": 4, **kw})


def a_batch(ds: Dataset, n: int = 12) -> Batch:
    coo = ds.train.tocoo()
    return Batch(
        torch.from_numpy(coo.row[:n]).long(),
        torch.from_numpy(coo.col[:n]).long(),
        torch.arange(n) % ds.n_items,
    )


def test_config_defaults_follow_the_authors():
    assert FREEDOM.name == "freedom" and FREEDOM.Config is FREEDOMConfig
    cfg = FREEDOMConfig()
    assert (cfg.embedding_dim, cfg.feature_embedding_dim, cfg.knn_k) == (64, 64, 10)
    assert (cfg.first_modality_weight, cfg.item_graph_layers, cfg.user_item_layers) == (0.1, 1, 2)
    assert (cfg.edge_pruning_ratio, cfg.modality_loss_weight, cfg.l2_weight) == (0.8, 1e-4, 0.0)
    assert cfg.finetune_features
    assert all(f.description for f in FREEDOMConfig.model_fields.values())
    with pytest.raises(ValueError, match="feature_embedding_dim"):
        FREEDOMConfig(embedding_dim=8, feature_embedding_dim=4)
    FREEDOMConfig(embedding_dim=8, feature_embedding_dim=4, modality_loss_weight=0.0)


@pytest.mark.parametrize("n_modalities", [1, 2, 3])
def test_shapes_and_finite_loss(n_modalities):
    torch.manual_seed(0)
    ds = tiny_dataset(n_modalities)
    model = FREEDOM(small_config(), ds)
    stats = model.begin_epoch(0)
    assert stats["kept_edges"] == int(ds.train.nnz * 0.2)
    users, items = model.embeddings()
    assert users.shape == (30, 8) and items.shape == (20, 8)
    assert model.scores(torch.tensor([0, 3])).shape == (2, 20)
    losses = model.loss(a_batch(ds))
    assert set(losses) == {"bpr", "modality_bpr", "l2"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())


def _dense_knn(feats: torch.Tensor, k: int) -> torch.Tensor:
    """Reference binary kNN graph on a tiny input (dense is fine here): D^-1/2 S D^-1/2."""
    unit = F.normalize(feats, dim=1)
    top = torch.topk(unit @ unit.T, k, dim=1).indices
    s = torch.zeros(len(feats), len(feats)).scatter(1, top, 1.0)
    d = s.sum(1).rsqrt()
    return d[:, None] * s * d[None, :]


def test_modality_weights():
    assert modality_graph_weights(1, 0.1) == [1.0]
    assert modality_graph_weights(2, 0.1) == pytest.approx([0.1, 0.9])
    assert modality_graph_weights(3, 0.1) == pytest.approx([0.1, 0.45, 0.45])


@pytest.mark.parametrize("n_modalities", [1, 3])
def test_frozen_graph_and_representations_match_the_dense_formula(n_modalities):
    torch.manual_seed(0)
    ds = tiny_dataset(n_modalities)
    cfg = small_config()
    model = FREEDOM(cfg, ds)
    beta = modality_graph_weights(n_modalities, cfg.first_modality_weight)
    feats = [torch.from_numpy(f) for f in ds.features.values()]
    expected = sum(b * _dense_knn(f, cfg.knn_k) for b, f in zip(beta, feats, strict=True))
    assert model.item_graph.layout == torch.sparse_csr
    torch.testing.assert_close(model.item_graph.to_dense(), expected)
    torch.testing.assert_close(model.item_graph_t.to_dense(), expected.T)
    # scoring: LightGCN over the full graph, items + S E_I
    with torch.no_grad():
        a = model.adj.to_dense()
        e0 = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
        lgcn = (e0 + a @ e0 + a @ (a @ e0)) / 3
        users, items = model.embeddings()
        torch.testing.assert_close(users, lgcn[:30])
        torch.testing.assert_close(items, lgcn[30:] + expected @ model.item_embedding.weight)


def test_frozen_graph_has_no_parameters_and_does_not_change():
    torch.manual_seed(0)
    ds = tiny_dataset(2)
    model = FREEDOM(small_config(), ds)
    names = {n for n, _ in model.named_parameters()}
    assert names == {
        "user_embedding.weight",
        "item_embedding.weight",
        "features_0",
        "features_1",
        "projections.0.weight",
        "projections.1.weight",
    }
    assert not model.item_graph.requires_grad
    assert "item_graph" not in model.state_dict()  # derived from the data
    before = model.item_graph.to_dense().clone()
    fit_bpr(model, ds, epochs=2, lr=0.05)
    torch.testing.assert_close(model.item_graph.to_dense(), before, rtol=0, atol=0)
    n = ds.n_items
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        assert not (t.layout == torch.strided and t.shape[-2:] == (n, n)), name


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    ds = tiny_dataset(2)
    model = FREEDOM(small_config(), ds)
    assert len(model.trainable_parameters()) == len(list(model.parameters()))
    model.begin_epoch(0)
    sum(model.loss(a_batch(ds)).values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # without the modality terms the projections and features are outside the loss
    model = FREEDOM(small_config(modality_loss_weight=0.0), ds)
    losses = model.loss(a_batch(ds))
    assert set(losses) == {"bpr", "l2"}
    sum(losses.values()).backward()
    assert model.projections[0].weight.grad is None and model.features_0.grad is None


def test_degree_sensitive_pruning():
    torch.manual_seed(0)
    ds = tiny_dataset(1)
    model = FREEDOM(small_config(), ds)
    edges = set(zip(*ds.train.nonzero(), strict=True))
    pruned = model.prune()
    dense = pruned.to_dense()
    torch.testing.assert_close(dense, dense.T)  # symmetric bipartite matrix
    r = dense[:30, 30:]
    kept = {(int(u), int(i)) for u, i in r.nonzero()}
    assert len(kept) == int(len(edges) * (1 - 0.8)) and kept <= edges
    assert dense[:30, :30].abs().sum() == 0 and dense[30:, 30:].abs().sum() == 0
    # renormalised with the degrees of the kept edges: 1 / sqrt(d'_u d'_i)
    binary = (r > 0).float()
    d_u, d_i = binary.sum(1), binary.sum(0)
    expected = binary * (d_u[:, None] * d_i[None, :]).clamp_min(1).rsqrt()
    torch.testing.assert_close(r, expected)
    # reproducible under a seed, different from epoch to epoch
    torch.manual_seed(5)
    a = model.prune().to_dense()
    b = model.prune().to_dense()
    torch.manual_seed(5)
    torch.testing.assert_close(model.prune().to_dense(), a, rtol=0, atol=0)
    assert not torch.equal(a, b)
    # no pruning: the full normalised graph
    assert FREEDOM(small_config(edge_pruning_ratio=0.0), ds).prune() is not None
    full = FREEDOM(small_config(edge_pruning_ratio=0.0), ds)
    assert full.prune() is full.adj


def test_sampling_prefers_edges_between_low_degree_nodes():
    torch.manual_seed(0)
    weights = torch.cat([torch.full((50,), 1.0), torch.full((50,), 4.0)])
    counts = torch.zeros(100)
    for _ in range(400):
        idx = degree_sensitive_sample(weights, 20)
        assert idx.unique().numel() == 20  # without replacement
        counts[idx] += 1
    # kept about 4x as often (slightly less: sampling without replacement)
    ratio = counts[50:].mean() / counts[:50].mean()
    assert 2.5 < ratio < 4.5, ratio
    # the model's weights are 1 / sqrt(d_u d_i) of the full training graph
    ds = tiny_dataset(1)
    model = FREEDOM(small_config(), ds)
    d_u = np.asarray(ds.train.sum(1)).ravel()
    d_i = np.asarray(ds.train.sum(0)).ravel()
    coo = ds.train.tocoo()
    expected = 1 / np.sqrt(d_u[coo.row] * d_i[coo.col])
    np.testing.assert_allclose(model.edge_weights.numpy(), expected, rtol=1e-6)


def test_scores_use_the_full_graph():
    torch.manual_seed(0)
    ds = tiny_dataset(2)
    model = FREEDOM(small_config(), ds)
    with torch.no_grad():
        before = model.scores(torch.arange(4))
        model.begin_epoch(0)
        torch.testing.assert_close(model.scores(torch.arange(4)), before, rtol=0, atol=0)


def _fit_and_recall(data: Dataset, **config) -> tuple[float, list[float]]:
    torch.manual_seed(0)
    model = FREEDOM(FREEDOMConfig(**config), data)
    losses = fit_bpr(model, data, epochs=10, lr=0.01)  # authors' lr is 1e-3
    with torch.no_grad():
        recall = evaluate(lambda u: model.scores(u), data, "test", ks=[20])["recall@20"]
    return recall, losses


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic(n_users=600, n_items=400, seed=0)


@pytest.mark.slow
def test_loss_falls_and_recall_beats_popularity(synthetic):
    recall, losses = _fit_and_recall(synthetic)  # the paper's defaults
    assert np.isfinite(losses).all() and losses[-1] < 0.3 * losses[0]
    popular = popularity_recall(synthetic)
    # about 0.40 against 0.23 with these seeds
    assert recall > 1.5 * popular and recall > popular + 0.1, (recall, popular)


@pytest.mark.slow
def test_frozen_graph_of_the_informative_modality_helps(synthetic):
    # "visual" (first) carries the planted item factors, "acoustic" is mostly noise: a
    # frozen graph weighted towards visual must rank better (about 0.47 vs 0.40 here).
    weighted_noise, _ = _fit_and_recall(synthetic, first_modality_weight=0.1)
    weighted_signal, _ = _fit_and_recall(synthetic, first_modality_weight=0.9)
    assert weighted_signal > weighted_noise + 0.03, (weighted_signal, weighted_noise)
