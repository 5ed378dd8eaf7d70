"""BM3: bootstrapped latent views for multi-modal recommendation, without negatives.

Reference:
    X. Zhou, H. Zhou, Y. Liu, Z. Zeng, C. Miao, P. Wang, Y. You, F. Jiang. "Bootstrap
    Latent Representations for Multi-modal Recommendation." WWW 2023 (arXiv 2207.05969).
    Where the paper and the authors' code (github.com/enoche/BM3, also in MMRec) differ,
    this module follows the code: the modality losses carry the weight ``w_cl``
    (``cl_weight``), and the regulariser is the code's ``EmbLoss``, unsquared Frobenius
    norms of the whole backbone output divided by the number of items.

Notation: ``E_U``, ``E_I`` are the ID embeddings (the paper's ``h^0``), ``F_m`` the
``(n_items, d_m)`` features of modality ``m``, ``A_hat`` the normalised user-item
adjacency without self-loops, ``C(x, y) = 1 - cos(x, y)`` averaged over the batch, and
``sg`` the stop-gradient.

* Backbone (LightGCN with mean readout; the item side keeps a residual of its ID
  embedding, as in the authors' ``forward``)::

      [H_U; H_I'] = sum_{l=0..L} A_hat^l [E_U; E_I] / (L + 1),     H_I = H_I' + E_I

* Projection of each modality into the latent space: ``H_m = F_m W_m + b_m``.
* Online view (predictor ``f_p`` shared by IDs and modalities): ``h~ = h W_p + b_p``.
* Target view (dropout ratio ``p``, no gradient): ``h. = sg(Dropout_p(h))``.
* For a batch of observed pairs ``(u, i)`` (no negative items), the losses are

      L_rec   = C(h~_u, h._i) + C(h~_i, h._u)            (graph reconstruction)
      L_align = sum_m C(h~_{m,i}, h._i)                   (inter-modality alignment)
      L_mask  = sum_m C(h~_{m,i}, h._{m,i})               (intra-modality masked features)
      L_reg   = (||H_U||_F + ||H_I||_F) / n_items         (authors' ``EmbLoss``)

      L = L_rec + w_cl (L_align + L_mask) + lambda L_reg

* Score: ``s(u, i) = h~_u . h~_i``, the online (predicted) representations, as in the
  authors' ``full_sort_predict``.

The raw features ``F_m`` are trained too (``finetune_features``), as in the authors' code
(``nn.Embedding.from_pretrained(freeze=False)``). Without it, on MovieLens-100K the
validation recall collapses soon after its peak (``benchmarks/results/bm3_ml100k.md``).

Departures from the authors' code: the predictor,
projections and dropout are applied to the batch's rows only (the code applies them to
every row and then indexes, which differs only in that a user or item repeated within a
batch gets independent dropout masks here); any number of modalities is accepted (the
code has exactly "v" and "t"). The negative cosine of the paper is shifted by one,
``1 - cos``, as in the code (same gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from diffmm.data.dataset import Dataset
from diffmm.graph import normalized_adjacency
from diffmm.models.base import (
    MAX_LAYERS,
    MAX_WIDTH,
    Batch,
    Flag,
    ModelConfig,
    Recommender,
    require_features,
)
from diffmm.models.common import register_features
from diffmm.models.lightgcn import propagate


class Config(ModelConfig):
    """Hyper-parameters of BM3; the authors' config key is given in brackets."""

    embedding_dim: int = Field(
        64,
        ge=1,
        le=MAX_WIDTH,
        description="Size d of ID embeddings and latent modality features "
        "[embedding_size, feat_embed_dim].",
    )
    n_layers: int = Field(
        1,
        ge=0,
        le=MAX_LAYERS,
        description="Number L of LightGCN layers [n_layers; grid {1, 2}, 1 best "
        "on Baby and Sports].",
    )
    target_dropout: float = Field(
        0.5,
        ge=0,
        lt=1,
        description="Dropout ratio p that makes the target view "
        "[dropout; grid {0.3, 0.5}, 0.5 best on Baby and Sports, 0.3 on Elec].",
    )
    l2_weight: float = Field(
        0.1,
        ge=0,
        description="lambda, weight of the norm penalty on the backbone's "
        "outputs H_U, H_I [reg_weight; grid {0.1, 0.01}, 0.1 best on Baby and Elec].",
    )
    modality_loss_weight: float = Field(
        2.0,
        ge=0,
        description="Weight of L_align + L_mask, the modality losses "
        "[cl_weight]; the paper's objective adds them unweighted.",
    )
    finetune_features: Flag = Field(
        True,
        description="Train the raw features F_m too, as the authors' code does "
        "(nn.Embedding.from_pretrained with freeze=False).",
    )


