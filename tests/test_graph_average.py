"""graph_average_epochs: A^m as the mean of the last W generated graphs."""

from __future__ import annotations

import pytest
import torch

from diffmm.graph_average import GraphWindow
from diffmm.models.diffmm import DiffMM
from models.test_diffmm import small_config, tiny_dataset


def dense(entries: dict[tuple[int, int], float], n: int = 3) -> torch.Tensor:
    out = torch.zeros(n, n)
    for (i, j), v in entries.items():
        out[i, j] = v
    return out


def test_the_window_averages_its_last_graphs_and_forgets_older_ones():
    window = GraphWindow(n_modalities=1, epochs=2)
    a = dense({(0, 1): 1.0, (1, 2): 0.5})
    b = dense({(0, 1): 1.0, (2, 0): 0.4})
    c = dense({(1, 1): 0.2})
    first = window.push(0, a.to_sparse_csr())
    assert first.layout == torch.sparse_csr and torch.equal(first.to_dense(), a)
    mean = window.push(0, b.to_sparse_csr()).to_dense()
    # an edge of both graphs keeps its weight, an edge of one has half of it
    torch.testing.assert_close(mean, dense({(0, 1): 1.0, (1, 2): 0.25, (2, 0): 0.2}))
    torch.testing.assert_close(window.push(0, c.to_sparse_csr()).to_dense(), (b + c) / 2)


def test_state_round_trips_and_refuses_another_number_of_modalities():
    window = GraphWindow(1, 3)
    window.push(0, dense({(0, 2): 1.0}).to_sparse_csr())
    other = GraphWindow(1, 3)
    other.load_state_dict(window.state_dict())
    nxt = dense({(1, 0): 1.0}).to_sparse_csr()
    assert torch.equal(other.push(0, nxt).to_dense(), window.push(0, nxt).to_dense())
    with pytest.raises(ValueError, match="this model has 2"):
        GraphWindow(2, 3).load_state_dict(window.state_dict())


def test_diffmm_trains_on_the_mean_of_its_last_generated_graphs():
    ds = tiny_dataset(1)
    graphs = {}
    for w in (1, 2):
        torch.manual_seed(0)
        model = DiffMM(small_config(keep_rate=1.0, diffusion_lr=0.1, graph_average_epochs=w), ds)
        graphs[w] = []
        for _ in range(3):
            model.train_generator()  # the denoiser changes: so do its graphs
            graphs[w].append(model.generate_graphs()[0].to_dense())
    single, averaged = graphs[1], graphs[2]
    assert not torch.equal(single[1], single[2])
    torch.testing.assert_close(averaged[0], single[0])
    torch.testing.assert_close(averaged[2], (single[1] + single[2]) / 2)
    assert DiffMM(small_config(), ds).window is None  # W = 1: the paper, nothing kept
