"""A loopback OpenAI-compatible judge server for tests, answering by a script.

    with ScriptedJudgeServer(marker_script(imgedit_reply)) as server:
        judge = OpenAIJudge(server.base_url, server.model)

`POST /v1/chat/completions` calls `script(request_json, call_number)` (call numbers count from 1 over
every chat call) and answers what it returns: a `str` (the reply text), `Reply`, `Status` (an error
status, optionally with Retry-After), `Delay` (wait, then another action: past the client's timeout it
makes one), `Malformed` (a body that is not a chat completion) or `NoContent`. `GET /v1/models` lists
`served_models`, or answers `models_status`. The server records every chat request (`requests`) and
the most requests it was answering at once (`max_in_flight`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Union

from PIL import Image


@dataclass(frozen=True)
class Reply:
    text: str
    finish_reason: str = "stop"


@dataclass(frozen=True)
class Status:
    code: int
    message: str = "scripted failure"
    retry_after: str | None = None


@dataclass(frozen=True)
class Delay:
    seconds: float
    then: "Action" = "late reply"


@dataclass(frozen=True)
class Malformed:
    body: bytes = b"<html>not json"
    status: int = 200


@dataclass(frozen=True)
class NoContent:
    """A well-formed completion whose message content is empty (`content`: "" or None)."""

    content: str | None = None


Action = Union[str, Reply, Status, Delay, Malformed, NoContent]
Script = Callable[[dict, int], Action]

IMGEDIT_NAMES = ("Prompt Compliance", "Visual Naturalness", "Physical & Detail Integrity")


def request_text(request_json: dict) -> str:
    """The text parts of the request's messages, joined."""
    texts = []
    for message in request_json.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(part.get("text", "") for part in content if part.get("type") == "text")
    return "\n".join(texts)


def _draws(text: str, count: int, low: int, high: int) -> list[int]:
    digest = hashlib.sha256(text.encode()).digest()
    return [low + digest[i] % (high - low + 1) for i in range(count)]


def imgedit_scores(text: str) -> list[int]:
    """The three 1..5 scores `imgedit_reply` gives `text`."""
    return _draws(text, 3, 1, 5)


def imgedit_reply(text: str) -> str:
    """An ImgEdit-style reply: reasoning, then three `Name: N` lines, the scores picked by `text`'s hash."""
    lines = [f"{name}: {score}" for name, score in zip(IMGEDIT_NAMES, imgedit_scores(text))]
    return "The edit was examined against the instruction.\n" + "\n".join(lines)


def viescore_scores(text: str) -> list[int]:
    """The two 0..10 scores `viescore_reply` gives `text`."""
    return _draws(text, 2, 0, 10)


def viescore_reply(text: str) -> str:
    """A VIEScore-style JSON reply, the scores picked by `text`'s hash."""
    return json.dumps({"score": viescore_scores(text), "reasoning": "scripted judgement"})


class marker_script:
    """A script answering `reply(text)`, except for prompts holding a marker:

    - "UNPARSABLE": a reply holding no scores;
    - "TIMEOUT": waits `timeout_delay_s` (past the client's timeout) the first `timeout_times` times
      that text is asked, then replies;
    - "FLAKY": HTTP 500 the first `flaky_times` times that text is asked, then replies;
    - "BADREQUEST": HTTP 400 always;
    - "EMPTY": a completion with empty content.
    """

    def __init__(self, reply: Callable[[str], str] = imgedit_reply, timeout_delay_s: float = 1.0,
                 timeout_times: int = 1, flaky_times: int = 1, delay_s: float = 0.0):
        self.reply, self.timeout_delay_s, self.timeout_times = reply, timeout_delay_s, timeout_times
        self.flaky_times, self.delay_s = flaky_times, delay_s
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, request_json: dict, call_number: int) -> Action:
        text = request_text(request_json)
        with self._lock:
            seen = self._counts[text] = self._counts.get(text, 0) + 1
        if "BADREQUEST" in text:
            return Status(400, "scripted bad request: the prompt is refused")
        if "TIMEOUT" in text and seen <= self.timeout_times:
            return Delay(self.timeout_delay_s, self.reply(text))
        if "FLAKY" in text and seen <= self.flaky_times:
            return Status(500, "scripted flaky failure")
        if "EMPTY" in text:
            return NoContent("")
        answer = "I cannot judge this image, sorry." if "UNPARSABLE" in text else self.reply(text)
        return Delay(self.delay_s, answer) if self.delay_s else answer


