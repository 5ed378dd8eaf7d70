"""FREEDOM: a frozen item-item graph and a denoised user-item graph.

Reference:
    X. Zhou, Z. Shen. "A Tale of Two Graphs: Freezing and Denoising Graph Structures for
    Multimodal Recommendation." ACM MM 2023 (arXiv 2211.06924). Authors' code:
    github.com/enoche/FREEDOM, maintained in the MMRec framework (``models/freedom.py``,
    ``configs/model/FREEDOM.yaml``).

Frozen item-item graph. For each modality ``m`` the kNN graph ``S_m`` of the cosine
similarities of the raw features (``k`` neighbours per item, itself included, weight 1),
normalised ``D^{-1/2} S_m D^{-1/2}``, is built once before training; the graph is their
weighted sum ``S = Σ_m β_m S_m``. The authors weight image by ``mm_image_weight = 0.1`` and
text by ``0.9``; with arbitrary modality names this module gives the *first* modality
``first_modality_weight`` (0.1; the loaders list image/visual first) and splits the rest
equally among the others (a single modality gets weight 1). ``S`` has no parameters.

Denoised user-item graph (degree-sensitive edge pruning). At the start of every epoch
(:meth:`FREEDOM.begin_epoch`) a fraction ``1 - ρ`` of the training edges is kept
(``ρ = edge_pruning_ratio``), sampled without replacement with probability proportional
to ``1 / sqrt(d_u d_i)`` (degrees in the full training graph), so edges between popular
nodes are dropped more often. The kept edges form a bipartite graph normalised
``D'^{-1/2} A' D'^{-1/2}`` with their own degrees ``D'``. Sampling draws
``u^{1/w}``-keys (Efraimidis-Spirakis) from torch's global RNG and keeps the largest; this
has the distribution of ``torch.multinomial(w, n, replacement=False)`` used by the
authors, without its limit of 2^24 categories, and is reproducible under
``torch.manual_seed``. Scoring uses the full (unpruned) graph, as the authors' code does.

Representations, with ``E_U``, ``E_I`` the ID embeddings::

    [X_U; X̃_I] = LightGCN over the pruned graph (mean of layers 0..L_ui)
    H = S^{L_ii} E_I                                  (item-item convolution)
    x_u = X_U[u],   x_i = X̃_I[i] + H[i],   score(u, i) = x_u . x_i

Loss, for a batch of triples ``(u, i, j)``::

    L = BPR(x_u, x_i, x_j) + λ Σ_m BPR(x_u, (F_m W_m)_i, (F_m W_m)_j)
        + l2_weight * (|e_u|^2 + |e_i|^2 + |e_j|^2) / (2 * batch size)

with ``λ = modality_loss_weight`` (the code's ``reg_weight``): each modality's projected
features are scored against the user's final representation. The code's projection is
an ``nn.Linear`` with a bias, but a bias cancels in the BPR difference (it never gets a
gradient and changes no score), so it is left out here. The authors' loss has no L2
term (MMRec's ``weight_decay`` is 0), so ``l2_weight`` defaults to 0; when set it applies
to the batch's layer-0 ID embeddings, as in LightGCN. The raw features are trainable by
default, as in the code (``nn.Embedding.from_pretrained(..., freeze=False)``); they only
reach the loss through the modality BPR terms, never the frozen graph.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from diffmm.data.dataset import Dataset
from diffmm.graph import (
    knn_item_graph,
    normalized_adjacency,
    spmm,
    topk_bipartite,
    transpose_csr,
)
from diffmm.models.base import (
    MAX_COUNT,
    MAX_LAYERS,
    MAX_WIDTH,
    Batch,
    Flag,
    ModelConfig,
    Recommender,
    at_most_n_items,
    require_features,
)
from diffmm.models.common import BLOCK_ROWS, bpr_loss, l2_on_batch, register_features
from diffmm.models.lightgcn import propagate


class FREEDOMConfig(ModelConfig):
    """Hyper-parameters of FREEDOM; the authors' (MMRec) config key is given in brackets."""

    embedding_dim: int = Field(
        64,
        ge=1,
        le=MAX_WIDTH,
        description="Size d of user and item ID embeddings [embedding_size].",
    )
    feature_embedding_dim: int = Field(
        64,
        ge=1,
        le=MAX_WIDTH,
        description="Output size of each modality's projection W_m; must equal embedding_dim "
        "for the modality BPR terms [feat_embed_dim].",
    )
    knn_k: int = Field(
        10,
        ge=1,
        le=MAX_COUNT,
        description="k, neighbours per item (itself included) in each S_m, at most n_items "
        "[knn_k].",
    )
    first_modality_weight: float = Field(
        0.1,
        ge=0,
        le=1,
        description="β of the first modality in S = Σ_m β_m S_m; the others share 1 - β "
        "equally [mm_image_weight].",
    )
    item_graph_layers: int = Field(
        1,
        ge=0,
        le=MAX_LAYERS,
        description="L_ii, item-item convolutions H = S^L E_I [n_mm_layers].",
    )
    user_item_layers: int = Field(
        2,
        ge=0,
        le=MAX_LAYERS,
        description="L_ui, LightGCN layers over the pruned graph [n_ui_layers].",
    )
    edge_pruning_ratio: float = Field(
        0.8,
        ge=0,
        lt=1,
        description="ρ, share of training edges dropped each epoch by degree-sensitive "
        "pruning; 0 trains on the full graph [dropout, searched in {0.8, 0.9}].",
    )
    modality_loss_weight: float = Field(
        1e-4,
        ge=0,
        description="λ, weight of the modality BPR terms [reg_weight, searched in "
        "{0, 1e-5, 1e-4, 1e-3}].",
    )
    l2_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of an L2 penalty on the batch's layer-0 ID embeddings divided by "
        "the batch size; the authors' code has none.",
    )
    finetune_features: Flag = Field(
        True,
        description="Train the raw features F_m in the modality BPR terms, as the authors' "
        "code does (freeze=False).",
    )

    @model_validator(mode="after")
    def _projection_matches_embedding(self) -> FREEDOMConfig:
        if self.modality_loss_weight > 0 and self.feature_embedding_dim != self.embedding_dim:
            raise ValueError(
                "FREEDOM scores projected features against user representations: "
                f"feature_embedding_dim ({self.feature_embedding_dim}) must equal "
                f"embedding_dim ({self.embedding_dim})"
            )
        return self


