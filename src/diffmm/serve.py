"""An HTTP service for a trained model (FastAPI + uvicorn; ``pip install diffmm[serve]``).

    diffmm serve runs/diffmm-tiktok --host 127.0.0.1 --port 8000

Endpoints:

* ``GET  /health``                                   ``{"status": "ok"}``
* ``GET  /metadata``                                 model, data sizes, selected epoch, metrics
* ``GET  /users/{user_id}/recommendations?k=20&exclude_seen=true``
* ``POST /recommendations``  body ``{"users": [...], "k": 20, "exclude_seen": true}``

Recommendations are ``{"user": id, "items": [id, ...], "scores": [float, ...]}`` with
raw ids. An unknown user is a 404 and a bad ``k`` or body a 422, each with a message in
``detail``; bad input never causes a 500. The model's representations are computed once
when the service starts.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations,
# which name classes defined inside create_app.
from pathlib import Path
from typing import Any

from diffmm.errors import ConfigError
from diffmm.inference import MAX_K, TrainedRecommender

#: Most users one POST /recommendations may ask for.
MAX_BATCH_USERS = 1000


def _require_serving_extras() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError(
            "serving needs FastAPI and uvicorn: pip install 'diffmm[serve]'"
        ) from None


def create_app(rec: TrainedRecommender) -> Any:
    """The FastAPI application serving ``rec``."""
    _require_serving_extras()
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

    from diffmm.errors import DiffMMError, UnknownIdError

    k_limit = min(MAX_K, rec.n_items)
    app = FastAPI(
        title="diffmm",
        summary=f"Top-K recommendations from a trained {rec.metadata['model']} model",
        version=__import__("diffmm").__version__,
    )

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
        messages = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(messages)}, status_code=422)

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

    @app.get("/metadata")
    async def metadata() -> JSONResponse:
        return JSONResponse({**rec.metadata, "max_k": k_limit, "max_batch": MAX_BATCH_USERS})

    @app.get("/users/{user_id}/recommendations")
    async def user_recommendations(
        user_id: str,
        k: int = Query(20, ge=1, le=k_limit, description="Length of the list."),
        exclude_seen: bool = Query(True, description="Skip the user's known items."),
    ) -> JSONResponse:
        return JSONResponse(_results([user_id], k, exclude_seen)[0])

    @app.post("/recommendations")
    async def batch_recommendations(body: BatchRequest) -> JSONResponse:
        return JSONResponse({"results": _results(body.users, body.k, body.exclude_seen)})

    return app


def serve(
    run_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    data: str | None = None,
    device: str = "auto",
    access_log: bool = False,
) -> None:
    """Load the run and serve it until interrupted."""
    _require_serving_extras()
    import torch
    import uvicorn

    from diffmm.inference import load

    # One request is a (1 x d) @ (d x n_items) product: threads cost more than they save.
    torch.set_num_threads(1)
    app = create_app(load(run_dir, data=data, device=device))
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=access_log)
