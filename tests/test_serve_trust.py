"""The HTTP service under load and before untrusted clients: limits, tokens, exact ids.

Each test serves an app from :func:`diffmm.serve.create_app` with a real uvicorn server
in a thread of the test process, on a loopback port, and talks HTTP to it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import diffmm
from diffmm.errors import ConfigError, UnknownIdError
from diffmm.inference import TrainedRecommender
from helpers import free_port

pytest.importorskip("fastapi", reason="serving needs the [serve] extra")

from diffmm import serve as serve_module  # noqa: E402
from diffmm import serve_access  # noqa: E402
from diffmm.serve import create_app  # noqa: E402

RECS = "/users/{}/recommendations"


@pytest.fixture(scope="module")
def rec(trained_run: Path) -> TrainedRecommender:
    return diffmm.load(trained_run, device="cpu")


class Client:
    """HTTP/1.1 requests to one port: ``(status, headers (lower-case names), JSON)``."""

    def __init__(self, port: int) -> None:
        self.port = port

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        raw: bytes | Iterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10,
    ) -> tuple[int, dict[str, str], Any]:
        headers = dict(headers or {})
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        if body is not None:
            headers.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            chunked = data is not None and not isinstance(data, bytes)
            conn.request(method, path, body=data, headers=headers, encode_chunked=chunked)
            resp = conn.getresponse()
            payload = resp.read()
            headers = {name.lower(): value for name, value in resp.getheaders()}
            return resp.status, headers, json.loads(payload or b"null")
        finally:
            conn.close()

    def get(self, path: str, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
        return self.request("POST", path, body, **kwargs)


@contextlib.contextmanager
def serving(rec: TrainedRecommender, **options: Any) -> Iterator[Client]:
    """``create_app(rec, **options)`` served by uvicorn in a thread until the block ends."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        create_app(rec, **options), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield Client(port)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# ------------------------------------------------------------------ staying responsive
def test_health_answers_while_heavy_requests_are_in_flight(rec, monkeypatch):
    """Scoring runs off the event loop: /health answers while POSTs are being scored.

    The scoring is made slow (a sleep of ``heavy_s`` seconds per request); with the
    work on the event loop, /health would wait for it.
    """
    heavy_s, n_heavy = 1.0, 2
    started = threading.Semaphore(0)
    scored = rec.recommend_scored

    def slow(*args: Any, **kwargs: Any) -> Any:
        started.release()
        time.sleep(heavy_s)
        return scored(*args, **kwargs)

    monkeypatch.setattr(rec, "recommend_scored", slow)
    with serving(rec) as client:
        results: list[int] = []

        def heavy() -> None:
            results.append(client.post("/recommendations", {"users": [1, 2], "k": 5})[0])

        threads = [threading.Thread(target=heavy) for _ in range(n_heavy)]
        for t in threads:
            t.start()
        assert started.acquire(timeout=heavy_s * n_heavy + 10)  # one is being scored
        t0 = time.perf_counter()
        status, _, body = client.get("/health", timeout=heavy_s * n_heavy + 10)
        health_s = time.perf_counter() - t0
        in_flight = sum(t.is_alive() for t in threads)
        for t in threads:
            t.join()
    assert (status, body) == (200, {"status": "ok"})
    assert health_s < heavy_s / 3, f"/health took {health_s:.2f} s behind the heavy requests"
    assert in_flight > 0 and results == [200] * n_heavy


def test_a_large_batch_is_scored_and_sent_in_chunks(rec, monkeypatch):
    monkeypatch.setattr(serve_module, "CHUNK_RESULTS", 10)  # 2 users a chunk at k=4
    users = [3, "7", 1, 140, 12, 0, 99]
    with serving(rec) as client:
        status, headers, body = client.post("/recommendations", {"users": users, "k": 4})
        assert status == 200 and headers.get("transfer-encoding") == "chunked"
        assert [r["user"] for r in body["results"]] == [3, 7, 1, 140, 12, 0, 99]
        assert [r["items"] for r in body["results"]] == rec.recommend(users, k=4)
        status, _, body = client.post("/recommendations", {"users": [*users, "nobody"], "k": 4})
        assert status == 404 and "'nobody'" in body["detail"]  # found before the answer


# ------------------------------------------------------------------ bounded requests
def test_a_body_over_the_limit_is_a_413_with_its_size_limit(rec):
    big = {"users": [1] * 500, "k": 5}  # ~1.5 KB of JSON
    with serving(rec, max_body_bytes=1000) as client:
        status, _, body = client.post("/recommendations", big)
        assert status == 413 and "1000 bytes" in body["detail"]
        status, _, body = client.post("/recommendations", {"users": [1, 2], "k": 5})
        assert status == 200 and len(body["results"]) == 2


def test_a_chunked_body_is_counted_as_it_arrives(rec):
    """No Content-Length: the bytes are counted as they come, and the limit still holds."""

    def chunks() -> Iterator[bytes]:
        yield b'{"users": ['
        for _ in range(200):
            yield b"1, " * 10
        yield b"1]}"

    with serving(rec, max_body_bytes=1000) as client:
        headers = {"Content-Type": "application/json"}
        status, _, body = client.post("/recommendations", raw=chunks(), headers=headers)
        assert status == 413 and "1000 bytes" in body["detail"]
        small = iter([b'{"users": [1, ', b"2]}"])
        status, _, body = client.post("/recommendations", raw=small, headers=headers)
        assert status == 200 and len(body["results"]) == 2


