"""The training state a run directory keeps, and resuming from it.

After every epoch the trainer writes ``last.pt`` (:func:`save_last`: everything an
interrupted run needs to go on exactly as an uninterrupted one) and, when validation
improved, ``best.pt`` (:func:`save_best`: the selected model); :func:`load_last` reads
them back, and :func:`start_or_resume` is where a run begins. The files themselves are
described in :mod:`diffmm.checkpoint`.
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from diffmm import checkpoint as ckpt
from diffmm import distributed
from diffmm.checkpoint import RunDir
from diffmm.ema import ParameterAverage, averaged
from diffmm.errors import DataError
from diffmm.models.base import Recommender
from diffmm.selection import Selection
from diffmm.state import capture_rng, load_model_state, restore_rng

if TYPE_CHECKING:
    from diffmm.epoch_log import Reporter


def start_or_resume(
    run: RunDir | None,
    resume: bool,
    model: Recommender,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    metric: str,
    ema: ParameterAverage | None,
    report: Reporter,
) -> tuple[int, Selection]:
    """The last finished epoch and the selection so far: from ``run/last.pt`` when
    resuming a run that has one (rank 0 reads it, :func:`broadcast_resumed` hands it to
    the others), else epoch 0 with an empty log."""
    done, selection = 0, Selection()
    if run is not None:
        if resume and (run / ckpt.LAST).exists():
            done, selection = load_last(run, model, optimizer, rng, metric, ema)
            report.info(f"resuming {run.path} after epoch {done}")
            selection.resumed_after.append(done)
        else:
            if resume:
                _refuse_restart_of_trained(run)
                report.info(f"{run.path} has no checkpoint yet; starting from epoch 1")
            run.remove_log()
    elif resume and not distributed.is_distributed():
        raise ValueError("resume needs a run directory")
    if resume and distributed.is_distributed():  # rank 0 read last.pt: the others follow
        done, selection = broadcast_resumed(model, optimizer, rng, done, selection, ema)
    return done, selection


def _refuse_restart_of_trained(run: RunDir) -> None:
    """DataError if ``run`` lacks ``last.pt`` but holds what trained epochs wrote: starting
    again from epoch 1 would replace the user's model and results."""
    trained = [name for name in (ckpt.BEST, ckpt.SUMMARY) if (run / name).exists()]
    log = run / ckpt.LOG
    if log.exists() and log.stat().st_size > 0:
        trained.append(ckpt.LOG)
    if trained:
        raise DataError(
            f"{run.path}: holds {', '.join(trained)} of trained epochs but no {ckpt.LAST} to "
            f"resume from; restore {ckpt.LAST} from a copy, or train into a new --out"
        )


def save_last(
    run: RunDir,
    epoch: int,
    model: Recommender,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    selection: Selection,
    ema: ParameterAverage | None = None,
) -> None:
    """The full state after ``epoch``: what ``--resume`` needs to go on identically
    (with ``train.ema_decay``, the average too)."""
    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "model_extra": model.extra_state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": capture_rng(rng),
        "selection": asdict(selection),
    }
    if ema is not None:
        state["ema"] = ema.state_dict()
    run.save(ckpt.LAST, state)


def save_best(
    run: RunDir, epoch: int, metric: str, selection: Selection, model_state: dict[str, Any]
) -> None:
    """The selected epoch's model, with its validation ``metric`` (None if none was)."""
    selected = bool(selection.best_epoch)
    run.save(
        ckpt.BEST,
        {
            "epoch": epoch,
            "metric": metric if selected else None,
            "value": selection.best_value if selected else None,
            "model": model_state,
        },
    )


