"""Generated graphs refreshed for a rolling share of the users each epoch.

DiffMM regenerates every user's top-``rebuild_k`` items with every modality's denoiser
each epoch (§2.2.3); that costs users × items per epoch (each user's denoised row covers
every item), the one part of an epoch that grows with the product of the data's sides.
With ``graph_users_per_epoch = n`` (:class:`~diffmm.models.diffmm_config.DiffMMConfig`)
each epoch regenerates only ``n`` users' rows and keeps the others' from the epoch that
last refreshed them, so an epoch costs ``n × items``: every user is refreshed once every
``stride = ceil(users / n)`` epochs, the users ``u ≡ epoch (mod stride)`` in epoch
``epoch`` (interleaved, so that a refresh is not one block of user ids).

A user whose row no generator has produced yet (the first ``stride - 1`` epochs) keeps
its training interactions in ``A^m``: the graph the diffusion starts from (``x0``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class RollingTopK:
    """Each modality's latest generated top-``k`` items per user.

    Args:
        n_users: users of the data.
        n_modalities: one table per modality.
        k: generated items per user (``rebuild_k``).
        users_per_epoch: users refreshed per epoch.
    """

    def __init__(self, n_users: int, n_modalities: int, k: int, users_per_epoch: int) -> None:
        self.n_users, self.k = n_users, k
        self.stride = max(1, math.ceil(n_users / users_per_epoch))
        # -1: never generated (the user keeps its training edges)
        self.tables = [torch.full((n_users, k), -1, dtype=torch.long) for _ in range(n_modalities)]

    def users_due(self, epoch: int, device: torch.device | str = "cpu") -> Tensor:
        """The users whose rows ``epoch`` regenerates: ``u ≡ epoch (mod stride)``."""
        return torch.arange(epoch % self.stride, self.n_users, self.stride, device=device)

    def update(self, modality: int, users: Tensor, items: Tensor) -> None:
        """Store ``items`` (``(len(users), k)``) as ``users``' generated rows."""
        self.tables[modality][users.cpu()] = items.cpu()

    def edges(
        self, modality: int, train_users: Tensor, train_items: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(users, items)`` of ``A^m``: generated rows, and the training edges of the
        users with none yet."""
        table = self.tables[modality]
        generated = table[:, 0] >= 0
        users = torch.arange(self.n_users).repeat_interleave(self.k)
        keep = generated.repeat_interleave(self.k)
        fallback = ~generated.to(train_users.device)[train_users]
        device = train_users.device
        return (
            torch.cat([users[keep].to(device), train_users[fallback]]),
            torch.cat([table.reshape(-1)[keep].to(device), train_items[fallback]]),
        )

    def state_dict(self) -> dict[str, list[Tensor]]:
        return {"tables": [t.clone() for t in self.tables]}

    def load_state_dict(self, state: dict[str, list[Tensor]]) -> None:
        tables = state["tables"]
        if len(tables) != len(self.tables) or any(
            t.shape != (self.n_users, self.k) for t in tables
        ):
            raise ValueError(
                "the checkpoint's generated rows do not fit this model's users, modalities "
                "and rebuild_k"
            )
        self.tables = [t.to(torch.long).cpu().clone() for t in tables]
