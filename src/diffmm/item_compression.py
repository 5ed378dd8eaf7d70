"""Item clustering and the per-cluster autoencoders of latent diffusion (L-DiffRec).

Wang et al., "Diffusion Recommender Model", SIGIR 2023, §3.4 (L-DiffRec): instead of
diffusing a user's whole interaction row (width ``n_items``), the items are clustered
into ``C`` groups, each cluster's slice of the row is compressed by its own encoder, and
the diffusion runs on the concatenated latent ``z0 = [z0_1; ...; z0_C]``. A decoder per
cluster maps a (denoised) latent back to item scores; its training loss is the
multinomial log-likelihood of the row under the decoded scores (L-DiffRec eq. 17's
reconstruction term, after Mult-VAE), ``-Σ_i x0_i log softmax(decode(ẑ0))_i``.

Choices (L-DiffRec's defaults unless said): ``C = 2`` clusters, a total latent width of
300, widths proportional to the cluster sizes; the encoder of a cluster is one linear
layer on the L2-normalised row (L-DiffRec normalises before encoding); the decoders are
linear. The encoders are deterministic (no variational posterior, no KL term and no KL
annealing): the latent diffusion already adds the noise, and a deterministic code keeps
generation a pure function of the row, as in the full-row path.

:func:`kmeans` clusters items (seeded k-means++ and Lloyd iterations on the CPU, ties to
the lowest index, clusters numbered by their first item: the same clusters on every
process); :class:`ItemAutoencoder` holds one clustering's encoders and decoders.
Decoded rows are kept as one block per cluster (items in cluster order), so that neither
training nor top-k generation forms a second full-width copy of the scores.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffmm.errors import ConfigError


# ----------------------------------------------------------------- clustering
def _nearest(
    points: Tensor, centroids: Tensor, squares: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Each point's nearest centroid (squared Euclidean; ties to the lower index) and the
    squared distance to it; ``squares``: the points' squared norms, ``(n, 1)``, if known."""
    squares = points.square().sum(1, keepdim=True) if squares is None else squares
    d2 = (centroids.square().sum(1) - 2 * points @ centroids.T).add_(squares)
    best, labels = d2.min(dim=1)
    return labels, best.clamp_min_(0)


def _centroids(points: Tensor, labels: Tensor, old: Tensor) -> Tensor:
    """Mean of each cluster's points (one product with the one-hot labels); an empty
    cluster keeps its old centroid."""
    onehot = F.one_hot(labels, len(old)).to(points.dtype)
    sizes = onehot.sum(0).unsqueeze(1)
    return torch.where(sizes > 0, (onehot.T @ points) / sizes.clamp_min(1), old)


def _plus_plus_init(points: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): one seeded draw per centroid."""
    first = int(torch.randint(len(points), (1,), generator=gen))
    centroids = points[first : first + 1]
    for _ in range(1, k):
        _, d2 = _nearest(points, centroids)
        weights = d2 if float(d2.sum()) > 0 else torch.ones_like(d2)
        pick = int(torch.multinomial(weights.double(), 1, generator=gen))
        centroids = torch.cat([centroids, points[pick : pick + 1]])
    return centroids


def _fill_empty(labels: Tensor, d2: Tensor, k: int) -> Tensor:
    """Give every empty cluster one item: the farthest member of the largest cluster.

    With ``k <= n`` points a largest cluster of two or more exists while one is empty.
    """
    labels = labels.clone()
    for c in range(k):
        sizes = torch.bincount(labels, minlength=k)
        if sizes[c] > 0:
            continue
        donor = int(sizes.argmax())
        members = torch.nonzero(labels == donor).squeeze(1)
        labels[members[d2[members].argmax()]] = c
    return labels


def _canonical(labels: Tensor, k: int) -> Tensor:
    """Renumber clusters by their first point: cluster 0 holds point 0, and so on."""
    n = len(labels)
    first = torch.full((k,), n, dtype=torch.long).scatter_reduce_(
        0, labels, torch.arange(n), reduce="amin"
    )
    rank = torch.empty(k, dtype=torch.long)
    rank[torch.argsort(first, stable=True)] = torch.arange(k)
    return rank[labels]


def kmeans(points: Tensor | np.ndarray, k: int, iters: int = 50, seed: int = 0) -> Tensor:
    """Cluster the rows of ``points`` into ``k`` non-empty clusters; labels ``(n,)``.

    k-means++ seeding from ``seed``, then Lloyd iterations until no point changes
    cluster (at most ``iters``), in float32 on the CPU: deterministic. Raises
    :class:`ConfigError` unless ``1 <= k <= n``.
    """
    x = torch.as_tensor(points).detach().to("cpu", torch.float32)
    n = len(x)
    if not 1 <= k <= n:
        raise ConfigError(f"k-means needs 1 <= clusters <= points ({n}), got {k}")
    gen = torch.Generator().manual_seed(seed)
    squares = x.square().sum(1, keepdim=True)
    centroids = _plus_plus_init(x, k, gen)
    labels, d2 = _nearest(x, centroids, squares)
    for _ in range(iters):
        centroids = _centroids(x, labels, centroids)
        moved, d2 = _nearest(x, centroids, squares)
        if torch.equal(moved, labels):
            break
        labels = moved
    return _canonical(_fill_empty(labels, d2, k), k)


def normalized_rows(features: Tensor | np.ndarray) -> Tensor:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32 on the CPU."""
    return F.normalize(torch.as_tensor(features).detach().to("cpu", torch.float32), dim=1)


