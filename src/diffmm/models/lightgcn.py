"""LightGCN: simplified graph convolution for recommendation.

Reference:
    X. He, K. Deng, X. Wang, Y. Li, Y. Zhang, M. Wang. "LightGCN: Simplifying and
    Powering Graph Convolution Network for Recommendation." SIGIR 2020.

With ``E^(0)`` the stacked user and item embeddings (the only parameters) and
``A_hat = D^{-1/2} A D^{-1/2}`` the normalised bipartite adjacency without self-loops
(eq. 7), each layer propagates

    E^(l+1) = A_hat E^(l)                                  (matrix form of eq. 3)

and the final representation combines the layers (eq. 4)

    E = sum_{l=0..L} alpha_l E^(l),   alpha_l = 1 / (L + 1).

Scores are dot products of final user and item representations (eq. 5); training uses
BPR with L2 on the batch's layer-0 embeddings (eq. 15), divided by the batch size as in
the reference code. The propagation runs once per training batch, as in the reference.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from diffmm.data.dataset import Dataset
from diffmm.graph import normalized_adjacency, spmm
from diffmm.models.base import MAX_LAYERS, MAX_WIDTH, Batch, ModelConfig, Recommender
from diffmm.models.common import bpr_loss, l2_on_batch


class Config(ModelConfig):
    """Hyper-parameters of LightGCN."""

    embedding_dim: int = Field(
        64, ge=1, le=MAX_WIDTH, description="Size d of user and item embeddings."
    )
    n_layers: int = Field(
        2, ge=0, le=MAX_LAYERS, description="Number L of propagation layers (eq. 3)."
    )
    l2_weight: float = Field(
        1e-4,
        ge=0,
        description="Weight of the L2 penalty on the batch's layer-0 embeddings, divided "
        "by the batch size (lambda of eq. 15; the authors' `reg`).",
    )


def propagate(adj: Tensor, ego: Tensor, n_layers: int, *, symmetric: bool = True) -> Tensor:
    """``sum_{l=0..L} E^(l) / (L + 1)`` with ``E^(l+1) = adj @ E^(l)`` (eqs. 3-4).

    ``symmetric`` says ``adj`` equals its transpose (true of the normalised adjacency),
    which makes the backward pass cheaper (see :func:`diffmm.graph.spmm`).
    """
    acc = ego
    layer = ego
    for _ in range(n_layers):
        layer = spmm(adj, layer, symmetric=symmetric)
        acc = acc + layer
    return acc / (n_layers + 1)


class LightGCN(Recommender):
    """LightGCN over the training interaction graph."""

    name = "lightgcn"
    paper = "He et al., SIGIR 2020"
    Config = Config

    adj: Tensor

    def __init__(self, config: Config, dataset: Dataset) -> None:
        super().__init__()
        self.check_data(config, dataset)
        self.config = config
        self.n_users, self.n_items = dataset.n_users, dataset.n_items
        self.user_embedding = nn.Embedding(self.n_users, config.embedding_dim)
        self.item_embedding = nn.Embedding(self.n_items, config.embedding_dim)
        # Xavier-uniform, as in the official TensorFlow code and PyTorch Geometric
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        # derived from the data, so moved by .to() but not saved in the state dict
        self.register_buffer(
            "adj", normalized_adjacency(dataset.train, self_loops=False), persistent=False
        )

    def propagate(self) -> tuple[Tensor, Tensor]:
        """Final ``(user, item)`` representations (eq. 4)."""
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight], 0)
        out = propagate(self.adj, ego, self.config.n_layers)
        return out[: self.n_users], out[self.n_users :]

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return self.propagate()

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        users, items = self.propagate()
        u, p, n = users[batch.users], items[batch.pos_items], items[batch.neg_items]
        pos = (u * p).sum(-1)
        neg = (u * n).sum(-1)
        l2 = l2_on_batch(
            self.user_embedding(batch.users),
            self.item_embedding(batch.pos_items),
            self.item_embedding(batch.neg_items),
        )
        return {"bpr": bpr_loss(pos, neg), "l2": self.config.l2_weight * l2}


__all__ = ["LightGCN", "Config", "propagate"]
