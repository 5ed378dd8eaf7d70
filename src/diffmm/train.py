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

Epochs are numbered from 1. A run directory, when given, receives ``log.jsonl`` (one
JSON object per epoch), ``best.pt`` (the best state so far: ``{"epoch", "metric",
"value", "model": state_dict}``) and ``summary.json``; every
file is written atomically.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from diffmm.config import RunConfig, TrainConfig
from diffmm.data.dataset import Dataset
from diffmm.evaluate import evaluate
from diffmm.models import get_model_class
from diffmm.models.base import Batch, Recommender
from diffmm.sampling import NegativeSampler, bpr_epoch_batches, n_bpr_batches
from diffmm.utils import (
    atomic_append_line,
    atomic_torch_save,
    atomic_write_json,
    peak_rss_mb,
    resolve_device,
    seed_everything,
    to_json,
)

PARITY_NOTE = "authors' protocol (best epoch chosen on test), for parity only; never used"


def _fmt(metrics: dict[str, float], keys: list[str]) -> str:
    return " ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics)


class Trainer:
    """Trains a :class:`Recommender` on a :class:`Dataset` as configured.

    Args:
        model: the model, already on its device.
        dataset: the data; ``train`` drives the loss, ``valid`` the selection.
        config: training settings.
        run_dir: where to write ``log.jsonl``, ``best.pt`` and ``summary.json`` (None:
            write nothing).
        log: receives one human-readable line per epoch and any warning.
    """

    def __init__(
        self,
        model: Recommender,
        dataset: Dataset,
        config: TrainConfig,
        run_dir: Path | str | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.model = model
        self.dataset = dataset
        self.config = config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.log = log
        metric_k = int(config.metric.partition("@")[2])
        self.ks = sorted(set(config.ks) | {metric_k})
        self.device = model.device
        self.generator = torch.Generator().manual_seed(config.seed)

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

    def _best_state(self) -> dict[str, Any]:
        """What scoring needs: the model's state (not its optimisers)."""
        return {"model": copy.deepcopy(self.model.state_dict())}

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        """Train, select on validation, score test once; returns the summary."""
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
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.run_dir / "log.jsonl"
            if log_path.exists():
                log_path.unlink()

        metric = cfg.metric
        best_value = -float("inf")
        best_epoch = 0
        best_state: dict[str, Any] | None = None
        best_valid: dict[str, float] = {}
        bad_validations = 0
        stopped_early = False
        best_on_test: dict[str, dict[str, float]] = {}
        epoch_seconds: list[float] = []
        epoch = 0

        for epoch in range(1, cfg.epochs + 1):
            t0 = self._now()
            model.train()
            stats = model.begin_epoch(epoch) or {}
            t1 = self._now()
            losses = self._train_epoch(epoch, optimizer)
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
                    if valid[metric] > best_value:
                        best_value, best_epoch, best_valid = valid[metric], epoch, valid
                        best_state = self._best_state()
                        bad_validations = 0
                        improved = True
                    else:
                        bad_validations += 1
                for key, value in test.items():
                    if key != "n_users" and (
                        key not in best_on_test or value > best_on_test[key]["value"]
                    ):
                        best_on_test[key] = {"value": value, "epoch": epoch}
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
            epoch_seconds.append(t3 - t0)
            if improved and self.run_dir is not None:
                atomic_torch_save(
                    self.run_dir / "best.pt",
                    {"epoch": epoch, "metric": metric, "value": best_value, **best_state},
                )
            if self.run_dir is not None:
                atomic_append_line(self.run_dir / "log.jsonl", to_json(record, indent=None))
            self._log_epoch(record)

            if has_valid and bad_validations >= cfg.patience:
                stopped_early = True
                self.log(
                    f"early stop at epoch {epoch}: no {metric} improvement in "
                    f"{cfg.patience} validations; best epoch {best_epoch}"
                )
                break

        epochs_run = epoch
        if not has_valid or best_state is None:
            best_epoch = epochs_run
            selected_by = (
                "last epoch (no validation interactions)"
                if not has_valid
                else f"last epoch (valid {metric} was never finite)"
            )
        else:
            model.load_state_dict(best_state["model"])
            selected_by = f"best valid {metric}"
        if best_state is None and self.run_dir is not None:
            atomic_torch_save(
                self.run_dir / "best.pt",
                {"epoch": best_epoch, "metric": None, "value": None, **self._best_state()},
            )

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
            "valid": best_valid,
            "test": test_metrics,
            "epochs_run": epochs_run,
            "stopped_early": stopped_early,
            "seconds_per_epoch": statistics.median(epoch_seconds) if epoch_seconds else 0.0,
            "seconds_total": float(sum(epoch_seconds)),
            "peak_rss_mb": peak_rss_mb(),
        }
        if cfg.test_every_epoch:
            summary["best_on_test"] = {"note": PARITY_NOTE, **best_on_test}
        if self.run_dir is not None:
            atomic_write_json(self.run_dir / "summary.json", summary)
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
) -> dict[str, Any]:
    """Seed, build the model on the configured device, train it; returns the summary.

    Writes ``config.json`` (the resolved configuration) to ``run_dir`` when given.
    """
    cfg = run_config.train
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    model = get_model_class(run_config.model)(run_config.params, dataset).to(device)
    if run_dir is not None:
        run_dir = Path(run_dir)
        atomic_write_json(run_dir / "config.json", run_config.to_dict())
    return Trainer(model, dataset, cfg, run_dir=run_dir, log=log).fit()
