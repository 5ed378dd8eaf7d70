"""Pieces several models share: the BPR criterion, item features on the module, and
tensors derived during training that must follow the module to its device.

BPR (Rendle et al., UAI 2009, eq. 4) for a batch of triples ``(u, i, j)``, ``i`` observed
and ``j`` sampled from the unobserved items::

    L = mean over the batch of -ln sigmoid(x_ui - x_uj)
        + l2_weight * (sum of the batch's squared embedding norms) / (2 * batch size),

the L2 term on the batch's embeddings as in the LightGCN reference code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffmm.data.dataset import Dataset

#: Items whose similarities to all items are computed at once when building kNN graphs.
BLOCK_ROWS = 1024


def bpr_loss(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    """Mean of ``-ln sigmoid(pos - neg)`` (computed stably as ``softplus(neg - pos)``)."""
    return F.softplus(neg_scores - pos_scores).mean()


def l2_on_batch(*embeddings: Tensor) -> Tensor:
    """``sum of squared norms / (2 * batch size)`` of the given ``(batch, d)`` tensors."""
    n = embeddings[0].shape[0]
    return sum(e.pow(2).sum() for e in embeddings) / (2.0 * n)


def register_features(module: nn.Module, dataset: Dataset, trainable: bool) -> None:
    """Store each of ``dataset``'s feature matrices on ``module`` as ``features_{i}``.

    A trainable matrix becomes a parameter with its own copy (training writes it in
    place, which must not change the dataset); otherwise it is a non-persistent buffer
    sharing the dataset's array: derived from the data, so moved by ``.to()`` but not
    saved in the state dict.
    """
    for i, feats in enumerate(dataset.features.values()):
        if trainable:
            module.register_parameter(f"features_{i}", nn.Parameter(torch.from_numpy(feats.copy())))
        else:
            module.register_buffer(f"features_{i}", torch.from_numpy(feats), persistent=False)


class DerivedTensors(nn.Module):
    """Mixin for a module that keeps lists of tensors outside its buffers.

    A buffer holds one tensor; a model whose training produces a varying number of them
    (a graph per modality, regenerated every epoch) keeps them in list attributes, named
    in ``derived_tensors``. ``.to()``, ``.cuda()``, ``.double()`` and the like apply to
    every tensor in those lists as they do to buffers, so the model stays on one device.
    A fixed set of tensors should be registered as non-persistent buffers instead.
    """

    derived_tensors: ClassVar[tuple[str, ...]] = ()

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> DerivedTensors:  # type: ignore[override]
        module = super()._apply(fn, recurse)
        for name in self.derived_tensors:
            setattr(self, name, [fn(t) for t in getattr(self, name)])
        return module


__all__ = ["BLOCK_ROWS", "DerivedTensors", "bpr_loss", "l2_on_batch", "register_features"]
