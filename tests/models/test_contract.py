"""What every registered model promises the trainer, the checkpoints and the server.

Each test runs for every name in :func:`diffmm.models.model_names`, so a new model is
held to these as soon as it is registered: the same seed trains to the same scores, data
without the features a model needs are refused with a hint, a saved state dict restores
the scores, ``.to()`` moves every tensor the model scores with, and the loss is finite and
reaches every trainable parameter. Known answers for one model live in its own file.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import Tensor

from diffmm.data.dataset import Dataset
from diffmm.data.synthetic import make_synthetic
from diffmm.errors import DataError
from diffmm.models import Recommender, get_model_class, model_names
from diffmm.models.base import Batch
from helpers import fit_bpr, planted_dataset

#: Models that need item features; every other one must train on interactions alone.
NEED_FEATURES = {"vbpr", "lightgcn_m", "bm3", "lattice", "freedom", "diffmm"}

#: Settings that keep each model small, on top of ``embedding_dim=8``.
SMALL: dict[str, dict] = {
    "lattice": {"feature_embedding_dim": 8, "knn_k": 4},
    "freedom": {"feature_embedding_dim": 8, "knn_k": 4},
    "diffmm": {"denoiser_hidden_dims": [16], "diffusion_batch_size": 8, "rebuild_k": 5},
}


@pytest.fixture(scope="module")
def data() -> Dataset:
    """40 users, 30 items, two modalities."""
    return make_synthetic(n_users=40, n_items=30, interactions_per_user=6, seed=0)


@pytest.fixture(params=model_names())
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def config(name: str):
    return get_model_class(name).Config(embedding_dim=8, **SMALL.get(name, {}))


def build(name: str, data: Dataset, seed: int = 0) -> Recommender:
    torch.manual_seed(seed)
    return get_model_class(name)(config(name), data)


def a_batch(data: Dataset, device: str = "cpu", n: int = 16) -> Batch:
    coo = data.train.tocoo()
    negatives = torch.randint(0, data.n_items, (n,), generator=torch.Generator().manual_seed(0))
    batch = (
        torch.from_numpy(coo.row[:n].astype(np.int64)),
        torch.from_numpy(coo.col[:n].astype(np.int64)),
        negatives,
    )
    return Batch(*(t.to(device) for t in batch))


def scores(model: Recommender, n_users: int = 10) -> Tensor:
    with torch.no_grad():
        return model.scores(torch.arange(n_users, device=model.device)).cpu()


def tensors(model: Recommender) -> Iterator[tuple[str, Tensor]]:
    """Every tensor the model holds: parameters, buffers and derived lists."""
    yield from model.named_parameters()
    yield from model.named_buffers()
    for attr in getattr(model, "derived_tensors", ()):
        for i, t in enumerate(getattr(model, attr)):
            yield f"{attr}[{i}]", t


def test_same_seed_trains_to_the_same_scores(name, data):
    def trained(seed: int) -> tuple[list[float], Tensor]:
        model = build(name, data, seed)
        losses = fit_bpr(model, data, epochs=2, lr=0.01, seed=seed)
        return losses, scores(model)

    losses, first = trained(0)
    again_losses, again = trained(0)
    assert losses == again_losses
    assert torch.equal(first, again)
    assert not torch.equal(first, trained(1)[1])


def test_data_without_needed_features_are_refused_with_a_hint(name):
    ids_only = planted_dataset()
    cls = get_model_class(name)
    if name in NEED_FEATURES:
        with pytest.raises(DataError, match="no item features") as info:
            cls.check_data(config(name), ids_only)
        assert "--model lightgcn" in str(info.value) and "--model mf" in str(info.value)
        assert "<modality>.features.csv" in str(info.value) and "_feat.npy" in str(info.value)
        with pytest.raises(DataError, match="no item features"):
            cls(config(name), ids_only)
    else:  # an ID-only model: the hint's own suggestions must work
        model = build(name, ids_only)
        assert all(torch.isfinite(v) for v in model.loss(a_batch(ids_only)).values())


def test_state_dict_round_trip_restores_the_scores(name, data):
    model = build(name, data)
    fit_bpr(model, data, epochs=1, lr=0.01)
    expected = scores(model)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # as checkpoints are read
    kept = copy.deepcopy(model.state_dict())  # as the trainer keeps the best epoch
    for state in (saved, kept):
        clone = build(name, data, seed=1)
        params = zip(clone.parameters(), model.parameters(), strict=True)
        assert any(not torch.equal(a, b) for a, b in params)  # loading has work to do
        clone.load_state_dict(state)
        assert torch.equal(scores(clone), expected)


def test_dtype_move_reaches_every_tensor_and_keeps_training(name, data):
    # .double() goes through the same path as .to(device): on CPU it shows that the
    # epoch's state (graphs made by begin_epoch or the first loss) moves with the model
    model = build(name, data)
    fit_bpr(model, data, epochs=1, lr=0.01)
    expected = scores(model)
    model.double()
    for t_name, t in tensors(model):
        assert not t.is_floating_point() or t.dtype == torch.float64, t_name
    torch.testing.assert_close(scores(model), expected.double(), rtol=1e-4, atol=1e-5)
    sum(model.loss(a_batch(data)).values()).backward()  # the same epoch, moved state
    model.float().to("cpu")
    assert all(not t.is_floating_point() or t.dtype == torch.float32 for _, t in tensors(model))
    torch.testing.assert_close(scores(model), expected, rtol=1e-4, atol=1e-5)
    sum(model.loss(a_batch(data)).values()).backward()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_round_trip(name, data):
    model = build(name, data)
    fit_bpr(model, data, epochs=1, lr=0.01)
    expected = scores(model)
    model.to("cuda")
    torch.testing.assert_close(scores(model), expected, rtol=1e-4, atol=1e-5)
    model.begin_epoch(1)  # per-epoch state is made on the model's device
    sum(model.loss(a_batch(data, "cuda")).values()).backward()
    for t_name, t in tensors(model):
        assert t.device.type == "cuda", t_name
    model.to("cpu")
    for t_name, t in tensors(model):
        assert t.device.type == "cpu", t_name
    assert torch.isfinite(scores(model)).all()
    sum(model.loss(a_batch(data)).values()).backward()  # the same epoch, moved state


def test_loss_is_finite_and_reaches_every_trainable_parameter(name, data):
    model = build(name, data)
    model.begin_epoch(0)
    losses = model.loss(a_batch(data))
    assert losses and all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable
    for p_name, p in model.named_parameters():
        if id(p) in trainable:
            assert p.grad is not None and p.grad.abs().sum() > 0, p_name
