"""DiffMM: multi-modal diffusion model for recommendation.

Jiang, Xia, Wei, Luo, Lin, Huang. "DiffMM: Multi-Modal Diffusion Model for
Recommendation", ACM MM 2024 (arXiv 2406.11781). Equation numbers are the paper's;
where the paper and the authors' code differ, the default follows the code.

One epoch (§2.5), driven by the trainer:

1. :meth:`DiffMM.begin_epoch` trains one denoiser per modality for one pass over all
   users with the ELBO loss plus modality-aware signal injection (MSI, eq. 14), then
   regenerates each modality's user-item graph ``A^m`` from the top-``rebuild_k`` items
   of every user's denoised row, with edge dropout (§2.2.3);
2. :meth:`DiffMM.loss` is BPR on the aggregated representations (eq. 20-23) plus
   cross-modal InfoNCE between graph views (eq. 15-19) plus L2 on the ID embeddings.

Aggregation (authors' form of eq. 20), for each modality ``m`` with aligned features
``f̄_m = Norm(Trans(F_m))``::

    H   = Â [E_U; f̄_m]        H' = Â [H_U; E_I]        Z_m = H + H' + ρ A^m [E_U; E_I]
    Z0  = Σ_m softmax(κ)_m Z_m                              (eq. 21)
    H̄   = Σ_{l=0..L} Â^l Z0 + ω Norm(Z0)                   (eq. 22-23)
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffmm.data.dataset import Dataset
from diffmm.diffusion import Denoiser, GaussianDiffusion
from diffmm.graph import (
    csr_tensor,
    edge_dropout,
    normalized_adjacency,
    spmm,
    topk_bipartite,
    transpose_csr,
)
from diffmm.models.base import (
    Batch,
    ModelConfig,
    Recommender,
    at_most_n_items,
    require_features,
)
from diffmm.models.diffmm_config import DiffMMConfig
from diffmm.models.mf import bpr_loss
from diffmm.ops import matmul_cross_entropy, normalize_rows
from diffmm.utils import release_free_memory


class DiffMM(Recommender):
    """DiffMM recommender over any number of item modalities."""

    name = "diffmm"
    epoch_phase_settings = "noise_min/noise_max/noise_scale or diffusion_lr"
    Config = DiffMMConfig

    @classmethod
    def check_data(cls, config: ModelConfig, dataset: Dataset) -> None:
        """DiffMM needs at least one modality, and ``rebuild_k <= n_items``."""
        super().check_data(config, dataset)
        require_features(dataset, "DiffMM")
        assert isinstance(config, DiffMMConfig)
        at_most_n_items(config.rebuild_k, "diffmm.rebuild_k", dataset)

    def __init__(self, config: DiffMMConfig, dataset: Dataset) -> None:
        super().__init__()
        self.check_data(config, dataset)
        self.config = config
        self.n_users, self.n_items = dataset.n_users, dataset.n_items
        self.modalities = list(dataset.features)
        n_mod, dim = len(self.modalities), config.embedding_dim

        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, dim)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, dim)))
        self.trans = nn.ModuleList(
            _make_trans(config.trans, feats.shape[1], dim) for feats in dataset.features.values()
        )
        # κ of eq. 21, initialised equal.
        self.modality_logits = nn.Parameter(torch.full((n_mod,), 1.0 / n_mod))
        for i, feats in enumerate(dataset.features.values()):
            self.register_buffer(f"features_{i}", torch.from_numpy(feats), persistent=False)

        train = dataset.train.tocsr()
        self.register_buffer("adj", normalized_adjacency(train, self_loops=True), persistent=False)
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
        self.denoiser_optimizers = [
            torch.optim.Adam(d.parameters(), lr=config.diffusion_lr, fused=True)
            for d in self.denoisers
        ]
        # A^m, one sparse (U+I)x(U+I) matrix per modality, regenerated every epoch, and
        # their transposes for the backward pass (edge dropout breaks the symmetry); with
        # scoring_graph = "whole", also A^m before edge dropout, to score users with.
        self.modality_graphs: list[Tensor] = []
        self._graph_transposes: list[Tensor] = []
        self.scoring_graphs: list[Tensor] = []

    def set_modality_graphs(
        self, graphs: list[Tensor], scoring_graphs: list[Tensor] | None = None
    ) -> None:
        """Install the graphs ``A^m`` used by the aggregation and the views, and the
        (symmetric) graphs to use instead in eval mode, if any."""
        self.modality_graphs = list(graphs)
        self._graph_transposes = [transpose_csr(g) for g in self.modality_graphs]
        self.scoring_graphs = list(scoring_graphs or [])

    # ----------------------------------------------------------------- parameters
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The recommender's parameters; the denoisers have their own optimisers."""
        denoiser_params = {id(p) for p in self.denoisers.parameters()}
        return [p for p in self.parameters() if id(p) not in denoiser_params]

    def _apply(self, fn, recurse=True):  # keep the generated graphs on the model's device
        module = super()._apply(fn, recurse)
        self.set_modality_graphs(
            [fn(g) for g in self.modality_graphs], [fn(g) for g in self.scoring_graphs]
        )
        return module

    def get_extra_state(self) -> dict[str, Any]:
        """The generated graphs belong to the model's state: scores depend on them."""

        def plain(g: Tensor) -> dict[str, Tensor]:
            # plain tensors: a sparse CSR tensor cannot be deep-copied or pickled everywhere
            parts = {"crow": g.crow_indices(), "col": g.col_indices(), "values": g.values()}
            return {k: v.cpu() for k, v in parts.items()}

        return {
            "modality_graphs": [plain(g) for g in self.modality_graphs],
            "scoring_graphs": [plain(g) for g in self.scoring_graphs],
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        device, n = self.user_emb.device, self.n_users + self.n_items

        def sparse(g: dict[str, Tensor]) -> Tensor:
            return csr_tensor(g["crow"], g["col"], g["values"], (n, n)).to(device)

        self.set_modality_graphs(
            [sparse(g) for g in state["modality_graphs"]],
            [sparse(g) for g in state.get("scoring_graphs", [])],  # absent in older runs
        )

    def extra_state_dict(self) -> dict[str, Any]:
        return {"denoiser_optimizers": [o.state_dict() for o in self.denoiser_optimizers]}

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        for opt, opt_state in zip(
            self.denoiser_optimizers, state["denoiser_optimizers"], strict=True
        ):
            opt.load_state_dict(opt_state)

    # ----------------------------------------------------------------- features
    def _features(self, i: int) -> Tensor:
        return getattr(self, f"features_{i}")

    def aligned_features(self) -> list[Tensor]:
        """``Trans(F_m)`` for every modality (eq. 15), before normalisation."""
        return [trans(self._features(i)) for i, trans in enumerate(self.trans)]

    def _sparse_rows(self, users: Tensor) -> Tensor:
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

    def _dense_rows(self, users: Tensor) -> Tensor:
        """Dense training rows of ``users``: ``(len(users), n_items)`` float32."""
        return self._sparse_rows(users).to_dense()

    # ----------------------------------------------------------------- diffusion (§2.2)
    def begin_epoch(self, epoch: int) -> dict[str, float]:
        """Train the denoisers for one pass, then regenerate the modality graphs."""
        stats: dict[str, float] = {}
        t0 = self._clock()
        if self.config.diffusion_graph_ratio > 0:
            stats.update(self.train_diffusion())
            release_free_memory()
        t1 = self._clock()
        if self.config.scoring_graph == "whole":
            whole = self.generate_graphs(dropped=False)
            dropped = [edge_dropout(g, self.config.keep_rate) for g in whole]
            self.set_modality_graphs(dropped, scoring_graphs=whole)
        else:
            self.set_modality_graphs(self.generate_graphs())
        t2 = self._clock()
        stats.update(seconds_diffusion=t1 - t0, seconds_graphs=t2 - t1)
        return stats

    def _clock(self) -> float:
        """Wall time, after the device's queued work is done."""
        if self.user_emb.device.type == "cuda":
            torch.cuda.synchronize(self.user_emb.device)
        return time.perf_counter()

    def train_diffusion(self) -> dict[str, float]:
        """One pass of ELBO + MSI training over all users (eq. 11-14), each modality."""
        cfg = self.config
        with torch.no_grad():  # MSI targets: detached item embeddings and features
            item_emb = self.item_emb.detach()
            modal_emb = [f.detach() for f in self.aligned_features()]
        self.denoisers.train()
        totals = torch.zeros(2, len(self.modalities))
        order = torch.randperm(self.n_users).to(self.user_emb.device)
        for users in order.split(cfg.diffusion_batch_size):
            for m, (denoiser, opt) in enumerate(
                zip(self.denoisers, self.denoiser_optimizers, strict=True)
            ):
                # loss = mean over the batch of ELBO + λ0 MSI, accumulated chunk by chunk
                sums = torch.zeros(2)
                for chunk in users.split(cfg.diffusion_chunk_size):
                    x0 = self._dense_rows(chunk)
                    elbo, x0_hat = self.diffusion.training_loss(denoiser, x0, cfg.elbo_weighting)
                    msi = (x0_hat @ modal_emb[m] - x0 @ item_emb).pow(2).mean(dim=1)
                    ((elbo.sum() + cfg.msi_weight * msi.sum()) / len(users)).backward()
                    sums += torch.stack([elbo.sum().detach(), msi.sum().detach()]).cpu()
                opt.step()
                opt.zero_grad(set_to_none=True)  # also frees the gradient memory
                totals[:, m] += sums / len(users)
        n_batches = -(-self.n_users // cfg.diffusion_batch_size)
        stats = {}
        for m, name in enumerate(self.modalities):
            stats[f"elbo_{name}"] = float(totals[0, m]) / n_batches
            stats[f"msi_{name}"] = float(totals[1, m]) / n_batches
        return stats

    @torch.no_grad()
    def denoised_topk(self, modality: int) -> Tensor:
        """Top-``rebuild_k`` items of every user's denoised row, ``(n_users, k)`` (§2.2.3)."""
        cfg = self.config
        denoiser = self.denoisers[modality].eval()
        sample = self.diffusion.sampler(denoiser, cfg.sampling_steps)
        users = torch.arange(self.n_users, device=self.user_emb.device)
        return torch.cat(
            [
                torch.topk(sample(self._sparse_rows(batch)), cfg.rebuild_k, dim=1).indices
                for batch in users.split(cfg.diffusion_batch_size)
            ]
        )

    @torch.no_grad()
    def generate_graphs(self, dropped: bool = True) -> list[Tensor]:
        """``A^m`` for every modality: generated and/or random graph, edge-dropped unless
        ``dropped`` is False."""
        cfg = self.config
        ratio = cfg.diffusion_graph_ratio
        device = self.user_emb.device
        random_graph = self._random_graph() if ratio < 1 else None
        graphs = []
        for m in range(len(self.modalities)):
            graph = None
            if ratio > 0:
                items = self.denoised_topk(m)
                users = torch.arange(self.n_users, device=device).repeat_interleave(cfg.rebuild_k)
                graph = topk_bipartite(users, items.reshape(-1), self.n_users, self.n_items)
            if graph is None:
                graph = random_graph
            elif random_graph is not None:  # paper Fig. 4: a mix of both graphs
                mixed = ratio * graph.to_sparse_coo() + (1 - ratio) * random_graph.to_sparse_coo()
                graph = mixed.coalesce().to_sparse_csr()
            graphs.append(edge_dropout(graph, cfg.keep_rate) if dropped else graph)
        return graphs

    def _random_graph(self) -> Tensor:
        """The training graph with each user-item edge kept with ``random_graph_keep_rate``."""
        counts = self.train_indptr[1:] - self.train_indptr[:-1]
        users = torch.repeat_interleave(torch.arange(self.n_users, device=counts.device), counts)
        keep = torch.rand(len(users), device=users.device) < self.config.random_graph_keep_rate
        return topk_bipartite(users[keep], self.train_indices[keep], self.n_users, self.n_items)

    # ----------------------------------------------------------------- aggregation (§2.4)
    def _propagate_layers(self, h0: Tensor) -> Tensor:
        """``Σ_{l=0..L} Â^l h0`` (eq. 22 and the views of eq. 17)."""
        out, h = h0, h0
        for _ in range(self.config.n_layers):
            h = spmm(self.adj, h, symmetric=True)
            out = out + h
        return out

    def _forward(self, with_views: bool) -> tuple[Tensor, list[Tensor]]:
        """Main view ``H̄`` (U+I rows) and, if asked, the modality views ``V_m`` (eq. 17).

        ``Z0 = Σ_m w_m Z_m`` is formed without the per-modality ``H`` and ``H'``: ``Â`` is
        linear and the softmax weights sum to 1, so ``Σ_m w_m Â [E_U; f̄_m] =
        Â [E_U; Σ_m w_m f̄_m]`` (and likewise for ``H'``): two products of width ``d``
        instead of two of width ``M·d``, the same sums.

        Products that share a matrix are not concatenated into one wider product: torch's
        CPU CSR product of width 128 took longer than two of width 64 here (TikTok).
        """
        if not self.modality_graphs:
            raise RuntimeError("DiffMM has no modality graphs yet: call begin_epoch() first")
        cfg, n_users = self.config, self.n_users
        graphs = zip(self.modality_graphs, self._graph_transposes, strict=True)
        if self.scoring_graphs and not self.training:  # symmetric: their own transposes
            graphs = zip(self.scoring_graphs, self.scoring_graphs, strict=True)
        weights = torch.softmax(self.modality_logits, dim=0)
        feats = [normalize_rows(f) for f in self.aligned_features()]
        fused_feat = sum(w * f for w, f in zip(weights, feats, strict=True))
        h = spmm(self.adj, torch.cat([self.user_emb, fused_feat]), symmetric=True)
        h_user = h.split([n_users, self.n_items])[0]  # split, not a slice: cheaper backward
        h2 = spmm(self.adj, torch.cat([h_user, self.item_emb]), symmetric=True)
        ego = torch.cat([self.user_emb, self.item_emb])
        generated = 0
        views_in = []
        for m, (graph, graph_t) in enumerate(graphs):
            g = spmm(graph, ego, transpose=graph_t)
            if with_views:
                user_feat = torch.cat([self.user_emb, feats[m]])
                views_in.append(spmm(graph, user_feat, transpose=graph_t))
            generated = generated + weights[m] * g
        z0 = h + h2 + cfg.generated_graph_weight * generated
        main = self._propagate_layers(z0) + cfg.residual_weight * normalize_rows(z0)
        views: list[Tensor] = []
        if with_views:
            views = [self._propagate_layers(v) for v in views_in]
        return main, views

    def embeddings(self) -> tuple[Tensor, Tensor]:
        main, _ = self._forward(with_views=False)
        return self._users_items(main)

    def _users_items(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """User rows and item rows of a (U+I)-row tensor (one split: one cheap backward)."""
        users, items = rows.split([self.n_users, self.n_items])
        return users, items

    # ----------------------------------------------------------------- training loss (§2.5)
    def loss(self, batch: Batch) -> dict[str, Tensor]:
        cfg = self.config
        with_cl = cfg.cl_weight > 0
        main, views = self._forward(with_views=with_cl)
        n_users = self.n_users
        rows = [batch.users, n_users + batch.pos_items, n_users + batch.neg_items]
        if with_cl:
            anchors = ContrastiveAnchors.of(batch, n_users)
            if cfg.cl_anchor == "main":
                rows.append(anchors.nodes)
        # One gather of every row of H̄ the loss reads: one scatter in the backward pass.
        picked = main.index_select(0, torch.cat(rows)).split([len(r) for r in rows])
        u, pos, neg = picked[:3]
        losses = {
            "bpr": bpr_loss((u * pos).sum(-1), (u * neg).sum(-1)),
            "l2": cfg.l2_weight * (self.user_emb.square().sum() + self.item_emb.square().sum()),
        }
        if with_cl:
            main_anchors = picked[3] if cfg.cl_anchor == "main" else None
            losses["cl"] = cfg.cl_weight * self._contrastive(main_anchors, views, anchors)
        return losses

    def _contrastive(
        self, main_anchors: Tensor | None, views: list[Tensor], anchors: ContrastiveAnchors
    ) -> Tensor:
        """Cross-modal InfoNCE over the batch's users and positive items (eq. 18-19).

        ``main_anchors`` are the anchors' rows of ``H̄`` (eq. 19), or None to pair every
        two modality views (eq. 18).
        """
        tau = self.config.temperature
        if main_anchors is not None:
            anchor_rows = normalize_rows(main_anchors)  # once, for every view
            pairs = [(anchor_rows, v) for v in views]
        else:
            pairs = [
                (normalize_rows(views[a].index_select(0, anchors.nodes)), views[b])
                for a, b in itertools.combinations(range(len(views)), 2)
            ]
        total = views[0].new_zeros(())
        for anchor_rows, other in pairs:
            a_users, a_items = (anchor_rows / tau).split([len(anchors.users), len(anchors.items)])
            o_users, o_items = self._users_items(normalize_rows(other))
            total = total + info_nce(a_users, o_users, anchors.users, anchors.user_weights, tau)
            total = total + info_nce(a_items, o_items, anchors.items, anchors.item_weights, tau)
        return total


@dataclass(frozen=True)
class ContrastiveAnchors:
    """The distinct users and positive items of a batch, the anchors of eq. 18-19.

    A node drawn ``k`` times in a batch of ``n`` is one anchor of weight ``k/n``: the same
    mean over the batch's draws. ``nodes`` indexes the (U+I) rows: users, then items.
    """

    users: Tensor
    user_weights: Tensor
    items: Tensor
    item_weights: Tensor
    nodes: Tensor

    @classmethod
    def of(cls, batch: Batch, n_users: int) -> ContrastiveAnchors:
        users, user_counts = torch.unique(batch.users, return_counts=True)
        items, item_counts = torch.unique(batch.pos_items, return_counts=True)
        return cls(
            users=users,
            user_weights=user_counts / len(batch.users),
            items=items,
            item_weights=item_counts / len(batch.pos_items),
            nodes=torch.cat([users, n_users + items]),
        )


def info_nce(
    anchors: Tensor, others: Tensor, positives: Tensor, weights: Tensor, temperature: float
) -> Tensor:
    """InfoNCE over normalised rows (eq. 18): ``Σ_j weights_j · CE_j``.

    ``anchors`` are unit rows already divided by the temperature and ``others`` unit rows;
    anchor ``j``'s positive is ``others[positives[j]]`` and its negatives all rows of
    ``others``: a softmax cross-entropy over the cosine similarities over ``τ``.
    """
    return matmul_cross_entropy(anchors, others, positives, weights, logit_bound=1.0 / temperature)


class _ParametricTrans(nn.Module):
    """``LeakyReLU(F W)`` with a Xavier-initialised ``W`` (trans 0)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(in_dim, out_dim)))

    def forward(self, features: Tensor) -> Tensor:
        return F.leaky_relu(features @ self.weight, 0.2)


def _make_trans(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    return nn.Linear(in_dim, out_dim) if kind == "linear" else _ParametricTrans(in_dim, out_dim)
