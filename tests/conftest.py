"""Fixtures shared across the test tree: a small trained run and a live HTTP server on it."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import SERVE_DATA, Server, diffmm_command, free_port


@pytest.fixture
def scratch_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from a scratch directory (no stray runs/ in the repository) and keep the split
    cache fallback (~/.cache/diffmm) out of the real home directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished LightGCN run directory on :data:`SERVE_DATA` (3 epochs)."""
    from diffmm.checkpoint import DataRef
    from diffmm.config import resolve_config
    from diffmm.trainer import train

    run_dir = tmp_path_factory.mktemp("runs") / "lightgcn"
    config = resolve_config("lightgcn", overrides=["train.epochs=3", "train.progress=false"])
    ref = DataRef.of(SERVE_DATA, "random", config.train.seed)
    train(config, ref.load(), run_dir, data_ref=ref)
    return run_dir


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
