"""Tiny hand-built datasets for the tests, and helpers to run the command and the server."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from diffmm.data.dataset import Dataset
from diffmm.models.base import Batch, Recommender
from diffmm.sampling import bpr_epoch_batches


def csr(dense: np.ndarray | list) -> sp.csr_matrix:
    """A binary float32 CSR matrix with sorted indices from a dense 0/1 array."""
    mat = sp.csr_matrix((np.asarray(dense) != 0).astype(np.float32))
    mat.sort_indices()
    return mat


def make_dataset(train, valid=None, test=None, name: str = "tiny") -> Dataset:
    """A Dataset from dense 0/1 arrays (missing splits are empty)."""
    train = csr(train)
    shape = train.shape
    empty = np.zeros(shape, dtype=np.float32)
    return Dataset(
        name=name,
        n_users=shape[0],
        n_items=shape[1],
        train=train,
        valid=csr(empty if valid is None else valid),
        test=csr(empty if test is None else test),
    )


def planted_dataset(
    n_users: int = 120,
    n_items: int = 60,
    n_clusters: int = 4,
    per_user: int = 10,
    seed: int = 0,
) -> Dataset:
    """Learnable data: users and items belong to clusters and users mostly like their own.

    Each user picks ``per_user`` items, 90% from its cluster's items, the rest anywhere;
    per user one item goes to valid, one to test, the rest to train.
    """
    rng = np.random.default_rng(seed)
    user_cluster = np.arange(n_users) % n_clusters
    item_cluster = np.arange(n_items) % n_clusters
    dense = np.zeros((n_users, n_items), dtype=np.float32)
    split = np.zeros((n_users, n_items), dtype=np.int8)  # 0 train, 1 valid, 2 test
    for u in range(n_users):
        own = np.flatnonzero(item_cluster == user_cluster[u])
        n_own = int(round(per_user * 0.9))
        chosen = list(rng.choice(own, size=n_own, replace=False))
        others = np.setdiff1d(np.arange(n_items), chosen)
        chosen += list(rng.choice(others, size=per_user - n_own, replace=False))
        chosen = rng.permutation(chosen)
        dense[u, chosen] = 1
        split[u, chosen[0]] = 1
        split[u, chosen[1]] = 2
    train = dense * (split == 0)
    valid = dense * (split == 1)
    test = dense * (split == 2)
    return make_dataset(train, valid, test, name="planted")


def fit_bpr(
    model: Recommender, data: Dataset, epochs: int, lr: float = 0.05, seed: int = 0
) -> list[float]:
    """A bare BPR loop (no trainer): ``begin_epoch`` then Adam over batches of 256 each
    epoch, as the trainer does; returns each epoch's loss sum."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=lr)
    losses = []
    for epoch in range(epochs):
        model.begin_epoch(epoch)
        total = 0.0
        for u, p, n in bpr_epoch_batches(data.train, 256, rng):
            batch = Batch(*(torch.from_numpy(x) for x in (u, p, n)))
            loss = sum(model.loss(batch).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        losses.append(total)
    return losses


#: A tiny synthetic dataset with string-free integer ids; trains in about a second.
SERVE_DATA = "synthetic:n_users=150,n_items=80,interactions_per_user=10"


def diffmm_command(*args: str) -> list[str]:
    """The ``diffmm`` command of this interpreter, as an argv list."""
    return [sys.executable, "-m", "diffmm.cli", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running ``diffmm serve`` process and a tiny HTTP client for it."""

    def __init__(self, url: str, process: subprocess.Popen) -> None:
        self.url, self.process = url, process

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None):
        """``(status, parsed JSON body)``; ``raw`` sends bytes as they are."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, path: str, body: Any = None, raw: bytes | None = None):
        return self.request("POST", path, body, raw)


def popularity_recall(dataset: Dataset, split: str = "test", k: int = 20) -> float:
    """Recall@k of the popularity ranker (items by training count) on ``split``."""
    from diffmm.evaluate import evaluate

    counts = torch.from_numpy(np.asarray(dataset.train.sum(axis=0)).ravel().astype(np.float32))
    result = evaluate(lambda users: counts.expand(len(users), -1), dataset, split, ks=[k])
    return result[f"recall@{k}"]


def cli(*args: Any) -> Any:
    """``diffmm ARGS...`` in this process (click's runner); its ``Result``."""
    from click.testing import CliRunner

    from diffmm.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def user_error(result: Any) -> str:
    """The message of a user error: exit status 2, ``error: ...`` on stderr, no traceback."""
    exc = result.exception
    assert exc is None or isinstance(exc, SystemExit), f"uncaught {exc!r} (a traceback)"
    assert "Traceback" not in result.output
    assert result.exit_code == 2, result.output
    stderr = "\n" + result.stderr
    assert "\nerror: " in stderr, result.output
    return stderr.split("\nerror: ", 1)[1]


def usage_error(result: Any) -> str:
    """The message of an invalid option caught by click itself (``Error: ...``, status 2)."""
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.exit_code == 2, result.output
    assert "Error: " in result.stderr, result.output
    return result.stderr.split("Error: ", 1)[1]


def assert_says(message: str, *needles: str) -> None:
    """Every one of ``needles`` is in ``message``."""
    for needle in needles:
        assert needle in message, f"{needle!r} not in message:\n{message}"


def case(case_id: str, *values: Any) -> Any:
    """One parametrized case with a readable id."""
    import pytest

    return pytest.param(*values, id=case_id)


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut ``path`` to the first ``keep`` share of its bytes (a copy that stopped early)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
