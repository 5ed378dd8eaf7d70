"""An exponential moving average of the recommender's parameters (``train.ema_decay``).

Validation-selected metrics of DiffMM swing by about ±0.003 Recall@20 from one epoch
to the next on TikTok, which makes the selected epoch partly a matter of luck. Averaging
the parameters over the last steps (Polyak averaging, as an EMA) damps that swing: after
every optimiser step ``W_ema = decay · W_ema + (1 - decay) · W``, with torch's own update
(:func:`torch.optim.swa_utils.get_ema_multi_avg_fn`, without the copy of the whole
module that :class:`~torch.optim.swa_utils.AveragedModel` makes: DiffMM's denoisers and
graphs are not averaged). Validation, selection, ``best.pt``, the test split and
serving use the averaged parameters; training goes on with the raw ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import get_ema_multi_avg_fn


class ParameterAverage:
    """The EMA of ``params`` (started at their current values) with ``decay`` per step."""

    def __init__(self, params: list[nn.Parameter], decay: float) -> None:
        self.params = list(params)
        self.decay = decay
        self.shadow = [p.detach().clone() for p in self.params]
        self._update = get_ema_multi_avg_fn(decay)

    def update(self) -> None:
        """One step of the average, after an optimiser step."""
        self._update(self.shadow, [p.detach() for p in self.params], None)

    @torch.no_grad()
    def _swap(self) -> None:
        for p, s in zip(self.params, self.shadow, strict=True):
            p.data, s.data = s.data, p.data  # pointers only: exact and free

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """The averaged parameters in the model for the block, the raw ones after it."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """Put the averaged parameters into the model for good (the end of training)."""
        for p, s in zip(self.params, self.shadow, strict=True):
            p.copy_(s)

    def state_dict(self) -> list[Tensor]:
        return [s.detach().cpu() for s in self.shadow]

    @torch.no_grad()
    def load_state_dict(self, state: list[Tensor]) -> None:
        if len(state) != len(self.shadow):
            raise ValueError(f"expected {len(self.shadow)} averaged tensors, got {len(state)}")
        for s, saved in zip(self.shadow, state, strict=True):
            s.copy_(saved)


def averaged(average: ParameterAverage | None) -> AbstractContextManager[None]:
    """The averaged parameters in the model for a block; nothing to do without an average."""
    return average.swapped() if average is not None else nullcontext()
