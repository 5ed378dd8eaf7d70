"""Matrix factorisation trained with Bayesian Personalized Ranking (MF-BPR).

Reference:
    S. Rendle, C. Freudenthaler, Z. Gantner, L. Schmidt-Thieme. "BPR: Bayesian
    Personalized Ranking from Implicit Feedback." UAI 2009.

A user ``u`` and an item ``i`` each get a ``d``-dimensional embedding; the score is the
dot product ``x_ui = e_u . e_i``. For a triple (u, i, j) with ``i`` observed and ``j``
sampled from the unobserved items, the BPR criterion (paper eq. 4) is

    L = mean over the batch of -ln sigmoid(x_ui - x_uj)
        + l2_weight * (|e_u|^2 + |e_i|^2 + |e_j|^2) / (2 * batch_size),

the L2 term on the batch's embeddings as in the LightGCN reference code.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn

from diffmm.data.dataset import Dataset
from diffmm.models.base import MAX_WIDTH, Batch, ModelConfig, Recommender
from diffmm.models.common import bpr_loss, l2_on_batch


class Config(ModelConfig):
    """Hyper-parameters of MF-BPR."""

    embedding_dim: int = Field(
        64, ge=1, le=MAX_WIDTH, description="Size d of user and item embeddings."
    )
    l2_weight: float = Field(
        1e-4,
        ge=0,
        description="Weight of the L2 penalty on the batch's embeddings, divided by the "
        "batch size (the authors' `reg`).",
    )


class MF(Recommender):
    """Matrix factorisation with the BPR loss."""

    name = "mf"
    paper = "Rendle et al., UAI 2009"
    Config = Config

    def __init__(self, config: Config, dataset: Dataset) -> None:
        super().__init__()
        self.check_data(config, dataset)
        self.config = config
        self.n_users, self.n_items = dataset.n_users, dataset.n_items
        self.user_embedding = nn.Embedding(self.n_users, config.embedding_dim)
        self.item_embedding = nn.Embedding(self.n_items, config.embedding_dim)
        # normal(0, 0.1) as in common BPR implementations (e.g. LightGCN-PyTorch's MF)
        nn.init.normal_(self.user_embedding.weight, std=0.1)
        nn.init.normal_(self.item_embedding.weight, std=0.1)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return self.user_embedding.weight, self.item_embedding.weight

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        u = self.user_embedding(batch.users)
        p = self.item_embedding(batch.pos_items)
        n = self.item_embedding(batch.neg_items)
        pos = (u * p).sum(-1)
        neg = (u * n).sum(-1)
        return {
            "bpr": bpr_loss(pos, neg),
            "l2": self.config.l2_weight * l2_on_batch(u, p, n),
        }


__all__ = ["MF", "Config"]
