"""LightGCN-M: LightGCN whose item inputs also carry the item content features.

LightGCN reference:
    X. He, K. Deng, X. Wang, Y. Li, Y. Zhang, M. Wang. "LightGCN: Simplifying and
    Powering Graph Convolution Network for Recommendation." SIGIR 2020.

A common multi-modal baseline: LightGCN (see :mod:`diffmm.models.lightgcn`) whose
layer-0 item representation adds the item's transformed modality features to its ID
embedding. With ``M`` modalities, ``f_i^m`` item ``i``'s features in modality ``m`` and
``W_m`` a learned ``d x d_m`` matrix per modality (a linear layer without bias),

    e_i^(0) = e_i + (1 / M) sum_m W_m f_i^m,        e_u^(0) = e_u.

The modalities are averaged, not summed, so that the scale of the feature part does not
grow with the number of modalities. The rest is LightGCN: with ``A_hat`` the normalised
bipartite adjacency without self-loops (eq. 7),

    E^(l+1) = A_hat E^(l),    E = sum_{l=0..L} E^(l) / (L + 1)          (eqs. 3-4),

scores are dot products of final user and item representations (eq. 5), and training
is BPR with L2 on the batch's layer-0 representations ``e_u^(0)``, ``e_i^(0)``,
``e_j^(0)`` (eq. 15, the feature part included, so the ``W_m`` are regularised through
what they produce), divided by the batch size. The propagation runs once per batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffmm.data.dataset import Dataset
from diffmm.graph import normalized_adjacency
from diffmm.models.base import Batch, ModelConfig, Recommender, require_features
from diffmm.models.common import bpr_loss, l2_on_batch, register_features
from diffmm.models.lightgcn import Config as LightGCNConfig
from diffmm.models.lightgcn import propagate


class Config(LightGCNConfig):
    """Hyper-parameters of LightGCN-M: those of LightGCN."""


class LightGCNM(Recommender):
    """LightGCN with modality features fused into the layer-0 item representations."""

    name = "lightgcn_m"
    paper = "He et al., SIGIR 2020 (LightGCN, plus item content features)"
    Config = Config

    adj: Tensor

    @classmethod
    def check_data(cls, config: ModelConfig, dataset: Dataset) -> None:
        """LightGCN-M needs at least one modality."""
        super().check_data(config, dataset)
        require_features(dataset, "LightGCN-M")

    def __init__(self, config: Config, dataset: Dataset) -> None:
        super().__init__()
        self.check_data(config, dataset)
        self.config = config
        self.n_users, self.n_items = dataset.n_users, dataset.n_items
        self.modalities = dataset.modalities
        dim = config.embedding_dim
        self.user_embedding = nn.Embedding(self.n_users, dim)
        self.item_embedding = nn.Embedding(self.n_items, dim)
        # Xavier-uniform, as in LightGCN
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.feature_maps = nn.ModuleList(
            nn.Linear(feats.shape[1], dim, bias=False) for feats in dataset.features.values()
        )
        for linear in self.feature_maps:
            nn.init.xavier_uniform_(linear.weight)
        register_features(self, dataset, trainable=False)
        self.register_buffer(
            "adj", normalized_adjacency(dataset.train, self_loops=False), persistent=False
        )

    def modality_features(self, m: int) -> Tensor:
        """The ``(n_items, d_m)`` feature matrix of modality ``m``."""
        return getattr(self, f"features_{m}")

    def item_inputs(self) -> Tensor:
        """Layer-0 item representations ``e_i + mean_m W_m f_i^m`` of every item."""
        fused = sum(w(self.modality_features(m)) for m, w in enumerate(self.feature_maps))
        return self.item_embedding.weight + fused / len(self.feature_maps)

    def propagate(self, items0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Final ``(user, item)`` representations (eq. 4) from the layer-0 item inputs."""
        items0 = self.item_inputs() if items0 is None else items0
        ego = torch.cat([self.user_embedding.weight, items0], 0)
        out = propagate(self.adj, ego, self.config.n_layers)
        return out[: self.n_users], out[self.n_users :]

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return self.propagate()

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        items0 = self.item_inputs()
        users, items = self.propagate(items0)
        u, p, n = users[batch.users], items[batch.pos_items], items[batch.neg_items]
        pos = (u * p).sum(-1)
        neg = (u * n).sum(-1)
        l2 = l2_on_batch(
            self.user_embedding(batch.users), items0[batch.pos_items], items0[batch.neg_items]
        )
        return {"bpr": bpr_loss(pos, neg), "l2": self.config.l2_weight * l2}


__all__ = ["LightGCNM", "Config"]
