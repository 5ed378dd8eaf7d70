"""Multi-process training on torch.distributed (gloo on CPU): 2 processes train one model.

Each test starts real processes (``torch.multiprocessing`` or ``torchrun``) with the
environment torchrun sets, on tiny synthetic data, with a timeout so a hang fails fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import diffmm.trainer as train_mod
from diffmm import distributed
from diffmm.config import RunConfig, resolve_config
from diffmm.data.ref import DataRef
from diffmm.errors import DiffMMError
from diffmm.evaluate import evaluate as real_evaluate
from diffmm.models.lightgcn import LightGCN
from diffmm.trainer import train
from helpers import free_port

#: The tests that start processes take 10-40 s on 2 cores (importing torch, mostly).
slow = pytest.mark.slow

DATA = "synthetic:n_users=120,n_items=80,interactions_per_user=10"
SETTINGS = {
    "lightgcn": ["train.epochs=2", "train.batch_size=256"],
    "diffmm": [
        "train.epochs=2",
        "train.batch_size=256",
        "denoiser_hidden_dims=[32]",
        "diffusion_batch_size=50",
    ],
}
COMMON = ["train.progress=false", "train.device=cpu", "embedding_dim=16"]
# A 2-process run with global batch B computes the 1-process gradients up to float
# rounding (sums in another order): LightGCN's losses agree to ~1e-7 and its metrics
# were equal when measured; the bound is far below one user's share (1/120).
EXACT_TOLERANCE = 1e-4
# DiffMM's denoisers draw their diffusion noise per rank (other draws than one process's),
# so its generated graphs, hence metrics, agree only statistically: measured |Δ| <= 0.021
# (recall@10/20 of 2.5 of the 120 users); the bound leaves room for other platforms.
DIFFMM_TOLERANCE = 0.06
TIMEOUT_S = 150


def run_config(model: str) -> RunConfig:
    return resolve_config(model, None, None, [*SETTINGS[model], *COMMON])


def load_data() -> Any:
    return DataRef.of(DATA).load()  # as the command loads it


def state_hash(model: torch.nn.Module) -> str:
    """A digest of every parameter, buffer and extra state (DiffMM's graphs) of ``model``."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            digest.update(value.to_dense().contiguous().numpy().tobytes())
        elif isinstance(value, dict):
            for key in sorted(value):
                digest.update(str(key).encode())
                feed(value[key])
        elif isinstance(value, list | tuple):
            for item in value:
                feed(item)
        else:
            digest.update(repr(value).encode())

    feed(dict(model.state_dict()))
    return digest.hexdigest()


#: The runs each of the 2 processes makes, in order, in one process group:
#: ``(name, model, stop_after)``; ``stop_after`` > 0 interrupts the run after that epoch
#: (as Ctrl-C would), < 0 resumes the run of the previous scenario.
SCENARIOS = [
    ("lightgcn", "lightgcn", 0),
    ("diffmm", "diffmm", 0),
    ("interrupted", "diffmm", 1),
    ("resumed", "diffmm", -1),
    ("diverged", "lightgcn", 0),  # rank 1's first loss is NaN
    ("refused", "lightgcn", 0),  # rank 0's run directory holds another file
]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    """One rank: every scenario, with a hash of the model after every epoch; rank r > 0
    is given its own run directory, which it must not write."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method="env://")  # train() uses it
    checkpoint = train_mod.Trainer._checkpoint
    now: dict[str, Any] = {}

    def spy(self: Any, epoch: int, improved: bool, record: dict) -> None:
        checkpoint(self, epoch, improved, record)
        now["hashes"].append(state_hash(self.model))
        if epoch == now["stop_after"]:
            raise KeyboardInterrupt

    train_mod.Trainer._checkpoint = spy
    results: dict[str, Any] = {}
    real_loss = LightGCN.loss
    for name, model, stop_after in SCENARIOS:
        where = Path(out) / ("resume" if stop_after else name)
        run_dir = where / ("run" if rank == 0 else f"run_rank{rank}")
        now.update(hashes=[], stop_after=stop_after)
        result: dict[str, Any] = {"hashes": now["hashes"]}
        if name == "refused" and rank == 0:
            run_dir.mkdir(parents=True)
            (run_dir / "notes.txt").write_text("not a run")
        if name == "diverged" and rank == 1:
            LightGCN.loss = lambda self, batch: {
                k: v * float("nan") for k, v in real_loss(self, batch).items()
            }
        try:
            result["summary"] = train(
                run_config(model), load_data(), run_dir, resume=stop_after < 0
            )
        except KeyboardInterrupt:
            result["interrupted"] = True
        except DiffMMError as error:
            result["error"] = [type(error).__name__, str(error)]
        finally:
            LightGCN.loss = real_loss
        results[name] = result
    torch.distributed.destroy_process_group()
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(results, default=float))


# ----------------------------------------------------------------------------- in one process
def test_in_one_process_every_helper_is_the_identity():
    arrays = (np.arange(5), np.arange(5) + 10, np.arange(5) + 20)
    assert distributed.world() == (0, 1) and distributed.is_main()
    assert distributed.shard_batch(arrays) == (arrays, 1.0)
    assert distributed.shard(7) == slice(0, 7)
    t = torch.arange(6.0).reshape(3, 2)
    assert distributed.gather_rows(t) is t and distributed.all_reduce_sum(t) is t
    model = train_mod.get_model_class("lightgcn")(run_config("lightgcn").params, load_data())
    assert distributed.loss_function(model) == model.loss


@pytest.mark.parametrize(("spec", "backend", "device"), [("cuda", "nccl", "cuda:1"),
                                                          ("cpu", "gloo", "cpu")])  # fmt: skip
def test_the_backend_follows_the_device_and_cuda_ranks_take_their_local_gpu(
    monkeypatch, spec, backend, device
):
    # no GPU needed: the choice, not NCCL itself, is what this checks
    calls: list[tuple[str, Any]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    dist = distributed.dist
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda b, **kw: calls.append(("init", b)))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append(("destroy", None)))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with distributed.session(spec) as chosen:
        assert str(chosen) == device
    assert ("init", backend) in calls and calls[-1] == ("destroy", None)
    assert (("set_device", torch.device("cuda", 1)) in calls) == (backend == "nccl")


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_rank_slices_partition_a_batch_and_their_scaled_means_give_its_mean(monkeypatch, n):
    """With DDP's average over 2 ranks, the scaled slice losses give the batch's mean."""
    values = np.random.default_rng(n).random(n)
    parts, total = [], 0.0
    for rank in range(2):
        monkeypatch.setattr(distributed, "world", lambda rank=rank: (rank, 2))
        (mine,), scale = distributed.shard_batch((values,))
        assert len(mine) >= 1  # an empty slice is a row of weight 0: the rank still steps
        parts.append(mine if scale else mine[:0])
        total += scale * mine.mean() / 2
    assert np.array_equal(np.concatenate(parts), values)
    assert total == pytest.approx(values.mean(), rel=1e-12)


def test_sharded_evaluation_covers_every_user_once(monkeypatch):
    data = load_data()
    scores = torch.rand(data.n_users, data.n_items, generator=torch.Generator().manual_seed(0))
    whole = real_evaluate(lambda u: scores[u], data, "valid", per_user=True)
    users, sums = [], 0.0
    for rank in range(2):
        monkeypatch.setattr(distributed, "world", lambda rank=rank: (rank, 2))
        view = distributed._ShardView(data, "valid")
        part = real_evaluate(lambda u: scores[u], view, "valid", per_user=True)
        users.append(part["per_user"]["user"])
        sums += part["per_user"]["recall@20"].sum()
    assert np.array_equal(np.concatenate(users), whole["per_user"]["user"])
    assert sums / whole["n_users"] == pytest.approx(whole["recall@20"], rel=1e-12)


# ----------------------------------------------------------------------------- 2 processes
@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """The scenarios' results on each of 2 processes (started once: imports take seconds)."""
    out, world = tmp_path_factory.mktemp("dist"), 2
    ctx = mp.start_processes(
        _worker, args=(world, free_port(), str(out)), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for process in ctx.processes:
                process.kill()
            pytest.fail(f"the {world} processes did not finish in {TIMEOUT_S} s")
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def metrics_close(a: dict, b: dict, tolerance: float) -> None:
    for key in ("recall@20", "ndcg@20", "recall@10", "ndcg@10"):
        assert abs(a[key] - b[key]) <= tolerance, (key, a[key], b[key])


@slow
@pytest.mark.parametrize("model", ["lightgcn", "diffmm"])
def test_two_processes_train_one_model(ranks, model):
    out, results = ranks
    first, second = (r[model] for r in results)
    epochs = run_config(model).train.epochs
    # every rank ran to the end, holding the same parameters after every epoch
    assert "summary" in first and "summary" in second
    assert len(first["hashes"]) == epochs
    assert first["hashes"] == second["hashes"]
    # rank 0 alone wrote: one run directory, with one log line per epoch
    assert sorted(p.name for p in (out / model).iterdir()) == ["run"]
    log = (out / model / "run" / "log.jsonl").read_text().splitlines()
    assert len(log) == epochs
    written = json.loads((out / model / "run" / "summary.json").read_text())
    assert (written["world_size"], written["backend"]) == (2, "gloo")
    assert written["test"] == first["summary"]["test"] == second["summary"]["test"]
    # the metrics of one process with the same global batch
    single = train(run_config(model), load_data(), None)
    assert single["test"]["n_users"] == written["test"]["n_users"]
    tolerance = EXACT_TOLERANCE if model == "lightgcn" else DIFFMM_TOLERANCE
    metrics_close(written["test"], single["test"], tolerance)
    metrics_close(written["valid"], single["valid"], tolerance)


@slow
def test_a_distributed_run_resumes_as_it_would_have_gone_on(ranks):
    out, results = ranks
    interrupted = [r["interrupted"] for r in results]
    resumed = [r["resumed"] for r in results]
    assert all(r.get("interrupted") for r in interrupted)
    assert interrupted[0]["hashes"] == interrupted[1]["hashes"]
    assert resumed[0]["summary"]["resumed_after_epochs"] == [1]
    assert resumed[0]["hashes"] == resumed[1]["hashes"] and len(resumed[0]["hashes"]) == 1
    assert sorted(p.name for p in (out / "resume").iterdir()) == ["run"]
    # bitwise the uninterrupted 2-process run of the same settings
    whole = results[0]["diffmm"]
    assert whole["hashes"] == interrupted[0]["hashes"] + resumed[0]["hashes"]
    assert whole["summary"]["test"] == resumed[0]["summary"]["test"]


@slow
def test_a_failed_setup_on_rank_0_stops_the_other_ranks_too(ranks):
    out, results = ranks
    first, second = (r["refused"] for r in results)
    assert "summary" not in first and "summary" not in second
    assert second["error"][0] == "PeerFailedError"
    assert "rank 0 stopped before training" in second["error"][1]
    assert first["error"][0] != "PeerFailedError" and first["error"][1] in second["error"][1]
    assert sorted(p.name for p in (out / "refused").iterdir()) == ["run"]


@slow
def test_a_loss_that_diverges_on_one_rank_stops_every_rank(ranks):
    """The ranks agree on the verdict: none is left waiting in a collective."""
    _, results = ranks
    first, second = (r["diverged"] for r in results)
    assert first["error"][0] == second["error"][0] == "DivergedError"
    assert "non-finite loss {'bpr': nan" in second["error"][1]
    assert "non-finite loss {'on another rank': nan}" in first["error"][1]


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


@slow
def test_two_machines_simulated_with_a_c10d_rendezvous(tmp_path):
    """``--nnodes 2``: two torchrun agents (one per "machine") meet on 127.0.0.1."""
    port = free_port()
    command = [
        "-m",
        "diffmm",
        "train",
        "--model",
        "lightgcn",
        "--data",
        DATA,
        "--out",
        str(tmp_path / "run"),
        *(f"--set={s}" for s in [*SETTINGS["lightgcn"], *COMMON]),
    ]
    launch = [
        "--nnodes=2",
        "--nproc-per-node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        "--rdzv-id=diffmm-test",
        "--max-restarts=0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    agents = [
        subprocess.Popen(
            _torchrun(*launch, *command),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        for _ in range(2)
    ]
    outputs = []
    try:
        for agent in agents:
            outputs.append(agent.communicate(timeout=TIMEOUT_S))
    finally:
        for agent in agents:
            agent.kill()
    for agent, (_, err) in zip(agents, outputs, strict=True):
        assert agent.returncode == 0, err[-3000:]
    # one summary printed (rank 0's agent), one run directory
    summaries = [json.loads(out) for out, _ in outputs if out.strip()]
    assert len(summaries) == 1
    # and one set of log lines (rank 0's): an epoch line each epoch, the selection
    lines = [line for _, err in outputs for line in err.splitlines()]
    assert [line[:11] for line in lines if line.startswith("epoch ")] == [
        "epoch   1 |",
        "epoch   2 |",
    ]
    assert sum(line.startswith("selected epoch") for line in lines) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["epochs_run"] == 2 and written["test"] == summaries[0]["test"]
    single = train(run_config("lightgcn"), load_data(), None)
    metrics_close(written["test"], single["test"], EXACT_TOLERANCE)
