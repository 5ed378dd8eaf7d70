"""The HTTP service, started for real on a loopback port and called over HTTP."""

from __future__ import annotations

import pytest

import diffmm

pytest.importorskip("fastapi", reason="serving needs the [serve] extra")


@pytest.fixture(scope="module")
def rec(trained_run):
    return diffmm.load(trained_run, device="cpu")


def test_health_and_metadata(server):
    assert server.get("/health") == (200, {"status": "ok"})
    status, meta = server.get("/metadata")
    assert status == 200
    assert meta["model"] == "lightgcn" and meta["n_users"] == 150 and meta["n_items"] == 80
    assert 0 <= meta["test"]["recall@20"] <= 1 and meta["epoch"] >= 1


def test_one_users_recommendations_match_the_python_api(server, rec):
    status, body = server.get("/users/12/recommendations?k=7")
    assert status == 200
    ((items, scores),) = rec.recommend_scored([12], k=7)
    assert body["user"] == 12 and body["items"] == items
    assert body["scores"] == pytest.approx(scores)


def test_exclude_seen_false_is_honoured(server, rec):
    _, body = server.get("/users/12/recommendations?k=80&exclude_seen=false")
    assert sorted(body["items"]) == list(range(80))


def test_a_batch_of_users(server, rec):
    status, body = server.post("/recommendations", body={"users": [1, "2", 3], "k": 4})
    assert status == 200
    assert [r["user"] for r in body["results"]] == [1, 2, 3]
    assert [r["items"] for r in body["results"]] == rec.recommend([1, 2, 3], k=4)


def test_an_unknown_user_is_a_404_with_a_message(server):
    status, body = server.get("/users/nobody/recommendations")
    assert status == 404 and "nobody" in body["detail"]
    status, body = server.post("/recommendations", body={"users": [1, 4242]})
    assert status == 404 and "4242" in body["detail"]


@pytest.mark.parametrize("k", ["0", "-1", "81", "abc"])
def test_a_bad_k_is_a_422(server, k):
    status, body = server.get(f"/users/1/recommendations?k={k}")
    assert status == 422 and "k" in body["detail"]


def test_the_command_refuses_a_body_over_its_default_limit(server):
    status, body = server.post("/recommendations", raw=b'{"users": [' + b"1, " * 100_000 + b"1]}")
    assert status == 413 and "bytes" in body["detail"]
