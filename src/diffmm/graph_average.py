"""Generated graphs averaged over the last epochs (issue 15 §4, not in the paper).

DiffMM replaces each modality's generated graph ``A^m`` every epoch (§2.2.3), so the
graph the recommender trains on, and scores with, jumps from epoch to epoch. With
``graph_average_epochs = W`` (:class:`~diffmm.models.diffmm_config.DiffMMConfig`) ``A^m``
is instead the mean of the last ``W`` generated graphs (each the normalised bipartite
matrix of its epoch's top-k edges), the way the fusion of Fig. 4 mixes two graphs: an
edge generated in every one of those epochs keeps its weight, one generated once has
``1/W`` of it. ``W = 1`` is the paper.
"""

from __future__ import annotations

from collections import deque

import torch
from torch import Tensor

#: A graph as plain tensors: COO indices ``(2, nnz)`` and values (picklable, movable).
Plain = tuple[Tensor, Tensor]


class GraphWindow:
    """The last ``epochs`` generated graphs of each modality, and their mean.

    Args:
        n_modalities: one window per modality.
        epochs: ``W``, how many graphs a window keeps.
    """

    def __init__(self, n_modalities: int, epochs: int) -> None:
        self.epochs = epochs
        self.windows: list[deque[Plain]] = [deque(maxlen=epochs) for _ in range(n_modalities)]

    def push(self, modality: int, graph: Tensor) -> Tensor:
        """Add ``graph`` (sparse, any layout) to the modality's window; the window's
        mean, as a sparse CSR tensor of ``graph``'s shape and device."""
        coo = graph.to_sparse_coo().coalesce()
        window = self.windows[modality]
        window.append((coo.indices().cpu(), coo.values().cpu()))
        indices = torch.cat([i for i, _ in window], dim=1)
        values = torch.cat([v for _, v in window]) / len(window)
        mean = torch.sparse_coo_tensor(indices, values, graph.shape, check_invariants=False)
        mean = mean.coalesce()
        return mean.to_sparse_csr().to(graph.device)

    def state_dict(self) -> list[list[Plain]]:
        return [list(w) for w in self.windows]

    def load_state_dict(self, state: list[list[Plain]]) -> None:
        if len(state) != len(self.windows):
            raise ValueError(
                f"the checkpoint keeps past graphs of {len(state)} modalities, this model "
                f"has {len(self.windows)}"
            )
        self.windows = [
            deque(((i.cpu(), v.cpu()) for i, v in w), maxlen=self.epochs) for w in state
        ]
