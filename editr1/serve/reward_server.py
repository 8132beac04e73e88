"""The reward server: stdlib HTTP in front of the judge, OpenAI chat-completions compatible.

`GET /health` (no token needed), `GET /v1/models`, `POST /v1/chat/completions`. Bodies are JSON,
never pickle. The body size is checked from Content-Length before reading; every failure becomes an
OpenAI-style error for that request only. Each request logs one line: method, path, status, ms.
"""

from __future__ import annotations

import hmac
import json
import sys
import threading
import time
import traceback
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from editr1.errors import EditR1Error
from editr1.rewards.mllm_judge import MLLMJudge
from editr1.serve.batcher import Batcher
from editr1.serve.config import ServeConfig
from editr1.serve.protocol import (
    ProtocolError,
    chat_completion_response,
    error_body,
    models_response,
    parse_chat_request,
)

CHAT_PATH = "/v1/chat/completions"


class RewardServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many trainer processes may connect at once

    def __init__(self, config: ServeConfig, judge: MLLMJudge, api_key: str | None):
        self.config, self.api_key = config, api_key
        self._log_lock = threading.Lock()
        try:
            super().__init__((config.host, config.port), _Handler)
        except OSError as error:
            raise EditR1Error(f"cannot listen on {config.host}:{config.port}: {error}") from error
        self.batcher = Batcher(judge, config.max_batch_size, config.max_wait_ms)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def log(self, line: str) -> None:
        """One whole line per call, flushed (print could interleave two threads' lines)."""
        with self._log_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def close(self) -> None:
        self.server_close()
        self.batcher.close()


class _Handler(BaseHTTPRequestHandler):
    server: RewardServer
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds a stalled client may hold its connection's thread

    def log_message(self, format, *args) -> None:
        """Silenced: `_respond` logs one line per request."""

    def do_GET(self) -> None:  # http.server names handlers do_<METHOD>
        self._respond(self._get)

    def do_POST(self) -> None:
        self._respond(self._post)

    def _respond(self, route: Callable[[], dict]) -> None:
        start = time.perf_counter()
        status = 200
        try:
            payload = route()
        except ProtocolError as error:
            status, payload = error.status, error.body()
        except Exception as error:  # noqa: BLE001 - a failed request must not take the server down
            traceback.print_exc()
            status, payload = 500, error_body(500, f"internal error: {type(error).__name__}: {error}", "server_error")
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 401:
                self.send_header("WWW-Authenticate", "Bearer")
            if status >= 400:  # the request body may be unread: this connection cannot be reused
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client went away
            self.close_connection = True
        self.server.log(f"{self.command} {self.path} {status} {(time.perf_counter() - start) * 1000:.1f}ms")

    def _get(self) -> dict:
        path = urlsplit(self.path).path
        if path == "/health":
            if not self.server.batcher.alive:
                raise ProtocolError(503, "the judge worker has stopped", "server_error")
            return {"status": "ok"}
        if path == "/v1/models":
            self._authorize()
            return models_response(self.server.config.model_name)
        raise ProtocolError(404, f"no route GET {path}", "not_found_error")

    def _post(self) -> dict:
        path = urlsplit(self.path).path
        if path != CHAT_PATH:
            raise ProtocolError(404, f"no route POST {path}; the chat endpoint is {CHAT_PATH}", "not_found_error")
        self._authorize()
        config = self.server.config
        request = parse_chat_request(self._read_json(), config.model_name, config.max_image_pixels,
                                     config.max_images_per_request)
        top = self.server.batcher.submit((request.messages, request.images), request.top_logprobs).result()
        return chat_completion_response(config.model_name, top, request)

    def _authorize(self) -> None:
        key = self.server.api_key
        if key is None:
            return
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ProtocolError(401, "missing or wrong API key (send 'Authorization: Bearer <key>')", "authentication_error")

    def _read_json(self):
        limit = self.server.config.max_body_bytes
        header = self.headers.get("Content-Length")
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
        raw = self.rfile.read(length)
        if len(raw) < length:
            raise ProtocolError(400, f"request body ended after {len(raw)} of {length} bytes")
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as error:
            raise ProtocolError(400, f"invalid JSON body: {error}") from None
