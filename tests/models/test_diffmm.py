"""DiffMM on tiny hand-made data: shapes, gradient flow, variants, state."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from diffmm.data.dataset import Dataset
from diffmm.graph import topk_bipartite
from diffmm.models.base import Batch
from diffmm.models.diffmm import DiffMM, DiffMMConfig


def tiny_dataset(n_modalities: int = 2, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    n_users, n_items = 30, 20
    dense = rng.random((n_users, n_items)) < 0.2
    dense[np.arange(n_users), rng.integers(0, n_items, n_users)] = True  # nobody is empty
    train = sp.csr_matrix(dense.astype(np.float32))
    valid = sp.csr_matrix((n_users, n_items), dtype=np.float32)
    feats = {
        f"m{i}": rng.normal(size=(n_items, 8 + i)).astype(np.float32) for i in range(n_modalities)
    }
    return Dataset("tiny", n_users, n_items, train, valid, valid.copy(), feats)


def small_config(**kw) -> DiffMMConfig:
    base = dict(denoiser_hidden_dims=[16], embedding_dim=8, diffusion_batch_size=8)
    base.update(kw)
    return DiffMMConfig(**base)


def a_batch(ds: Dataset, n: int = 12) -> Batch:
    coo = ds.train.tocoo()
    return Batch(
        torch.from_numpy(coo.row[:n]).long(),
        torch.from_numpy(coo.col[:n]).long(),
        torch.randint(0, ds.n_items, (n,)),
    )


@pytest.mark.parametrize("n_modalities", [1, 2, 3])
def test_shapes_for_any_number_of_modalities(n_modalities):
    torch.manual_seed(0)
    ds = tiny_dataset(n_modalities)
    model = DiffMM(small_config(), ds)
    stats = model.begin_epoch(0)
    assert len(model.modality_graphs) == n_modalities
    assert all(g.shape == (50, 50) for g in model.modality_graphs)
    assert {f"elbo_m{i}" for i in range(n_modalities)} <= set(stats)
    users, items = model.embeddings()
    assert users.shape == (30, 8) and items.shape == (20, 8)
    assert model.scores(torch.tensor([0, 3])).shape == (2, 20)
    losses = model.loss(a_batch(ds))
    assert set(losses) == {"bpr", "l2", "cl"}
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("cl_anchor", ["main", "modality"])
def test_loss_reaches_every_recommender_parameter_and_no_denoiser(cl_anchor):
    torch.manual_seed(0)
    ds = tiny_dataset(2)
    model = DiffMM(small_config(cl_anchor=cl_anchor, trans="linear"), ds)
    model.begin_epoch(0)
    sum(model.loss(a_batch(ds)).values()).backward()
    for name, p in model.named_parameters():
        if name.startswith("generator."):
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    trainable = {id(p) for p in model.trainable_parameters()}
    assert not any(id(p) in trainable for p in model.generator.parameters())


@pytest.mark.parametrize("negatives", ["batch", "sampled"])
def test_estimated_contrastive_negatives_train_every_recommender_parameter(negatives):
    torch.manual_seed(0)
    ds = tiny_dataset(2)
    config = small_config(contrastive_negatives=negatives, sampled_negatives=5)
    model = DiffMM(config, ds)
    model.begin_epoch(0)
    losses = model.loss(a_batch(ds))
    assert set(losses) == {"bpr", "l2", "cl"} and torch.isfinite(losses["cl"])
    sum(losses.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.trainable_parameters())
    # the same BPR and L2 as the authors' all-node negatives: only the InfoNCE differs
    torch.manual_seed(0)
    exact = DiffMM(small_config(), ds)
    exact.begin_epoch(0)
    reference = exact.loss(a_batch(ds))
    for name in ("bpr", "l2"):
        torch.testing.assert_close(losses[name], reference[name])
    assert not torch.isclose(losses["cl"], reference["cl"])


def test_epoch_phases_train_the_generator_then_regenerate_the_graphs():
    torch.manual_seed(0)
    ds = tiny_dataset(2)
    model = DiffMM(small_config(), ds)
    phases = model.epoch_phases(1)
    assert [name for name, _ in phases] == ["diffusion", "graphs"]
    stats = phases[0][1]()
    assert set(stats) == {"elbo_m0", "msi_m0", "elbo_m1", "msi_m1"}
    assert not model.modality_graphs  # no graphs before the second phase
    assert phases[1][1]() == {} and len(model.modality_graphs) == 2
    # begin_epoch: the same phases in the same order, with the same random draws
    torch.manual_seed(0)
    again = DiffMM(small_config(), ds)
    assert again.begin_epoch(1) == stats
    for a, b in zip(again.modality_graphs, model.modality_graphs, strict=True):
        assert torch.equal(a.to_dense(), b.to_dense())


def test_diffusion_users_per_epoch_trains_a_fresh_sample_of_users(monkeypatch):
    torch.manual_seed(0)
    ds = tiny_dataset(1)
    seen: list[torch.Tensor] = []
    for sample in (7, None):
        model = DiffMM(small_config(diffusion_users_per_epoch=sample), ds)
        monkeypatch.setattr(model.generator, "train_epoch", lambda users, *_: seen.append(users))
        model.train_generator()
        model.train_generator()
    first, second, whole, _ = seen
    assert len(first) == len(second) == 7 and not torch.equal(first, second)
    assert len(set(first.tolist())) == 7 and first.max() < ds.n_users
    assert torch.equal(whole, torch.arange(ds.n_users))


def test_diffusion_phase_updates_the_generator_only():
    torch.manual_seed(0)
    ds = tiny_dataset(2)
    model = DiffMM(small_config(trans="parametric"), ds)
    before = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    model.train_generator()
    after = model.state_dict()
    for key, value in before.items():
        changed = not torch.equal(value, after[key])
        assert changed == key.startswith("generator.denoisers."), key
    # MSI treats item embeddings and features as constants: no gradient reaches them.
    assert model.item_emb.grad is None
    assert all(p.grad is None for p in model.trans.parameters())


def test_generated_graph_links_each_user_to_its_generated_items():
    torch.manual_seed(0)
    ds = tiny_dataset(1)
    model = DiffMM(small_config(keep_rate=1.0, rebuild_k=2), ds)
    graph = model.generate_graphs()[0].to_dense()
    users = torch.arange(ds.n_users)
    top = model.generator.generate(users, 0)
    # Each user is linked to exactly its top-k items (plus its self-loop).
    linked = graph[: ds.n_users, ds.n_users :] > 0
    assert (linked.sum(1) == 2).all()
    assert linked[users[:, None], top].all()
    assert torch.allclose(graph, graph.T)  # symmetric before edge dropout


def test_edge_dropout_of_generated_graph_keeps_about_keep_rate():
    torch.manual_seed(0)
    ds = tiny_dataset(1)
    full = DiffMM(small_config(keep_rate=1.0), ds).generate_graphs()[0]
    torch.manual_seed(0)
    half = DiffMM(small_config(keep_rate=0.5), ds).generate_graphs()[0]
    ratio = half.values().numel() / full.values().numel()
    assert 0.3 < ratio < 0.7
    assert torch.allclose(half.values().max(), 2 * full.values().max(), rtol=0.5)


def test_without_diffusion_graph_uses_random_training_subgraph_and_skips_denoisers():
    torch.manual_seed(0)
    ds = tiny_dataset(2)
    model = DiffMM(small_config(diffusion_graph_ratio=0.0, keep_rate=1.0), ds)
    before = model.generator.denoisers[0].input_weight.clone()
    stats = model.begin_epoch(0)
    assert not any(k.startswith("elbo") for k in stats)
    assert torch.equal(before, model.generator.denoisers[0].input_weight)
    ui = model.modality_graphs[0].to_dense()[: ds.n_users, ds.n_users :] > 0
    train = torch.from_numpy(ds.train.toarray()) > 0
    assert (ui & ~train).sum() == 0  # only training edges
    assert 0 < ui.sum() < train.sum()


def test_fused_graph_mixes_both_sources():
    """Paper Fig. 4: A^m = ratio * generated + (1 - ratio) * random, value by value."""
    torch.manual_seed(0)
    ds = tiny_dataset(1)
    ratio = 0.3  # not 0.5: swapping the two weights must show
    model = DiffMM(small_config(diffusion_graph_ratio=ratio, keep_rate=1.0), ds)
    users = torch.arange(ds.n_users)
    torch.manual_seed(1)  # the random graph is drawn first, then the denoised rows
    random = model._random_graph().to_dense()
    items = model.generator.generate(users, 0).reshape(-1)
    generated = topk_bipartite(
        users.repeat_interleave(model.config.rebuild_k), items, ds.n_users, ds.n_items
    ).to_dense()
    assert not torch.allclose(generated, random)
    torch.manual_seed(1)
    graph = model.generate_graphs()[0]
    assert graph.layout == torch.sparse_csr
    torch.testing.assert_close(graph.to_dense(), ratio * generated + (1 - ratio) * random)


def test_variants_without_cl_and_msi():
    torch.manual_seed(0)
    ds = tiny_dataset(2)
    model = DiffMM(small_config(cl_weight=0.0, msi_weight=0.0), ds)
    model.begin_epoch(0)
    assert set(model.loss(a_batch(ds))) == {"bpr", "l2"}


@pytest.mark.parametrize("n_modalities", [2, 3])
@pytest.mark.parametrize("cl_anchor", ["main", "modality"])
def test_loss_equals_bpr_and_info_nce_written_out(cl_anchor, n_modalities):
    """BPR and eq. 18-19 computed anchor by anchor, repeated draws included, in float64."""
    torch.manual_seed(0)
    ds = tiny_dataset(n_modalities)
    model = DiffMM(small_config(cl_anchor=cl_anchor, cl_weight=0.3, temperature=0.4), ds)
    model.set_modality_graphs(model.generate_graphs())
    model.double()
    batch = a_batch(ds, n=16)
    batch = Batch(  # repeated users and items: each draw counts once
        torch.cat([batch.users, batch.users[:3]]),
        torch.cat([batch.pos_items, batch.pos_items[:3]]),
        torch.cat([batch.neg_items, batch.neg_items[:3]]),
    )
    params = model.trainable_parameters()  # ID embeddings, Trans, κ

    main, views = model._forward(with_views=True)
    users, items = main[: ds.n_users], main[ds.n_users :]
    u = users[batch.users]
    margin = (u * items[batch.neg_items]).sum(1) - (u * items[batch.pos_items]).sum(1)
    bpr = torch.nn.functional.softplus(margin).mean()

    def nce(anchor: torch.Tensor, other: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        a = torch.nn.functional.normalize(anchor)
        o = torch.nn.functional.normalize(other)
        terms = [-torch.log_softmax(a[n] @ o.T / 0.4, 0)[n] for n in nodes.tolist()]
        return torch.stack(terms).mean()

    if cl_anchor == "main":
        pairs = [(main, v) for v in views]
    else:
        pairs = [
            (views[a], views[b]) for a in range(n_modalities) for b in range(a + 1, n_modalities)
        ]
    cl = 0.0
    for anchor, other in pairs:
        cl = cl + nce(anchor[: ds.n_users], other[: ds.n_users], batch.users)
        cl = cl + nce(anchor[ds.n_users :], other[ds.n_users :], batch.pos_items)
    expected = {"bpr": bpr, "cl": 0.3 * cl}

    losses = model.loss(batch)
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], value)
        torch.testing.assert_close(
            torch.autograd.grad(losses[name], params, retain_graph=True, materialize_grads=True),
            torch.autograd.grad(value, params, retain_graph=True, materialize_grads=True),
        )


def _fit(name: str, dataset, overrides: list[str]) -> dict:
    from diffmm.config import resolve_config
    from diffmm.trainer import train

    config = resolve_config(name, overrides=["train.progress=false", *overrides])
    return train(config, dataset, None)


@pytest.mark.slow
def test_diffmm_beats_mf_when_features_are_informative_and_is_deterministic():
    from diffmm.data import make_synthetic

    ds = make_synthetic(n_users=300, n_items=200, interactions_per_user=15, seed=1)
    common = ["train.epochs=12", "train.patience=12", "train.batch_size=512"]
    small = ["denoiser_hidden_dims=[64]", "diffusion_batch_size=256"]
    mf = _fit("mf", ds, [*common, "train.lr=0.01"])
    first = _fit("diffmm", ds, [*common, *small, "cl_anchor=main"])
    assert first["test"]["recall@20"] > mf["test"]["recall@20"] + 0.02
    second = _fit("diffmm", ds, [*common, *small, "cl_anchor=main"])
    assert second["test"] == first["test"] and second["best_epoch"] == first["best_epoch"]


def test_recommender_loss_falls_during_training(tmp_path):
    import json

    from diffmm.config import resolve_config
    from diffmm.data import make_synthetic
    from diffmm.trainer import train

    ds = make_synthetic(n_users=200, n_items=150, interactions_per_user=12, seed=2)
    config = resolve_config(
        "diffmm", overrides=["train.epochs=6", "train.progress=false", "denoiser_hidden_dims=[32]"]
    )
    train(config, ds, tmp_path)
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    bpr = [r["losses"]["bpr"] for r in log]
    assert bpr[-1] < bpr[0]


@pytest.mark.parametrize("n_modalities", [1, 3])
def test_aggregation_and_views_follow_equations_20_to_23(n_modalities):
    """The fused forward pass equals eq. 20-23 written out per modality with dense matrices."""
    torch.manual_seed(0)
    ds = tiny_dataset(n_modalities)
    model = DiffMM(small_config(n_layers=2, trans="linear"), ds)
    model.set_modality_graphs(model.generate_graphs())
    model.double()  # converts the generated graphs too
    with torch.no_grad():
        model.modality_logits.copy_(torch.randn(n_modalities))
    adj = model.adj.to_dense()
    n_users, cfg = ds.n_users, model.config
    ego = torch.cat([model.user_emb, model.item_emb])

    def propagate(x: torch.Tensor) -> torch.Tensor:  # Σ_{l=0..L} Â^l x
        return sum(torch.linalg.matrix_power(adj, layer) @ x for layer in range(3))

    weights = torch.softmax(model.modality_logits, 0)
    z0, views = 0, []
    for m, feats in enumerate(model.aligned_features()):
        graph = model.modality_graphs[m].to_dense()
        user_feat = torch.cat([model.user_emb, torch.nn.functional.normalize(feats)])
        h = adj @ user_feat
        h2 = adj @ torch.cat([h[:n_users], model.item_emb])
        z0 = z0 + weights[m] * (h + h2 + cfg.generated_graph_weight * graph @ ego)
        views.append(propagate(graph @ user_feat))
    main = propagate(z0) + cfg.residual_weight * torch.nn.functional.normalize(z0)

    got_main, got_views = model._forward(with_views=True)
    torch.testing.assert_close(got_main, main)
    for got, expected in zip(got_views, views, strict=True):
        torch.testing.assert_close(got, expected)


def test_whole_scoring_graphs_score_in_eval_mode_and_train_on_dropped_ones():
    torch.manual_seed(0)
    ds = tiny_dataset(2)
    model = DiffMM(small_config(scoring_graph="whole", keep_rate=0.5), ds)
    model.begin_epoch(0)
    whole, dropped = model.scoring_graphs, model.modality_graphs
    for w, d in zip(whole, dropped, strict=True):
        assert d._nnz() < w._nnz()  # dropped: a subset of the entries, scaled by 2
        torch.testing.assert_close(w.to_dense(), w.to_dense().T)
    model.eval()
    with torch.no_grad():
        scored = model.scores(torch.arange(5))
        reference = DiffMM(small_config(), ds)
        reference.load_state_dict(model.state_dict())
        reference.set_modality_graphs(whole)  # train-mode graphs = the whole ones
        torch.testing.assert_close(scored, reference.eval().scores(torch.arange(5)))
        model.train()
        assert not torch.allclose(model.scores(torch.arange(5)), scored)  # dropped graphs
    clone = DiffMM(small_config(scoring_graph="whole"), ds)
    clone.load_state_dict(copy.deepcopy(model.state_dict()))
    with torch.no_grad():
        torch.testing.assert_close(clone.eval().scores(torch.arange(5)), scored)
