"""Slow and idle clients cannot starve `editr1 serve-reward`: two dozen connections that send nothing,
trickle their headers or body, or sit idle after a response are held open on loopback while normal
clients are served without an error; then each slow one is timed out (closed, or 408 for a body).
Past `max_concurrent_requests` a request gets 503 with Retry-After at once, and a timed-out slow
request frees its slot. The server runs in-process on the tiny random judge."""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
import socket
import threading
import time

import pytest
import torch
from PIL import Image

from editr1.rewards.mllm_judge import MLLMJudge
from editr1.serve.config import ServeConfig
from editr1.serve.reward_server import RewardServer

#: The server's header and body deadlines: short, so the test takes seconds.
TIMEOUT_S = 2.0
#: How long a slow client waits for the server to act before it reports the connection still open.
CLIENT_GIVE_UP_S = 30.0
TRICKLE_EVERY_S = 0.2
SLOW_KINDS = ("silent", "trickled headers", "trickled body", "idle keep-alive")
SLOW_PER_KIND = 6
NORMAL_CLIENTS, REQUESTS_EACH = 4, 8


@pytest.fixture
def start_server(tiny_judge_dir):
    running = []

    def start(**settings) -> RewardServer:
        settings = {"header_timeout_s": TIMEOUT_S, "body_timeout_s": TIMEOUT_S, **settings}
        config = ServeConfig(model=str(tiny_judge_dir), port=0, served_model_name="judge", max_wait_ms=20, **settings)
        server = RewardServer(config, MLLMJudge.from_pretrained(tiny_judge_dir), api_key=None)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        running.append((server, thread))
        return server

    yield start
    for server, thread in running:
        server.stop()
        thread.join(timeout=30)
        server.close()
        assert not thread.is_alive()


def port_of(server: RewardServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


def chat_body() -> bytes:
    parts = []
    for seed in (1, 2):
        pixels = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(seed))
        buffer = io.BytesIO()
        Image.fromarray((pixels * 255).byte().numpy()).save(buffer, format="PNG")
        url = f"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}"
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return json.dumps({"model": "judge", "max_tokens": 1, "logprobs": True, "top_logprobs": 5,
                       "messages": [{"role": "user", "content": [*parts, {"type": "text", "text": "Rate 0 to 5."}]}]}).encode()