def test_the_default_body_limit_admits_1000_ids_but_not_megabytes(rec):
    long_ids = [f"user-{i:034d}" for i in range(1000)]  # 1000 ids of 39 characters
    with serving(rec) as client:
        status, _, body = client.post("/recommendations", {"users": long_ids})
        assert status == 404  # read and parsed: these users are unknown
        status, _, body = client.post("/recommendations", {"users": ["x" * 1_000_000]})
        assert status == 413


def test_users_times_k_is_bounded(rec):
    with serving(rec, max_results=100) as client:
        status, _, body = client.post("/recommendations", {"users": list(range(30)), "k": 4})
        assert status == 422 and "100" in body["detail"] and "k" in body["detail"]
        status, _, body = client.post("/recommendations", {"users": list(range(25)), "k": 4})
        assert status == 200 and len(body["results"]) == 25
        status, _, body = client.get(RECS.format(1) + "?k=80")
        assert status == 200  # 1 x 80 is within the bound
        assert client.get("/metadata")[2]["max_results"] == 100
    with serving(rec, max_results=50) as client:
        status, _, body = client.get(RECS.format(1) + "?k=80")
        assert status == 422 and "50" in body["detail"]


@pytest.mark.parametrize("bad", [0, -5, 2.5, True])
def test_limits_must_be_positive_integers(rec, bad):
    with pytest.raises(ConfigError, match="max_body_bytes"):
        create_app(rec, max_body_bytes=bad)
    with pytest.raises(ConfigError, match="max_results"):
        create_app(rec, max_results=bad)


