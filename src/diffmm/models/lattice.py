"""LATTICE: latent item-item structures mined from multi-modal features.

Reference:
    J. Zhang, Y. Zhu, Q. Liu, S. Wu, S. Wang, L. Wang. "Mining Latent Structures for
    Multimedia Recommendation." ACM MM 2021 (arXiv 2104.09036). Authors' code:
    github.com/CRIPAC-DIG/LATTICE (also ported to the MMRec framework).

For each modality ``m`` with raw item features ``F_m`` (one row per item):

* the *original* graph ``S_m`` is the kNN graph of the cosine similarities of ``F_m``
  (``k`` neighbours per item, itself included), normalised ``D^{-1/2} S_m D^{-1/2}``;
  it is computed once and frozen;
* the *learned* graph ``Â_m`` is the same construction on the transformed features
  ``F̃_m = F_m W_m + b_m``, but keeps the top-``k`` similarity values as edge weights,
  so gradients reach ``W_m`` and ``b_m`` through the kept values::

      Â_m[i, j] = cos(f̃_i, f̃_j) if j is among the top-k of row i else 0,
      Â_m <- D_m^{-1/2} Â_m D_m^{-1/2}          (D_m: row sums of Â_m)

* the two are mixed with the skip coefficient ``λ`` (``original_graph_weight``)::

      A_m = (1 - λ) Â_m + λ S_m

and the modalities are combined with learnable weights ``α = softmax(modality_logits)``::

      A = Σ_m α_m A_m.

``L`` item-item convolutions on the item ID embeddings ``E_I`` give ``H = A^L E_I``. The
backbone is LightGCN (He et al., SIGIR 2020) over the user-item graph, and the final
representations are::

      x_u = LightGCN_u,   x_i = LightGCN_i + H_i / ||H_i||,   score(u, i) = x_u . x_i

trained with BPR plus ``l2_weight`` times the squared norms of the batch's *final*
representations divided by twice the batch size (the authors' ``decay`` term).

When the learned graph is rebuilt. The paper's formulation rebuilds ``Â_m`` in every
forward pass. The authors' code (and MMRec's port) does not: it rebuilds ``A`` with
gradients in the *first batch of each epoch* only and reuses that graph, detached, for
the epoch's other batches; evaluation rebuilds it from the current parameters. This
module does the same: :meth:`LATTICE.begin_epoch` drops the cached graph, the next
:meth:`LATTICE.loss` rebuilds it (gradients flow to ``W_m``, ``b_m``, ``α`` and the raw
features in that batch) and keeps a detached CSR copy (the buffers ``epoch_graph`` and
its transpose, so ``.to()`` moves it), and :meth:`LATTICE.embeddings` always rebuilds
it. ``rebuild_every_batch=True`` gives the paper's per-batch form instead.

Sparsity. Similarities are computed ``1024`` items at a time and only the top ``k`` per
row are kept, so no dense ``n_items x n_items`` matrix is ever built; ``A`` is a sparse
COO matrix with at most ``2 k n_items`` entries per modality (learned plus original).
Its product with the embeddings (:func:`values_mm`) computes the gradient of each kept
value on the stored entries only: ``torch.sparse.mm`` would form a dense ``n x n``
gradient for a sparse operand whose values require grad.

Departures from the authors' code (deliberate, small):

* the frozen graph ``S_m`` uses weight 1 on its kNN edges
  (:func:`diffmm.graph.knn_item_graph`, as in FREEDOM's code); LATTICE's code keeps the
  cosine values there too;
* ``Â_m`` is normalised per modality before weighting, as the paper writes it; the code
  normalises the weighted sum ``Σ_m α_m Â_m`` instead;
* the user-item graph is normalised ``D^{-1/2} A D^{-1/2}`` without self-loops
  (LightGCN); the authors' data loader gives ``D^{-1} (A + I)``;
* a row of ``Â_m`` whose kept similarities do not sum to a positive number gets a zero
  degree factor (the code would produce NaN).

Features are trainable by default (``finetune_features``), as in the authors' code
(``nn.Embedding.from_pretrained(..., freeze=False)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from diffmm.data.dataset import Dataset
from diffmm.graph import knn_item_graph, normalized_adjacency, spmm, transpose_csr
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


class LATTICEConfig(ModelConfig):
    """Hyper-parameters of LATTICE; the authors' flag name is given in brackets."""

    embedding_dim: int = Field(
        64, ge=1, le=MAX_WIDTH, description="Size d of user and item ID embeddings [embed_size]."
    )
    feature_embedding_dim: int = Field(
        64,
        ge=1,
        le=MAX_WIDTH,
        description="Output size of each modality's linear transform W_m [feat_embed_dim].",
    )
    knn_k: int = Field(
        10,
        ge=1,
        le=MAX_COUNT,
        description="k, neighbours kept per item (itself included) in the original and learned "
        "graphs, at most n_items [topk].",
    )
    original_graph_weight: float = Field(
        0.9,
        ge=0,
        le=1,
        description="λ, weight of the frozen original graph S_m against the learned graph Â_m "
        "in A_m = (1 - λ) Â_m + λ S_m [lambda_coeff].",
    )
    item_graph_layers: int = Field(
        1, ge=0, le=MAX_LAYERS, description="L, item-item convolutions H = A^L E_I [n_layers]."
    )
    user_item_layers: int = Field(
        2, ge=0, le=MAX_LAYERS, description="Layers of the LightGCN backbone [len(weight_size)]."
    )
    l2_weight: float = Field(
        1e-5,
        ge=0,
        description="Weight of the L2 penalty on the batch's final representations, divided by "
        "the batch size [regs[0], the code's decay].",
    )
    finetune_features: Flag = Field(
        True,
        description="Train the raw features F_m too, as the authors' code does "
        "(nn.Embedding.from_pretrained with freeze=False).",
    )
    rebuild_every_batch: Flag = Field(
        False,
        description="Rebuild the learned graph, with gradients, in every batch (the paper's "
        "formulation); by default it is rebuilt in the first batch of each epoch and reused "
        "detached, as in the authors' code.",
    )


