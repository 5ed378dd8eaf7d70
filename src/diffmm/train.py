"""The training loop: BPR epochs, validation, early stopping, checkpoints and logs.

One epoch is

1. ``model.begin_epoch(epoch)`` (per-epoch work such as DiffMM's diffusion pass);
2. the recommender pass: every training pair once, shuffled, with one uniform negative,
   in batches of ``batch_size``; one Adam step on the sum of ``model.loss(batch)``;
3. every ``eval_every`` epochs (and at the last one), all-rank validation.

Model selection is on the validation split only: training stops after ``patience``
validations without improvement of ``metric`` and the best validation state is restored
before the test split is scored, once. With ``test_every_epoch`` the test split is also
scored at every validation and reported as ``test_parity/...`` and ``best_on_test``
(the authors' protocol, for comparison with published numbers only; never used to
select anything).

Epochs are numbered from 1. A run directory, when given, receives the files described
in :mod:`diffmm.checkpoint`: after every epoch ``last.pt`` (the full training state),
``best.pt`` when validation improved, and a line of ``log.jsonl``; ``summary.json`` at
the end. Every file is written atomically, and ``train(..., resume=True)`` continues an
interrupted run from ``last.pt`` with the same result as an uninterrupted one.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from diffmm import checkpoint as ckpt
from diffmm.checkpoint import DataRef, RunDir
from diffmm.config import RunConfig, TrainConfig
from diffmm.data.dataset import Dataset
from diffmm.errors import ConfigError, DataError, DivergedError
from diffmm.evaluate import evaluate
from diffmm.models import get_model_class
from diffmm.models.base import Batch, Recommender
from diffmm.sampling import NegativeSampler, bpr_epoch_batches, n_bpr_batches
from diffmm.state import capture_rng, restore_rng
from diffmm.utils import (
    peak_rss_mb,
    release_free_memory,
    resolve_device,
    seed_everything,
    to_json,
)

PARITY_NOTE = "authors' protocol (best epoch chosen on test), for parity only; never used"


@dataclass
class Selection:
    """Early-stopping state: what the run has selected so far (saved in ``last.pt``)."""

    best_value: float = -float("inf")
    best_epoch: int = 0
    best_valid: dict[str, float] = field(default_factory=dict)
    bad_validations: int = 0
    stopped_early: bool = False
    best_on_test: dict[str, dict[str, float]] = field(default_factory=dict)
    epoch_seconds: list[float] = field(default_factory=list)
    resumed_after: list[int] = field(default_factory=list)


def _fmt(metrics: dict[str, float], keys: list[str]) -> str:
    return " ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics)


class Trainer:
    """Trains a :class:`Recommender` on a :class:`Dataset` as configured.

    Args:
        model: the model, already on its device.
        dataset: the data; ``train`` drives the loss, ``valid`` the selection.
        config: training settings.
        run_dir: the run directory to write ``log.jsonl``, ``last.pt``, ``best.pt`` and
            ``summary.json`` into, held (:meth:`RunDir.owned`) and created
            (:meth:`RunDir.create`) by the caller; None: write nothing.
        log: receives one human-readable line per epoch and any warning.
    """

    def __init__(
        self,
        model: Recommender,
        dataset: Dataset,
        config: TrainConfig,
        run_dir: RunDir | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.model = model
        self.dataset = dataset
        self.config = config
        self.run = run_dir
        self.log = log
        metric_k = int(config.metric.partition("@")[2])
        self.ks = sorted(set(config.ks) | {metric_k})
        self.device = model.device

    # ------------------------------------------------------------------ helpers
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _now(self) -> float:
        self._sync()
        return time.perf_counter()

    def _evaluate(self, split: str, embeddings: tuple[torch.Tensor, torch.Tensor]) -> dict:
        model = self.model
        result = evaluate(
            lambda users: model.scores(users, embeddings),
            self.dataset,
            split,
            ks=self.ks,
            batch_size=self.config.eval_batch_size,
            device=self.device,
        )
        return result

    def _train_epoch(self, epoch: int, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        model, cfg = self.model, self.config
        model.train()
        totals: dict[str, torch.Tensor] = {}
        n_steps = 0
        batches = bpr_epoch_batches(self.dataset.train, cfg.batch_size, self.rng, self.sampler)
        bar = tqdm(
            batches,
            total=n_bpr_batches(self.dataset.train, cfg.batch_size),
            desc=f"epoch {epoch}",
            leave=False,
            disable=None if cfg.progress else True,
            dynamic_ncols=True,
        )
        for users, pos, neg in bar:
            batch = Batch(
                users=torch.from_numpy(users).to(self.device),
                pos_items=torch.from_numpy(pos).to(self.device),
                neg_items=torch.from_numpy(neg).to(self.device),
            )
            losses = model.loss(batch)
            total = sum(losses.values())
            if not torch.isfinite(total.detach()):
                bad = {k: float(v.detach()) for k, v in losses.items() if not v.isfinite()}
                bar.close()
                self._diverged(epoch, f"loss {bad} at step {n_steps + 1}", "train.lr")
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            for name, value in losses.items():
                value = value.detach()
                totals[name] = totals[name] + value if name in totals else value
            n_steps += 1
        bar.close()
        means = {name: float(value) / max(n_steps, 1) for name, value in totals.items()}
        means["loss"] = sum(means.values())
        return means

    # ------------------------------------------------------------------ divergence
    def _diverged(self, epoch: int, what: str, setting: str) -> None:
        """Stop the run: a non-finite loss or parameter is never selected or saved."""
        kept = ""
        if self.run is not None:
            kept = f"; {self.run.path} keeps the state after epoch {epoch - 1}"
        values = {"train.lr": self.config.lr}
        hint = f"{setting}={values[setting]:g}" if setting in values else setting
        raise DivergedError(
            f"training diverged in epoch {epoch}: non-finite {what}{kept}. Likely cause: "
            f"{hint} is too large or the settings are unstable; lower it and start a new run"
        )

    def _check_parameters(self, epoch: int, phase: str, setting: str) -> None:
        """Once per phase: every floating parameter and buffer of the model is finite."""
        for name, value in self.model.state_dict().items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                if not bool(torch.isfinite(value).all()):
                    self._diverged(epoch, f"parameter {name!r} after the {phase}", setting)

    # ------------------------------------------------------------------ checkpoints
    def _save_last(self, epoch: int, optimizer: torch.optim.Optimizer, sel: Selection) -> None:
        """The full state after ``epoch``: what ``--resume`` needs to go on identically."""
        assert self.run is not None
        self.run.save(
            ckpt.LAST,
            {
                "epoch": epoch,
                "model": self.model.state_dict(),
                "model_extra": self.model.extra_state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": capture_rng(self.rng),
                "selection": asdict(sel),
            },
        )

    def _save_best(self, epoch: int, sel: Selection, model_state: dict[str, Any]) -> None:
        assert self.run is not None
        self.run.save(
            ckpt.BEST,
            {
                "epoch": epoch,
                "metric": self.config.metric if sel.best_epoch else None,
                "value": sel.best_value if sel.best_epoch else None,
                "model": model_state,
            },
        )

    def _resume(self, optimizer: torch.optim.Optimizer) -> tuple[int, Selection]:
        """Load ``last.pt``; returns the last finished epoch and the selection state.

        Drops log lines of epochs after the checkpoint (the run died before saving
        them), and rewrites ``best.pt`` if the run died between the two saves of an
        improving epoch (the best state is then the checkpoint's own model).
        """
        run = self.run
        assert run is not None
        state = run.load(ckpt.LAST, map_location=self.device, required=ckpt.TRAINING_STATE)
        try:
            epoch = int(state["epoch"])
            self.model.load_state_dict(state["model"])
            self.model.load_extra_state_dict(state["model_extra"])
            optimizer.load_state_dict(state["optimizer"])
            restore_rng(state["rng"], self.rng)
            sel = Selection(**state["selection"])
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"{run / ckpt.LAST}: does not fit the model and settings of this run "
                f"({type(exc).__name__}: {exc}); restore it from a copy"
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
                self._save_best(epoch, sel, state["model"])
        del state
        self.log(f"resuming {run.path} after epoch {epoch}")
        sel.resumed_after.append(epoch)
        return epoch, sel

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train, select on validation, score test once; returns the summary.

        With ``resume`` the run continues from ``run_dir/last.pt`` (or starts afresh if
        the run died before its first checkpoint).
        """
        cfg, model, dataset = self.config, self.model, self.dataset
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.sampler = NegativeSampler(dataset.train)
        optimizer = torch.optim.Adam(model.trainable_parameters(), lr=cfg.lr)
        has_valid = dataset.valid.nnz > 0
        if not has_valid:
            self.log(
                "warning: the dataset has no validation interactions; early stopping is "
                "off and the last epoch is selected"
            )
        metric = cfg.metric
        sel = Selection()
        done = 0
        if self.run is not None:
            if resume and (self.run / ckpt.LAST).exists():
                done, sel = self._resume(optimizer)
            else:
                if resume:
                    self.log(f"{self.run.path} has no checkpoint yet; starting from epoch 1")
                self.run.remove_log()
        elif resume:
            raise ValueError("resume needs a run directory")
        # Without a run directory the best state is kept in memory instead of best.pt.
        best_in_memory: dict[str, Any] | None = None

        epoch = done
        for epoch in range(done + 1, cfg.epochs + 1):
            if sel.stopped_early:  # a resumed run that had already stopped
                epoch -= 1
                break
            t0 = self._now()
            model.train()
            stats = model.begin_epoch(epoch) or {}
            release_free_memory()
            self._check_parameters(epoch, "per-epoch phase", model.epoch_phase_settings)
            t1 = self._now()
            losses = self._train_epoch(epoch, optimizer)
            release_free_memory()
            self._check_parameters(epoch, "recommender pass", "train.lr")
            t2 = self._now()

            record: dict[str, Any] = {"epoch": epoch, "losses": losses}
            validate = epoch % cfg.eval_every == 0 or epoch == cfg.epochs
            valid: dict[str, Any] = {}
            test: dict[str, Any] = {}
            improved = False
            if validate and (has_valid or cfg.test_every_epoch):
                model.eval()
                with torch.no_grad():
                    emb = model.embeddings()
                    if has_valid:
                        valid = self._evaluate("valid", emb)
                    if cfg.test_every_epoch:
                        test = self._evaluate("test", emb)
                del emb
                if has_valid:
                    if valid[metric] > sel.best_value:
                        sel.best_value, sel.best_epoch, sel.best_valid = valid[metric], epoch, valid
                        sel.bad_validations = 0
                        improved = True
                    else:
                        sel.bad_validations += 1
                for key, value in test.items():
                    if key != "n_users" and (
                        key not in sel.best_on_test or value > sel.best_on_test[key]["value"]
                    ):
                        sel.best_on_test[key] = {"value": value, "epoch": epoch}
            t3 = self._now()

            if valid:
                record["valid"] = valid
            if test:
                record["test_parity"] = test
            record["improved"] = improved
            record["begin_epoch"] = stats
            record["seconds_begin_epoch"] = t1 - t0
            record["seconds_train"] = t2 - t1
            record["seconds_eval"] = t3 - t2
            record["seconds"] = t3 - t0
            sel.epoch_seconds.append(t3 - t0)
            if has_valid and sel.bad_validations >= cfg.patience:
                sel.stopped_early = True
            if self.run is not None:
                # last.pt first: if the run dies before best.pt is replaced, resuming
                # finds the best state in last.pt (see _resume).
                t4 = self._now()
                self._save_last(epoch, optimizer, sel)
                if improved:
                    self._save_best(epoch, sel, model.state_dict())
                record["seconds_checkpoint"] = self._now() - t4
                self.run.append_log(to_json(record, indent=None))
            elif improved:
                best_in_memory = copy.deepcopy(model.state_dict())
            self._log_epoch(record)

            if sel.stopped_early:
                self.log(
                    f"early stop at epoch {epoch}: no {metric} improvement in "
                    f"{cfg.patience} validations; best epoch {sel.best_epoch}"
                )
                break

        epochs_run = epoch
        best_epoch = sel.best_epoch
        if not has_valid or not sel.best_epoch:
            best_epoch = epochs_run
            selected_by = (
                "last epoch (no validation interactions)"
                if not has_valid
                else f"last epoch (valid {metric} was never finite)"
            )
            if self.run is not None:
                self._save_best(epochs_run, sel, model.state_dict())
        else:
            if self.run is not None:
                best_state = self.run.load(ckpt.BEST, map_location=self.device)
                model.load_state_dict(best_state["model"])
                del best_state
            elif best_in_memory is not None:
                model.load_state_dict(best_in_memory)
            selected_by = f"best valid {metric}"

        model.eval()
        with torch.no_grad():
            test_metrics = self._evaluate("test", model.embeddings())

        summary: dict[str, Any] = {
            "model": model.name,
            "dataset": dataset.name,
            "device": str(self.device),
            "best_epoch": best_epoch,
            "selection": {"metric": metric, "split": "valid" if has_valid else None},
            "selected_by": selected_by,
            "valid": sel.best_valid,
            "test": test_metrics,
            "epochs_run": epochs_run,
            "stopped_early": sel.stopped_early,
            "seconds_per_epoch": (
                statistics.median(sel.epoch_seconds) if sel.epoch_seconds else 0.0
            ),
            "seconds_total": float(sum(sel.epoch_seconds)),
            "peak_rss_mb": peak_rss_mb(),
        }
        if sel.resumed_after:
            summary["resumed_after_epochs"] = sel.resumed_after
        if cfg.test_every_epoch:
            summary["best_on_test"] = {"note": PARITY_NOTE, **sel.best_on_test}
        if self.run is not None:
            self.run.write_summary(summary)
        self.log(
            f"selected epoch {best_epoch} ({selected_by}); test "
            + _fmt(test_metrics, [f"recall@{k}" for k in self.ks] + [f"ndcg@{k}" for k in self.ks])
        )
        return summary

    def _log_epoch(self, record: dict[str, Any]) -> None:
        parts = [f"epoch {record['epoch']:>3}"]
        parts.append(" ".join(f"{k} {v:.4f}" for k, v in record["losses"].items()))
        keys = [self.config.metric, f"ndcg@{self.config.metric.partition('@')[2]}"]
        if "valid" in record:
            parts.append(
                "valid " + _fmt(record["valid"], keys) + (" *" if record["improved"] else "")
            )
        if "test_parity" in record:
            parts.append("test(parity) " + _fmt(record["test_parity"], keys))
        parts.append(
            f"{record['seconds']:.1f}s (begin {record['seconds_begin_epoch']:.1f}, "
            f"train {record['seconds_train']:.1f}, eval {record['seconds_eval']:.1f})"
        )
        self.log(" | ".join(parts))


def train(
    run_config: RunConfig,
    dataset: Dataset,
    run_dir: Path | str | None = None,
    log: Callable[[str], None] = print,
    *,
    data_ref: DataRef | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Seed, build the model on the configured device, train it; returns the summary.

    The model is built (and the settings checked against the data) before anything is
    written. A new run goes only into a ``run_dir`` that does not exist or is empty; it
    writes ``config.json``, ``dataset.json`` (``data_ref`` and the data's fingerprint)
    and ``ids.json`` first, and removes them again if it fails before its first epoch.
    ``resume`` continues the run in ``run_dir`` (same configuration and data required).
    The run directory is locked for the whole run: a second process is refused.
    """
    cfg = run_config.train
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    if run_dir is None and resume:
        raise ConfigError("resume needs the run directory of the run to continue")
    model = get_model_class(run_config.model)(run_config.params, dataset).to(device)
    if run_dir is None:
        return Trainer(model, dataset, cfg, log=log).fit()
    run = RunDir(run_dir)
    with run.owned():
        if resume:
            run.require_run()
            run.check_fingerprint(dataset)
        else:
            run.create(run_config, dataset, data_ref)
        try:
            return Trainer(model, dataset, cfg, run_dir=run, log=log).fit(resume=resume)
        except Exception:
            run.discard_new()
            raise
