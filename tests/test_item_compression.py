"""Latent diffusion over compressed items (L-DiffRec): clustering, autoencoders, generator."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from diffmm.checkpoint import DataRef, load_checkpoint
from diffmm.config import resolve_config
from diffmm.errors import ConfigError
from diffmm.graph_generator import ModalityGraphGenerator
from diffmm.inference import load
from diffmm.item_compression import ItemAutoencoder, interaction_sketch, kmeans, latent_widths
from diffmm.models.diffmm import DiffMM
from diffmm.models.diffmm_config import DiffMMConfig
from diffmm.trainer import train

N_USERS, N_ITEMS, DIM = 30, 20, 6
REPO = Path(__file__).resolve().parents[1]


def interactions(n_users: int = N_USERS, n_items: int = N_ITEMS, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items)) < 0.2
    dense[np.arange(n_users), rng.integers(0, n_items, n_users)] = True  # nobody is empty
    return sp.csr_matrix(dense.astype(np.float32))


def features(n_items: int = N_ITEMS, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n_items, d)).astype(np.float32) for d in (5, 7)]


def config(**kw) -> DiffMMConfig:
    base = dict(
        denoiser_hidden_dims=[16],
        diffusion_batch_size=8,
        rebuild_k=3,
        diffusion_space="latent",
        latent_clusters=3,
        latent_dim=9,
    )
    base.update(kw)
    return DiffMMConfig(**base)


def generator(seed: int = 0, **kw) -> ModalityGraphGenerator:
    torch.manual_seed(seed)
    return ModalityGraphGenerator(config(**kw), interactions(), ["visual", "text"], features())


def targets() -> tuple[torch.Tensor, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    item_emb = torch.randn(N_ITEMS, DIM, generator=gen)
    return item_emb, [torch.randn(N_ITEMS, DIM, generator=gen) for _ in range(2)]


# ----------------------------------------------------------------- clustering
def test_kmeans_finds_the_obvious_clusters_numbered_by_first_item():
    points = torch.tensor(
        [[0.0, 0.0], [10.0, 10.0], [0.0, 1.0], [-5.0, 9.0], [10.0, 11.0], [0.5, 0.5], [-5, 10]]
    )
    labels = kmeans(points, 3, seed=4)
    assert labels.tolist() == [0, 1, 0, 2, 1, 0, 2]


def test_kmeans_is_deterministic_and_never_leaves_a_cluster_empty():
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(kmeans(x, 7, seed=3), kmeans(x.numpy(), 7, seed=3))
    same = torch.zeros(5, 3)  # identical points: the clusters still get an item each
    assert sorted(torch.bincount(kmeans(same, 5)).tolist()) == [1] * 5
    with pytest.raises(ConfigError):
        kmeans(same, 6)


def test_without_features_items_are_clustered_by_who_interacts_with_them():
    dense = np.zeros((20, 10), dtype=np.float32)
    dense[:10, :5] = dense[10:, 5:] = 1  # two groups of users, each with its own items
    labels = kmeans(interaction_sketch(sp.csr_matrix(dense)), 2)
    assert labels.tolist() == [0] * 5 + [1] * 5


def test_latent_widths_follow_the_cluster_sizes_and_sum_to_the_total():
    assert latent_widths(torch.tensor([50, 30, 20]), 10) == [5, 3, 2]
    widths = latent_widths(torch.tensor([997, 2, 1]), 300)
    assert sum(widths) == 300 and min(widths) >= 1 and widths[0] > 290


# ----------------------------------------------------------------- autoencoder
def test_encoder_decoder_shapes_and_gradients():
    labels = kmeans(torch.randn(N_ITEMS, 4, generator=torch.Generator().manual_seed(2)), 3)
    ae = ItemAutoencoder(labels, 11)
    assert sum(ae.widths) == ae.latent_dim == 11 and sum(ae.sizes) == N_ITEMS
    rows = torch.from_numpy(interactions().toarray()[:5]).to_sparse_csr()
    z = ae.encode(rows)
    assert z.shape == (5, 11)
    blocks = ae.decode(z)
    assert [b.shape for b in blocks] == [(5, n) for n in ae.sizes]
    assert ae.scores(blocks).shape == (5, N_ITEMS)
    nll, probabilities, mass = ae.multinomial(blocks, rows)
    assert nll.shape == (5,) and (nll > 0).all()
    torch.testing.assert_close(torch.cat(probabilities, 1).sum(1), torch.ones(5))
    torch.testing.assert_close(mass, rows.to_dense().sum(1))
    nll.sum().backward()
    for name, p in ae.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_encoding_and_nll_match_dense_formulas():
    labels = torch.tensor([1, 0, 1, 2, 0, 2, 2])
    ae = ItemAutoencoder(labels, 5)
    dense = torch.tensor([[1.0, 0, 1, 0, 0, 1, 0], [0, 1, 0, 0, 1, 0, 0]])
    z = ae.encode(dense.to_sparse_csr())
    x = dense / dense.norm(dim=1, keepdim=True)
    expected = torch.cat([enc(x[:, labels == c]) for c, enc in enumerate(ae.encoders)], dim=1)
    torch.testing.assert_close(z, expected)
    blocks = ae.decode(z)
    nll, _, _ = ae.multinomial(blocks, dense.to_sparse_csr())
    log_p = torch.log_softmax(ae.scores(blocks), dim=1)
    torch.testing.assert_close(nll, -(dense * log_p).sum(1))
    top = ae.topk(z, 3)
    assert torch.equal(top.sort(1).values, ae.scores(blocks).topk(3).indices.sort(1).values)


def test_a_loaded_state_brings_its_clustering():
    a = ItemAutoencoder(torch.tensor([0, 0, 1, 1, 1]), 3)
    b = ItemAutoencoder(torch.tensor([1, 1, 0, 0, 0]), 3)  # other cluster sizes
    c = ItemAutoencoder(torch.tensor([0, 1, 1, 0, 1]), 3)  # same sizes, other items
    c.load_state_dict(a.state_dict())
    z = torch.randn(4, 3)
    torch.testing.assert_close(c.scores(c.decode(z)), a.scores(a.decode(z)))
    with pytest.raises(RuntimeError):  # other cluster sizes: the shapes differ
        b.load_state_dict(a.state_dict())


# ----------------------------------------------------------------- generator
def test_training_reports_each_modality_and_lowers_the_reconstruction_loss():
    gen = generator(diffusion_lr=1e-2, elbo_weighting="none")
    users = torch.arange(N_USERS)
    first = gen.train_epoch(users, *targets())
    assert set(first) == {f"{k}_{m}" for k in ("elbo", "msi", "recon") for m in ("visual", "text")}
    for _ in range(30):
        last = gen.train_epoch(users, *targets())
    for name in ("visual", "text"):
        assert last[f"recon_{name}"] < first[f"recon_{name}"]
        assert last[f"msi_{name}"] < first[f"msi_{name}"]


def test_training_updates_denoiser_and_autoencoder_and_their_optimiser_states():
    gen = generator()
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    gen.train_epoch(torch.arange(N_USERS), *targets())
    for key, value in gen.state_dict().items():
        if key.endswith(".labels"):
            assert torch.equal(value, before[key])
        else:
            assert not torch.equal(value, before[key]), key
    states = gen.optimizer_state_dict()
    n_params = len(list(gen.denoisers[0].parameters())) + len(
        list(gen.autoencoders[0].parameters())
    )
    assert len(states) == 2 and len(states[0]["state"]) == n_params
    other = generator(seed=3)
    other.load_optimizer_state_dict(states)
    assert other.optimizer_state_dict()[1]["state"].keys() == states[1]["state"].keys()


def test_same_seed_same_training_and_each_modality_its_own_clusters():
    a, b = generator(seed=5), generator(seed=5)
    for gen in (a, b):
        torch.manual_seed(9)
        gen.train_epoch(torch.arange(N_USERS), *targets())
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert not torch.equal(a.autoencoders[0].labels, a.autoencoders[1].labels)


def test_latent_denoiser_is_far_smaller_than_the_full_row_one():
    n_items = 5000
    train = interactions(40, n_items)

    def n_params(space: str) -> int:
        cfg = config(diffusion_space=space, latent_clusters=2, latent_dim=300)
        cfg.denoiser_hidden_dims = [1000]
        return sum(p.numel() for p in ModalityGraphGenerator(cfg, train, ["v"]).parameters())

    items, latent = n_params("items"), n_params("latent")
    assert items > 10_000_000  # 2 x 5000 x 1000
    assert latent < items / 3  # 2 x 300 x 1000 + 2 x 5000 x 150 (autoencoder)


def test_too_many_clusters_is_refused_in_one_line():
    with pytest.raises(ConfigError) as err:
        ModalityGraphGenerator(
            config(latent_clusters=N_ITEMS + 1, latent_dim=64), interactions(), ["v"]
        )
    message = str(err.value)
    assert "diffmm.latent_clusters = 21" in message and "20 items" in message
    assert "\n" not in message
    with pytest.raises(ValueError, match="latent_dim"):
        config(latent_clusters=10, latent_dim=4)


#: The last revision whose graph generator had the full-row path only.
BEFORE_LATENT = "4716cdf69ce7eefa3931d1aa84981d354f837b45"


def test_full_row_path_is_bitwise_what_it_was():
    """The items path against graph_generator.py before the latent space was added."""
    source = subprocess.run(
        ["git", "show", f"{BEFORE_LATENT}:src/diffmm/graph_generator.py"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    if source.returncode != 0:
        pytest.skip(f"revision {BEFORE_LATENT[:7]} is not in this clone's history (shallow?)")
    assert "diffusion_space" not in source.stdout
    spec = importlib.util.spec_from_loader("head_graph_generator", loader=None)
    old = importlib.util.module_from_spec(spec)
    exec(compile(source.stdout, "<HEAD graph_generator.py>", "exec"), old.__dict__)
    cfg = config(diffusion_space="items")
    gens = []
    for cls in (old.ModalityGraphGenerator, ModalityGraphGenerator):
        torch.manual_seed(0)
        gen = cls(cfg, interactions(), ["visual", "text"])
        torch.manual_seed(1)
        gen.train_epoch(torch.arange(N_USERS), *targets())
        gens.append((gen.state_dict(), gen.generate(torch.arange(N_USERS), 1)))
    (old_state, old_top), (new_state, new_top) = gens
    assert old_state.keys() == new_state.keys()
    assert all(torch.equal(old_state[k], new_state[k]) for k in old_state)
    assert torch.equal(old_top, new_top)


# ----------------------------------------------------------------- DiffMM end to end
DATA = "synthetic:n_users=120,n_items=80,interactions_per_user=10"


def test_diffmm_trains_in_latent_space_and_a_loaded_run_scores_the_same(tmp_path):
    overrides = [
        "train.epochs=2",
        "train.progress=false",
        "diffmm.diffusion_space=latent",
        "diffmm.latent_dim=24",
        "diffmm.denoiser_hidden_dims=[32]",
        "diffmm.diffusion_batch_size=64",
    ]
    cfg = resolve_config("diffmm", overrides=overrides)
    ref = DataRef.of(DATA, "random", cfg.train.seed)
    dataset = ref.load()
    summary = train(cfg, dataset, tmp_path, data_ref=ref)
    assert summary["epochs_run"] == 2 and np.isfinite(summary["test"]["recall@20"])
    best = load_checkpoint(tmp_path / "best.pt")
    assert any(k.startswith("generator.autoencoders.1.") for k in best["model"])
    last = load_checkpoint(tmp_path / "last.pt")
    states = last["model_extra"]["denoiser_optimizers"]
    model = DiffMM(cfg.params, dataset)
    n_params = len(model.generator._trained(0))  # the denoiser's and the autoencoder's
    assert len(states) == 2 and len(states[0]["state"]) == n_params
    first, second = load(tmp_path, device="cpu"), load(tmp_path, device="cpu")
    torch.manual_seed(123)  # a fresh model, other initial weights: all from the checkpoint
    model = DiffMM(cfg.params, dataset)
    model.load_state_dict(best["model"])
    users = torch.arange(10)
    scores = first.model.eval().scores(users)
    torch.testing.assert_close(scores, second.model.eval().scores(users), rtol=0, atol=0)
    torch.testing.assert_close(scores, model.eval().scores(users), rtol=0, atol=0)


def test_diffmm_refuses_more_clusters_than_items():
    cfg = resolve_config(
        "diffmm", overrides=["diffmm.diffusion_space=latent", "diffmm.latent_clusters=81"]
    )
    dataset = DataRef.of(DATA, "random", 0).load()
    with pytest.raises(ConfigError, match="latent_clusters = 81 .* 80 items"):
        DiffMM(cfg.params, dataset)


class _Crash(Exception):
    pass


class _CrashAfterEpoch(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("epoch   1 | "):  # after epoch 1's checkpoint
            raise _Crash


def test_a_resumed_latent_run_ends_exactly_like_an_uninterrupted_one(tmp_path):
    overrides = [
        "train.epochs=3",
        "train.progress=false",
        "diffmm.diffusion_space=latent",
        "diffmm.latent_dim=24",
        "diffmm.denoiser_hidden_dims=[32]",
        "diffmm.diffusion_batch_size=32",  # several Adam steps an epoch
    ]
    cfg = resolve_config("diffmm", overrides=overrides)
    ref = DataRef.of(DATA, "random", cfg.train.seed)
    full = train(cfg, ref.load(), tmp_path / "full", data_ref=ref)
    logger, handler = logging.getLogger("diffmm.trainer"), _CrashAfterEpoch(logging.INFO)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with pytest.raises(_Crash):
            train(cfg, ref.load(), tmp_path / "crashed", data_ref=ref)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    torch.manual_seed(999)
    resumed = train(cfg, ref.load(), tmp_path / "crashed", data_ref=ref, resume=True)
    assert resumed["resumed_after_epochs"] == [1]
    assert resumed["test"] == full["test"]
    logs = [
        (p / "log.jsonl").read_text().splitlines()
        for p in (tmp_path / "full", tmp_path / "crashed")
    ]
    records = [[json.loads(line) for line in log] for log in logs]
    generator_losses = [
        [{k: v for k, v in r["begin_epoch"].items() if not k.startswith("seconds")} for r in run]
        for run in records
    ]
    assert generator_losses[0] == generator_losses[1]
    assert "recon_visual" in generator_losses[0][0]
    assert [r["losses"] for r in records[0]] == [r["losses"] for r in records[1]]
