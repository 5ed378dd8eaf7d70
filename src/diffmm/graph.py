"""Normalised user-item bipartite adjacency matrices and sparse helpers.

Graph models propagate embeddings over the ``(U+I) x (U+I)`` bipartite matrix

    A = [[0, R], [R^T, 0]]   (+ I with self-loops),

normalised symmetrically, ``A_hat = D^{-1/2} A D^{-1/2}`` with ``D`` the row degrees
(LightGCN, He et al. SIGIR 2020, eq. 7 uses no self-loops; DiffMM's reference code adds
them). Rows of degree zero stay zero. Matrices are built with SciPy, vectorised, and
returned as float32 torch sparse tensors in CSR layout, which multiplies a dense matrix
(``torch.sparse.mm``) faster than COO on CPU.

These matrices are symmetric, so the gradient of ``A_hat @ X`` with respect to ``X`` is
``A_hat @ G`` again; :func:`spmm` with ``symmetric=True`` uses that instead of letting
autograd transpose the CSR matrix on every backward pass.

The figures behind both choices are in ``benchmarks/results/design_measurements.md``.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

#: Layout of every adjacency matrix this module returns.
LAYOUT = torch.sparse_csr


def csr_tensor(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    """``torch.sparse_csr_tensor`` without its "beta" warning (indices assumed valid)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


def _as_numpy_index(x: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.int64).ravel()


def _bipartite_from_edges(
    users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, self_loops: bool
) -> sp.csr_matrix:
    """Symmetrically normalised bipartite matrix as a SciPy CSR (float32, sorted)."""
    if users.shape != items.shape:
        raise ValueError(f"users and items differ in length: {users.shape} vs {items.shape}")
    if users.size and (users.min() < 0 or users.max() >= n_users):
        raise ValueError(f"user index out of range [0, {n_users})")
    if items.size and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"item index out of range [0, {n_items})")
    n = n_users + n_items
    rows = np.concatenate([users, items + n_users])
    cols = np.concatenate([items + n_users, users])
    if self_loops:
        diag = np.arange(n, dtype=np.int64)
        rows = np.concatenate([rows, diag])
        cols = np.concatenate([cols, diag])
    adj = sp.csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, cols)), shape=(n, n))
    adj.sum_duplicates()
    adj.data[:] = 1.0  # binary: repeated edges count once
    deg = np.asarray(adj.sum(axis=1), dtype=np.float64).ravel()
    with np.errstate(divide="ignore"):
        d_inv_sqrt = np.where(deg > 0, 1.0 / np.sqrt(deg), 0.0)
    # value of entry (r, c) is d_r^-1/2 * d_c^-1/2, computed on the stored entries only
    row_of_entry = np.repeat(np.arange(n), np.diff(adj.indptr))
    adj.data = (d_inv_sqrt[row_of_entry] * d_inv_sqrt[adj.indices]).astype(np.float32)
    adj.sort_indices()
    return adj


def scipy_to_torch(mat: sp.spmatrix, layout: torch.layout = LAYOUT) -> Tensor:
    """A SciPy sparse matrix as a float32 torch sparse tensor (CSR by default, or COO)."""
    if layout == torch.sparse_csr:
        csr = sp.csr_matrix(mat, dtype=np.float32)
        csr.sum_duplicates()
        csr.sort_indices()
        return csr_tensor(
            torch.from_numpy(csr.indptr.astype(np.int64)),
            torch.from_numpy(csr.indices.astype(np.int64)),
            torch.from_numpy(csr.data.astype(np.float32)),
            size=csr.shape,
        )
    if layout == torch.sparse_coo:
        coo = sp.coo_matrix(mat, dtype=np.float32)
        idx = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
        return torch.sparse_coo_tensor(
            idx,
            torch.from_numpy(coo.data.astype(np.float32)),
            size=coo.shape,
            check_invariants=False,
        ).coalesce()
    raise ValueError(f"unsupported layout {layout}")


def normalized_adjacency(interactions: sp.spmatrix, *, self_loops: bool) -> Tensor:
    """``D^{-1/2} A D^{-1/2}`` of the bipartite graph of a ``(U, I)`` interaction matrix.

    Args:
        interactions: user x item matrix; every stored non-zero is an edge (weight 1).
        self_loops: add the identity to ``A`` before normalising (degrees count it).

    Returns:
        A float32 ``(U+I, U+I)`` torch sparse CSR tensor; users first, then items.
    """
    coo = sp.coo_matrix(interactions)
    keep = coo.data != 0
    n_users, n_items = coo.shape
    adj = _bipartite_from_edges(
        coo.row[keep].astype(np.int64),
        coo.col[keep].astype(np.int64),
        n_users,
        n_items,
        self_loops,
    )
    return scipy_to_torch(adj)


def topk_bipartite(
    users: Tensor | np.ndarray,
    items: Tensor | np.ndarray,
    n_users: int,
    n_items: int,
    *,
    self_loops: bool = True,
    device: torch.device | str | None = None,
) -> Tensor:
    """The normalised bipartite matrix of the edges ``(users[j], items[j])``.

    Used for graphs generated from top-k scores (DiffMM's modality-aware user-item
    graphs). Repeated edges count once. ``device`` defaults to that of ``users`` when it
    is a tensor, else CPU.
    """
    if device is None:
        device = users.device if isinstance(users, Tensor) else "cpu"
    adj = _bipartite_from_edges(
        _as_numpy_index(users), _as_numpy_index(items), n_users, n_items, self_loops
    )
    return scipy_to_torch(adj).to(device)