def test_a_post_that_is_not_json_says_which_content_type_is_expected(rec):
    with serving(rec) as client:
        for content_type in ("text/plain", "application/x-www-form-urlencoded"):
            status, _, body = client.post(
                "/recommendations", raw=b'{"users": [1]}', headers={"Content-Type": content_type}
            )
            assert status == 415 and "Content-Type: application/json" in body["detail"]
        status, _, body = client.post("/recommendations", raw=b'{"users": [1]}')
        assert status == 415 and "Content-Type: application/json" in body["detail"]
        status, _, _ = client.post(
            "/recommendations",
            raw=b'{"users": [1]}',
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
        assert status == 200


# ------------------------------------------------------------------ exact ids
@pytest.fixture(scope="module")
def named_rec(rec: TrainedRecommender) -> TrainedRecommender:
    """The trained model with string user ids u0, u1, ..."""
    names = np.array([f"u{i}" for i in range(rec.n_users)])
    return TrainedRecommender(rec.model, rec.seen, names, rec.item_ids, rec.metadata)


@pytest.mark.parametrize("spelling", ["1\x00", "01", "001", "+1", " 1", "1 ", "-0", "1.0"])
def test_integer_ids_match_only_as_they_were_written(rec, spelling):
    with pytest.raises(UnknownIdError):
        rec.user_index([spelling])
    assert rec.user_index(["1", 1, "0"]).tolist() == [1, 1, 0]


@pytest.mark.parametrize("spelling", ["u1\x00", "u1\x00\x00", "U1", "u1 ", "u01"])
def test_string_ids_match_only_as_they_were_written(named_rec, spelling):
    with pytest.raises(UnknownIdError):
        named_rec.user_index([spelling])
    assert named_rec.user_index(["u1"]).tolist() == [1]


def test_the_service_matches_ids_exactly(rec, named_rec):
    with serving(rec) as client:
        for path in ("1%00", "01", "-0", "%2B1", "%201"):
            status, _, body = client.get(RECS.format(path))
            assert status == 404, (path, body)
        assert client.get(RECS.format("1"))[0] == 200
    with serving(named_rec) as client:
        status, _, body = client.post("/recommendations", {"users": ["u1\u0000"]})
        assert status == 404 and "unknown user id" in body["detail"]
        status, _, body = client.post("/recommendations", {"users": ["u1"]})
        assert status == 200 and body["results"][0]["user"] == "u1"


def test_a_404_echoes_a_few_unknown_ids_cut_short(rec):
    unknown = [f"{i}" + "x" * 5_000 for i in range(7)]
    with serving(rec) as client:
        status, _, body = client.post("/recommendations", {"users": [1, *unknown]})
    assert status == 404
    detail = body["detail"]
    assert len(detail) < 600, detail[:1000]
    assert "7 unknown user id(s)" in detail and "'0xxxxxxxxx" in detail and "'5x" not in detail


# ------------------------------------------------------------------ bearer token
def test_a_token_guards_everything_but_health(rec):
    with serving(rec, token="s3cret-token") as client:
        assert client.get("/health")[0] == 200
        for path in ("/metadata", RECS.format(1)):
            status, headers, body = client.get(path)
            assert status == 401 and headers.get("www-authenticate") == "Bearer", path
            assert "Authorization: Bearer" in body["detail"]
            status, _, body = client.get(path, headers={"Authorization": "Bearer wrong"})
            assert status == 401 and body["detail"] == "the token sent is not this service's token"
            status, _, _ = client.get(path, headers={"Authorization": "Basic s3cret-token"})
            assert status == 401
        status, _, _ = client.post("/recommendations", {"users": [1]})
        assert status == 401
        ok = {"Authorization": "Bearer s3cret-token"}
        assert client.get("/metadata", headers=ok)[0] == 200
        assert client.get("/openapi.json")[0] == 401 and client.get("/docs")[0] == 404
        status, _, schema = client.get("/openapi.json", headers=ok)
        assert status == 200 and "/recommendations" in schema["paths"]
        assert client.post("/recommendations", {"users": [1]}, headers=ok)[0] == 200


def test_the_token_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(serve_access.TOKEN_ENV, raising=False)
    assert serve_access.read_token(None) is None
    path = tmp_path / "token"
    path.write_text("  abc123\n")
    assert serve_access.read_token(path) == "abc123"
    monkeypatch.setenv(serve_access.TOKEN_ENV, "from-env")
    assert serve_access.read_token(None) == "from-env"
    assert serve_access.read_token(path) == "abc123"  # the file wins
    monkeypatch.setenv(serve_access.TOKEN_ENV, "")
    with pytest.raises(ConfigError, match=serve_access.TOKEN_ENV):
        serve_access.read_token(None)


@pytest.mark.parametrize("case", ["empty", "missing", "directory"])
def test_a_bad_token_file_is_a_one_line_error(trained_run, tmp_path, case):
    from diffmm.cli import main

    path = tmp_path / "token"
    if case == "empty":
        path.write_text("\n  \n")
    elif case == "directory":
        path.mkdir()
    result = CliRunner().invoke(main, ["serve", str(trained_run), "--token-file", str(path)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0]


@pytest.mark.parametrize(
    ("host", "warned"),
    [
        ("127.0.0.1", False),
        ("127.8.0.1", False),
        ("localhost", False),
        ("::1", False),
        ("0.0.0.0", True),
        ("::", True),
        ("192.168.1.20", True),
        ("example.org", True),
    ],
)
def test_a_non_loopback_address_without_a_token_is_warned_about(host, warned):
    message = serve_access.exposure_warning(host, token=None)
    assert (message is not None) == warned
    if warned:
        assert host in message and "--token-file" in message and serve_access.TOKEN_ENV in message
    assert serve_access.exposure_warning(host, token="t") is None


def test_serve_prints_the_warning_before_serving(trained_run, monkeypatch, capsys):
    import torch
    import uvicorn

    calls: list[Any] = []

    class Server:  # starts, serves nothing, returns
        def __init__(self, config):
            calls.append(config)
            self.started = False

        def run(self, sockets):
            assert sockets[0].getsockname()[0] == "0.0.0.0"
            sockets[0].close()
            self.started = True

    monkeypatch.setattr(uvicorn, "Server", Server)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    monkeypatch.delenv(serve_access.TOKEN_ENV, raising=False)
    serve_module.serve(trained_run, host="0.0.0.0", port=0, device="cpu")
    assert "warning:" in capsys.readouterr().err
    assert calls and calls[0].host == "0.0.0.0"
    monkeypatch.setenv(serve_access.TOKEN_ENV, "t0ken")
    serve_module.serve(trained_run, host="0.0.0.0", port=0, device="cpu")
    assert "warning:" not in capsys.readouterr().err


def test_the_serve_command_passes_its_limits_and_token(trained_run, tmp_path, monkeypatch):
    from diffmm.cli import main

    seen: dict[str, Any] = {}
    monkeypatch.setattr(serve_module, "serve", lambda run_dir, **kw: seen.update(kw))
    token = tmp_path / "token"
    token.write_text("abc\n")
    args = ["serve", str(trained_run), "--max-body-bytes", "5000", "--max-results", "777"]
    result = CliRunner().invoke(main, [*args, "--token-file", str(token)])
    assert result.exit_code == 0, result.output
    assert seen["max_body_bytes"] == 5000 and seen["max_results"] == 777
    assert Path(seen["token_file"]) == token
    assert CliRunner().invoke(main, ["serve", str(trained_run)]).exit_code == 0
    assert seen["max_body_bytes"] == serve_module.MAX_BODY_BYTES
    assert seen["max_results"] == serve_module.MAX_RESULTS and seen["token_file"] is None


def test_a_port_in_use_is_a_one_line_error(trained_run):
    import socket

    from diffmm.cli import main

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", str(trained_run), "--port", str(port)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"error: cannot listen on 127.0.0.1:{port}" in result.output
    assert "pick another --port" in result.output


def test_metadata_stays_json_when_the_summary_holds_nan(rec, monkeypatch):
    monkeypatch.setitem(rec.metadata, "test", {"recall@20": float("nan"), "ndcg@20": 0.5})
    with serving(rec) as client:
        status, _, body = client.get("/metadata")
    assert status == 200 and body["test"] == {"recall@20": None, "ndcg@20": 0.5}
