"""DiffMM's modality graph generator: one denoising diffusion model per modality.

Jiang et al., "DiffMM: Multi-Modal Diffusion Model for Recommendation", ACM MM 2024,
§2.2-2.3. For every modality ``m`` a :class:`~diffmm.diffusion.Denoiser` learns to
reconstruct users' interaction rows ``x0 = a_u`` under the Gaussian diffusion of
:class:`~diffmm.diffusion.GaussianDiffusion`, trained with its own Adam optimiser on

    L^m = L_elbo (eq. 11-13) + λ0 · L_msi^m,
    L_msi^m = mean_d (x̂0 e_m - x0 E_I)²                    (MSI, eq. 14)

where ``e_m`` are the modality's aligned item features and ``E_I`` the item ID
embeddings, both constants here (the recommender passes them in, detached). From the
denoised rows it generates each user's top-``rebuild_k`` items (§2.2.3), from which the
recommender builds the modality's user-item graph ``A^m``.

With ``diffusion_space = "latent"`` the denoisers work as L-DiffRec's (Wang et al.,
"Diffusion Recommender Model", SIGIR 2023, §3.4) on compressed rows: each modality clusters
the items (k-means on its raw features, L2-normalised; on a random sketch of the items'
interaction columns when no features are given) and an
:class:`~diffmm.item_compression.ItemAutoencoder` encodes a row into ``z0`` of width
``latent_dim``. The denoiser, its diffusion and its ELBO work on ``z0``; the decoded
``x̂0`` is scored by the multinomial log-likelihood of the row (weight
``latent_recon_weight``), and MSI compares ``x̂0 e_m`` with ``x0 E_I`` with the decoded
``x̂0 = |x0|_1 softmax(decode(ẑ0))``, an estimate of the row on its scale:

    L^m = L_elbo(z0) + λ0 · L_msi^m(decode(ẑ0)) + λ_r · NLL(x0 | decode(ẑ0))

(L-DiffRec's loss, ELBO + λ · reconstruction, without its KL term: the codes are
deterministic). Each modality's Adam updates its denoiser and its autoencoder. Generation
encodes the row, runs the same sampler in latent space and takes the top-``rebuild_k``
decoded items cluster by cluster, batch by batch (no users × items scores).

Every method works on the users it is given, so that a caller can hand each process a
shard of the users and gather the top-k items (the clusters depend on the items only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from diffmm import distributed, logs
from diffmm.diffusion import Denoiser, GaussianDiffusion
from diffmm.graph import csr_tensor
from diffmm.item_compression import (
    ItemAutoencoder,
    check_latent_clusters,
    interaction_sketch,
    kmeans,
    normalized_rows,
)

if TYPE_CHECKING:
    from diffmm.models.diffmm_config import DiffMMConfig


class ModalityGraphGenerator(nn.Module):
    """The per-modality denoisers of DiffMM, their diffusion and their optimisers.

    Args:
        config: DiffMM's settings (diffusion schedule, denoiser sizes, optimiser,
            batch sizes, MSI weight, ``sampling_steps``, ``rebuild_k``).
        train: the ``(n_users, n_items)`` training interactions: the rows to diffuse.
        modalities: the modalities' names, one denoiser each (they name the statistics).
        item_features: each modality's raw ``(n_items, d_m)`` features, to cluster the
            items on with ``diffusion_space = "latent"`` (default: the interactions'
            sketch, the same clusters for every modality).
    """

    def __init__(
        self,
        config: DiffMMConfig,
        train: sp.csr_matrix,
        modalities: list[str],
        item_features: Sequence[Tensor | np.ndarray] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.n_items = train.shape[1]
        self.modalities = list(modalities)
        self.register_buffer(
            "train_indptr", torch.from_numpy(train.indptr.astype(np.int64)), persistent=False
        )
        self.register_buffer(
            "train_indices", torch.from_numpy(train.indices.astype(np.int64)), persistent=False
        )
        self.diffusion = GaussianDiffusion(
            config.diffusion_steps, config.noise_scale, config.noise_min, config.noise_max
        )
        latent = config.diffusion_space == "latent"
        self.autoencoders = self._autoencoders(train, item_features) if latent else None
        self.denoisers = nn.ModuleList(
            Denoiser(
                config.latent_dim if latent else self.n_items,
                config.denoiser_hidden_dims,
                config.step_embedding_dim,
                config.denoiser_dropout,
            )
            for _ in self.modalities
        )
        self.optimizers = [
            torch.optim.Adam(self._trained(m), lr=config.diffusion_lr, fused=True)
            for m in range(len(self.modalities))
        ]

    def _autoencoders(
        self, train: sp.csr_matrix, item_features: Sequence[Tensor | np.ndarray] | None
    ) -> nn.ModuleList:
        """One :class:`ItemAutoencoder` per modality on its own clustering (seed 0)."""
        cfg = self.config
        check_latent_clusters(cfg.latent_clusters, self.n_items)
        if item_features is None:
            labels = kmeans(interaction_sketch(train), cfg.latent_clusters)
            clusterings = [labels] * len(self.modalities)
        else:
            clusterings = [kmeans(normalized_rows(f), cfg.latent_clusters) for f in item_features]
        return nn.ModuleList(ItemAutoencoder(labels, cfg.latent_dim) for labels in clusterings)

    def _trained(self, modality: int) -> list[nn.Parameter]:
        """What modality ``modality``'s optimiser updates: its denoiser (and autoencoder)."""
        params = list(self.denoisers[modality].parameters())
        if self.autoencoders is not None:
            params += list(self.autoencoders[modality].parameters())
        return params

    # ----------------------------------------------------------------- rows
    def rows(self, users: Tensor) -> Tensor:
        """Training rows of ``users`` as a sparse CSR ``(len(users), n_items)`` batch."""
        start = self.train_indptr[users]
        counts = self.train_indptr[users + 1] - start
        crow = torch.zeros(len(users) + 1, dtype=torch.long, device=users.device)
        crow[1:] = torch.cumsum(counts, 0)
        # position of each entry: its row's start in train_indices + its rank in the row
        offsets = crow[:-1].repeat_interleave(counts)
        rank = torch.arange(int(crow[-1]), device=users.device) - offsets
        cols = self.train_indices[start.repeat_interleave(counts) + rank]
        values = torch.ones(len(cols), device=users.device)
        return csr_tensor(crow, cols, values, (len(users), self.n_items))

    # ----------------------------------------------------------------- training (eq. 11-14)
    def train_epoch(
        self, users: Tensor, item_emb: Tensor, modal_emb: list[Tensor]
    ) -> dict[str, float]:
        """One pass of ELBO + MSI training over ``users`` in random order, each modality.

        ``item_emb`` is ``E_I`` and ``modal_emb[m]`` the aligned features ``e_m`` of MSI
        (eq. 14), both treated as constants. Returns each modality's mean ELBO and MSI
        loss over the batches (``elbo_<name>``, ``msi_<name>``). A progress bar over the
        batches is drawn inside :func:`diffmm.logs.progress_bars` ``(True)``.
        """
        cfg = self.config
        self.denoisers.train()
        latent = self.autoencoders is not None
        if latent:
            self.autoencoders.train()
        totals = torch.zeros(3 if latent else 2, len(self.modalities))
        order = users[torch.randperm(len(users)).to(users.device)]
        n_batches = -(-len(users) // cfg.diffusion_batch_size)
        batches = logs.bar(order.split(cfg.diffusion_batch_size), total=n_batches, desc="diffusion")
        with distributed.rank_rng(users.device), batches:  # in a process group: noise per rank
            for batch in batches:
                mine = batch[distributed.shard(len(batch))]  # the whole batch in one process
                for m, (denoiser, opt) in enumerate(
                    zip(self.denoisers, self.optimizers, strict=True)
                ):
                    if latent:
                        totals[:, m] += self._latent_step(
                            mine, len(batch), m, item_emb, modal_emb[m]
                        )
                        continue
                    totals[:, m] += self._step(
                        mine, len(batch), denoiser, opt, item_emb, modal_emb[m]
                    )
        totals = distributed.all_reduce_sum(totals)
        stats = {}
        for m, name in enumerate(self.modalities):
            stats[f"elbo_{name}"] = float(totals[0, m]) / n_batches
            stats[f"msi_{name}"] = float(totals[1, m]) / n_batches
            if latent:
                stats[f"recon_{name}"] = float(totals[2, m]) / n_batches
        return stats

    def _step(
        self,
        users: Tensor,
        batch_size: int,
        denoiser: Denoiser,
        opt: torch.optim.Optimizer,
        item_emb: Tensor,
        modal_emb: Tensor,
    ) -> Tensor:
        """One Adam step on a batch's mean ELBO + λ0 MSI; returns ``users``' shares of the
        two means (CPU).

        ``users`` are this process's part of a batch of ``batch_size`` users (all of it
        in one process); the gradients are summed over the processes before the step.
        The loss is accumulated chunk by chunk (``diffusion_chunk_size`` users).
        """
        cfg = self.config
        sums = torch.zeros(2)
        for chunk in users.split(cfg.diffusion_chunk_size):
            x0 = self.rows(chunk).to_dense()
            elbo, x0_hat = self.diffusion.training_loss(denoiser, x0, cfg.elbo_weighting)
            msi = (x0_hat @ modal_emb - x0 @ item_emb).pow(2).mean(dim=1)
            ((elbo.sum() + cfg.msi_weight * msi.sum()) / batch_size).backward()
            sums += torch.stack([elbo.sum().detach(), msi.sum().detach()]).cpu()
        distributed.all_reduce_grads(denoiser.parameters())
        opt.step()
        opt.zero_grad(set_to_none=True)  # also frees the gradient memory
        return sums / batch_size

    def _latent_step(
        self, users: Tensor, batch_size: int, m: int, item_emb: Tensor, modal_emb: Tensor
    ) -> Tensor:
        """:meth:`_step` in latent space: one Adam step on the batch's mean latent ELBO +
        λ0 MSI (on the decoded rows) + λ_r reconstruction NLL; returns the three means."""
        cfg = self.config
        denoiser, autoencoder, opt = self.denoisers[m], self.autoencoders[m], self.optimizers[m]
        modal_blocks = autoencoder.item_blocks(modal_emb)
        sums = torch.zeros(3)
        for chunk in users.split(cfg.diffusion_chunk_size):
            rows = self.rows(chunk)
            elbo, z0_hat = self.diffusion.training_loss(
                denoiser, autoencoder.encode(rows), cfg.elbo_weighting
            )
            recon, p_hat, mass = autoencoder.multinomial(autoencoder.decode(z0_hat), rows)
            # x̂0 e_m with x̂0 = |x0|_1 softmax(decoded): the mass applied after the product
            modal = sum(p @ e for p, e in zip(p_hat, modal_blocks, strict=True))
            msi = (mass[:, None] * modal - rows @ item_emb).pow(2).mean(dim=1)
            losses = torch.stack([elbo.sum(), msi.sum(), recon.sum()])
            weights = losses.new_tensor([1.0, cfg.msi_weight, cfg.latent_recon_weight])
            ((losses * weights).sum() / batch_size).backward()
            sums += losses.detach().cpu()
        distributed.all_reduce_grads(self._trained(m))
        opt.step()
        opt.zero_grad(set_to_none=True)
        return sums / batch_size

    # ----------------------------------------------------------------- generation (§2.2.3)
    @torch.no_grad()
    def denoise(self, users: Tensor, modality: int) -> Tensor:
        """The denoised rows of ``users`` for one modality, ``(len(users), n_items)``
        (in latent space: the decoded item scores, logits)."""
        denoiser = self.denoisers[modality].eval()
        if self.autoencoders is None:
            return self.diffusion.sample(denoiser, self.rows(users), self.config.sampling_steps)
        autoencoder = self.autoencoders[modality].eval()
        latent = self.diffusion.sample(
            denoiser, autoencoder.encode(self.rows(users)), self.config.sampling_steps
        )
        return autoencoder.scores(autoencoder.decode(latent))

    @torch.no_grad()
    def generate(self, users: Tensor, modality: int) -> Tensor:
        """Top-``rebuild_k`` items of each user's denoised row, ``(len(users), k)``.

        In batches of ``diffusion_batch_size`` users (one sampler: the denoiser's weight
        products are formed once), with a progress bar inside
        :func:`diffmm.logs.progress_bars` ``(True)``.
        """
        cfg = self.config
        denoiser = self.denoisers[modality].eval()
        sample = self.diffusion.sampler(denoiser, cfg.sampling_steps)
        n_batches = -(-len(users) // cfg.diffusion_batch_size)
        desc = f"graphs {self.modalities[modality]}"
        with logs.bar(users.split(cfg.diffusion_batch_size), total=n_batches, desc=desc) as bar:
            if self.autoencoders is not None:
                autoencoder = self.autoencoders[modality].eval()
                return torch.cat(
                    [
                        autoencoder.topk(sample(autoencoder.encode(self.rows(b))), cfg.rebuild_k)
                        for b in bar
                    ]
                )
            return torch.cat(
                [
                    torch.topk(sample(self.rows(batch)), cfg.rebuild_k, dim=1).indices
                    for batch in bar
                ]
            )

    # ----------------------------------------------------------------- optimiser state
    def optimizer_state_dict(self) -> list[dict[str, Any]]:
        """The denoisers' (and autoencoders') Adam states, one per modality (checkpoints)."""
        return [opt.state_dict() for opt in self.optimizers]

    def load_optimizer_state_dict(self, states: list[dict[str, Any]]) -> None:
        """Restore what :meth:`optimizer_state_dict` returned."""
        for opt, state in zip(self.optimizers, states, strict=True):
            opt.load_state_dict(state)
