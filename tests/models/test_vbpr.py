"""VBPR: the score formula, gradients, determinism, missing features, learning on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffmm.data.synthetic import make_synthetic
from diffmm.errors import DataError
from diffmm.evaluate import evaluate
from diffmm.models.base import Batch
from diffmm.models.mf import MF
from diffmm.models.mf import Config as MFConfig
from diffmm.models.vbpr import VBPR, Config
from helpers import fit_bpr, planted_dataset, popularity_recall


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=600, n_items=400, seed=0)


def _model(data, dim: int = 8, seed: int = 0) -> VBPR:
    torch.manual_seed(seed)
    return VBPR(Config(embedding_dim=dim), data)


def _batch(n: int = 64, seed: int = 0, n_users: int = 600, n_items: int = 400) -> Batch:
    g = torch.Generator().manual_seed(seed)
    users = torch.randint(0, n_users, (n,), generator=g)
    items = torch.randint(0, n_items, (2, n), generator=g)
    return Batch(users, items[0], items[1])


def test_config():
    assert VBPR.name == "vbpr" and VBPR.Config is Config
    cfg = Config()
    assert (cfg.embedding_dim, cfg.l2_weight) == (64, 1e-4)
    with pytest.raises(ValueError):
        Config(embedding_dim=1)  # too small to split between gamma and theta
    with pytest.raises(ValueError):
        Config(unknown=1)


def test_shapes_and_split_of_embedding_dim(data):
    model = _model(data, dim=9)
    assert model.user_gamma.weight.shape == (data.n_users, 5)
    assert model.user_theta.weight.shape == (data.n_users, 4)
    n_features = sum(f.shape[1] for f in data.features.values())
    assert model.projection.weight.shape == (4, n_features)
    users, items = model.embeddings()
    # [gamma, theta, 1] and [gamma, E f, bias]
    assert users.shape == (data.n_users, 10) and items.shape == (data.n_items, 10)
    assert model.scores(torch.tensor([0, 3, 5])).shape == (3, data.n_items)


def test_scores_follow_the_paper_predictor(data):
    model = _model(data, dim=6)
    with torch.no_grad():  # give the biases non-zero values to check them too
        model.item_bias.weight.normal_()
        model.feature_bias.weight.normal_()
    # f_i concatenates the modalities in the dataset's order
    f = torch.from_numpy(np.concatenate([data.features[m] for m in data.modalities], 1))
    torch.testing.assert_close(model.features, f)
    gamma_u, theta_u = model.user_gamma.weight, model.user_theta.weight
    gamma_i, beta_i = model.item_gamma.weight, model.item_bias.weight[:, 0]
    e, beta_prime = model.projection.weight, model.feature_bias.weight[0]
    # x_ui = beta_i + gamma_u . gamma_i + theta_u . (E f_i) + beta' . f_i
    expected = gamma_u @ gamma_i.T + theta_u @ (f @ e.T).T + (beta_i + f @ beta_prime)[None, :]
    users = torch.arange(data.n_users)
    torch.testing.assert_close(model.scores(users), expected, rtol=1e-4, atol=1e-5)


def test_loss_is_finite_and_reaches_every_parameter(data):
    model = _model(data)
    losses = model.loss(_batch())
    assert set(losses) == {"bpr", "l2"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_features_are_non_persistent_buffers(data):
    model = _model(data)
    assert "features" not in model.state_dict()
    assert any(name == "features" for name, _ in model.named_buffers())
    before = model.scores(torch.arange(4))
    clone = _model(data, seed=1)
    clone.load_state_dict(model.state_dict())
    torch.testing.assert_close(clone.scores(torch.arange(4)), before)


def test_same_seed_same_scores(data):
    def train(seed: int) -> torch.Tensor:
        model = _model(data, seed=seed)
        fit_bpr(model, data, epochs=1, lr=0.01, seed=seed)
        with torch.no_grad():
            return model.scores(torch.arange(50))

    first = train(0)
    assert torch.equal(first, train(0))
    assert not torch.equal(first, train(1))


def test_no_features_is_a_data_error():
    with pytest.raises(DataError, match="no item features") as info:
        VBPR(Config(), planted_dataset())
    assert "--model lightgcn" in str(info.value) and "--model mf" in str(info.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_round_trip(data):
    model = _model(data)
    before = model.scores(torch.arange(4))
    model.to("cuda")
    assert model.features.device.type == "cuda"
    b = _batch()
    batch = Batch(b.users.cuda(), b.pos_items.cuda(), b.neg_items.cuda())
    sum(model.loss(batch).values()).backward()
    torch.testing.assert_close(model.scores(torch.arange(4, device="cuda")).cpu(), before)


def _recall20(model, data) -> float:
    with torch.no_grad():
        emb = model.embeddings()
        return evaluate(lambda u: model.scores(u, emb), data, "test", ks=[20])["recall@20"]


def test_loss_falls_and_beats_popularity_and_mf(data):
    model = _model(data, dim=32)
    losses = fit_bpr(model, data, epochs=8, lr=0.01)
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.4 * losses[0]  # about 23 -> 5
    vbpr = _recall20(model, data)
    # about 0.42 vs 0.23 with these seeds
    assert vbpr > popularity_recall(data, "test", 20) + 0.1
    # the paper's claim: the content factors improve on BPR-MF of the same total size
    torch.manual_seed(0)
    mf = MF(MFConfig(embedding_dim=32), data)
    fit_bpr(mf, data, epochs=8, lr=0.01)
    assert vbpr > _recall20(mf, data) + 0.05  # about 0.42 vs 0.30
