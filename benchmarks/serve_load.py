"""Load check of ``diffmm serve``: throughput of single-user requests, and ``/health``
while heavy requests are in flight.

A DiffMM model trained on TikTok (one epoch is enough: serving cost does not depend on
how well the model is trained, only on the numbers of users, items and dimensions) is
served by ``diffmm serve`` on 127.0.0.1 in one process. Two runs, each from client
processes of their own:

1. light: a bounded number of ``GET /users/{id}/recommendations?k=20`` requests for
   random users over ``--connections`` keep-alive connections, each request timed;
2. heavy: ``--heavy-connections`` connections POST ``--heavy-users`` random users at
   ``k=--heavy-k`` back to back for ``--heavy-seconds`` (the server is started with
   ``--max-results`` raised to allow them), while another process times ``GET /health``
   every ``--health-interval-ms``.

    .venv/bin/python benchmarks/serve_load.py                 # trains the model if needed
    .venv/bin/python benchmarks/serve_load.py --run runs/x    # serve an existing run

Writes ``benchmarks/results/serve_load.md`` and ``.json``. Targets (issues 5 and 11): at
least 300 requests/s with p99 latency at most 50 ms and no errors, on 2 cores; and a
``/health`` p99 of at most 50 ms with the heavy requests in flight.
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
    REPO,
    RESULTS,
    RUNS,
    provenance,
    repo_path,
    require_dataset,
    run_training,
    train_command,
    write_atomic,
)
from diffmm.checkpoint import RunDir

TARGET = {"requests_per_s": 300.0, "p99_ms": 50.0, "health_p99_under_load_ms": 50.0}
ERRORS = (OSError, http.client.HTTPException, ValueError, KeyError)


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
        except ERRORS as exc:
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


def _heavy_thread(port: int, bodies: list[bytes], stop_at: float, log: dict[str, list]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    i = 0
    while time.perf_counter() < stop_at:
        start = time.perf_counter()
        try:
            conn.request("POST", "/recommendations", bodies[i % len(bodies)], _JSON)
            resp = conn.getresponse()
            size = len(resp.read())
            if resp.status != 200:
                log["errors"].append(f"{resp.status}")
        except ERRORS as exc:
            log["errors"].append(repr(exc))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            size = 0
        log["latencies"].append(time.perf_counter() - start)
        log["bytes"].append(size)
        i += 1
    conn.close()


_JSON = {"Content-Type": "application/json"}


def heavy_client(
    port: int, users: list[Any], n_users: int, k: int, connections: int, seconds: float, out: Any
) -> None:
    """Runs in its own process: POSTs heavy requests back to back for ``seconds``."""
    rng = random.Random(1)
    bodies = [json.dumps({"users": rng.sample(users, n_users), "k": k}).encode() for _ in range(8)]
    log: dict[str, list] = {"latencies": [], "errors": [], "bytes": []}
    stop_at = time.perf_counter() + seconds
    threads = [
        threading.Thread(target=_heavy_thread, args=(port, bodies[i:], stop_at, log))
        for i in range(connections)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put({**log, "wall_s": time.perf_counter() - start})


def health_prober(port: int, delay: float, seconds: float, interval: float, out: Any) -> None:
    """Runs in its own process: times ``GET /health`` every ``interval`` seconds."""
    time.sleep(delay)  # until the heavy requests are in flight
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies, errors = [], []
    stop_at = time.perf_counter() + seconds
    while time.perf_counter() < stop_at:
        start = time.perf_counter()
        try:
            conn.request("GET", "/health")
            resp = conn.getresponse()
            if resp.status != 200 or json.loads(resp.read()) != {"status": "ok"}:
                errors.append(f"{resp.status}")
        except ERRORS as exc:
            errors.append(repr(exc))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        elapsed = time.perf_counter() - start
        latencies.append(elapsed)
        time.sleep(max(0.0, interval - elapsed))
    conn.close()
    out.put({"latencies": latencies, "errors": errors})


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


def _light_runs(port: int, user_ids: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    rng = random.Random(0)
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
    return results[1]


def _heavy_run(port: int, user_ids: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    heavy_q, health_q = ctx.Queue(), ctx.Queue()
    delay = 2.0  # the first heavy responses take about a second: let them get going
    heavy = ctx.Process(
        target=heavy_client,
        args=(port, user_ids, args.heavy_users, args.heavy_k, args.heavy_connections,
              args.heavy_seconds, heavy_q),
    )  # fmt: skip
    prober = ctx.Process(
        target=health_prober,
        args=(port, delay, args.heavy_seconds - delay, args.health_interval_ms / 1000, health_q),
    )
    heavy.start()
    prober.start()
    heavy_log, health_log = heavy_q.get(), health_q.get()
    heavy.join()
    prober.join()
    heavy_ms = [x * 1000 for x in heavy_log["latencies"]]
    health_ms = [x * 1000 for x in health_log["latencies"]]
    return {
        "heavy_connections": args.heavy_connections,
        "heavy_users": args.heavy_users,
        "heavy_k": args.heavy_k,
        "heavy_requests": len(heavy_ms),
        "heavy_errors": len(heavy_log["errors"]),
        "heavy_mean_s": statistics.fmean(heavy_ms) / 1000,
        "heavy_max_s": max(heavy_ms) / 1000,
        "heavy_response_mb": statistics.fmean(heavy_log["bytes"]) / 1e6,
        "heavy_wall_s": heavy_log["wall_s"],
        "health_interval_ms": args.health_interval_ms,
        "health_requests": len(health_ms),
        "health_errors": len(health_log["errors"]),
        "health_p50_ms": percentile(health_ms, 50),
        "health_p95_ms": percentile(health_ms, 95),
        "health_p99_ms": percentile(health_ms, 99),
        "health_max_ms": max(health_ms),
        "first_errors": (heavy_log["errors"] + health_log["errors"])[:5],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=None, help="Run directory to serve.")
    parser.add_argument("--requests", type=int, default=10_000, help="Requests measured.")
    parser.add_argument("--warmup", type=int, default=500, help="Requests sent first, unmeasured.")
    parser.add_argument("--connections", type=int, default=4, help="Concurrent connections.")
    parser.add_argument("-k", type=int, default=20)
    parser.add_argument("--heavy-connections", type=int, default=4)
    parser.add_argument("--heavy-users", type=int, default=1000, help="Users per heavy POST.")
    parser.add_argument("--heavy-k", type=int, default=1000, help="k of the heavy POSTs.")
    parser.add_argument("--heavy-seconds", type=float, default=20.0)
    parser.add_argument("--health-interval-ms", type=float, default=20.0)
    args = parser.parse_args()

    run_dir, train_cmd = ensure_run(args)
    sizes = json.loads((run_dir / "dataset.json").read_text())["fingerprint"]
    user_ids = RunDir(run_dir).read_ids(sizes["n_users"], sizes["n_items"])[0].tolist()
    port = _free_port()
    max_results = max(100_000, args.heavy_users * args.heavy_k)
    serve_cmd = ["diffmm", "serve", repo_path(run_dir), "--port", str(port)]
    serve_cmd += ["--max-results", str(max_results)]
    exe = Path(sys.executable).with_name("diffmm")
    server = subprocess.Popen(  # in the repository, where the recorded command runs
        [str(exe), *serve_cmd[1:]], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
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
        measured = _light_runs(port, user_ids, args)
        heavy = _heavy_run(port, user_ids, args)
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
    health_meets = (
        heavy["health_errors"] == 0
        and heavy["heavy_errors"] == 0
        and heavy["health_p99_ms"] <= TARGET["health_p99_under_load_ms"]
    )
    config = json.loads((run_dir / "config.json").read_text())
    dataset = json.loads((run_dir / "dataset.json").read_text())["fingerprint"]
    report = {
        **provenance(),
        "serve_command": shlex.join(serve_cmd),
        "train_command": train_cmd,
        "load_average": os.getloadavg(),
        "model": config["model"],
        "dataset": {k: dataset[k] for k in ("name", "n_users", "n_items")},
        "result": row,
        "under_heavy_load": heavy,
        "target": TARGET,
        "meets_target": meets,
        "health_meets_target": health_meets,
        "first_errors": measured["errors"][:5],
    }
    write_report(report, args)


def write_report(report: dict[str, Any], args: argparse.Namespace) -> None:
    row, heavy, machine = report["result"], report["under_heavy_load"], report["machine"]
    dataset = report["dataset"]
    met = {True: "met", False: "not met"}
    lines = [
        "# diffmm serve: load check",
        "",
        f"Command: `{report['command']}`; server: `{report['serve_command']}` (one uvicorn "
        "process). Light run: a second process with "
        f"{args.connections} keep-alive connections, random users, "
        f"`GET /users/{{id}}/recommendations?k={args.k}`, {args.warmup} warm-up requests "
        "not counted. Heavy run: one process with "
        f"{heavy['heavy_connections']} connections POSTing {heavy['heavy_users']} random "
        f"users at k={heavy['heavy_k']} back to back for {args.heavy_seconds:.0f} s, and "
        f"another timing `GET /health` every {heavy['health_interval_ms']:.0f} ms from 2 s "
        "in until the end.",
        f"Model: {report['model']} on {dataset['name']} ({dataset['n_users']} users, "
        f"{dataset['n_items']} items). Revision `{report['revision']}`; machine: "
        f"{machine['cpu']}, {machine['cores']} cores, {machine['date']} (load average "
        f"at the end {report['load_average'][0]:.2f}).",
        "",
        "| requests | errors | requests/s | p50 ms | p95 ms | p99 ms | max ms |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {row['requests']} | {row['errors']} | {row['requests_per_s']:.0f} | "
        f"{row['p50_ms']:.1f} | {row['p95_ms']:.1f} | {row['p99_ms']:.1f} | {row['max_ms']:.1f} |",
        "",
        f"Target: ≥ {TARGET['requests_per_s']:.0f} requests/s with p99 ≤ {TARGET['p99_ms']:.0f} "
        f"ms and no errors: **{met[report['meets_target']]}**.",
        "",
        "Under heavy load:",
        "",
        "| heavy requests | errors | mean s | max s | MB each | /health probes | errors "
        "| p50 ms | p95 ms | p99 ms | max ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {heavy['heavy_requests']} | {heavy['heavy_errors']} | {heavy['heavy_mean_s']:.2f} "
        f"| {heavy['heavy_max_s']:.2f} | {heavy['heavy_response_mb']:.1f} "
        f"| {heavy['health_requests']} | {heavy['health_errors']} "
        f"| {heavy['health_p50_ms']:.1f} | {heavy['health_p95_ms']:.1f} "
        f"| {heavy['health_p99_ms']:.1f} | {heavy['health_max_ms']:.1f} |",
        "",
        f"Target: `/health` p99 ≤ {TARGET['health_p99_under_load_ms']:.0f} ms with the heavy "
        f"requests in flight, no errors: **{met[report['health_meets_target']]}**.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    write_atomic(RESULTS / "serve_load.md", text)
    write_atomic(RESULTS / "serve_load.json", json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