class SelectedModel:
    """The selected (best-validation) model: ``best.pt`` in the run directory, or a copy
    in memory without one. :meth:`keep` stores the model as it is after an epoch that
    improved (its parameter average, with ``train.ema_decay``); :meth:`restore` puts the
    selected model back at the end of training."""

    def __init__(
        self,
        run: RunDir | None,
        model: Recommender,
        metric: str,
        selection: Selection,
        ema: ParameterAverage | None,
    ) -> None:
        self.run, self.model, self.metric = run, model, metric
        self.selection, self.ema = selection, ema
        self._in_memory: dict[str, Any] | None = None

    def keep(self, epoch: int) -> None:
        with averaged(self.ema):
            if self.run is None:
                self._in_memory = copy.deepcopy(self.model.state_dict())
            else:
                save_best(self.run, epoch, self.metric, self.selection, self.model.state_dict())

    def restore(self, epochs_run: int, has_valid: bool) -> tuple[int, str]:
        """Load the selected model (or keep the last epoch's, already averaged if there is
        an average, and save it as ``best.pt``); returns ``(epoch, why)``."""
        best_epoch, run = self.selection.best_epoch, self.run
        if not has_valid or not best_epoch:
            if run is not None:
                save_best(run, epochs_run, self.metric, self.selection, self.model.state_dict())
            if not has_valid:
                return epochs_run, "last epoch (no validation interactions)"
            return epochs_run, f"last epoch (valid {self.metric} was never finite)"
        if run is not None:
            best_state = run.load(ckpt.BEST, map_location=self.model.device)
            self.model.load_state_dict(best_state["model"])
            del best_state
        elif self._in_memory is not None:
            self.model.load_state_dict(self._in_memory)
        return best_epoch, f"best valid {self.metric}"


def load_last(
    run: RunDir,
    model: Recommender,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    metric: str,
    ema: ParameterAverage | None = None,
) -> tuple[int, Selection]:
    """Restore ``last.pt`` into ``model``, ``optimizer`` and ``rng``; returns the last
    finished epoch and the selection state.

    Drops log lines of epochs after the checkpoint (the run died before saving them),
    and rewrites ``best.pt`` if the run died between the two saves of an improving
    epoch (the best state is then the checkpoint's own model).
    """
    state = run.load(ckpt.LAST, map_location=model.device, required=ckpt.TRAINING_STATE)
    load_model_state(model, state["model"], f"{run / ckpt.LAST} (this run's settings)")
    try:
        epoch = int(state["epoch"])
        model.load_extra_state_dict(state["model_extra"])
        optimizer.load_state_dict(state["optimizer"])
        restore_rng(state["rng"], rng)
        sel = Selection(**state["selection"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"{run / ckpt.LAST}: does not fit the model and settings of this run "
            f"({type(exc).__name__}: {' '.join(str(exc).split())}); restore it from a copy"
        ) from None
    run.truncate_log(epoch)
    if sel.best_epoch:
        has_best = (run / ckpt.BEST).exists()
        best_epoch = run.load(ckpt.BEST)["epoch"] if has_best else None
        if best_epoch != sel.best_epoch:
            if sel.best_epoch != epoch:
                raise DataError(
                    f"{run / ckpt.BEST}: holds epoch {best_epoch} but the run selected "
                    f"epoch {sel.best_epoch}; the run directory was modified by hand"
                )
            if ema is None:
                save_best(run, epoch, metric, sel, state["model"])
            else:  # the selected model is the average
                with ema.swapped():
                    save_best(run, epoch, metric, sel, model.state_dict())
    return epoch, sel


def broadcast_resumed(
    model: Recommender,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    epoch: int,
    selection: Selection,
    ema: ParameterAverage | None = None,
) -> tuple[int, Selection]:
    """Rank 0's training state (after :func:`load_last`, or a fresh start) on every rank:
    model, optimiser, random generators, last epoch and selection; returns the latter two.

    Only rank 0 reads the run directory, so the other machines need no copy of ``last.pt``.
    """

    def cpu(value: Any) -> Any:
        return value.cpu() if isinstance(value, torch.Tensor) else value

    state = distributed.broadcast_object(
        {
            "epoch": epoch,
            "model": {k: cpu(v) for k, v in model.state_dict().items()},
            "model_extra": model.extra_state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": capture_rng(rng),
            "selection": asdict(selection),
            "ema": ema.state_dict() if ema is not None else None,
        }
    )
    model.load_state_dict(state["model"])
    model.load_extra_state_dict(state["model_extra"])
    optimizer.load_state_dict(state["optimizer"])
    restore_rng(state["rng"], rng)
    if ema is not None:
        ema.load_state_dict(state["ema"])
    return int(state["epoch"]), Selection(**state["selection"])