def call(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, dict, dict]:
    """-> (status, response headers with lower-case names, JSON body); a fresh connection each time."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_GIVE_UP_S)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, json.loads(response.read())
    finally:
        connection.close()


def post_head(length: int) -> bytes:
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: judge\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


class SlowClient(threading.Thread):
    """One slow connection of `kind`; `outcome` is what the server did to it in the end: 'closed', or
    the status and error message it answered, or why the client gave up."""

    def __init__(self, port: int, kind: str):
        super().__init__(daemon=True)
        self.port, self.kind = port, kind
        self.slow = threading.Event()  # set once the connection is in its slow state
        self.outcome = "not finished"

    def run(self) -> None:
        try:
            if self.kind == "idle keep-alive":  # one whole request and response, then silence
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=CLIENT_GIVE_UP_S)
                connection.request("GET", "/health")
                response = connection.getresponse()
                assert (response.status, response.read()) == (200, b'{"status": "ok"}')
                with connection.sock as sock:
                    self.outcome = self._hold(sock)
                return
            with socket.create_connection(("127.0.0.1", self.port), timeout=CLIENT_GIVE_UP_S) as sock:
                self.outcome = self._hold(sock)
        except TimeoutError:
            self.outcome = f"still open after {CLIENT_GIVE_UP_S:g}s"
        except Exception as error:  # noqa: BLE001 - recorded and reported by the test
            self.outcome = f"client error {error!r}"
        finally:
            self.slow.set()

    def _hold(self, sock: socket.socket) -> str:
        if self.kind == "trickled body":
            sock.sendall(post_head(1000))
        self.slow.set()
        trickle = {"trickled headers": post_head(1000), "trickled body": b"x" * 1000}.get(self.kind, b"")
        give_up = time.monotonic() + CLIENT_GIVE_UP_S
        for byte in trickle:
            if time.monotonic() > give_up:
                return f"still open after {CLIENT_GIVE_UP_S:g}s"
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                return read_to_close(sock)
            sock.settimeout(TRICKLE_EVERY_S)  # the pause between bytes, watching for the server's answer
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                return "closed"
            finally:
                sock.settimeout(CLIENT_GIVE_UP_S)
            return read_to_close(sock, data)
        return read_to_close(sock)  # silent and idle ones wait here for the server to act


def read_to_close(sock: socket.socket, received: bytes = b"") -> str:
    """Reads until the server closes (it must, after an error); 'closed' when it sent nothing, else
    '<status> <error message>'."""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    if not received:
        return "closed"
    head, _, body = received.partition(b"\r\n\r\n")
    return f"{head.split(b' ')[1].decode()} {json.loads(body)['error']['message']}"


def test_slow_and_idle_clients_do_not_starve_normal_clients_and_are_timed_out(start_server, capsys):
    port = port_of(start_server())
    slow = [SlowClient(port, kind) for kind in SLOW_KINDS for _ in range(SLOW_PER_KIND)]
    for client in slow:
        client.start()
    for client in slow:
        assert client.slow.wait(CLIENT_GIVE_UP_S)

    body, errors, lock = chat_body(), [], threading.Lock()

    def normal_client() -> None:
        for _ in range(REQUESTS_EACH):
            try:
                status, _, payload = call(port, "POST", "/v1/chat/completions", body)
                assert status == 200 and len(payload["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 5, payload
                assert call(port, "GET", "/health")[::2] == (200, {"status": "ok"})
            except Exception as error:  # noqa: BLE001 - collected and reported below
                with lock:
                    errors.append(repr(error))

    normal = [threading.Thread(target=normal_client) for _ in range(NORMAL_CLIENTS)]
    for thread in normal:
        thread.start()
    for thread in normal:
        thread.join()
    assert errors == []

    for client in slow:
        client.join(CLIENT_GIVE_UP_S + 5)
    # A 408 says how many body bytes arrived, which depends on scheduling.
    outcomes = {kind: sorted({re.sub(r"body: \d+ of", "body: N of", c.outcome) for c in slow if c.kind == kind})
                for kind in SLOW_KINDS}
    assert outcomes == {"silent": ["closed"], "trickled headers": ["closed"], "idle keep-alive": ["closed"],
                        "trickled body": ["408 request body: N of 1000 bytes arrived in 2s (body_timeout_s)"]}
    log = capsys.readouterr().out
    assert log.count("POST /v1/chat/completions 200 ") == NORMAL_CLIENTS * REQUESTS_EACH
    assert log.count("POST /v1/chat/completions 408 ") == SLOW_PER_KIND
    # Trickled headers are reported; a connection that sent nothing is an idle one, closed quietly.
    assert log.count("bytes of request headers in 2s (header_timeout_s)") == SLOW_PER_KIND


def test_past_the_request_cap_a_client_gets_503_with_retry_after_and_slots_free_up(start_server):
    server = start_server(max_concurrent_requests=3)
    port = port_of(server)
    holders = [SlowClient(port, "trickled body") for _ in range(3)]
    for client in holders:
        client.start()
    give_up = time.monotonic() + CLIENT_GIVE_UP_S
    while server.requests_in_flight < 3:  # the holders' headers are in: each holds a slot
        assert time.monotonic() < give_up, f"{server.requests_in_flight} requests in flight, expected 3"
        time.sleep(0.01)

    status, headers, payload = call(port, "POST", "/v1/chat/completions", chat_body())
    assert status == 503 and headers["retry-after"] == "1", payload
    assert "max_concurrent_requests" in payload["error"]["message"] and payload["error"]["code"] == 503
    assert call(port, "GET", "/health")[::2] == (200, {"status": "ok"})  # cheap GETs are not capped

    for client in holders:
        client.join(CLIENT_GIVE_UP_S + 5)
        assert client.outcome.startswith("408 request body:"), client.outcome
    assert server.requests_in_flight == 0
    status, _, payload = call(port, "POST", "/v1/chat/completions", chat_body())
    assert status == 200, payload


def test_stopping_drops_slow_clients_instead_of_waiting_out_their_deadlines(start_server, capsys):
    server = start_server(header_timeout_s=600, body_timeout_s=600)
    port = port_of(server)
    slow = [SlowClient(port, kind) for kind in SLOW_KINDS]
    for client in slow:
        client.start()
    give_up = time.monotonic() + CLIENT_GIVE_UP_S
    while server.requests_in_flight < 1:  # the trickled body's headers are in
        assert time.monotonic() < give_up, "the trickled body's request never started"
        time.sleep(0.01)
    server.stop()
    for client in slow:
        client.join(CLIENT_GIVE_UP_S + 5)
    assert {client.kind: client.outcome for client in slow} == dict.fromkeys(SLOW_KINDS, "closed")
    # Logged as the shutdown it is, by the server's thread, which may still be finishing.
    printed, give_up = "", time.monotonic() + CLIENT_GIVE_UP_S
    while "POST /v1/chat/completions 503 " not in printed and time.monotonic() < give_up:
        printed += capsys.readouterr().out
        time.sleep(0.05)
    assert "POST /v1/chat/completions 503 " in printed