def _image_info(part: dict) -> dict[str, Any]:
    url = part.get("image_url", {}).get("url", "")
    header, _, data = url.partition(",")
    info: dict[str, Any] = {"media": header}
    try:
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            info.update(format=image.format, mode=image.mode, size=image.size, pixel=image.getpixel((0, 0)))
    except Exception as error:  # recorded, for the test to see
        info["error"] = repr(error)
    return info


class ScriptedJudgeServer:
    """The server, on 127.0.0.1 and a free port, in a background thread while the `with` block runs."""

    def __init__(self, script: Script, model: str = "scripted-judge", served_models: list[str] | None = None,
                 models_status: int | None = None, api_key: str | None = None):
        self.script, self.model = script, model
        self.served_models = served_models if served_models is not None else [model]
        self.models_status, self.api_key = models_status, api_key
        self.requests: list[dict[str, Any]] = []
        self.calls = 0
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def calls_with(self, marker: str) -> int:
        with self._lock:
            return sum(marker in record["text"] for record in self.requests)

    def __enter__(self) -> "ScriptedJudgeServer":
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
                    pass

            def _authorised(self) -> bool:
                if owner.api_key is None or self.headers.get("Authorization") == f"Bearer {owner.api_key}":
                    return True
                self._send(401, json.dumps({"error": {"message": "invalid API key"}}).encode())
                return False

            def do_GET(self):
                if self.path != "/v1/models":
                    return self._send(404, b'{"detail": "Not Found"}')
                if not self._authorised():
                    return None
                if owner.models_status is not None:
                    return self._send(owner.models_status, json.dumps({"error": {"message": "scripted"}}).encode())
                listing = {"object": "list", "data": [{"id": name, "object": "model"} for name in owner.served_models]}
                return self._send(200, json.dumps(listing).encode())

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/chat/completions":
                    return self._send(404, b'{"detail": "Not Found"}')
                if not self._authorised():
                    return None
                request_json = json.loads(body)
                with owner._lock:
                    owner.calls += 1
                    call = owner.calls
                    owner.in_flight += 1
                    owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
                    parts = [part for message in request_json.get("messages", [])
                             for part in (message.get("content") if isinstance(message.get("content"), list) else [])]
                    owner.requests.append({
                        "call": call, "text": request_text(request_json), "model": request_json.get("model"),
                        "images": sum(part.get("type") == "image_url" for part in parts),
                        "image_info": [_image_info(part) for part in parts if part.get("type") == "image_url"],
                        "part_types": [part.get("type") for part in parts],
                        "temperature": request_json.get("temperature"), "seed": request_json.get("seed"),
                        "max_tokens": request_json.get("max_tokens"),
                        "extra": {key: value for key, value in request_json.items()
                                  if key not in ("model", "messages", "temperature", "seed", "max_tokens")},
                    })
                try:
                    self._answer(owner.script(request_json, call), request_json)
                finally:
                    with owner._lock:
                        owner.in_flight -= 1
                return None

            def _answer(self, action: Action, request_json: dict) -> None:
                while isinstance(action, Delay):
                    if owner._closing.wait(action.seconds):
                        return
                    action = action.then
                if isinstance(action, str):
                    action = Reply(action)
                if isinstance(action, Status):
                    headers = {"Retry-After": action.retry_after} if action.retry_after is not None else {}
                    body = json.dumps({"error": {"message": action.message, "code": action.code}}).encode()
                    return self._send(action.code, body, headers)
                if isinstance(action, Malformed):
                    return self._send(action.status, action.body)
                content = action.content if isinstance(action, NoContent) else action.text
                finish = "stop" if isinstance(action, NoContent) else action.finish_reason
                completion = {"id": "chatcmpl-scripted", "object": "chat.completion", "model": request_json.get("model"),
                              "choices": [{"index": 0, "finish_reason": finish,
                                           "message": {"role": "assistant", "content": content}}]}
                return self._send(200, json.dumps(completion).encode())

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