def interaction_sketch(train: sp.csr_matrix, dim: int = 64, seed: int = 0) -> Tensor:
    """Unit-norm ``A^T G`` (``G``: seeded ``(n_users, dim)`` Gaussian): each item's
    column of training interactions under a random projection, so that the sketches'
    inner products approximate the items' cosine co-occurrence (Johnson-Lindenstrauss).
    Linear in the interactions; what items are clustered on when no features are given.
    """
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(train.shape[0], dim, generator=gen).numpy()
    return normalized_rows(np.asarray(train.T.astype(np.float32) @ g))


def latent_widths(sizes: Tensor, total: int) -> list[int]:
    """Latent width of each cluster: at least 1, the rest in proportion to the cluster
    sizes (largest remainders), summing to ``total``."""
    sizes = torch.as_tensor(sizes, dtype=torch.float64)
    k = len(sizes)
    if total < k:
        raise ConfigError(f"latent_dim ({total}) must be at least latent_clusters ({k})")
    share = (total - k) * sizes / sizes.sum()
    widths = 1 + share.floor().long()
    short = total - int(widths.sum())
    widths[torch.argsort(share - share.floor(), descending=True, stable=True)[:short]] += 1
    return widths.tolist()


# ----------------------------------------------------------------- autoencoder
class ItemAutoencoder(nn.Module):
    """One clustering's per-cluster linear encoders and decoders (L-DiffRec §3.4).

    Args:
        labels: ``(n_items,)`` cluster of each item, clusters ``0..C-1`` all non-empty.
        latent_dim: total latent width, split over the clusters by :func:`latent_widths`.

    ``labels`` is a persistent buffer: a loaded state brings its clustering along, and the
    cluster layout (``order``, ``position``) is rebuilt from it.
    """

    def __init__(self, labels: Tensor, latent_dim: int) -> None:
        super().__init__()
        labels = torch.as_tensor(labels, dtype=torch.long)
        self.register_buffer("labels", labels.clone())
        self._layout()
        self.widths = latent_widths(self.sizes, latent_dim)
        self.encoders = nn.ModuleList(
            nn.Linear(n, w) for n, w in zip(self.sizes, self.widths, strict=True)
        )
        self.decoders = nn.ModuleList(
            nn.Linear(w, n) for n, w in zip(self.sizes, self.widths, strict=True)
        )
        for layer in [*self.encoders, *self.decoders]:
            nn.init.xavier_normal_(layer.weight)  # L-DiffRec's initialisation
            nn.init.normal_(layer.bias, 0.0, 0.001)

    def _layout(self) -> None:
        """Items sorted by cluster (``order``), each item's slot in it (``position``)."""
        labels = self.labels
        self.n_items = len(labels)
        self.sizes = torch.bincount(labels.cpu(), minlength=int(labels.max()) + 1).tolist()
        order = torch.argsort(labels, stable=True)
        position = torch.empty_like(order)
        position[order] = torch.arange(self.n_items, device=order.device)
        starts = torch.tensor([0, *np.cumsum(self.sizes)[:-1].tolist()], device=labels.device)
        for name, value in (("order", order), ("position", position), ("starts", starts)):
            self.register_buffer(name, value, persistent=False)

    def _load_from_state_dict(
        self, state: Mapping[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        super()._load_from_state_dict(state, prefix, *args, **kwargs)
        self._layout()

    @property
    def latent_dim(self) -> int:
        return sum(self.widths)

    # --------------------------------------------------------------- encoding
    def encode(self, rows: Tensor) -> Tensor:
        """Latents ``(b, latent_dim)`` of a sparse CSR batch of interaction rows.

        Each row is L2-normalised; cluster ``c``'s part is ``W_c x_c + b_c`` over the
        row's entries in ``c`` (a gather of encoder columns, added per row).
        """
        crow, cols, values = rows.crow_indices(), rows.col_indices(), rows.values()
        counts = crow[1:] - crow[:-1]
        row_of = torch.repeat_interleave(torch.arange(len(counts), device=cols.device), counts)
        norms = torch.zeros(len(counts), device=cols.device).index_add_(
            0, row_of, values.float().square()
        )
        scaled = values.float() * norms.clamp_min(1e-12).rsqrt()[row_of]
        cluster = self.labels[cols]
        local = self.position[cols] - self.starts[cluster]
        parts = []
        for c, enc in enumerate(self.encoders):
            mine = cluster == c
            gathered = enc.weight.T[local[mine]] * scaled[mine, None]
            out = gathered.new_zeros(len(counts), enc.out_features)
            parts.append(out.index_add_(0, row_of[mine], gathered) + enc.bias)
        return torch.cat(parts, dim=1)

    # --------------------------------------------------------------- decoding
    def decode(self, latent: Tensor) -> list[Tensor]:
        """Item scores (logits) of each cluster, ``(b, n_c)`` in cluster order."""
        parts = latent.split(self.widths, dim=1)
        return [dec(z) for dec, z in zip(self.decoders, parts, strict=True)]

    def item_blocks(self, per_item: Tensor) -> list[Tensor]:
        """Rows of a per-item tensor ``(n_items, ...)`` split into the clusters' blocks."""
        return list(per_item[self.order].split(self.sizes))

    def scores(self, blocks: list[Tensor]) -> Tensor:
        """The decoded scores as ``(b, n_items)`` in item order (for small batches)."""
        return torch.cat(blocks, dim=1)[:, self.position]

    def multinomial(
        self, blocks: list[Tensor], rows: Tensor
    ) -> tuple[Tensor, list[Tensor], Tensor]:
        """Per-row multinomial NLL ``-Σ_i x0_i log softmax(s)_i`` of the sparse rows
        under the decoded blocks, ``softmax(s)`` as blocks, and each row's mass ``|x0|_1``
        (``|x0|_1 softmax(s)`` estimates ``x0`` on its scale, for MSI)."""
        crow, cols, values = rows.crow_indices(), rows.col_indices(), rows.values()
        counts = crow[1:] - crow[:-1]
        row_of = torch.repeat_interleave(torch.arange(len(counts), device=cols.device), counts)
        log_norm = torch.stack([b.logsumexp(dim=1) for b in blocks], dim=1).logsumexp(dim=1)
        cluster, slot = self.labels[cols], self.position[cols]
        picked = torch.zeros(len(cols), device=cols.device, dtype=blocks[0].dtype)
        for c, block in enumerate(blocks):
            mine = torch.nonzero(cluster == c).squeeze(1)
            local = slot[mine] - self.starts[c]
            picked = picked.index_put((mine,), block[row_of[mine], local])
        mass = torch.zeros_like(log_norm).index_add_(0, row_of, values.to(log_norm.dtype))
        nll = mass * log_norm - torch.zeros_like(log_norm).index_add(0, row_of, values * picked)
        probabilities = [torch.exp(b - log_norm[:, None]) for b in blocks]
        return nll, probabilities, mass

    @torch.no_grad()
    def topk(self, latent: Tensor, k: int) -> Tensor:
        """Each row's ``k`` highest-scoring items (ids), cluster by cluster then merged
        (one cluster's scores exist at a time)."""
        values, items = [], []
        parts = latent.split(self.widths, dim=1)
        for c, (decoder, z) in enumerate(zip(self.decoders, parts, strict=True)):
            block = decoder(z)
            top = torch.topk(block, min(k, block.shape[1]), dim=1)
            del block  # before the next cluster's scores
            values.append(top.values)
            items.append(self.order[self.starts[c] + top.indices])
        best = torch.topk(torch.cat(values, dim=1), k, dim=1).indices
        return torch.cat(items, dim=1).gather(1, best)


def check_latent_clusters(clusters: int, n_items: int, data: str = "the data") -> None:
    """One-line :class:`ConfigError` unless ``diffmm.latent_clusters <= n_items``."""
    if clusters > n_items:
        raise ConfigError(
            f"diffmm.latent_clusters = {clusters} is larger than the data allow: {data} has "
            f"{n_items} items; set diffmm.latent_clusters between 1 and {n_items}"
        )
