"""The training loop: BPR epochs, validation, early stopping, checkpoints and logs.

One epoch is

1. the phases of ``model.epoch_phases(epoch)`` (per-epoch work such as DiffMM's diffusion
   pass and graph regeneration), each timed, with freed memory given back after each;
2. the recommender pass: every training pair once, shuffled, with one uniform negative,
   in batches of ``batch_size``; one Adam step on the sum of ``model.loss(batch)``;
3. every ``eval_every`` epochs (and at the last one), all-rank validation.

Model selection is on the validation split only (:class:`~diffmm.selection.Selection`):
training stops after ``patience`` validations without improvement of ``metric`` and the
best validation state is restored before the test split is scored, once. With
``test_every_epoch`` the test split is also scored at every validation and reported as
``test_parity/...`` and ``best_on_test`` (the authors' protocol, for comparison with
published numbers only; never used to select anything).

Epochs are numbered from 1. A run directory, when given, receives the files described
in :mod:`diffmm.checkpoint`: after every epoch ``last.pt`` (the full training state),
``best.pt`` when validation improved, and a line of ``log.jsonl``; ``summary.json`` at
the end. Every file is written atomically, and ``train(..., resume=True)`` continues an
interrupted run from ``last.pt`` with the same result as an uninterrupted one
(:mod:`diffmm.train_state`). Under ``torchrun`` the processes train one model, rank 0
alone writing (:mod:`diffmm.distributed`); one process trains exactly as without it.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from diffmm import distributed, divergence, logs, tensorboard_log, train_state
from diffmm import precision as matmul_precision
from diffmm.checkpoint import DataRef, RunDir
from diffmm.config import RunConfig, TrainConfig
from diffmm.data.dataset import Dataset
from diffmm.ema import averaged
from diffmm.epoch_log import Reporter, has_epoch_work, logger, metrics_text
from diffmm.errors import ConfigError
from diffmm.evaluate import METRICS, evaluate, sample_users
from diffmm.models import get_model_class
from diffmm.models.base import Batch, Recommender
from diffmm.optimisation import optimisation
from diffmm.sampling import (
    NegativeSampler,
    bpr_epoch_batches,
    n_bpr_batches,
)
from diffmm.utils import (
    peak_rss_mb,
    release_free_memory,
    seed_everything,
    software,
    to_json,
)


class Trainer:
    """Trains a :class:`Recommender` on a :class:`Dataset` as configured.

    Args:
        model: the model, already on its device.
        dataset: the data; ``train`` drives the loss, ``valid`` the selection.
        config: training settings.
        run_dir: the run directory to write ``log.jsonl``, ``last.pt``, ``best.pt`` and
            ``summary.json`` into, held (:meth:`RunDir.owned`) and created
            (:meth:`RunDir.create`) by the caller; None: write nothing.

    Its lines (one per epoch phase, one per epoch, "resuming ...", "early stop ...") go to
    the ``diffmm.trainer`` logger at INFO on rank 0, warnings at WARNING; with
    ``config.tensorboard`` and a run directory the epochs' scalars go to TensorBoard too.
    """

    def __init__(
        self,
        model: Recommender,
        dataset: Dataset,
        config: TrainConfig,
        run_dir: RunDir | None = None,
    ) -> None:
        self.model = model
        self.dataset = dataset
        self.config = config
        self.run = run_dir
        metric_name, _, metric_k = config.metric.partition("@")
        self.ks = sorted(set(config.ks) | {int(metric_k)})
        # the usual metrics, and the selection metric if it is another (mrr, map)
        self.metrics = tuple(dict.fromkeys([*METRICS, metric_name]))
        self.device = model.device
        self.has_valid = dataset.valid.nnz > 0
        self.valid_users = sample_users(dataset.valid, config.validation_users, config.seed)

    # ------------------------------------------------------------------ helpers
    def _now(self) -> float:
        """Wall time, after the device's queued work is done."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _evaluate(self, split: str, embeddings: tuple[torch.Tensor, torch.Tensor]) -> dict:
        """All-rank metrics on ``split``. Freed pages go back to the system before every
        score batch: under the command's malloc setting (``keep_freed_memory_for_reuse``)
        a heap fragmented by training would place each batch on fresh pages, adding to
        the peak (benchmarks/results/design_measurements.md has the figure). Validation
        scores ``validation_users``'s sample when it is set."""
        model = self.model
        return distributed.evaluate_sharded(
            evaluate,
            lambda users: model.scores(users, embeddings),
            self.dataset,
            split,
            ks=self.ks,
            batch_size=self.config.eval_batch_size,
            device=self.device,
            before_batch=release_free_memory,
            metrics=self.metrics,
            users=self.valid_users if split == "valid" else None,
        )

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        model, optimizer = self.model, self.optimizer
        model.train()
        totals: dict[str, torch.Tensor] = {}
        n_steps = 0
        batches = bpr_epoch_batches(self.dataset.train, self.batch_size, self.rng, self.sampler)
        total = n_bpr_batches(self.dataset.train, self.batch_size)
        bar = logs.bar(batches, total=total, desc=f"epoch {epoch}")
        for global_batch in bar:
            arrays, scale = distributed.shard_batch(global_batch)  # as is in one process
            batch = Batch(*(torch.from_numpy(x).to(self.device) for x in arrays))
            losses = self.loss_fn(batch)
            if scale != 1.0:  # this rank's share of the global batch's mean loss
                losses = {name: value * scale for name, value in losses.items()}
            total = sum(losses.values())
            bad = divergence.non_finite_losses(losses, self.device)
            if bad:
                bar.close()
                first = epoch == 1 and n_steps == 0  # before any update of this run
                self._diverged(epoch, f"loss {bad} at step {n_steps + 1}", "train.lr", first)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            if self.ema is not None:
                self.ema.update()
            for name, value in losses.items():
                value = value.detach()
                totals[name] = totals[name] + value if name in totals else value
            n_steps += 1
        bar.close()
        totals = distributed.global_losses(totals)  # the global batches' (DDP averages)
        means = {name: float(value) / max(n_steps, 1) for name, value in totals.items()}
        means["loss"] = sum(means.values())
        return means

    # ------------------------------------------------------------------ divergence
    def _diverged(
        self, epoch: int, what: str, setting: str, before_any_update: bool = False
    ) -> NoReturn:
        kept = self.run.path if self.run is not None else None
        settings = list(dict.fromkeys([setting, "train.lr"]))  # the phase's own, then lr
        values = {"train.lr": self.config.lr}
        divergence.diverged(epoch, what, settings, values, kept, before_any_update)

    def _check_parameters(self, epoch: int, phase: str, setting: str) -> None:
        """Once per phase: every floating parameter and buffer of the model is finite."""
        name = divergence.non_finite_parameter(self.model, self.device)
        if name is not None:
            self._diverged(epoch, f"parameter {name!r} after the {phase}", setting)

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train, select on validation, score test once; returns the summary.

        With ``resume`` the run continues from ``run_dir/last.pt`` (or starts afresh if
        the run died before its first checkpoint).
        """
        main, cfg = distributed.is_main(), self.config
        board = self.run.path if cfg.tensorboard and self.run is not None else None
        self.report = Reporter(main, board, phases=has_epoch_work(self.model))
        with self.report, logs.progress_bars(cfg.progress and main):
            epoch = done = self._start(resume)
            sel = self.selection
            for epoch in range(done + 1, cfg.epochs + 1):
                if sel.stopped_early:  # a resumed run that had already stopped
                    epoch -= 1
                    break
                self._run_epoch(epoch)
                if sel.stopped_early:
                    self.report.info(
                        f"early stop at epoch {epoch}: no {cfg.metric} improvement in "
                        f"{cfg.patience} validations; best epoch {sel.best_epoch}"
                    )
                    break
            return self._select_and_test(epoch)

    def _start(self, resume: bool) -> int:
        """Seed, build the optimiser, resume if asked; returns the last finished epoch."""
        cfg = self.config
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.sampler = NegativeSampler(self.dataset.train)
        setup = optimisation(self.model, self.dataset, cfg, self.report)
        self.batch_size, self.optimizer, self.ema = setup.batch_size, setup.optimizer, setup.ema
        self.precision, self.matmul_dtype = setup.precision, setup.matmul_dtype
        if not self.has_valid:
            self.report.warning(
                "warning: the dataset has no validation interactions; early stopping is "
                "off and the last epoch is selected"
            )
        done, self.selection = train_state.start_or_resume(
            self.run,
            resume,
            self.model,
            self.optimizer,
            self.rng,
            cfg.metric,
            self.ema,
            self.report,
        )
        self.loss_fn = distributed.loss_function(self.model)
        self.selected = train_state.SelectedModel(
            self.run, self.model, cfg.metric, self.selection, self.ema
        )
        return done

    def _run_epoch(self, epoch: int) -> None:
        """One epoch: per-epoch phases, recommender pass, validation, files and log."""
        t0 = self._now()
        self.model.train()
        with matmul_precision.matmuls(self.matmul_dtype):
            stats = self._run_phases(epoch)
        t1 = self._now()
        distributed.sync_torch_rng(self.device)
        with matmul_precision.matmuls(self.matmul_dtype):
            losses = self._train_epoch(epoch)
        release_free_memory()
        self._check_parameters(epoch, "recommender pass", "train.lr")
        t2 = self._now()
        valid, test, improved = self._validate(epoch)
        t3 = self._now()

        record: dict[str, Any] = {"epoch": epoch, "losses": losses}
        if valid:
            record["valid"] = valid
        if test:
            record["test_parity"] = test
        record.update(improved=improved, begin_epoch=stats, seconds_begin_epoch=t1 - t0)
        record.update(seconds_train=t2 - t1, seconds_eval=t3 - t2, seconds=t3 - t0)
        sel = self.selection
        sel.epoch_seconds.append(t3 - t0)
        if self.has_valid and sel.should_stop(self.config.patience):
            sel.stopped_early = True
        self._checkpoint(epoch, improved, record)
        self.report.epoch(record, self.config.metric)

    def _run_phases(self, epoch: int) -> dict[str, float]:
        """The model's per-epoch phases in order, each timed (``seconds_<name>``), with
        freed memory given back after each; then every parameter must be finite."""
        stats: dict[str, float] = {}
        for name, phase in self.model.epoch_phases(epoch):
            distributed.sync_torch_rng(self.device)  # a no-op in one process
            start = self._now()
            phase_stats = phase() or {}
            stats.update(phase_stats)
            stats[f"seconds_{name}"] = seconds = self._now() - start
            release_free_memory()
            self.report.phase(epoch, name, seconds, phase_stats)
        self._check_parameters(epoch, "per-epoch phase", self.model.epoch_phase_settings)
        return stats

    def _validate(self, epoch: int) -> tuple[dict, dict, bool]:
        """Every ``eval_every`` epochs and at the last: ``(valid, test, improved)``;
        the test split only with ``test_every_epoch``, for the parity report."""
        cfg, model = self.config, self.model
        due = epoch % cfg.eval_every == 0 or epoch == cfg.epochs
        if not due or not (self.has_valid or cfg.test_every_epoch):
            return {}, {}, False
        model.eval()
        valid: dict[str, Any] = {}
        test: dict[str, Any] = {}
        with torch.no_grad(), averaged(self.ema):
            emb = model.embeddings()
            if self.has_valid:
                valid = self._evaluate("valid", emb)
            if cfg.test_every_epoch:
                test = self._evaluate("test", emb)
        del emb
        improved = self.has_valid and self.selection.observe(epoch, valid, cfg.metric)
        if test:
            self.selection.observe_test(epoch, test)
        return valid, test, improved

    def _checkpoint(self, epoch: int, improved: bool, record: dict[str, Any]) -> None:
        """``last.pt``, ``best.pt`` if improved, and the log line; in memory without a run."""
        if self.run is None:
            if improved:
                self.selected.keep(epoch)
            return
        # last.pt first: if the run dies before best.pt is replaced, resuming finds the
        # best state in last.pt (see train_state.load_last).
        start = self._now()
        train_state.save_last(
            self.run, epoch, self.model, self.optimizer, self.rng, self.selection, self.ema
        )
        if improved:
            self.selected.keep(epoch)
        record["seconds_checkpoint"] = self._now() - start
        self.run.append_log(to_json(record, indent=None))

    def _select_and_test(self, epochs_run: int) -> dict[str, Any]:
        """Restore the selected state, score the test split once; the run's summary."""
        cfg, model, sel = self.config, self.model, self.selection
        if self.ema is not None:  # the last epoch, if it is the one kept, is its average
            self.ema.copy_to_model()
        best_epoch, selected_by = self.selected.restore(epochs_run, self.has_valid)
        distributed.broadcast_state(model)  # rank 0 restored best.pt
        model.eval()
        with torch.no_grad():
            test_metrics = self._evaluate("test", model.embeddings())
        summary: dict[str, Any] = {
            "model": model.name,
            "dataset": self.dataset.name,
            "device": str(self.device),
            "threads": torch.get_num_threads(),  # what seconds_per_epoch ran on
            "best_epoch": best_epoch,
            "selection": {"metric": cfg.metric, "split": "valid" if self.has_valid else None},
            "selected_by": selected_by,
            "test": test_metrics,
            "epochs_run": epochs_run,
            **sel.summary_fields(),
            "peak_rss_mb": peak_rss_mb(),
            **distributed.summary_fields(),  # nothing in one process
            "precision": self.precision,
            "software": software(),
        }
        if self.run is not None:
            self.run.write_summary(summary)
        self.report.info(
            f"selected epoch {best_epoch} ({selected_by}); test "
            + metrics_text(
                test_metrics, [f"recall@{k}" for k in self.ks] + [f"ndcg@{k}" for k in self.ks]
            )
        )
        return summary


