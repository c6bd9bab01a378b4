"""The studio's web side: a FastAPI app over a :class:`Studio` (the page, its files and one
endpoint per panel), and uvicorn serving it on a socket of the caller's choice.

Every answer is JSON, but a sample's steps, which stream as server-sent events. A request that
cannot be done gets a 4xx with ``{"detail": reason}``: 400 for a setting out of range, 404 for an
unknown run, 409 when a newer request from the same page cancelled it, 422 for a malformed body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import iterate_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware

from ..errors import UserError
from .engine import Cancelled, Studio
from .requests import CleanupRequest, CompleteRequest, ForwardRequest, SampleRequest, WalkRequest

STATIC = Path(__file__).parent / "static"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _readable(error: RequestValidationError) -> str:
    """A malformed request's errors in one line: "n: Input should be less than or equal to 64"."""
    parts = []
    for e in error.errors()[:3]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg", "invalid")))
    return "; ".join(parts) or "malformed request"


def create_app(studio: Studio, host: str = "127.0.0.1") -> FastAPI:
    """The studio's app. Served on a loopback ``host``, it answers only requests addressed to
    that host by name (a page elsewhere cannot reach it by pointing its own name here)."""
    app = FastAPI(title="mnistdiff studio", docs_url=None, redoc_url=None, openapi_url=None)
    if host in LOOPBACK:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", "[::1]"])
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(UserError)
    async def user_error(_: Request, e: UserError) -> JSONResponse:
        status = 404 if str(e).startswith("no run named") else 400
        return JSONResponse({"detail": str(e)}, status_code=status)

    @app.exception_handler(ValueError)
    async def bad_value(_: Request, e: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=400)

    @app.exception_handler(Cancelled)
    async def cancelled(_: Request, e: Cancelled) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=409)

    @app.exception_handler(RequestValidationError)
    async def malformed(_: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _readable(e)}, status_code=422)

    async def on_worker(fn, *args: Any) -> Any:
        return await asyncio.wrap_future(studio.submit(fn, *args))

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/runs")
    async def runs() -> dict[str, Any]:
        names = list(studio.runs())
        default = studio.default_run if studio.default_run in names else (names[-1] if names else None)
        return {"runs": names, "default": default}

    @app.get("/api/info")
    async def info(run: str) -> dict[str, Any]:
        return await on_worker(studio.info, run)

    @app.post("/api/sample")
    async def sample(request: SampleRequest) -> StreamingResponse:
        stop = studio.begin(request.page_id)
        plan = await on_worker(studio.prepare_sample, request)  # a bad setting: a 4xx before any step
        frames = studio.stream_sample(plan, request.n, stop)
        return StreamingResponse(_events(frames, stop), media_type="text/event-stream")

    @app.post("/api/complete")
    async def complete(request: CompleteRequest) -> dict[str, Any]:
        return await on_worker(studio.complete, request, studio.begin(request.page_id))

    @app.post("/api/cleanup")
    async def cleanup(request: CleanupRequest) -> dict[str, Any]:
        return await on_worker(studio.cleanup, request, studio.begin(request.page_id))

    @app.post("/api/forward")
    async def forward(request: ForwardRequest) -> dict[str, Any]:
        return await on_worker(studio.forward, request)

    @app.post("/api/walk")
    async def walk(request: WalkRequest) -> dict[str, Any]:
        return await on_worker(studio.walk, request, studio.begin(request.page_id))

    return app


async def _events(frames: Iterator[dict[str, Any]], stop: threading.Event) -> AsyncIterator[str]:
    """The frames as server-sent events; a cancelled or failed sampling ends with an "error" event.
    When the page goes away, the sampling is told to stop."""
    try:
        async for frame in iterate_in_threadpool(frames):
            yield f"data: {json.dumps(frame)}\n\n"
    except (Cancelled, UserError, ValueError) as e:
        yield f"data: {json.dumps({'event': 'error', 'detail': str(e)})}\n\n"
    except Exception as e:  # the stream has begun: the page gets a reason, the terminal the traceback
        logging.getLogger("mnistdiff.studio").exception("a sampling failed")
        yield f"data: {json.dumps({'event': 'error', 'detail': f'the sampling failed: {type(e).__name__}'})}\n\n"
    finally:
        stop.set()


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: any free port); OSError if it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(app: FastAPI, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` until Ctrl+C."""
    uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off")).run(sockets=[sock])


@contextlib.contextmanager
def serving(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """``app`` served from a thread while the block runs, on a free port by default: yields its URL."""
    sock = bind(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started and thread.is_alive():
            threading.Event().wait(0.01)
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
