"""The ASGI app (Starlette): routes, guards (Host header, API key, body size) and the generation response."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from edgekit.runtimes.base import Session

from .config import ServerConfig
from .pool import Failed, Finished, Job, SessionPool, Started
from .protocol import (
    Endpoint,
    ErrorType,
    GenerationRequest,
    RequestError,
    ResponseBuilder,
    Usage,
    error_body,
    parse_json,
    parse_request,
    sse,
)

# how long a request cut by shutdown may take to tell its client so (runner waits this long for it)
CUT_ANSWER_S = 1.0
log = logging.getLogger("edgekit.server")


def model_id_for(path: Path) -> str:
    return path.stem if path.suffix == ".gguf" else path.name


@dataclass
class ServerState:
    pool: SessionPool
    config: ServerConfig
    model_id: str
    backend: str
    created: int

    def model_card(self) -> dict[str, Any]:
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "edgekit"}


async def _send_json(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


def _host_name(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):  # [::1]:8000
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Guard:
    """Refuses, before any route runs, requests with a foreign Host header or without the API key."""

    def __init__(self, app: ASGIApp, config: ServerConfig) -> None:
        self.app = app
        self.allowed_hosts = config.allowed_hosts()
        self.api_key = config.api_key.encode() if config.api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = _host_name(headers.get("host", ""))
        if self.allowed_hosts is not None and host not in self.allowed_hosts:
            await _send_json(send, 400, error_body(
                f"Host header {host!r} is not accepted: this server listens on loopback; connect to 127.0.0.1 "
                "or localhost", ErrorType.INVALID_REQUEST, code="invalid_host"))
            return
        if self.api_key and scope["path"].startswith("/v1/"):
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key):
                await _send_json(send, 401, error_body(
                    "missing or incorrect API key; send the header 'Authorization: Bearer <key>'",
                    ErrorType.INVALID_REQUEST, code="invalid_api_key"), {"WWW-Authenticate": "Bearer"})
                return
        await self.app(scope, receive, send)


async def _read_json(request: Request, limit: int) -> dict[str, Any]:
    # JSON only: browsers cannot send application/json cross-site without a CORS preflight,
    # which this server never grants, so a web page cannot drive it with "simple" requests.
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise RequestError(400, f"Content-Type must be application/json, got {ctype or 'none'!r}",
                           code="invalid_content_type")
    too_big = RequestError(413, f"the request body is larger than this server's limit of {limit} bytes; "
                                "shorten the request", code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    return parse_json(bytes(body))


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class GenerationResponse(Response):
    """Waits for a slot, runs the job and writes JSON or server-sent events; writes itself, so that
    errors found before the first token (template, context) still get a proper status code, and a
    client that goes away stops the generation and frees its slot at once."""

    def __init__(self, state: ServerState, request: GenerationRequest) -> None:  # no super(): nothing preset
        self.state, self.request = state, request
        self.builder = ResponseBuilder(request.endpoint, state.model_id)
        self.client_gone = False
        self.status = 0
        self.usage = Usage()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = time.perf_counter()
        main = asyncio.ensure_future(self._respond(send))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait({main, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # uvicorn cuts the requests still running when the graceful-shutdown timeout ends:
            # stop the job, tell the client (main does), and end normally, so the cut is a clean
            # error answer rather than a traceback and a dropped connection.
            watcher.cancel()
            main.cancel()
            await asyncio.gather(main, return_exceptions=True)
            log.info("%s %s: cut by shutdown", scope["method"], scope["path"])
            return
        watcher.cancel()
        if not main.done():
            self.client_gone = True
            main.cancel()
            await asyncio.gather(main, return_exceptions=True)
        log.info("%s %s: status %s, %d prompt + %d completion tokens, %.3f s%s", scope["method"], scope["path"],
                 self.status or "-", self.usage.prompt_tokens, self.usage.completion_tokens,
                 time.perf_counter() - t0, " (client disconnected)" if self.client_gone else "")
        if main.done() and not main.cancelled():
            main.result()  # a bug in _respond surfaces as a 500 in the log

    async def _respond(self, send: Send) -> None:
        job: Job | None = None
        try:
            session = await self.state.pool.acquire()
            job = self.state.pool.start(session, self.request)
            await (self._stream(job, send) if self.request.stream else self._collect(job, send))
        except RequestError as e:
            if self.status:  # already streaming: the error goes in the stream
                await send({"type": "http.response.body", "body": sse(e.body()), "more_body": False})
            else:
                self.status = e.status
                await _send_json(send, e.status, e.body(), e.headers)
        except asyncio.CancelledError:
            if job is not None:
                job.cancel()
            if not self.client_gone:
                await self._say_cut(send)
            raise
        finally:
            if job is not None and not job.done:
                job.cancel()

    async def _say_cut(self, send: Send) -> None:
        """Tell a client still listening that its request was cut (server shutting down), briefly."""
        body = error_body("the server is shutting down; the request was cut", ErrorType.SERVER, code="shutting_down")
        async def say() -> None:
            if self.status:
                await send({"type": "http.response.body", "body": sse(body), "more_body": False})
            else:
                self.status = 503
                await _send_json(send, 503, body)

        with contextlib.suppress(Exception):  # a timeout included
            await asyncio.wait_for(say(), CUT_ANSWER_S)

    async def _events(self, job: Job) -> AsyncIterator[list[Started | str | Finished]]:
        while not job.done:
            batch = await job.next_events()
            for ev in batch:
                if isinstance(ev, Failed):
                    raise ev.error
                if isinstance(ev, Started):
                    self.usage.prompt_tokens = ev.prompt_tokens
                elif isinstance(ev, Finished):
                    self.usage.completion_tokens = ev.completion_tokens
            yield [ev for ev in batch if not isinstance(ev, Failed)]

    async def _collect(self, job: Job, send: Send) -> None:
        async for batch in self._events(job):
            for ev in batch:
                if isinstance(ev, Finished):
                    self.status = 200
                    await _send_json(send, 200, self.builder.complete(ev.text, ev.finish_reason, self.usage))

    async def _stream(self, job: Job, send: Send) -> None:
        async for batch in self._events(job):
            out: list[bytes] = []
            for ev in batch:
                if isinstance(ev, Started):  # prompt accepted: from here on the answer is a stream
                    self.status = 200
                    await send({"type": "http.response.start", "status": 200, "headers": [
                        (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                        (b"x-accel-buffering", b"no")]})
                    if self.request.endpoint is Endpoint.CHAT:  # chat streams open with the role
                        out.append(sse(self.builder.chunk(None, first=True)))
                elif isinstance(ev, str):
                    out.append(self.builder.piece_event(ev))
                else:
                    out.append(sse(self.builder.chunk(None, ev.finish_reason)))
                    if self.request.include_usage:
                        out.append(sse(self.builder.usage_chunk(self.usage)))
                    out.append(sse("[DONE]"))
            if out:  # one write per batch: the events stay one per token, the syscalls do not
                await send({"type": "http.response.body", "body": b"".join(out), "more_body": not job.done})


# -- routes --------------------------------------------------------------------------------------------------
def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.edgekit
    return state


async def health(request: Request) -> Response:
    st = _state(request)
    return JSONResponse({"status": "ok", "model": st.model_id, "backend": st.backend, **st.pool.status()})


async def list_models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [_state(request).model_card()]})


async def get_model(request: Request) -> Response:
    st = _state(request)
    if request.path_params["model"] != st.model_id:
        raise RequestError(404, f"model {request.path_params['model']!r} is not served here; this server serves "
                                f"{st.model_id!r}", param="model", code="model_not_found")
    return JSONResponse(st.model_card())


async def _generation(request: Request, endpoint: Endpoint) -> Response:
    st = _state(request)
    body = await _read_json(request, st.config.max_request_bytes)
    req = parse_request(body, endpoint, model_id=st.model_id, max_tokens_limit=st.config.max_tokens_limit)
    return GenerationResponse(st, req)


async def chat_completions(request: Request) -> Response:
    return await _generation(request, Endpoint.CHAT)


async def completions(request: Request) -> Response:
    return await _generation(request, Endpoint.COMPLETION)


ROUTES = [
    Route("/health", health, methods=["GET"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
]


async def _on_request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return JSONResponse(error_body(message, ErrorType.INVALID_REQUEST, code=str(exc.status_code)),
                        status_code=exc.status_code, headers=exc.headers)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    return JSONResponse(error_body(f"internal server error: {type(exc).__name__}", ErrorType.SERVER), status_code=500)


def create_app(sessions: Sequence[Session], config: ServerConfig | None = None) -> Starlette:
    """An ASGI app serving ``sessions`` (one per slot, all the same artifact); it owns and closes them.

    Mount it in your own ASGI server, or use :func:`edgekit.server.serve`.
    """
    config = config or ServerConfig()
    pool = SessionPool(sessions, max_queue=config.max_queue, queue_timeout_s=config.queue_timeout_s,
                       max_tokens_limit=config.max_tokens_limit)
    first = sessions[0]
    mtime = int(first.path.stat().st_mtime) if first.path.exists() else int(time.time())
    state = ServerState(pool, config, config.model_id or model_id_for(first.path), first.backend, mtime)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        pool.cancel_all()  # whatever the graceful timeout left running stops at its next token
        await asyncio.to_thread(pool.close)

    app = Starlette(routes=ROUTES, lifespan=lifespan, middleware=[Middleware(Guard, config=config)],
                    exception_handlers={RequestError: _on_request_error, HTTPException: _on_http_error,
                                        Exception: _on_unexpected})
    app.state.edgekit = state
    return app