# --------------------------------------------------------------------------- helpers
def knn_similarities(
    features: Tensor, k: int, block_rows: int = BLOCK_ROWS
) -> tuple[Tensor, Tensor]:
    """Top-``k`` cosine similarities of every row of ``features`` against all rows.

    Computed ``block_rows`` rows at a time, so at most a ``(block_rows, n)`` block is
    dense. Returns ``(values, columns)``, both ``(n, k)``; ``values`` is differentiable
    with respect to ``features``.
    """
    k = min(k, features.shape[0])
    unit = F.normalize(features, dim=1)
    values, columns = [], []
    for block in unit.split(block_rows):
        top = torch.topk(block @ unit.T, k, dim=1)
        values.append(top.values)
        columns.append(top.indices)
    return torch.cat(values), torch.cat(columns)


def normalized_knn_values(values: Tensor, columns: Tensor) -> Tensor:
    """Values of ``D^{-1/2} S D^{-1/2}`` for the row-major kNN matrix ``S`` (``values[i, j]``
    at ``(i, columns[i, j])``), ``D`` its row sums; non-positive rows get a zero factor."""
    degree = values.sum(dim=1)
    inv_sqrt = torch.where(degree > 0, degree.clamp_min(1e-12).rsqrt(), torch.zeros_like(degree))
    return values * inv_sqrt[:, None] * inv_sqrt[columns]


