"""DiffMM: multi-modal diffusion model for recommendation.

Jiang, Xia, Wei, Luo, Lin, Huang. "DiffMM: Multi-Modal Diffusion Model for
Recommendation", ACM MM 2024 (arXiv 2406.11781). Equation numbers are the paper's;
where the paper and the authors' code differ, the default follows the code.

One epoch (§2.5), driven by the trainer:

1. the phases of :meth:`DiffMM.epoch_phases`: ``diffusion`` trains the
   :class:`~diffmm.graph_generator.ModalityGraphGenerator` (one denoiser per modality,
   ELBO plus modality-aware signal injection, eq. 11-14) for one pass over all users;
   ``graphs`` rebuilds each modality's user-item graph ``A^m`` from the generator's
   top-``rebuild_k`` items of every user (§2.2.3; with ``graph_users_per_epoch``, of a
   rolling share of the users, :mod:`diffmm.rolling_graphs`; averaged over the last
   ``graph_average_epochs``, :mod:`diffmm.graph_average`), mixed with a random training
   subgraph if asked (Fig. 4), with edge dropout;
2. :meth:`DiffMM.loss` is BPR on the aggregated representations (eq. 20-23) plus
   cross-modal InfoNCE between graph views (eq. 15-19) plus L2 on the ID embeddings.

Aggregation (authors' form of eq. 20), for each modality ``m`` with aligned features
``f̄_m = Norm(Trans(F_m))``::

    H   = Â [E_U; f̄_m]        H' = Â [H_U; E_I]        Z_m = H + H' + ρ A^m [E_U; E_I]
    Z0  = Σ_m softmax(κ)_m Z_m                              (eq. 21)
    H̄   = Σ_{l=0..L} Â^l Z0 + ω Norm(Z0)                   (eq. 22-23)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffmm import distributed
from diffmm.contrastive import ContrastiveAnchors, cross_modal_info_nce
from diffmm.data.dataset import Dataset
from diffmm.graph import (
    csr_tensor,
    edge_dropout,
    normalized_adjacency,
    spmm,
    topk_bipartite,
    transpose_csr,
)
from diffmm.graph_average import GraphWindow
from diffmm.graph_generator import ModalityGraphGenerator
from diffmm.models.base import (
    Batch,
    EpochPhase,
    ModelConfig,
    Recommender,
    at_most_n_items,
    require_features,
)
from diffmm.models.common import DerivedTensors, bpr_loss
from diffmm.models.diffmm_config import DiffMMConfig
from diffmm.ops import normalize_rows
from diffmm.rolling_graphs import RollingTopK


class DiffMM(DerivedTensors, Recommender):
    """DiffMM recommender over any number of item modalities."""

    name = "diffmm"
    paper = "Jiang et al., ACM MM 2024"
    epoch_phase_settings = "noise_min/noise_max/noise_scale or diffusion_lr"
    Config = DiffMMConfig
    #: The epoch's generated graphs (see :meth:`set_modality_graphs`), moved by ``.to()``.
    derived_tensors = ("modality_graphs", "_graph_transposes", "scoring_graphs")

    @classmethod
    def check_data(cls, config: ModelConfig, dataset: Dataset) -> None:
        """DiffMM needs at least one modality, ``rebuild_k <= n_items`` and, in latent
        space, ``latent_clusters <= n_items``."""
        super().check_data(config, dataset)
        require_features(dataset, "DiffMM")
        assert isinstance(config, DiffMMConfig)
        at_most_n_items(config.rebuild_k, "diffmm.rebuild_k", dataset)
        if config.diffusion_space == "latent":
            at_most_n_items(config.latent_clusters, "diffmm.latent_clusters", dataset)

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
        # the training edges (user, item), row by row: the random graph of Fig. 4
        coo = train.tocoo()
        for name, index in (("train_users", coo.row), ("train_items", coo.col)):
            self.register_buffer(name, torch.from_numpy(index.astype(np.int64)), persistent=False)

        self.generator = ModalityGraphGenerator(
            config, train, self.modalities, list(dataset.features.values())
        )
        # A^m, one sparse (U+I)x(U+I) matrix per modality, regenerated every epoch, and
        # their transposes for the backward pass (edge dropout breaks the symmetry); with
        # scoring_graph = "whole", also A^m before edge dropout, to score users with.
        self.modality_graphs: list[Tensor] = []
        self._graph_transposes: list[Tensor] = []
        self.scoring_graphs: list[Tensor] = []
        self.window: GraphWindow | None = None  # graph_average_epochs' last graphs
        if config.graph_average_epochs > 1:
            self.window = GraphWindow(len(self.modalities), config.graph_average_epochs)
        self.rolling: RollingTopK | None = None  # graph_users_per_epoch's stored rows
        if config.graph_users_per_epoch is not None:
            n = len(self.modalities)
            self.rolling = RollingTopK(
                self.n_users, n, config.rebuild_k, config.graph_users_per_epoch
            )

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
        """The recommender's parameters; the generator has its own optimisers."""
        generator_params = {id(p) for p in self.generator.parameters()}
        return [p for p in self.parameters() if id(p) not in generator_params]

    def get_extra_state(self) -> dict[str, Any]:
        """The generated graphs belong to the model's state: scores depend on them."""

        def plain(g: Tensor) -> dict[str, Tensor]:
            # plain tensors: a sparse CSR tensor cannot be deep-copied or pickled everywhere
            parts = {"crow": g.crow_indices(), "col": g.col_indices(), "values": g.values()}
            return {k: v.cpu() for k, v in parts.items()}

        state: dict[str, Any] = {
            "modality_graphs": [plain(g) for g in self.modality_graphs],
            "scoring_graphs": [plain(g) for g in self.scoring_graphs],
        }
        if self.rolling is not None:
            state["rolling_rows"] = self.rolling.state_dict()
        if self.window is not None:
            state["graph_window"] = self.window.state_dict()
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        device, n = self.user_emb.device, self.n_users + self.n_items

        def sparse(g: dict[str, Tensor]) -> Tensor:
            return csr_tensor(g["crow"], g["col"], g["values"], (n, n)).to(device)

        self.set_modality_graphs(
            [sparse(g) for g in state["modality_graphs"]],
            [sparse(g) for g in state.get("scoring_graphs", [])],  # absent in older runs
        )
        if self.rolling is not None and "rolling_rows" in state:
            self.rolling.load_state_dict(state["rolling_rows"])
        if self.window is not None and "graph_window" in state:
            self.window.load_state_dict(state["graph_window"])

    def extra_state_dict(self) -> dict[str, Any]:
        return {"denoiser_optimizers": self.generator.optimizer_state_dict()}

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_optimizer_state_dict(state["denoiser_optimizers"])

    # ----------------------------------------------------------------- features
    def _features(self, i: int) -> Tensor:
        return getattr(self, f"features_{i}")

    def aligned_features(self) -> list[Tensor]:
        """``Trans(F_m)`` for every modality (eq. 15), before normalisation."""
        return [trans(self._features(i)) for i, trans in enumerate(self.trans)]

    # ----------------------------------------------------------------- graphs (§2.2-2.3)
    def epoch_phases(self, epoch: int) -> list[EpochPhase]:
        """``diffusion``: train the generator; ``graphs``: regenerate ``A^m`` with it."""
        return [
            ("diffusion", self.train_generator),
            ("graphs", lambda: self.regenerate_graphs(epoch)),
        ]

    def begin_epoch(self, epoch: int) -> dict[str, float]:
        """Both phases of :meth:`epoch_phases`, in order, untimed."""
        stats: dict[str, float] = {}
        for _, phase in self.epoch_phases(epoch):
            stats.update(phase())
        return stats

    def train_generator(self) -> dict[str, float]:
        """One pass of the generator's ELBO + MSI training over all users (eq. 11-14).

        MSI's targets are the item ID embeddings and aligned features, detached; nothing
        is trained when the graphs are random ones only (``diffusion_graph_ratio = 0``).
        With ``diffusion_users_per_epoch`` the pass covers that many users, drawn anew.
        """
        if self.config.diffusion_graph_ratio == 0:
            return {}
        with torch.no_grad():
            item_emb = self.item_emb.detach()
            modal_emb = [f.detach() for f in self.aligned_features()]
        users = torch.arange(self.n_users, device=self.user_emb.device)
        sample = self.config.diffusion_users_per_epoch
        if sample is not None and sample < self.n_users:  # the same draw on every rank
            users = torch.randperm(self.n_users, device=users.device)[:sample].sort().values
        return self.generator.train_epoch(users, item_emb, modal_emb)

    @torch.no_grad()
    def regenerate_graphs(self, epoch: int | None = None) -> dict[str, float]:
        """Install new graphs ``A^m`` (and, with ``scoring_graph = "whole"``, the same
        graphs before edge dropout to score with). With ``graph_users_per_epoch``, the
        users due at ``epoch`` are regenerated (every user when ``epoch`` is None)."""
        if self.config.scoring_graph == "whole":
            whole = self.generate_graphs(dropped=False, epoch=epoch)
            dropped = [edge_dropout(g, self.config.keep_rate) for g in whole]
            self.set_modality_graphs(dropped, scoring_graphs=whole)
        else:
            self.set_modality_graphs(self.generate_graphs(epoch=epoch))
        return {}

    @torch.no_grad()
    def generate_graphs(self, dropped: bool = True, epoch: int | None = None) -> list[Tensor]:
        """``A^m`` for every modality: generated and/or random graph, edge-dropped unless
        ``dropped`` is False; see :meth:`regenerate_graphs` for ``epoch``."""
        cfg = self.config
        ratio = cfg.diffusion_graph_ratio
        random_graph = self._random_graph() if ratio < 1 else None
        device = self.user_emb.device
        users = torch.arange(self.n_users, device=device)
        if self.rolling is not None and epoch is not None:
            users = self.rolling.users_due(epoch, device)
        graphs = []
        for m in range(len(self.modalities)):
            graph = None
            if ratio > 0:  # in a process group: each rank its users, gathered in order
                with distributed.rank_rng(device):
                    mine = self.generator.generate(users[distributed.shard(len(users))], m)
                items = distributed.gather_rows(mine)
                edges = users.repeat_interleave(cfg.rebuild_k), items.reshape(-1)
                if self.rolling is not None:
                    self.rolling.update(m, users, items)
                    edges = self.rolling.edges(m, self.train_users, self.train_items)
                graph = topk_bipartite(*edges, self.n_users, self.n_items)
                if self.window is not None:
                    graph = self.window.push(m, graph)
            if graph is None:
                graph = random_graph
            elif random_graph is not None:  # paper Fig. 4: a mix of both graphs
                mixed = ratio * graph.to_sparse_coo() + (1 - ratio) * random_graph.to_sparse_coo()
                graph = mixed.coalesce().to_sparse_csr()
            graphs.append(edge_dropout(graph, cfg.keep_rate) if dropped else graph)
        return graphs

    def _random_graph(self) -> Tensor:
        """The training graph with each user-item edge kept with ``random_graph_keep_rate``."""
        users, items = self.train_users, self.train_items
        keep = torch.rand(len(users), device=users.device) < self.config.random_graph_keep_rate
        return topk_bipartite(users[keep], items[keep], self.n_users, self.n_items)

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
            losses["cl"] = cfg.cl_weight * cross_modal_info_nce(
                main_anchors,
                views,
                anchors,
                self.n_users,
                cfg.temperature,
                cfg.contrastive_negatives,
                cfg.sampled_negatives,
            )
        return losses


class _ParametricTrans(nn.Module):
    """``LeakyReLU(F W)`` with a Xavier-initialised ``W`` (trans 0)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(in_dim, out_dim)))

    def forward(self, features: Tensor) -> Tensor:
        return F.leaky_relu(features @ self.weight, 0.2)


def _make_trans(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    return nn.Linear(in_dim, out_dim) if kind == "linear" else _ParametricTrans(in_dim, out_dim)