def modality_graph_weights(n_modalities: int, first_weight: float) -> list[float]:
    """``β``: ``first_weight`` for the first modality, the rest of 1 split equally."""
    if n_modalities == 1:
        return [1.0]
    rest = (1.0 - first_weight) / (n_modalities - 1)
    return [first_weight] + [rest] * (n_modalities - 1)


def frozen_item_graph(features: list[Tensor], k: int, weights: list[float]) -> Tensor:
    """``S = Σ_m β_m S_m`` of the normalised kNN graphs of ``features``, as sparse CSR."""
    graphs = [knn_item_graph(f, k, BLOCK_ROWS) for f in features]
    if len(graphs) == 1:
        return graphs[0]  # its weight is 1
    coo = [g.to_sparse_coo() for g in graphs]
    total = torch.sparse_coo_tensor(
        torch.cat([g.indices() for g in coo], 1),
        torch.cat([w * g.values() for w, g in zip(weights, coo, strict=True)]),
        graphs[0].shape,
        check_invariants=False,
    )
    return total.coalesce().to_sparse_csr()


def degree_sensitive_sample(weights: Tensor, n_keep: int) -> Tensor:
    """Indices of ``n_keep`` entries drawn without replacement with probability ∝ ``weights``.

    Efraimidis-Spirakis: keep the ``n_keep`` largest keys ``log(u) / w`` with ``u`` uniform
    from torch's global RNG (same distribution as sequential weighted draws).
    """
    keys = torch.rand(weights.shape, device=weights.device).log() / weights
    return torch.topk(keys, n_keep, sorted=False).indices