class _SparseMM(torch.autograd.Function):
    """``adj @ x`` for a constant sparse ``adj``; backward is ``adj_t @ grad``."""

    @staticmethod
    def forward(ctx, adj: Tensor, adj_t: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.adj_t = adj_t
        return torch.sparse.mm(adj, x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, None, Tensor]:  # type: ignore[override]
        return None, None, torch.sparse.mm(ctx.adj_t, grad)


def spmm(
    adj: Tensor, x: Tensor, *, symmetric: bool = False, transpose: Tensor | None = None
) -> Tensor:
    """``adj @ x`` for a constant sparse ``adj`` and dense ``x``, differentiable in ``x``.

    Autograd would transpose a CSR ``adj`` at every backward pass (a sort of all its
    entries); give the transpose instead: ``symmetric=True`` when ``adj`` equals its
    transpose (every matrix built by :func:`normalized_adjacency` / :func:`topk_bipartite`
    does), or ``transpose=`` a precomputed :func:`transpose_csr` (matrices after
    :func:`edge_dropout` are no longer symmetric). No gradient flows to ``adj``.
    """
    if symmetric:
        transpose = adj
    if transpose is None:
        return torch.sparse.mm(adj, x)
    return _SparseMM.apply(adj, transpose, x)


def transpose_csr(adj: Tensor) -> Tensor:
    """The transpose of a CSR matrix, as CSR."""
    return adj.t().to_sparse_csr()


def _csr_rows(adj: Tensor) -> Tensor:
    crow = adj.crow_indices()
    return torch.repeat_interleave(
        torch.arange(adj.shape[0], device=crow.device), crow[1:] - crow[:-1]
    )


def edge_dropout(adj: Tensor, keep_rate: float, generator: torch.Generator | None = None) -> Tensor:
    """Keep each stored entry with probability ``keep_rate``, scaled by ``1/keep_rate``.

    ``keep_rate == 1`` returns ``adj`` itself. Works on CSR and coalesced COO tensors
    and returns the same layout. ``generator`` must live on ``adj``'s device.
    """
    if not 0.0 < keep_rate <= 1.0:
        raise ValueError(f"keep_rate must be in (0, 1], got {keep_rate}")
    if keep_rate == 1.0:
        return adj
    if adj.layout == torch.sparse_coo:
        adj = adj.coalesce()
    values = adj.values()
    mask = (
        torch.rand(values.shape, generator=generator, device=values.device, dtype=torch.float32)
        < keep_rate
    )
    new_values = values[mask] / keep_rate
    if adj.layout == torch.sparse_csr:
        rows = _csr_rows(adj)[mask]
        cols = adj.col_indices()[mask]
        counts = torch.bincount(rows, minlength=adj.shape[0])
        crow = torch.zeros(adj.shape[0] + 1, dtype=torch.int64, device=values.device)
        crow[1:] = torch.cumsum(counts, 0)
        return csr_tensor(crow, cols, new_values, size=tuple(adj.shape))
    if adj.layout == torch.sparse_coo:
        idx = adj.indices()[:, mask]
        return torch.sparse_coo_tensor(
            idx, new_values, size=adj.shape, is_coalesced=True, check_invariants=False
        )
    raise ValueError(f"unsupported layout {adj.layout}")


def knn_item_graph(features: Tensor, k: int, block_rows: int = 1024) -> Tensor:
    """Symmetrically normalised kNN graph of items by cosine similarity of ``features``.

    For each item the ``k`` most similar items (itself included, as in LATTICE's and
    FREEDOM's code) get an edge of weight 1; the matrix is then normalised as
    ``D^{-1/2} S D^{-1/2}`` with ``D`` its row sums. Similarities are computed
    ``block_rows`` items at a time, so only a ``(block_rows, n_items)`` block is ever
    dense, never the ``n_items x n_items`` matrix.

    Args:
        features: ``(n_items, d)`` float tensor (rows of zeros are allowed).
        k: neighbours per item (clipped to ``n_items``).

    Returns:
        A float32 ``(n_items, n_items)`` sparse CSR tensor on ``features``' device.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = features.shape[0]
    k = min(k, n)
    unit = torch.nn.functional.normalize(features.detach().float(), dim=1)
    cols = torch.empty(n, k, dtype=torch.long, device=features.device)
    with torch.no_grad():
        for start in range(0, n, block_rows):
            sims = unit[start : start + block_rows] @ unit.T
            cols[start : start + block_rows] = torch.topk(sims, k, dim=1).indices
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    sim = sp.csr_matrix(
        (np.ones(n * k, dtype=np.float32), (rows, cols.cpu().numpy().ravel())), shape=(n, n)
    )
    deg = np.asarray(sim.sum(axis=1), dtype=np.float64).ravel()
    d_inv_sqrt = 1.0 / np.sqrt(deg)  # every row has k >= 1 entries
    sim = sp.csr_matrix(sp.diags(d_inv_sqrt) @ sim @ sp.diags(d_inv_sqrt), dtype=np.float32)
    return scipy_to_torch(sim).to(features.device)
