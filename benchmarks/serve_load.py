"""Load check of ``diffmm serve``: throughput and latency of single-user top-20 requests.

A DiffMM model trained on TikTok (one epoch is enough: serving cost does not depend on
how well the model is trained, only on the numbers of users, items and dimensions) is
served by ``diffmm serve`` on 127.0.0.1 in one process; a second process sends a
bounded number of ``GET /users/{id}/recommendations?k=20`` requests for random users
over ``--connections`` keep-alive connections and measures each request's latency.

    .venv/bin/python benchmarks/serve_load.py                 # trains the model if needed
    .venv/bin/python benchmarks/serve_load.py --run runs/x    # serve an existing run

Writes ``benchmarks/results/serve_load.md`` and ``.json``. Target (issue 5): at least
300 requests/s with p99 latency at most 50 ms and no errors, on 2 cores.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import random
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from common import (
    RESULTS,
    RUNS,
    git_revision,
    machine_info,
    require_dataset,
    run_training,
    train_command,
    write_atomic,
)
from diffmm.checkpoint import read_ids

TARGET = {"requests_per_s": 300.0, "p99_ms": 50.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client_thread(
    port: int, users: list[Any], k: int, latencies: list[float], errors: list[str]
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for user in users:
        start = time.perf_counter()
        try:
            conn.request("GET", f"/users/{user}/recommendations?k={k}")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200 or len(json.loads(body)["items"]) != k:
                errors.append(f"{resp.status}: {body[:200]!r}")
        except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
            errors.append(repr(exc))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        latencies.append(time.perf_counter() - start)
    conn.close()


def load_client(port: int, users: list[Any], k: int, connections: int, out: Any) -> None:
    """Runs in its own process: sends the requests, puts the measurements on ``out``."""
    shares = [users[i::connections] for i in range(connections)]
    latencies: list[list[float]] = [[] for _ in shares]
    errors: list[str] = []
    threads = [
        threading.Thread(target=_client_thread, args=(port, share, k, lat, errors))
        for share, lat in zip(shares, latencies, strict=True)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    out.put({"wall_s": wall, "latencies": [x for lat in latencies for x in lat], "errors": errors})


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def ensure_run(args: argparse.Namespace) -> tuple[Path, str | None]:
    if args.run:
        return Path(args.run), None
    run_dir = RUNS / "serve-tiktok-diffmm"
    if (run_dir / "summary.json").exists():
        return run_dir, None
    data = require_dataset("tiktok")
    sets = ["train.epochs=1", "train.progress=false"]
    cmd = train_command("diffmm", data, run_dir, "tiktok", sets)
    print("training the served model:", shlex.join(cmd), flush=True)
    run_training(cmd, run_dir)
    return run_dir, shlex.join(cmd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=None, help="Run directory to serve.")
    parser.add_argument("--requests", type=int, default=10_000, help="Requests measured.")
    parser.add_argument("--warmup", type=int, default=500, help="Requests sent first, unmeasured.")
    parser.add_argument("--connections", type=int, default=4, help="Concurrent connections.")
    parser.add_argument("-k", type=int, default=20)
    args = parser.parse_args()

    run_dir, train_cmd = ensure_run(args)
    sizes = json.loads((run_dir / "dataset.json").read_text())["fingerprint"]
    user_ids = read_ids(run_dir, sizes["n_users"], sizes["n_items"])[0].tolist()
    rng = random.Random(0)
    port = _free_port()
    serve_cmd = ["diffmm", "serve", str(run_dir), "--port", str(port)]
    exe = Path(sys.executable).with_name("diffmm")
    server = subprocess.Popen(
        [str(exe), *serve_cmd[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        t0 = time.perf_counter()
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.perf_counter() - t0 > 300:
                    sys.exit("diffmm serve did not start")
                time.sleep(0.2)
        startup_s = time.perf_counter() - t0
        ctx = mp.get_context("spawn")
        results = []
        for n in (args.warmup, args.requests):
            queue = ctx.Queue()
            users = [rng.choice(user_ids) for _ in range(n)]
            client = ctx.Process(
                target=load_client, args=(port, users, args.k, args.connections, queue)
            )
            client.start()
            results.append(queue.get())
            client.join()
        measured = results[1]
    finally:
        server.terminate()
        server.wait(timeout=30)

    lat_ms = [x * 1000 for x in measured["latencies"]]
    row = {
        "requests": len(lat_ms),
        "errors": len(measured["errors"]),
        "connections": args.connections,
        "k": args.k,
        "requests_per_s": len(lat_ms) / measured["wall_s"],
        "p50_ms": percentile(lat_ms, 50),
        "p95_ms": percentile(lat_ms, 95),
        "p99_ms": percentile(lat_ms, 99),
        "max_ms": max(lat_ms),
        "mean_ms": statistics.fmean(lat_ms),
        "server_startup_s": startup_s,
    }
    meets = row["errors"] == 0 and (
        row["requests_per_s"] >= TARGET["requests_per_s"] and row["p99_ms"] <= TARGET["p99_ms"]
    )
    config = json.loads((run_dir / "config.json").read_text())
    dataset = json.loads((run_dir / "dataset.json").read_text())["fingerprint"]
    report = {
        "command": shlex.join(["python", "benchmarks/serve_load.py", *sys.argv[1:]]),
        "serve_command": shlex.join(serve_cmd),
        "train_command": train_cmd,
        "revision": git_revision(),
        "machine": machine_info(),
        "model": config["model"],
        "dataset": {k: dataset[k] for k in ("name", "n_users", "n_items")},
        "result": row,
        "target": TARGET,
        "meets_target": meets,
        "first_errors": measured["errors"][:5],
    }
    lines = [
        "# diffmm serve: load check",
        "",
        f"Command: `{report['command']}`; server: `{report['serve_command']}` (one uvicorn "
        "process); client: a second process with "
        f"{args.connections} keep-alive connections, random users, "
        f"`GET /users/{{id}}/recommendations?k={args.k}`, {args.warmup} warm-up requests "
        "not counted.",
        f"Model: {config['model']} on {dataset['name']} ({dataset['n_users']} users, "
        f"{dataset['n_items']} items). Revision `{report['revision']}`; machine: "
        f"{report['machine']['cpu']}, {report['machine']['cores']} cores, "
        f"{report['machine']['date']}.",
        "",
        "| requests | errors | requests/s | p50 ms | p95 ms | p99 ms | max ms |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {row['requests']} | {row['errors']} | {row['requests_per_s']:.0f} | "
        f"{row['p50_ms']:.1f} | {row['p95_ms']:.1f} | {row['p99_ms']:.1f} | {row['max_ms']:.1f} |",
        "",
        f"Target: ≥ {TARGET['requests_per_s']:.0f} requests/s with p99 ≤ {TARGET['p99_ms']:.0f} "
        f"ms and no errors: **{'met' if meets else 'not met'}**.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    write_atomic(RESULTS / "serve_load.md", text)
    write_atomic(RESULTS / "serve_load.json", json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
