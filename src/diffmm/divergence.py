"""Divergence checks of a training run: a non-finite loss or parameter stops it.

A diverged model is never selected, saved as ``best.pt``, reported or served. The loss
is checked at every step and every floating parameter and buffer after each phase of an
epoch; in a process group the ranks agree on the verdict first (one all-reduce), so
they stop together instead of one rank raising while the others wait for it in the next
collective.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import torch
from torch import Tensor, nn

from diffmm import distributed
from diffmm.errors import DivergedError

#: The cause named when the loss is not finite before any parameter was updated.
BEFORE_ANY_UPDATE = (
    "the data or the model's settings, not the learning rate: the loss is not finite "
    "before the first update (look for huge or non-finite feature values)"
)


def diverged(
    epoch: int,
    what: str,
    settings: list[str],
    values: dict[str, float],
    kept: Path | None,
    before_any_update: bool = False,
) -> NoReturn:
    """Raise :class:`DivergedError`: what went non-finite, where, and the likely settings.

    ``settings`` are the settings that could have caused it, most likely first;
    ``values`` gives the current value of those that can be named (``{"train.lr":
    0.001}``); ``kept`` is the run directory, which holds the state after the previous
    epoch from epoch 2 on. ``before_any_update``: no parameter had been updated yet.
    """
    where = f"; {kept} keeps the state after epoch {epoch - 1}" if kept and epoch > 1 else ""
    if before_any_update:
        cause = BEFORE_ANY_UPDATE
    else:
        named = [f"{s}={values[s]:g}" if s in values else s for s in settings]
        cause = f"{' or '.join(named)} too large, or unstable settings; lower it"
    raise DivergedError(
        f"training diverged in epoch {epoch}: non-finite {what}{where}. Likely cause: "
        f"{cause}, and start a new run"
    )


def non_finite_losses(losses: dict[str, Tensor], device: torch.device) -> dict[str, float]:
    """The non-finite terms of a step's losses, ``{}`` when all are finite, on any rank."""
    bad = {k: float(v.detach()) for k, v in losses.items() if not torch.isfinite(v.detach())}
    if distributed.any_rank(bool(bad), device) and not bad:
        return {"on another rank": float("nan")}
    return bad


def non_finite_parameter(model: nn.Module, device: torch.device) -> str | None:
    """The first floating parameter or buffer of ``model`` with a non-finite value (any
    rank's: ``"on another rank"``), or None."""
    name = next(
        (
            key
            for key, value in model.state_dict().items()
            if isinstance(value, Tensor)
            and value.is_floating_point()
            and not bool(torch.isfinite(value).all())
        ),
        None,
    )
    if distributed.any_rank(name is not None, device) and name is None:
        return "on another rank"
    return name
