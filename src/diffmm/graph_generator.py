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

Every method works on the users it is given, so that a caller can hand each process a
shard of the users and gather the top-k items.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from diffmm import distributed, logs
from diffmm.diffusion import Denoiser, GaussianDiffusion
from diffmm.graph import csr_tensor

if TYPE_CHECKING:
    from diffmm.models.diffmm_config import DiffMMConfig


class ModalityGraphGenerator(nn.Module):
    """The per-modality denoisers of DiffMM, their diffusion and their optimisers.

    Args:
        config: DiffMM's settings (diffusion schedule, denoiser sizes, optimiser,
            batch sizes, MSI weight, ``sampling_steps``, ``rebuild_k``).
        train: the ``(n_users, n_items)`` training interactions: the rows to diffuse.
        modalities: the modalities' names, one denoiser each (they name the statistics).
    """

    def __init__(self, config: DiffMMConfig, train: sp.csr_matrix, modalities: list[str]) -> None:
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
        self.denoisers = nn.ModuleList(
            Denoiser(
                self.n_items,
                config.denoiser_hidden_dims,
                config.step_embedding_dim,
                config.denoiser_dropout,
            )
            for _ in self.modalities
        )
        self.optimizers = [
            torch.optim.Adam(d.parameters(), lr=config.diffusion_lr, fused=True)
            for d in self.denoisers
        ]

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
        totals = torch.zeros(2, len(self.modalities))
        order = users[torch.randperm(len(users)).to(users.device)]
        n_batches = -(-len(users) // cfg.diffusion_batch_size)
        batches = logs.bar(order.split(cfg.diffusion_batch_size), total=n_batches, desc="diffusion")
        with distributed.rank_rng(users.device), batches:  # in a process group: noise per rank
            for batch in batches:
                mine = batch[distributed.shard(len(batch))]  # the whole batch in one process
                for m, (denoiser, opt) in enumerate(
                    zip(self.denoisers, self.optimizers, strict=True)
                ):
                    totals[:, m] += self._step(
                        mine, len(batch), denoiser, opt, item_emb, modal_emb[m]
                    )
        totals = distributed.all_reduce_sum(totals)
        stats = {}
        for m, name in enumerate(self.modalities):
            stats[f"elbo_{name}"] = float(totals[0, m]) / n_batches
            stats[f"msi_{name}"] = float(totals[1, m]) / n_batches
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

    # ----------------------------------------------------------------- generation (§2.2.3)
    @torch.no_grad()
    def denoise(self, users: Tensor, modality: int) -> Tensor:
        """The denoised rows of ``users`` for one modality, ``(len(users), n_items)``."""
        denoiser = self.denoisers[modality].eval()
        return self.diffusion.sample(denoiser, self.rows(users), self.config.sampling_steps)

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
            return torch.cat(
                [
                    torch.topk(sample(self.rows(batch)), cfg.rebuild_k, dim=1).indices
                    for batch in bar
                ]
            )

    # ----------------------------------------------------------------- optimiser state
    def optimizer_state_dict(self) -> list[dict[str, Any]]:
        """The denoisers' Adam states, one per modality (for checkpoints)."""
        return [opt.state_dict() for opt in self.optimizers]

    def load_optimizer_state_dict(self, states: list[dict[str, Any]]) -> None:
        """Restore what :meth:`optimizer_state_dict` returned."""
        for opt, state in zip(self.optimizers, states, strict=True):
            opt.load_state_dict(state)
