"""VBPR: matrix factorisation with a learned projection of item content features.

Reference:
    R. He, J. McAuley. "VBPR: Visual Bayesian Personalized Ranking from Implicit
    Feedback." AAAI 2016.

Each user ``u`` has latent factors ``gamma_u`` (K-d) and content factors ``theta_u``
(K'-d); each item ``i`` has latent factors ``gamma_i`` (K-d), a bias ``beta_i`` and a
fixed feature vector ``f_i`` (F-d). A learned ``K' x F`` matrix ``E`` embeds the
features, so the content factors of the item are ``theta_i = E f_i`` (eq. 3), and the
preference predictor (eq. 4) is

    x_ui = alpha + beta_u + beta_i + gamma_u . gamma_i + theta_u . (E f_i) + beta' . f_i,

with ``beta'`` (F-d) the "visual bias": the users' overall opinion of an item's content.
``alpha`` and ``beta_u`` are the same for every item of a user, so they cancel in the
BPR difference ``x_ui - x_uj`` and in every user's ranking; they are left out.

``f_i`` is the concatenation of all the dataset's feature matrices, in the order of
:attr:`Dataset.modalities` (as in MMRec's VBPR, which applies the paper's visual model to
every modality at once), centred: each column's mean over the items is removed. Centring
leaves the family of predictors as it is (a shift ``m`` of every ``f_i`` adds
``theta_u . E m + beta' . m``, the same for all of a user's items), so rankings under the
paper's eq. 4 are unchanged, but it takes out of the L2 below a part that ranks nothing:
on TikTok the mean image row carries 85% of the rows' squared norm.

``embedding_dim`` is ``K``, the width of the ID factors ``gamma``, as in MF and every
other model here; ``content_dim`` is ``K'`` and defaults to ``K`` (MMRec's sizes:
``embedding_size`` factors each). So VBPR of a given ``embedding_dim`` contains MF of
that width: with ``E = 0`` and ``beta' = 0`` it is MF with item biases, and content that
ranks nothing costs it no ID capacity. (Splitting one total ``K + K'`` instead, as the
paper does to compare at a fixed number of factors, left VBPR on TikTok, whose content
the L2 below regularises to nothing, with half of MF's ID factors.)

Scores are dot products of

    user_repr_u = [gamma_u, theta_u, 1]     item_repr_i = [gamma_i, E f_i, beta_i + beta' . f_i],

so the constant last column carries the item biases. Training is BPR with L2 on the
batch's user factors ``[gamma_u, theta_u]`` and on the whole representation of its
positive and negative items, ``[gamma_i, E f_i, beta_i + beta' . f_i]``, divided by the
batch size (as in :mod:`diffmm.models.mf`; MMRec's VBPR regularises its item
representation, projected content included, the same way). Regularising ``E f_i`` and
``beta' . f_i`` rather than ``E`` and ``beta'`` ties the penalty to the scores the
content produces: with raw features of large norm (TikTok's image rows have norm about
33) an unregularised content part outgrows the ID factors, and the items end up ranked
by their features' projection (on TikTok VBPR fell below MF that way).
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from diffmm.data.dataset import Dataset
from diffmm.models.base import MAX_WIDTH, Batch, ModelConfig, Recommender, require_features
from diffmm.models.common import bpr_loss, l2_on_batch


class Config(ModelConfig):
    """Hyper-parameters of VBPR."""

    embedding_dim: int = Field(
        64,
        ge=1,
        le=MAX_WIDTH,
        description="Size K of the latent (ID) factors gamma_u and gamma_i, as in MF.",
    )
    content_dim: int | None = Field(
        None,
        ge=1,
        le=MAX_WIDTH,
        description="Size K' of the content factors theta_u and E f_i; None: embedding_dim "
        "(MMRec's sizes).",
    )
    l2_weight: float = Field(
        1e-4,
        ge=0,
        description="Weight of the L2 penalty on the batch's user factors and item "
        "representations (gamma_i, E f_i and the item bias), divided by the batch size "
        "(the paper's lambda_Theta).",
    )


def centred_features(dataset: Dataset, model: str) -> Tensor:
    """All of ``dataset``'s feature matrices side by side, each column less its mean over
    the items: ``(n_items, sum of their dims)``."""
    require_features(dataset, model)
    features = torch.from_numpy(np.concatenate(list(dataset.features.values()), axis=1))
    return features - features.mean(0, keepdim=True)


class VBPR(Recommender):
    """VBPR over the concatenation of every item-feature matrix."""

    name = "vbpr"
    paper = "He and McAuley, AAAI 2016"
    Config = Config

    features: Tensor

    @classmethod
    def check_data(cls, config: ModelConfig, dataset: Dataset) -> None:
        """VBPR needs at least one modality."""
        super().check_data(config, dataset)
        require_features(dataset, "VBPR")

    def __init__(self, config: Config, dataset: Dataset) -> None:
        super().__init__()
        self.check_data(config, dataset)
        # derived from the data, so moved by .to() but not saved in the state dict
        self.register_buffer("features", centred_features(dataset, "VBPR"), persistent=False)
        self.config = config
        self.n_users, self.n_items = dataset.n_users, dataset.n_items
        latent_dim = config.embedding_dim
        content_dim = latent_dim if config.content_dim is None else config.content_dim
        n_features = self.features.shape[1]
        self.user_gamma = nn.Embedding(self.n_users, latent_dim)
        self.user_theta = nn.Embedding(self.n_users, content_dim)
        self.item_gamma = nn.Embedding(self.n_items, latent_dim)
        self.item_bias = nn.Embedding(self.n_items, 1)
        self.projection = nn.Linear(n_features, content_dim, bias=False)  # E
        self.feature_bias = nn.Linear(n_features, 1, bias=False)  # beta'
        # Xavier-uniform factors as in MMRec's VBPR; biases start at zero
        for table in (self.user_gamma, self.user_theta, self.item_gamma):
            nn.init.xavier_uniform_(table.weight)
        nn.init.xavier_normal_(self.projection.weight)
        nn.init.zeros_(self.item_bias.weight)
        nn.init.zeros_(self.feature_bias.weight)

    def user_repr(self, users: Tensor | None = None) -> Tensor:
        """``[gamma_u, theta_u, 1]`` for each of ``users`` (every user when None)."""
        if users is None:
            gamma, theta = self.user_gamma.weight, self.user_theta.weight
        else:
            gamma, theta = self.user_gamma(users), self.user_theta(users)
        return torch.cat([gamma, theta, torch.ones_like(gamma[:, :1])], 1)

    def item_repr(self, items: Tensor | None = None) -> Tensor:
        """``[gamma_i, E f_i, beta_i + beta' . f_i]`` for each of ``items`` (all when None)."""
        if items is None:
            gamma, beta, feats = self.item_gamma.weight, self.item_bias.weight, self.features
        else:
            gamma, beta, feats = self.item_gamma(items), self.item_bias(items), self.features[items]
        return torch.cat([gamma, self.projection(feats), beta + self.feature_bias(feats)], 1)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return self.user_repr(), self.item_repr()

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        u = self.user_repr(batch.users)
        pos_repr, neg_repr = self.item_repr(batch.pos_items), self.item_repr(batch.neg_items)
        pos, neg = (u * pos_repr).sum(-1), (u * neg_repr).sum(-1)
        l2 = l2_on_batch(u[:, :-1], pos_repr, neg_repr)  # the user rows less their constant 1
        return {"bpr": bpr_loss(pos, neg), "l2": self.config.l2_weight * l2}


__all__ = ["VBPR", "Config", "centred_features"]
