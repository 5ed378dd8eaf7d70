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


def diverged(
    epoch: int, what: str, setting: str, values: dict[str, float], kept: Path | None
) -> NoReturn:
    """Raise :class:`DivergedError`: what went non-finite, where, and the likely setting.

    ``values`` gives the current value of the settings that can be named
    (``{"train.lr": 0.001}``); ``kept`` is the run directory holding the previous epoch.
    """
    where = f"; {kept} keeps the state after epoch {epoch - 1}" if kept is not None else ""
    hint = f"{setting}={values[setting]:g}" if setting in values else setting
    raise DivergedError(
        f"training diverged in epoch {epoch}: non-finite {what}{where}. Likely cause: "
        f"{hint} is too large or the settings are unstable; lower it and start a new run"
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
