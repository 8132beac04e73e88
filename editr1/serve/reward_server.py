"""The reward server: a plain ASGI app on uvicorn (vLLM's own HTTP stack) in front of the judge,
OpenAI chat-completions compatible.

`GET /health` (no token needed), `GET /v1/models`, `POST /v1/chat/completions`. Bodies are JSON,
never pickle. The body size is checked from Content-Length before reading; every failure becomes an
OpenAI-style error for that request only. Each request logs one line: method, path, status, ms.

Why an event loop rather than a (bounded) thread per connection: a trainer fleet holds many
connections, and at any moment many are idle (keep-alive pools) or slow. A bounded thread pool is
used up by as many idle connections as it has threads, and then locks everyone out; on asyncio an
idle connection costs a socket, not a thread, so the one cap can count what costs memory and judge
time: chat requests in flight (`max_concurrent_requests`; one more is answered 503 with Retry-After
from its headers, never left hanging). JSON and image decoding run on the event loop's thread pool,
the judge on the batcher's thread. uvicorn's own `limit_concurrency` is not used: it counts idle
connections too and answers plain text without Retry-After.

uvicorn times out neither a connection that never completes its request headers nor a slow body,
so both deadlines are enforced here: `header_timeout_s` by a subclass of uvicorn's h11 protocol (the
connection is closed; idle keep-alive ones too) and `body_timeout_s` by the app (408). At shutdown a
request still arriving is dropped, so a slow client cannot delay a stop.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import secrets
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from editr1.errors import EditR1Error
from editr1.rewards.mllm_judge import MLLMJudge
from editr1.serve.batcher import Batcher, Sampling
from editr1.serve.config import ServeConfig
from editr1.serve.protocol import (
    ChatRequest,
    ProtocolError,
    chat_completion_response,
    error_body,
    models_response,
    parse_chat_request,
)

CHAT_PATH = "/v1/chat/completions"
#: Seconds a client refused for load is told to wait: about a few judge batches.
RETRY_AFTER_S = 1
BACKLOG = 1024  # many trainer processes may connect at once


class RewardServer:
    """Listens from construction on (so `url` holds the real port when `port` is 0); `serve_forever`
    serves, `stop` (from any thread) ends it, `close` frees the socket and stops the judge worker."""

    def __init__(self, config: ServeConfig, judge: MLLMJudge, api_key: str | None):
        self.config, self.api_key = config, api_key
        self._log_lock = threading.Lock()
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        try:
            self._socket = socket.create_server((config.host, config.port), family=family, backlog=BACKLOG)
        except OSError as error:
            raise EditR1Error(f"cannot listen on {config.host}:{config.port}: {error}") from error
        self.batcher = Batcher(judge, config.max_batch_size, config.max_wait_ms)
        protocol = functools.partial(_DeadlineProtocol, header_timeout_s=config.header_timeout_s, log=self.log)
        self._app = _App(self)
        self._uvicorn = uvicorn.Server(uvicorn.Config(
            self._app, http=protocol, ws="none", lifespan="off", backlog=BACKLOG,
            timeout_keep_alive=config.header_timeout_s,  # our own deadline covers idle connections too
            access_log=False, log_config=None, server_header=False, proxy_headers=False,
        ))

    @property
    def url(self) -> str:
        host, port = self._socket.getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def requests_in_flight(self) -> int:
        """Chat requests past their headers and not yet answered (what `max_concurrent_requests` caps)."""
        return self._app.in_flight

    def log(self, line: str) -> None:
        """One whole line per call, flushed (print could interleave two threads' lines)."""
        with self._log_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def serve_forever(self) -> None:
        """Serve until `stop()` or, on the main thread, SIGINT/SIGTERM; requests being judged are
        answered first, ones still arriving dropped. uvicorn raises a caught signal again afterwards,
        so Ctrl-C ends in KeyboardInterrupt."""
        self._uvicorn.run(sockets=[self._socket])

    @property
    def stopping(self) -> bool:
        """`stop()` was called or a signal caught: uvicorn is shutting down."""
        return self._uvicorn.should_exit

    def stop(self) -> None:
        self._uvicorn.should_exit = True  # uvicorn's main loop checks it every 0.1 s

    def close(self) -> None:
        self._socket.close()
        self.batcher.close()


class _DeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for a request's headers, counted from the connection's
    opening or its previous response. uvicorn arms no timer before a connection's first request, and
    its keep-alive timer stops at the first byte of the next one, so a client trickling headers (or
    sending nothing) would hold its connection forever."""

    def __init__(self, *args, header_timeout_s: float, log: Callable[[str], None], **kwargs):
        super().__init__(*args, **kwargs)
        self._header_timeout_s, self._log = header_timeout_s, log
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._disarm_once_headers_arrived()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()
            self._disarm_once_headers_arrived()  # a pipelined request may be parsed already

    def shutdown(self) -> None:
        """At server shutdown a request still sending its body is dropped, not waited for (for up to
        body_timeout_s); one being judged is finished and answered."""
        if self.cycle is not None and not self.cycle.response_started and self.conn.their_state is h11.SEND_BODY:
            self.transport.close()
        else:
            super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._cancel()
        self._deadline = self.loop.call_later(self._header_timeout_s, self._expire)

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _disarm_once_headers_arrived(self) -> None:
        if self.conn.their_state is not h11.IDLE:  # h11 leaves IDLE once the request line and headers are in
            self._cancel()

    def _expire(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        pending = len(self.conn.trailing_data[0])
        if pending:  # a connection that sent nothing is an idle one: closing it is routine, not news
            self._log(f"closed a connection from {self.client[0] if self.client else '?'}: {pending} bytes of request "
                      f"headers in {self._header_timeout_s:g}s (header_timeout_s)")
        self.transport.close()


class _App:
    """The ASGI application: routes, the token check, the limits, one log line per request."""

    def __init__(self, server: RewardServer):
        self.server = server
        self.in_flight = 0  # chat requests past their headers; only the event loop touches it

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        start = time.perf_counter()
        method, path = scope["method"], scope["path"]
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        extra: dict[str, str] = {}
        try:
            status, payload = 200, await self._route(method, path, headers, receive)
        except ProtocolError as error:
            status, payload, extra = error.status, error.body(), error.headers
        except Exception as error:  # noqa: BLE001 - a failed request must not take the server down
            traceback.print_exc()
            status, payload = 500, error_body(500, f"internal error: {type(error).__name__}: {error}", "server_error")
        data = json.dumps(payload).encode()
        response_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *((name.lower().encode(), value.encode()) for name, value in extra.items())]
        if status >= 400:  # the request body may be unread: this connection cannot be reused
            response_headers.append((b"connection", b"close"))
        query = scope["query_string"].decode("latin-1")
        # Logged before answering, so the line is there by the time the client has its answer.
        self.server.log(f"{method} {path}{'?' + query if query else ''} {status} {(time.perf_counter() - start) * 1000:.1f}ms")
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": data})

    async def _route(self, method: str, path: str, headers: dict[str, str], receive: Callable) -> dict:
        if method == "GET" and path == "/health":
            if not self.server.batcher.alive:
                raise ProtocolError(503, "the judge worker has stopped", "server_error")
            return {"status": "ok"}
        if method == "GET" and path == "/v1/models":
            self._authorize(headers)
            return models_response(self.server.config.model_name)
        if method == "POST" and path == CHAT_PATH:
            return await self._chat(headers, receive)
        if method == "GET":
            raise ProtocolError(404, f"no route GET {path}", "not_found_error")
        if method == "POST":
            raise ProtocolError(404, f"no route POST {path}; the chat endpoint is {CHAT_PATH}", "not_found_error")
        raise ProtocolError(405, f"method {method} is not allowed; use GET or POST", headers={"Allow": "GET, POST"})

    async def _chat(self, headers: dict[str, str], receive: Callable) -> dict:
        config = self.server.config
        self._authorize(headers)
        if self.in_flight >= config.max_concurrent_requests:
            raise ProtocolError(503, f"the server is busy: {self.in_flight} chat requests in flight, the limit is "
                                     f"{config.max_concurrent_requests} (max_concurrent_requests); retry in "
                                     f"{RETRY_AFTER_S} s", "server_error", headers={"Retry-After": str(RETRY_AFTER_S)})
        self.in_flight += 1
        try:
            raw = await self._read_body(headers, receive)
            request = await asyncio.get_running_loop().run_in_executor(None, self._parse, raw)
            sampling = None
            if request.temperature > 0:  # without a seed, draws differ from request to request
                seed = request.seed if request.seed is not None else secrets.randbits(63)
                sampling = Sampling(request.temperature, request.samples, seed)
            future = self.server.batcher.submit((request.messages, request.images), request.top_logprobs, sampling)
            answer = await asyncio.wrap_future(future)
            return chat_completion_response(config.model_name, answer.top, request, answer.sampled)
        finally:
            self.in_flight -= 1

    def _authorize(self, headers: dict[str, str]) -> None:
        key = self.server.api_key
        if key is None:
            return
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ProtocolError(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                                "authentication_error", headers={"WWW-Authenticate": "Bearer"})

    async def _read_body(self, headers: dict[str, str], receive: Callable) -> bytes:
        config = self.server.config
        limit, timeout = config.max_body_bytes, config.body_timeout_s
        header = headers.get("content-length")
        if header is None:
            raise ProtocolError(411, "Content-Length is required (chunked bodies are not accepted)")
        try:
            length = int(header)
        except ValueError:
            raise ProtocolError(400, f"Content-Length: not an integer: {header!r}") from None
        if length < 0:
            raise ProtocolError(400, f"Content-Length: negative: {length}")
        if length > limit:  # refused unread: the body never reaches memory
            raise ProtocolError(413, f"request body is {length} bytes; the limit is {limit} (max_body_bytes)")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        chunks, received, more = [], 0, True
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise ProtocolError(408, f"request body: {received} of {length} bytes arrived in {timeout:g}s "
                                         f"(body_timeout_s)") from None
            if message["type"] == "http.disconnect":
                if self.server.stopping:  # dropped by `_DeadlineProtocol.shutdown`
                    raise ProtocolError(503, "the server is shutting down", "server_error")
                raise ProtocolError(400, f"request body ended after {received} of {length} bytes (the client "
                                         f"disconnected)")
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            more = message.get("more_body", False)
        return b"".join(chunks)

    def _parse(self, raw: bytes) -> ChatRequest:
        """On a worker thread: JSON and image decoding may take a while for a large body."""
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as error:
            raise ProtocolError(400, f"invalid JSON body: {error}") from None
        config = self.server.config
        return parse_chat_request(body, config.model_name, config.max_image_pixels, config.max_images_per_request)
