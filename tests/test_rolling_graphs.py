"""graph_users_per_epoch: generated rows refreshed for a rolling share of the users."""

from __future__ import annotations

import pytest
import torch

from diffmm.models.diffmm import DiffMM
from diffmm.rolling_graphs import RollingTopK
from models.test_diffmm import small_config, tiny_dataset


def test_every_user_is_refreshed_once_per_stride_of_epochs():
    rolling = RollingTopK(n_users=10, n_modalities=1, k=2, users_per_epoch=4)
    assert rolling.stride == 3
    due = [rolling.users_due(epoch).tolist() for epoch in (3, 4, 5, 6)]
    assert due == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8], [0, 3, 6, 9]]
    assert RollingTopK(10, 1, 2, users_per_epoch=10).users_due(7).tolist() == list(range(10))


def test_users_not_yet_generated_keep_their_training_edges():
    rolling = RollingTopK(n_users=3, n_modalities=2, k=2, users_per_epoch=1)
    train_users, train_items = torch.tensor([0, 1, 1, 2]), torch.tensor([5, 6, 7, 8])
    rolling.update(0, torch.tensor([1]), torch.tensor([[0, 3]]))
    users, items = rolling.edges(0, train_users, train_items)
    assert sorted(zip(users.tolist(), items.tolist(), strict=True)) == [
        (0, 5), (1, 0), (1, 3), (2, 8)
    ]  # fmt: skip
    # the other modality has generated nothing: the training graph
    users, items = rolling.edges(1, train_users, train_items)
    assert sorted(zip(users.tolist(), items.tolist(), strict=True)) == [
        (0, 5), (1, 6), (1, 7), (2, 8)
    ]  # fmt: skip


def test_state_round_trips_and_refuses_other_shapes():
    rolling = RollingTopK(4, 1, 2, 2)
    rolling.update(0, torch.tensor([0, 2]), torch.tensor([[1, 2], [3, 4]]))
    other = RollingTopK(4, 1, 2, 2)
    other.load_state_dict(rolling.state_dict())
    assert torch.equal(other.tables[0], rolling.tables[0])
    with pytest.raises(ValueError, match="rebuild_k"):
        RollingTopK(4, 1, 3, 2).load_state_dict(rolling.state_dict())


def test_diffmm_generates_only_the_users_due_and_keeps_the_rest(monkeypatch):
    ds = tiny_dataset(1)  # 30 users
    model = DiffMM(small_config(keep_rate=1.0, rebuild_k=2, graph_users_per_epoch=10), ds)
    asked: list[list[int]] = []
    generate = model.generator.generate

    def spy(users, m):
        asked.append(users.tolist())
        return generate(users, m)

    monkeypatch.setattr(model.generator, "generate", spy)
    model.regenerate_graphs(epoch=1)
    assert asked == [list(range(1, 30, 3))]  # 10 users, not 30: the cost of the phase
    linked = model.modality_graphs[0].to_dense()[: ds.n_users, ds.n_users :] > 0
    train = torch.from_numpy(ds.train.toarray() > 0)
    due = torch.zeros(ds.n_users, dtype=torch.bool)
    due[asked[0]] = True
    assert (linked[due].sum(1) == 2).all()  # the generated top-2
    assert torch.equal(linked[~due], train[~due])  # the others: their training edges
    table = model.rolling.tables[0].clone()
    model.regenerate_graphs(epoch=2)
    assert asked[1] == list(range(2, 30, 3))
    kept = ~torch.isin(torch.arange(ds.n_users), torch.tensor(asked[1]))
    assert torch.equal(model.rolling.tables[0][kept], table[kept])  # epoch 1's rows stay
    # the model's state carries the rows (a resumed run needs them)
    fresh = DiffMM(small_config(keep_rate=1.0, rebuild_k=2, graph_users_per_epoch=10), ds)
    fresh.set_extra_state(model.get_extra_state())
    assert torch.equal(fresh.rolling.tables[0], model.rolling.tables[0])


def test_a_share_of_every_user_is_the_paper_every_epoch():
    ds = tiny_dataset(2)
    graphs = []
    for share in (None, ds.n_users):
        torch.manual_seed(0)
        model = DiffMM(small_config(graph_users_per_epoch=share), ds)
        model.begin_epoch(1)
        graphs.append([g.to_dense() for g in model.modality_graphs])
    for a, b in zip(*graphs, strict=True):
        assert torch.equal(a, b)