class _ValuesMM(torch.autograd.Function):
    """``A @ x`` for ``A`` given by COO ``(indices, values)``, differentiable in both.

    ``torch.sparse.mm``'s gradient with respect to a sparse operand first forms the dense
    ``grad @ x.T`` (``n x n``) and then masks it; here the gradient of each stored value
    is computed on the stored entries only, ``CHUNK`` entries at a time.
    """

    CHUNK = 1 << 16

    @staticmethod
    def forward(ctx, indices: Tensor, values: Tensor, x: Tensor, n_rows: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(indices, values, x)
        ctx.n_rows = n_rows
        a = torch.sparse_coo_tensor(indices, values, (n_rows, x.shape[0]), check_invariants=False)
        return torch.sparse.mm(a, x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor | None, Tensor | None, None]:  # type: ignore[override]
        indices, values, x = ctx.saved_tensors
        grad_values = grad_x = None
        if ctx.needs_input_grad[1]:  # d out[r] / d A[r, c] = x[c]
            grad_values = torch.cat(
                [
                    (grad[r] * x[c]).sum(1)
                    for r, c in zip(
                        indices[0].split(_ValuesMM.CHUNK),
                        indices[1].split(_ValuesMM.CHUNK),
                        strict=True,
                    )
                ]
            )
        if ctx.needs_input_grad[2]:  # A^T @ grad
            a_t = torch.sparse_coo_tensor(
                indices.flip(0), values, (x.shape[0], ctx.n_rows), check_invariants=False
            )
            grad_x = torch.sparse.mm(a_t, grad)
        return None, grad_values, grad_x, None


def values_mm(indices: Tensor, values: Tensor, x: Tensor) -> Tensor:
    """``A @ x`` for the square sparse ``A`` with COO ``indices`` and differentiable ``values``
    (repeated entries add up), never forming a dense ``n x n`` matrix, not even in backward."""
    return _ValuesMM.apply(indices, values, x, x.shape[0])


def csr_entries(adj: Tensor) -> tuple[Tensor, Tensor]:
    """``(indices (2, nnz), values)`` of a sparse CSR matrix."""
    crow = adj.crow_indices()
    rows = torch.repeat_interleave(torch.arange(adj.shape[0], device=crow.device), crow.diff())
    return torch.stack([rows, adj.col_indices()]), adj.values()


# --------------------------------------------------------------------------- model
class LATTICE(Recommender):
    """LATTICE with a LightGCN backbone over any number of item modalities."""

    name = "lattice"
    paper = "Zhang et al., ACM MM 2021"
    Config = LATTICEConfig

    adj: Tensor
    epoch_graph: Tensor | None
    epoch_graph_t: Tensor | None

    @classmethod
    def check_data(cls, config: ModelConfig, dataset: Dataset) -> None:
        """LATTICE needs at least one modality, and ``knn_k <= n_items``."""
        super().check_data(config, dataset)
        require_features(dataset, "LATTICE")
        assert isinstance(config, LATTICEConfig)
        at_most_n_items(config.knn_k, "lattice.knn_k", dataset)

    def __init__(self, config: LATTICEConfig, dataset: Dataset) -> None:
        super().__init__()
        self.check_data(config, dataset)
        self.config = config
        self.n_users, self.n_items = dataset.n_users, dataset.n_items
        self.modalities = list(dataset.features)
        n_mod = len(self.modalities)

        self.user_embedding = nn.Embedding(self.n_users, config.embedding_dim)
        self.item_embedding = nn.Embedding(self.n_items, config.embedding_dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        register_features(self, dataset, config.finetune_features)
        self.transforms = nn.ModuleList(
            nn.Linear(f.shape[1], config.feature_embedding_dim) for f in dataset.features.values()
        )
        # α = softmax(modality_logits), initialised equal (the code's [0.5, 0.5])
        self.modality_logits = nn.Parameter(torch.full((n_mod,), 1.0 / n_mod))

        self.register_buffer(
            "adj", normalized_adjacency(dataset.train, self_loops=False), persistent=False
        )
        for i in range(n_mod):  # S_m: frozen, from the raw features at construction
            graph = knn_item_graph(self.features(i).detach(), config.knn_k, BLOCK_ROWS)
            self.register_buffer(f"original_graph_{i}", graph, persistent=False)
        # the epoch's detached A and its transpose (CSR), rebuilt after begin_epoch
        self.register_buffer("epoch_graph", None, persistent=False)
        self.register_buffer("epoch_graph_t", None, persistent=False)

    # ----------------------------------------------------------------- state
    def features(self, i: int) -> Tensor:
        """Raw features ``F_i`` of modality ``i`` (``(n_items, d_i)``)."""
        return getattr(self, f"features_{i}")

    def original_graph(self, i: int) -> Tensor:
        """The frozen normalised kNN graph ``S_i`` (sparse CSR)."""
        return getattr(self, f"original_graph_{i}")

    def modality_weights(self) -> Tensor:
        """``α = softmax(modality_logits)``."""
        return torch.softmax(self.modality_logits, dim=0)

    def begin_epoch(self, epoch: int) -> dict[str, float]:
        """Drop the cached item graph: the epoch's first batch rebuilds it with gradients."""
        self.epoch_graph = self.epoch_graph_t = None
        weights = self.modality_weights().detach().cpu()
        return {
            f"modality_weight_{m}": float(w) for m, w in zip(self.modalities, weights, strict=True)
        }

    # ----------------------------------------------------------------- item graph
    def item_graph_entries(self) -> tuple[Tensor, Tensor]:
        """COO ``(indices, values)`` of ``A = Σ_m α_m ((1 - λ) Â_m + λ S_m)``, uncoalesced.

        The values are differentiable with respect to the transforms, the raw features
        (when trained) and ``modality_logits``.
        """
        cfg, n = self.config, self.n_items
        lam = cfg.original_graph_weight
        alpha = self.modality_weights()
        rows = torch.arange(n, device=alpha.device)
        indices, values = [], []
        for m, transform in enumerate(self.transforms):
            sims, cols = knn_similarities(transform(self.features(m)), cfg.knn_k)
            learned = normalized_knn_values(sims, cols)
            indices.append(torch.stack([rows.repeat_interleave(cols.shape[1]), cols.reshape(-1)]))
            values.append((1 - lam) * alpha[m] * learned.reshape(-1))
            orig_idx, orig_val = csr_entries(self.original_graph(m))
            indices.append(orig_idx)
            values.append(lam * alpha[m] * orig_val)
        return torch.cat(indices, 1), torch.cat(values)

    def item_graph(self) -> Tensor:
        """``A`` as a coalesced sparse COO tensor (values differentiable)."""
        indices, values = self.item_graph_entries()
        n = self.n_items
        return torch.sparse_coo_tensor(indices, values, (n, n), check_invariants=False).coalesce()

    def _cache(self, indices: Tensor, values: Tensor) -> None:
        n = self.n_items
        coo = torch.sparse_coo_tensor(indices, values.detach(), (n, n), check_invariants=False)
        self.epoch_graph = coo.coalesce().to_sparse_csr()
        self.epoch_graph_t = transpose_csr(self.epoch_graph)

    def _item_convolution(self, entries: tuple[Tensor, Tensor] | None) -> Tensor:
        """``H = A^L E_I`` with fresh differentiable ``entries`` or the epoch's CSR graph."""
        h = self.item_embedding.weight
        for _ in range(self.config.item_graph_layers):
            if entries is not None:
                h = values_mm(*entries, h)
            else:
                h = spmm(self.epoch_graph, h, transpose=self.epoch_graph_t)
        return h

    # ----------------------------------------------------------------- forward
    def _represent(self, entries: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        out = propagate(self.adj, ego, self.config.user_item_layers)
        users, items = out[: self.n_users], out[self.n_users :]
        h = self._item_convolution(entries)
        return users, items + F.normalize(h, dim=1)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        """Final representations, with the item graph rebuilt from the current parameters."""
        return self._represent(self.item_graph_entries())

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        entries = None
        if self.config.rebuild_every_batch:
            entries = self.item_graph_entries()
        elif self.epoch_graph is None:  # first batch of the epoch (authors' code)
            entries = self.item_graph_entries()
            self._cache(*entries)
        users, items = self._represent(entries)
        u, p, n = users[batch.users], items[batch.pos_items], items[batch.neg_items]
        pos = (u * p).sum(-1)
        neg = (u * n).sum(-1)
        return {"bpr": bpr_loss(pos, neg), "l2": self.config.l2_weight * l2_on_batch(u, p, n)}


Config = LATTICEConfig

__all__ = [
    "LATTICE",
    "LATTICEConfig",
    "Config",
    "csr_entries",
    "knn_similarities",
    "normalized_knn_values",
    "values_mm",
]
