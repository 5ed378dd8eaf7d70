"""Checkpoint files as plain data: reading them without running code, random-generator state.

A checkpoint is a dict of tensors, containers, numbers and strings written with
``torch.save``; :func:`load_checkpoint` reads it with ``torch.load(weights_only=True)``,
which builds nothing else, so a file holding any other pickled object is refused
before that object exists. :func:`capture_rng` keeps the generators' states in that
form too. The run directory (:mod:`diffmm.checkpoint`) adds each run's identity.
"""

from __future__ import annotations

import io
import pickle
import random
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from diffmm.errors import DataError

#: Version of the checkpoint layout; a checkpoint of another version is refused.
CHECKPOINT_FORMAT = 2


def load_checkpoint(
    path: Path, map_location: str | torch.device = "cpu", required: tuple[str, ...] = ("model",)
) -> dict[str, Any]:
    """Read a checkpoint of tensors and plain data; DataError if it is unusable.

    ``torch.load(weights_only=True)`` admits tensors, containers and numbers only: a
    file holding any other pickled object is refused before the object is built, so
    no code from the file runs. ``required`` keys must be present.
    """
    if not path.is_file():
        raise DataError(f"{path}: no checkpoint there; was the run started with --out?")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's weights-only unpickler names the first object it refused to build
        boilerplate = ("Weights only load failed", "Please file an issue", "Check the doc")
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        reason = " ".join(ln for ln in lines if not ln.startswith(boilerplate))
        reason = reason.replace("WeightsUnpickler error: ", "")
        if "global" in reason.lower():
            raise DataError(
                f"{path}: refused: it holds pickled Python objects besides tensors and plain "
                f"data ({reason}), and loading them could run code; diffmm checkpoints never "
                "do. Delete it, or restore the run's own file"
            ) from None
        raise DataError(
            f"{path}: cannot read this checkpoint ({reason or exc}); it is corrupt or "
            "truncated, e.g. copied while being written; restore it from a copy"
        ) from None
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        zipfile.BadZipFile,
        io.UnsupportedOperation,
    ) as exc:
        raise DataError(
            f"{path}: cannot read this checkpoint ({type(exc).__name__}: {exc}); it is corrupt "
            "or truncated, e.g. copied while being written; restore it from a copy"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise DataError(
            f"{path}: not a diffmm checkpoint of format {CHECKPOINT_FORMAT}; it was written "
            "by another program or another version of diffmm"
        )
    missing = [key for key in ("epoch", *required) if key not in state]
    if missing:
        raise DataError(f"{path}: incomplete checkpoint, missing {missing}; restore it from a copy")
    return state


def load_model_state(model: nn.Module, state: Mapping[str, Tensor], where: str) -> None:
    """``model.load_state_dict(state)``, or one line naming the first tensor that differs.

    ``where`` begins the message (the checkpoint, and the settings it should fit). A
    checkpoint stops fitting when it was written with other settings, or by a version of
    diffmm whose model had other tensors.
    """
    if not isinstance(state, Mapping):
        raise DataError(f"{where}: does not fit the model (its model state is no mapping)")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    resized = [
        f"{k} is {list(state[k].shape)} in the checkpoint, {list(v.shape)} in the model"
        for k, v in own.items()
        if k in state and isinstance(state[k], Tensor) and state[k].shape != v.shape
    ]
    problems = [
        *resized,
        *([f"lacks {missing[0]}"] if missing else []),
        *([f"has {extra[0]}, which the model lacks"] if extra else []),
    ]
    if problems:
        more = len(resized) + len(missing) + len(extra) - 1
        detail = problems[0] + (f", and {more} more difference(s)" if more else "")
        raise DataError(
            f"{where}: does not fit the model ({detail}); it was written with other settings "
            "or by another version of diffmm: retrain, or load it with the version that "
            "wrote it"
        )
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:  # e.g. a value that is not a tensor
        detail = " ".join(str(exc).split())
        raise DataError(f"{where}: does not fit the model ({detail})") from None


# ----------------------------------------------------------------------------- random state
def capture_rng(generator: np.random.Generator) -> dict[str, Any]:
    """The state of every random number generator a run draws from, as plain data.

    Tuples, lists, ints, floats, strings and tensors only, so ``last.pt`` loads with
    ``weights_only=True``.
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    version, internal, gauss_next = random.getstate()
    state = {
        "python": [version, list(internal), gauss_next],
        "numpy_global": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "numpy": generator.bit_generator.state,
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: np.random.Generator) -> None:
    """Put every generator back in the state :func:`capture_rng` saw."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = state["numpy_global"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))  # noqa: NPY002
    generator.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