class FREEDOM(Recommender):
    """FREEDOM with a LightGCN backbone over any number of item modalities."""

    name = "freedom"
    paper = "Zhou and Shen, ACM MM 2023"
    Config = FREEDOMConfig

    adj: Tensor
    item_graph: Tensor
    item_graph_t: Tensor
    edge_users: Tensor
    edge_items: Tensor
    edge_weights: Tensor
    pruned_adj: Tensor | None

    @classmethod
    def check_data(cls, config: ModelConfig, dataset: Dataset) -> None:
        """FREEDOM needs at least one modality, and ``knn_k <= n_items``."""
        super().check_data(config, dataset)
        require_features(dataset, "FREEDOM")
        assert isinstance(config, FREEDOMConfig)
        at_most_n_items(config.knn_k, "freedom.knn_k", dataset)

    def __init__(self, config: FREEDOMConfig, dataset: Dataset) -> None:
        super().__init__()
        self.check_data(config, dataset)
        self.config = config
        self.n_users, self.n_items = dataset.n_users, dataset.n_items
        self.modalities = list(dataset.features)

        self.user_embedding = nn.Embedding(self.n_users, config.embedding_dim)
        self.item_embedding = nn.Embedding(self.n_items, config.embedding_dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        register_features(self, dataset, config.finetune_features)
        # W_m without the code's bias: b_m cancels in u.(F_i W + b) - u.(F_j W + b)
        self.projections = nn.ModuleList(
            nn.Linear(f.shape[1], config.feature_embedding_dim, bias=False)
            for f in dataset.features.values()
        )

        # derived from the data: moved by .to() but not saved in the state dict
        train = dataset.train.tocoo()
        self.register_buffer("adj", normalized_adjacency(train, self_loops=False), persistent=False)
        users = torch.from_numpy(train.row.astype(np.int64))
        items = torch.from_numpy(train.col.astype(np.int64))
        self.register_buffer("edge_users", users, persistent=False)
        self.register_buffer("edge_items", items, persistent=False)
        self.register_buffer("edge_weights", self._edge_weights(users, items), persistent=False)
        beta = modality_graph_weights(len(self.modalities), config.first_modality_weight)
        feats = [self.features(i).detach() for i in range(len(self.modalities))]
        graph = frozen_item_graph(feats, config.knn_k, beta)
        self.register_buffer("item_graph", graph, persistent=False)
        self.register_buffer("item_graph_t", transpose_csr(graph), persistent=False)
        self.register_buffer("pruned_adj", None, persistent=False)  # the epoch's denoised graph

    def _edge_weights(self, users: Tensor, items: Tensor) -> Tensor:
        """``1 / sqrt(d_u d_i)`` of every training edge (full-graph degrees)."""
        d_u = torch.bincount(users, minlength=self.n_users).double()
        d_i = torch.bincount(items, minlength=self.n_items).double()
        return (d_u[users] * d_i[items]).rsqrt().float()

    def features(self, i: int) -> Tensor:
        """Raw features ``F_i`` of modality ``i`` (``(n_items, d_i)``)."""
        return getattr(self, f"features_{i}")

    # ----------------------------------------------------------------- pruning
    def prune(self) -> Tensor:
        """A degree-sensitively pruned, renormalised user-item graph (sparse CSR)."""
        ratio = self.config.edge_pruning_ratio
        if ratio <= 0:
            return self.adj
        n_keep = int(len(self.edge_weights) * (1.0 - ratio))
        keep = degree_sensitive_sample(self.edge_weights, n_keep)
        users, items = self.edge_users[keep], self.edge_items[keep]
        return topk_bipartite(users, items, self.n_users, self.n_items, self_loops=False)

    def begin_epoch(self, epoch: int) -> dict[str, float]:
        """Sample the epoch's denoised user-item graph."""
        self.pruned_adj = self.prune()
        return {"kept_edges": float(self.pruned_adj.values().numel() // 2)}

    # ----------------------------------------------------------------- forward
    def _represent(self, adj: Tensor) -> tuple[Tensor, Tensor]:
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        out = propagate(adj, ego, self.config.user_item_layers)
        h = self.item_embedding.weight
        for _ in range(self.config.item_graph_layers):
            h = spmm(self.item_graph, h, transpose=self.item_graph_t)
        return out[: self.n_users], out[self.n_users :] + h

    def embeddings(self) -> tuple[Tensor, Tensor]:
        """Final representations over the full training graph (as the authors score)."""
        return self._represent(self.adj)

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        cfg = self.config
        if self.pruned_adj is None:  # loss before any begin_epoch: prune now
            self.pruned_adj = self.prune()
        users, items = self._represent(self.pruned_adj)
        u = users[batch.users]
        pos = (u * items[batch.pos_items]).sum(-1)
        neg = (u * items[batch.neg_items]).sum(-1)
        losses = {"bpr": bpr_loss(pos, neg)}
        if cfg.modality_loss_weight > 0:
            modal = u.new_zeros(())
            for m, projection in enumerate(self.projections):
                feats = self.features(m)
                p = projection(feats[batch.pos_items])
                n = projection(feats[batch.neg_items])
                modal = modal + bpr_loss((u * p).sum(-1), (u * n).sum(-1))
            losses["modality_bpr"] = cfg.modality_loss_weight * modal
        l2 = l2_on_batch(
            self.user_embedding(batch.users),
            self.item_embedding(batch.pos_items),
            self.item_embedding(batch.neg_items),
        )
        losses["l2"] = cfg.l2_weight * l2
        return losses


Config = FREEDOMConfig

__all__ = [
    "FREEDOM",
    "FREEDOMConfig",
    "Config",
    "degree_sensitive_sample",
    "frozen_item_graph",
    "modality_graph_weights",
]
