"""Fixtures shared across the test tree: a small trained run and a live HTTP server on it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: A tiny synthetic dataset with string-free integer ids; trains in about a second.
SERVE_DATA = "synthetic:n_users=150,n_items=80,interactions_per_user=10"


def diffmm_command(*args: str) -> list[str]:
    """The ``diffmm`` command of this interpreter, as an argv list."""
    return [sys.executable, "-m", "diffmm.cli", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished LightGCN run directory on :data:`SERVE_DATA` (3 epochs)."""
    from diffmm.checkpoint import DataRef
    from diffmm.config import resolve_config
    from diffmm.train import train

    run_dir = tmp_path_factory.mktemp("runs") / "lightgcn"
    config = resolve_config("lightgcn", overrides=["train.epochs=3", "train.progress=false"])
    ref = DataRef.of(SERVE_DATA, "random", config.train.seed)
    train(config, ref.load(), run_dir, log=lambda _: None, data_ref=ref)
    return run_dir


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


@pytest.fixture(scope="session")
def server(trained_run: Path) -> Iterator[Server]:
    """``diffmm serve`` on the trained run, on a free loopback port."""
    pytest.importorskip("fastapi", reason="serving needs the [serve] extra")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        diffmm_command("serve", str(trained_run), "--port", str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                out = process.stdout.read().decode() if process.stdout else ""
                pytest.fail(f"diffmm serve did not start:\n{out}")
            time.sleep(0.1)
    yield Server(url, process)
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
