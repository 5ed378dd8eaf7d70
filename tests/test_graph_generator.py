"""DiffMM's modality graph generator as a unit: training, generation, users, state."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from diffmm.graph_generator import ModalityGraphGenerator
from diffmm.models.diffmm_config import DiffMMConfig

N_USERS, N_ITEMS, DIM = 30, 20, 6


def interactions(seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = rng.random((N_USERS, N_ITEMS)) < 0.2
    dense[np.arange(N_USERS), rng.integers(0, N_ITEMS, N_USERS)] = True  # nobody is empty
    return sp.csr_matrix(dense.astype(np.float32))


def config(**kw) -> DiffMMConfig:
    base = dict(denoiser_hidden_dims=[16], diffusion_batch_size=8, rebuild_k=3)
    base.update(kw)
    return DiffMMConfig(**base)


def targets(n_modalities: int = 2) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """MSI targets: item embeddings and aligned features (constants for the generator)."""
    gen = torch.Generator().manual_seed(1)
    item_emb = torch.randn(N_ITEMS, DIM, generator=gen)
    return item_emb, [torch.randn(N_ITEMS, DIM, generator=gen) for _ in range(n_modalities)]


def generator(train: sp.csr_matrix | None = None, seed: int = 0, **kw) -> ModalityGraphGenerator:
    torch.manual_seed(seed)
    train = interactions() if train is None else train
    return ModalityGraphGenerator(config(**kw), train, ["visual", "text"])


def weights(gen: ModalityGraphGenerator) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in gen.state_dict().items()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_rows_are_the_users_training_rows():
    train = interactions()
    users = torch.tensor([4, 0, 29, 4])
    rows = generator(train).rows(users)
    assert rows.layout == torch.sparse_csr
    np.testing.assert_array_equal(rows.to_dense().numpy(), train[users.numpy()].toarray())


def test_training_lowers_the_loss_and_reports_each_modality():
    gen = generator(diffusion_lr=1e-2, elbo_weighting="none")
    item_emb, modal_emb = targets()
    users = torch.arange(N_USERS)
    first = gen.train_epoch(users, item_emb, modal_emb)
    assert set(first) == {"elbo_visual", "msi_visual", "elbo_text", "msi_text"}
    assert all(np.isfinite(v) and v > 0 for v in first.values())
    for _ in range(30):
        last = gen.train_epoch(users, item_emb, modal_emb)
    for name in ("visual", "text"):
        assert last[f"elbo_{name}"] < first[f"elbo_{name}"]
        assert last[f"msi_{name}"] < first[f"msi_{name}"]


def test_msi_weight_changes_what_is_learned():
    item_emb, modal_emb = targets()
    users = torch.arange(N_USERS)
    trained = []
    for msi_weight in (0.0, 1.0):
        gen = generator(msi_weight=msi_weight)
        torch.manual_seed(5)
        gen.train_epoch(users, item_emb, modal_emb)
        trained.append(gen.denoisers[0].input_weight)
    assert not torch.equal(*trained)


#: The generator's item spaces: whole rows (the paper), and L-DiffRec's latent codes.
SPACES = {"items": {}, "latent": dict(diffusion_space="latent", latent_clusters=3, latent_dim=9)}


@pytest.mark.parametrize("space", list(SPACES))
def test_generate_gives_k_distinct_items_per_user_from_the_denoised_rows(space):
    gen = generator(**SPACES[space])
    gen.train_epoch(torch.arange(N_USERS), *targets())
    users = torch.tensor([3, 17, 0, 29, 8, 11, 5, 2, 21, 9])  # more than one batch of 8
    for m in range(2):
        top = gen.generate(users, m)
        assert top.shape == (len(users), 3) and top.dtype == torch.long
        assert ((top >= 0) & (top < N_ITEMS)).all()
        assert all(len(set(row.tolist())) == 3 for row in top)
        expected = torch.topk(gen.denoise(users, m), 3, dim=1).indices
        assert torch.equal(top.sort(1).values, expected.sort(1).values)
        if space == "items":  # the same as denoising all the users' dense rows at once
            rows = gen.diffusion.sample(gen.denoisers[m].eval(), gen.rows(users).to_dense())
            torch.testing.assert_close(gen.denoise(users, m), rows)


@pytest.mark.parametrize("space", list(SPACES))
def test_generation_depends_on_each_users_own_row_only(space):
    gen = generator(**SPACES[space])
    everyone = gen.generate(torch.arange(N_USERS), 1)
    shard = torch.tensor([7, 2, 19])
    assert torch.equal(gen.generate(shard, 1), everyone[shard])


def test_training_on_some_users_reads_only_their_rows():
    """A shard's pass is the same whatever the other users' rows hold."""
    train = interactions()
    shard = torch.tensor([1, 5, 6, 12, 20, 27])
    others = np.setdiff1d(np.arange(N_USERS), shard.numpy())
    changed_others = train.tolil()
    changed_others[others] = interactions(seed=9)[others]
    changed_shard = train.tolil()
    changed_shard[shard.numpy()] = interactions(seed=9)[shard.numpy()]
    item_emb, modal_emb = targets()

    def trained(matrix: sp.spmatrix) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        gen = generator(sp.csr_matrix(matrix))
        torch.manual_seed(3)
        stats = gen.train_epoch(shard, item_emb, modal_emb)
        return stats, weights(gen)

    stats, reference = trained(train)
    other_stats, other_weights = trained(changed_others)
    assert other_stats == stats
    assert_same_weights(other_weights, reference)
    _, shard_weights = trained(changed_shard)  # the shard's own rows do matter
    assert not torch.equal(
        shard_weights["denoisers.0.input_weight"], reference["denoisers.0.input_weight"]
    )


def test_same_seed_same_training_and_graphs():
    def run(seed: int) -> tuple[dict[str, float], torch.Tensor]:
        gen = generator(sampling_steps=2)
        torch.manual_seed(seed)
        stats = gen.train_epoch(torch.arange(N_USERS), *targets())
        return stats, gen.generate(torch.arange(N_USERS), 0)

    (s1, g1), (s2, g2), (s3, _) = run(4), run(4), run(5)
    assert s1 == s2 and torch.equal(g1, g2)
    assert s3 != s1


def test_optimiser_state_round_trip_continues_training_identically():
    item_emb, modal_emb = targets()
    users = torch.arange(N_USERS)
    gen = generator()
    gen.train_epoch(users, item_emb, modal_emb)
    saved = copy.deepcopy((gen.state_dict(), gen.optimizer_state_dict()))

    clone = generator(seed=99)  # other initial weights, fresh optimisers
    clone.load_state_dict(saved[0])
    clone.load_optimizer_state_dict(saved[1])
    fresh = generator(seed=99)
    fresh.load_state_dict(saved[0])  # the weights without the Adam moments
    for g in (gen, clone, fresh):
        torch.manual_seed(6)
        g.train_epoch(users, item_emb, modal_emb)
    assert_same_weights(weights(clone), weights(gen))
    assert not torch.equal(fresh.denoisers[0].input_weight, gen.denoisers[0].input_weight)


def test_optimiser_state_of_another_size_is_refused():
    gen = generator()
    with pytest.raises(ValueError):
        gen.load_optimizer_state_dict(gen.optimizer_state_dict()[:1])
