"""Normalised bipartite adjacency, top-k graphs and edge dropout, on a hand-checked case."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from diffmm.graph import edge_dropout, normalized_adjacency, spmm, topk_bipartite

# 2 users x 3 items:  u0 - {i0, i1},  u1 - {i1, i2}
R = sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 1]], dtype=np.float32))
# Node order: u0, u1, i0, i1, i2  (users first, items offset by n_users = 2).
# Without self-loops the degrees are u0: 2, u1: 2, i0: 1, i1: 2, i2: 1 and
# A_hat[r, c] = 1 / sqrt(d_r d_c):
#   u0-i0: 1/sqrt(2*1) = 0.7071   u0-i1: 1/sqrt(2*2) = 0.5
#   u1-i1: 1/sqrt(2*2) = 0.5      u1-i2: 1/sqrt(2*1) = 0.7071
S2 = 1 / math.sqrt(2)
EXPECTED_NO_LOOPS = np.array(
    [
        [0, 0, S2, 0.5, 0],
        [0, 0, 0, 0.5, S2],
        [S2, 0, 0, 0, 0],
        [0.5, 0.5, 0, 0, 0],
        [0, S2, 0, 0, 0],
    ],
    dtype=np.float32,
)
# With self-loops every degree grows by one: u0: 3, u1: 3, i0: 2, i1: 3, i2: 2.
#   diagonal: 1/d  -> u: 1/3, i0: 1/2, i1: 1/3, i2: 1/2
#   u0-i0: 1/sqrt(3*2) = 0.4082   u0-i1: 1/sqrt(3*3) = 1/3
#   u1-i1: 1/3                    u1-i2: 1/sqrt(3*2) = 0.4082
S6 = 1 / math.sqrt(6)
T = 1 / 3
EXPECTED_LOOPS = np.array(
    [
        [T, 0, S6, T, 0],
        [0, T, 0, T, S6],
        [S6, 0, 0.5, 0, 0],
        [T, T, 0, T, 0],
        [0, S6, 0, 0, 0.5],
    ],
    dtype=np.float32,
)


def test_normalized_adjacency_without_self_loops():
    adj = normalized_adjacency(R, self_loops=False)
    assert adj.layout == torch.sparse_csr
    assert adj.dtype == torch.float32
    assert adj.shape == (5, 5)
    np.testing.assert_allclose(adj.to_dense().numpy(), EXPECTED_NO_LOOPS, rtol=1e-6)
    assert adj.values().numel() == 8  # only the edges are stored


def test_normalized_adjacency_with_self_loops():
    adj = normalized_adjacency(R, self_loops=True)
    np.testing.assert_allclose(adj.to_dense().numpy(), EXPECTED_LOOPS, rtol=1e-6)


def test_zero_degree_nodes_give_zero_rows_not_nan():
    # user 1 and item 2 have no interactions
    R0 = sp.csr_matrix(np.array([[1, 0, 0], [0, 0, 0]], dtype=np.float32))
    dense = normalized_adjacency(R0, self_loops=False).to_dense().numpy()
    assert np.isfinite(dense).all()
    assert dense[1].sum() == 0 and dense[4].sum() == 0
    assert dense[0, 2] == pytest.approx(1.0)
    # with self-loops an isolated node keeps only its self-loop (degree 1)
    dense = normalized_adjacency(R0, self_loops=True).to_dense().numpy()
    assert dense[1, 1] == pytest.approx(1.0) and dense[1].sum() == pytest.approx(1.0)


def test_topk_bipartite_matches_matrix_version_and_dedups():
    users = torch.tensor([0, 0, 1, 1, 1])
    items = torch.tensor([0, 1, 1, 2, 2])  # (1, 2) twice: counts once
    for loops, expected in [(True, EXPECTED_LOOPS), (False, EXPECTED_NO_LOOPS)]:
        adj = topk_bipartite(users, items, 2, 3, self_loops=loops)
        np.testing.assert_allclose(adj.to_dense().numpy(), expected, rtol=1e-6)
    adj = topk_bipartite(np.array([0, 1]), np.array([0, 2]), 2, 3)  # numpy input
    assert adj.shape == (5, 5)
    with pytest.raises(ValueError):
        topk_bipartite(torch.tensor([2]), torch.tensor([0]), 2, 3)


def test_matches_a_dense_reference_on_random_data():
    rng = np.random.default_rng(0)
    dense_r = (rng.random((7, 9)) < 0.3).astype(np.float32)
    n = 16
    a = np.zeros((n, n))
    a[:7, 7:] = dense_r
    a[7:, :7] = dense_r.T
    a += np.eye(n)
    d = a.sum(1)
    ref = a / np.sqrt(np.outer(d, d))
    got = normalized_adjacency(sp.csr_matrix(dense_r), self_loops=True).to_dense().numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)


def test_edge_dropout_keep_rate_one_is_identity():
    adj = normalized_adjacency(R, self_loops=True)
    assert edge_dropout(adj, 1.0) is adj
    with pytest.raises(ValueError):
        edge_dropout(adj, 0.0)


@pytest.mark.parametrize("layout", ["csr", "coo"])
def test_edge_dropout_keeps_a_fraction_and_rescales(layout):
    rng = np.random.default_rng(1)
    big = sp.csr_matrix((rng.random((200, 150)) < 0.2).astype(np.float32))
    adj = normalized_adjacency(big, self_loops=False)
    if layout == "coo":
        adj = adj.to_sparse_coo().coalesce()
    gen = torch.Generator().manual_seed(0)
    dropped = edge_dropout(adj, 0.5, gen)
    assert dropped.layout == adj.layout
    full = adj.to_dense()
    half = dropped.to_dense()
    kept = half != 0
    frac = kept.sum().item() / (full != 0).sum().item()
    assert 0.45 < frac < 0.55
    torch.testing.assert_close(half[kept], full[kept] / 0.5)  # kept values scaled by 1/keep
    assert (full[kept] != 0).all()  # nothing new appears
    again = edge_dropout(adj, 0.5, torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.to_dense(), half)  # deterministic under a seed


def test_symmetric_spmm_gradient_matches_autograd():
    adj = normalized_adjacency(R, self_loops=True)
    x = torch.randn(5, 3, dtype=torch.float32, requires_grad=True)
    y = spmm(adj, spmm(adj, x, symmetric=True), symmetric=True)
    (y * torch.arange(15.0).reshape(5, 3)).sum().backward()
    grad_fast = x.grad.clone()
    x.grad = None
    dense = adj.to_dense()
    y_ref = dense @ (dense @ x)
    (y_ref * torch.arange(15.0).reshape(5, 3)).sum().backward()
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(grad_fast, x.grad)


def test_knn_item_graph_links_each_item_to_its_most_similar_items():
    from diffmm.graph import knn_item_graph

    feats = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0]])
    g = knn_item_graph(feats, k=2, block_rows=2).to_dense()
    # item 0's neighbours: itself and item 1; item 2's: itself and item 3
    assert (g[0] > 0).nonzero().ravel().tolist() == [0, 1]
    assert (g[2] > 0).nonzero().ravel().tolist() == [2, 3]
    # D^-1/2 S D^-1/2 with row sums of S as degrees: known value for edge (0, 1)
    s = (g > 0).float()
    deg = s.sum(1)
    torch.testing.assert_close(g, s / deg.sqrt()[:, None] / deg.sqrt()[None, :])
    assert knn_item_graph(feats, k=99).to_dense().gt(0).all()  # k clipped to n_items
