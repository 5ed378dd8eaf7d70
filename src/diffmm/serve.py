"""An HTTP service for a trained model (FastAPI + uvicorn; ``pip install diffmm[serve]``).

    diffmm serve runs/diffmm-tiktok --host 127.0.0.1 --port 8000

Endpoints:

* ``GET  /health``                                   ``{"status": "ok"}``
* ``GET  /metadata``                                 model, data sizes, selected epoch, metrics
* ``GET  /users/{user_id}/recommendations?k=20&exclude_seen=true``
* ``POST /recommendations``  body ``{"users": [...], "k": 20, "exclude_seen": true}``

Recommendations are ``{"user": id, "items": [id, ...], "scores": [float, ...]}`` with
raw ids, matched exactly as they are in the data (``"17"`` is user 17, ``"017"`` is
not). An unknown user is a 404 (naming a few of the unknown ids, cut short), a bad
``k`` or body a 422, a body that is not ``Content-Type: application/json`` a 415 and a
body over ``max_body_bytes`` a 413, each with a message in ``detail``; bad input never
causes a 500. One request asks for at most ``max_results`` recommendations (users x k).

The model's representations are computed once when the service starts. Scoring and
encoding run in a worker thread, never on the event loop, so ``/health`` answers while
heavy requests are being scored; a large batch is scored and sent in chunks. With a
token (``--token-file FILE`` or ``$DIFFMM_SERVE_TOKEN``) every endpoint but ``/health``
needs the header ``Authorization: Bearer <token>`` (401 otherwise) and ``/docs`` is
off; serving on a non-loopback address without one prints a warning.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations,
# which name classes defined inside create_app.
import asyncio
import hmac
import json
import math
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from diffmm.errors import ConfigError
from diffmm.inference import MAX_K, TrainedRecommender
from diffmm.serve_access import check_token, exposure_warning, listen, read_token

#: Most users one POST /recommendations may ask for.
MAX_BATCH_USERS = 1000
#: Default limit of a request body in bytes: room for 1000 ids of about 60 characters.
MAX_BODY_BYTES = 64 * 1024
#: Default limit of users x k in one request (e.g. 1000 users at k=100).
MAX_RESULTS = 100_000
#: Threads that score requests; the event loop only parses and sends.
SCORING_THREADS = 1
#: Results (users x k) of a POST /recommendations scored, encoded and sent at a time.
CHUNK_RESULTS = 20_000
#: Characters of a user-given name (an id, a field) echoed back in an error message.
ECHO_CHARS = 40

_JSON = "application/json"
_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def _require_serving_extras() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError(
            "serving needs FastAPI and uvicorn: pip install 'diffmm[serve]'"
        ) from None


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def _cut(text: str, width: int = ECHO_CHARS) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf, which JSON has no words for) as
    None: a run's summary may hold them, and a response must stay valid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class BodyLimit:
    """ASGI middleware refusing request bodies over ``max_bytes`` with a 413.

    A body that announces a larger ``Content-Length`` is refused before any of it is
    read; one sent without (chunked) is counted as it arrives, and the read that
    passes the limit raises an ``HTTPException(413)`` for the app's handler.
    """

    def __init__(self, app: Any, max_bytes: int, detail: str) -> None:
        self.app, self.max_bytes, self.detail = app, max_bytes, detail

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        from fastapi import HTTPException
        from fastapi.responses import JSONResponse

        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await JSONResponse({"detail": self.detail}, 413)(scope, receive, send)
        received = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self.detail)
            return message

        await self.app(scope, limited_receive, send)


def create_app(
    rec: TrainedRecommender,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_results: int = MAX_RESULTS,
    token: str | None = None,
) -> Any:
    """The FastAPI application serving ``rec``.

    Args:
        rec: the loaded model.
        max_body_bytes: larger request bodies are refused with 413, whether they
            announce their size (Content-Length) or not (counted as they arrive).
        max_results: most recommendations (users x k) one request may ask for (422).
        token: if given, every endpoint but ``/health`` needs
            ``Authorization: Bearer <token>`` (401 otherwise).
    """
    _require_serving_extras()
    from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
    from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

    from diffmm.errors import DiffMMError, UnknownIdError

    max_body_bytes = _positive_int("max_body_bytes", max_body_bytes)
    max_results = _positive_int("max_results", max_results)
    token = check_token(token) if token is not None else None
    k_limit = min(MAX_K, rec.n_items)
    # Scoring and encoding run in a worker thread, never on the event loop, one request
    # (or chunk of a batch) at a time: each holds the GIL in short stretches that the
    # event loop must win back, and more threads would only add to what it waits for.
    scoring = ThreadPoolExecutor(SCORING_THREADS, thread_name_prefix="diffmm-scoring")

    async def off_loop(fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(scoring, fn, *args)

    # With a token, the schema is served behind it too (below), and no browsable docs.
    hidden = {"openapi_url": None, "docs_url": None, "redoc_url": None} if token else {}
    app = FastAPI(
        title="diffmm",
        summary=f"Top-K recommendations from a trained {rec.metadata['model']} model",
        version=__import__("diffmm").__version__,
        **hidden,
    )
    too_large = (
        f"the request body is over the limit of {max_body_bytes} bytes: send fewer "
        "users per request (the server's --max-body-bytes sets the limit)"
    )
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, detail=too_large)

    class BatchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")

        users: list[StrictInt | StrictStr] = Field(min_length=1, max_length=MAX_BATCH_USERS)
        k: int = Field(20, ge=1, le=k_limit)
        exclude_seen: bool = True

    @app.exception_handler(UnknownIdError)
    async def unknown_id(_: Request, exc: UnknownIdError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(DiffMMError)
    async def bad_input(_: Request, exc: DiffMMError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        messages = [f"{'.'.join(_cut(str(p)) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(messages)}, status_code=422)

    @app.exception_handler(413)  # from BodyLimit, once a streamed body grows too large
    async def body_too_large(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": too_large}, status_code=413)

    bearer = HTTPBearer(auto_error=False)

    async def authorized(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> None:
        given = credentials.credentials.encode("latin-1") if credentials else b""
        if not hmac.compare_digest(given, token.encode("ascii")):
            detail = (
                "the token sent is not this service's token"
                if credentials
                else "this service needs a token: send the header Authorization: Bearer <token>"
            )
            raise HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})

    async def json_body(request: Request) -> None:
        content_type = request.headers.get("content-type")
        if content_type is None and request.headers.get("content-length") == "0":
            return  # no body at all: the validation error says what is missing
        if content_type is None or not _is_json(content_type):
            got = "no Content-Type" if content_type is None else repr(_cut(content_type))
            raise HTTPException(
                415,
                f"send the body as JSON with the header Content-Type: application/json (got {got})",
            )

    def _results(users: list[Any], k: int, exclude_seen: bool) -> list[dict[str, Any]]:
        known = rec.user_ids[rec.user_index(users)].tolist()
        scored = rec.recommend_scored(users, k, exclude_seen)
        return [
            {"user": user, "items": items, "scores": scores}
            for user, (items, scores) in zip(known, scored, strict=True)
        ]

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    def _encoded(users: list[Any], k: int, exclude_seen: bool) -> bytes:
        # One user's list at a time: one dumps() of many lists would hold the GIL (and
        # so stall the event loop) for the whole encoding.
        return b",".join(_dumps(r).encode() for r in _results(users, k, exclude_seen))

    def _first_chunk(users: list[Any], k: int, exclude_seen: bool, step: int) -> bytes:
        rec.user_index(users)  # an unknown id anywhere is a 404, before the answer starts
        return _encoded(users[:step], k, exclude_seen)

    def _bounded(n_users: int, k: int) -> None:
        if n_users * k > max_results:
            raise ConfigError(
                f"{n_users} users x k={k} asks for {n_users * k} recommendations, over the "
                f"limit of {max_results} per request: ask for fewer users or a smaller k "
                "(the server's --max-results sets the limit)"
            )

    async def _rest(
        first: bytes, users: list[Any], k: int, exclude_seen: bool, step: int
    ) -> AsyncIterator[bytes]:
        yield b'{"results":[' + first
        for start in range(step, len(users), step):
            yield b"," + await off_loop(_encoded, users[start : start + step], k, exclude_seen)
        yield b"]}"

    guarded = APIRouter(dependencies=[Depends(authorized)] if token else [])

    @guarded.get("/metadata")
    async def metadata() -> JSONResponse:
        limits = {"max_k": k_limit, "max_batch": MAX_BATCH_USERS, "max_results": max_results}
        return JSONResponse(json_safe({**rec.metadata, **limits}))

    @guarded.get("/users/{user_id}/recommendations")
    async def user_recommendations(
        user_id: str,
        k: int = Query(20, ge=1, le=k_limit, description="Length of the list."),
        exclude_seen: bool = Query(True, description="Skip the user's known items."),
    ) -> Response:
        _bounded(1, k)
        return Response(await off_loop(_encoded, [user_id], k, exclude_seen), media_type=_JSON)

    @guarded.post("/recommendations", dependencies=[Depends(json_body)])
    async def batch_recommendations(body: BatchRequest) -> Response:
        users, k, exclude_seen = body.users, body.k, body.exclude_seen
        _bounded(len(users), k)
        step = max(1, CHUNK_RESULTS // k)  # users scored and sent at a time
        first = await off_loop(_first_chunk, users, k, exclude_seen, step)
        if len(users) <= step:
            return Response(b'{"results":[' + first + b"]}", media_type=_JSON)
        return StreamingResponse(_rest(first, users, k, exclude_seen, step), media_type=_JSON)

    if token:

        @guarded.get("/openapi.json", include_in_schema=False)
        async def openapi() -> JSONResponse:
            return JSONResponse(app.openapi())

    app.include_router(guarded)
    return app


def serve(
    run_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    data: str | None = None,
    device: str = "auto",
    access_log: bool = False,
    *,
    token_file: str | Path | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_results: int = MAX_RESULTS,
) -> None:
    """Load the run and serve it until interrupted.

    The token is read from ``token_file``, else ``$DIFFMM_SERVE_TOKEN`` (see
    :func:`read_token`); the limits are those of :func:`create_app`.
    """
    _require_serving_extras()
    _positive_int("max_body_bytes", max_body_bytes)
    _positive_int("max_results", max_results)
    token = read_token(token_file)
    import torch
    import uvicorn

    from diffmm.inference import load

    # One request is a (1 x d) @ (d x n_items) product: threads cost more than they save.
    torch.set_num_threads(1)
    rec = load(run_dir, data=data, device=device)
    app = create_app(rec, max_body_bytes=max_body_bytes, max_results=max_results, token=token)
    warning = exposure_warning(host, token)
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    listener = listen(host, port)  # bound here, so that a taken port is one line
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="info", access_log=access_log)
    )
    server.run(sockets=[listener])
    if not server.started:
        raise ConfigError(f"the service on {host}:{port} did not start; see the lines above")