def train(
    run_config: RunConfig,
    dataset: Dataset,
    run_dir: Path | str | None = None,
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
    Progress is logged (see :class:`Trainer`); ``train.tensorboard`` needs the package.
    """
    cfg = run_config.train
    if cfg.tensorboard and distributed.launched_as_main():
        tensorboard_log.require()
    seed_everything(cfg.seed)
    with distributed.session(cfg.device) as device, ExitStack() as held:
        if run_dir is None and resume:
            raise ConfigError("resume needs the run directory of the run to continue")
        model = get_model_class(run_config.model)(run_config.params, dataset).to(device)
        if not distributed.is_main():  # rank 0 alone writes the run directory and logs
            distributed.wait_for_main_setup()
            return Trainer(model, dataset, cfg).fit(resume=resume)
        run = None if run_dir is None else RunDir(run_dir)
        with distributed.main_setup():  # the other ranks wait for it
            if run is not None:
                held.enter_context(run.owned())
                if resume:
                    run.require_run()
                    run.check_fingerprint(dataset)
                    if run.restore_ids(dataset):
                        logger.warning("%s had no ids.json; written again from the data", run.path)
                else:
                    run.create(run_config, dataset, data_ref)
        try:
            return Trainer(model, dataset, cfg, run_dir=run).fit(resume=resume)
        except Exception:
            if run is not None:
                run.discard_new()
            raise