def negative_cosine(online: Tensor, target: Tensor) -> Tensor:
    """``C(x, y) = 1 - cos(x, y)``, averaged over the rows."""
    return 1.0 - F.cosine_similarity(online, target, dim=-1).mean()


class BM3(Recommender):
    """BM3 over the training graph and every item modality of the dataset."""

    name = "bm3"
    paper = "Zhou et al., WWW 2023"
    Config = Config

    adj: Tensor

    @classmethod
    def check_data(cls, config: ModelConfig, dataset: Dataset) -> None:
        """BM3 needs at least one modality."""
        super().check_data(config, dataset)
        require_features(dataset, "BM3")

    def __init__(self, config: Config, dataset: Dataset) -> None:
        super().__init__()
        self.check_data(config, dataset)
        self.config = config
        self.n_users, self.n_items = dataset.n_users, dataset.n_items
        self.modalities = list(dataset.features)
        dim = config.embedding_dim
        # initialisation as in the authors' code: Xavier-uniform embeddings,
        # Xavier-normal weights of the predictor and the projections
        self.user_embedding = nn.Embedding(self.n_users, dim)
        self.item_embedding = nn.Embedding(self.n_items, dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.predictor = nn.Linear(dim, dim)
        self.projections = nn.ModuleList(
            nn.Linear(feats.shape[1], dim) for feats in dataset.features.values()
        )
        for layer in (self.predictor, *self.projections):
            nn.init.xavier_normal_(layer.weight)
        register_features(self, dataset, config.finetune_features)
        self.register_buffer(
            "adj", normalized_adjacency(dataset.train, self_loops=False), persistent=False
        )

    def _features(self, i: int) -> Tensor:
        return getattr(self, f"features_{i}")

    def propagate(self) -> tuple[Tensor, Tensor]:
        """Backbone outputs ``(H_U, H_I)``: LightGCN mean readout, items plus ``E_I``."""
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight], 0)
        out = propagate(self.adj, ego, self.config.n_layers)
        return out[: self.n_users], out[self.n_users :] + self.item_embedding.weight

    def project(self, items: Tensor | None = None) -> list[Tensor]:
        """Latent modality features ``H_m = F_m W_m + b_m`` of ``items`` (default all)."""
        return [
            proj(self._features(m) if items is None else self._features(m)[items])
            for m, proj in enumerate(self.projections)
        ]

    def target_view(self, h: Tensor) -> Tensor:
        """``sg(Dropout_p(h))``: the perturbed target view, cut from the graph."""
        return F.dropout(h.detach(), self.config.target_dropout, training=True)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        """Online (predicted) representations ``h~_u``, ``h~_i`` used for scoring."""
        users, items = self.propagate()
        return self.predictor(users), self.predictor(items)

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        users, items = self.propagate()
        h_u, h_i = users[batch.users], items[batch.pos_items]
        target_u, target_i = self.target_view(h_u), self.target_view(h_i)
        reconstruction = negative_cosine(self.predictor(h_u), target_i) + negative_cosine(
            self.predictor(h_i), target_u
        )
        alignment = h_u.new_zeros(())
        masked = h_u.new_zeros(())
        for h_m in self.project(batch.pos_items):
            online_m = self.predictor(h_m)
            alignment = alignment + negative_cosine(online_m, target_i)
            masked = masked + negative_cosine(online_m, self.target_view(h_m))
        norms = users.norm() + items.norm()
        weight = self.config.modality_loss_weight
        return {
            "reconstruction": reconstruction,
            "alignment": weight * alignment,
            "masked": weight * masked,
            "l2": self.config.l2_weight * norms / self.n_items,
        }


__all__ = ["BM3", "Config", "negative_cosine"]
