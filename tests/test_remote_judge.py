"""The `mllm_remote` reward against a real `editr1 serve-reward` subprocess: the same scores as the
in-process `mllm` reward, explicit failures (never a made-up score), and a server restart."""

from __future__ import annotations

import email.utils
import json
import math
import socket
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from reward_serving import INSTRUCTIONS, ServerProcess, random_images, save_test_judge

from editr1.errors import EditR1Error
from editr1.rewards.registry import build_reward
from editr1.openai_http import MAX_BACKOFF_S, retry_after_s
from editr1.rewards.remote_judge import RemoteError

KEY = "remote-secret"


@pytest.fixture(scope="module")
def judge_folder(tmp_path_factory):
    return save_test_judge(tmp_path_factory.mktemp("judge") / "judge")


@pytest.fixture(scope="module")
def server(judge_folder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("server")
    config = folder / "serve.yaml"
    config.write_text(f"model: {judge_folder}\nport: 0\nserved_model_name: judge\napi_key: {KEY}\n")
    process = ServerProcess(config, folder / "stderr.txt")
    yield process
    assert process.stop() == 0 and process.count(r"^stopped$") == 1  # Ctrl-C stops it cleanly


def remote(port: int, **options):
    return build_reward("mllm_remote", {"url": f"http://127.0.0.1:{port}/v1", "model": "judge", "api_key": KEY, **options})


def batch(n: int, seed: int, references: list[int] | None = None):
    """n samples with references[i] (default 1) reference images each."""
    references = references or [1] * n
    images = random_images(sum(references) + n, seed)
    sources, start = [], n
    for count in references:
        sources.append(images[start : start + count])
        start += count
    prompts = [INSTRUCTIONS[i % 2] for i in range(n)]
    requirements = [None if i % 2 else "keep the background unchanged" for i in range(n)]
    return sources, images[:n], prompts, requirements


def test_served_scores_equal_the_in_process_judge(server, judge_folder):
    samples = batch(6, seed=0)
    served = remote(server.port).score(*samples)
    local = build_reward("mllm", {"model": str(judge_folder)}).score(*samples)
    assert served.failures == {} and served.valid.all() and local.valid.all()
    torch.testing.assert_close(served.scores, local.scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(served.extras["judge_score_mass"], local.extras["judge_score_mass"], atol=1e-4, rtol=0)
    assert served.scores.max() - served.scores.min() > 1e-3  # the comparison tells samples apart


@pytest.mark.parametrize("references", [[2, 2, 2], [1, 2, 3, 2]])
def test_served_scores_equal_the_in_process_judge_with_several_references(server, judge_folder, references):
    samples = batch(len(references), seed=7, references=references)
    served = remote(server.port).score(*samples)
    local = build_reward("mllm", {"model": str(judge_folder)}).score(*samples)
    assert served.failures == {} and served.valid.all() and local.valid.all()
    torch.testing.assert_close(served.scores, local.scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(served.extras["judge_score_mass"], local.extras["judge_score_mass"], atol=1e-4, rtol=0)


def test_non_finite_images_are_unscored_and_not_sent(server):
    sources, edited, prompts, requirements = batch(2, seed=1)
    edited[0] = edited[0].clone()
    edited[0][0, 0, 0] = float("nan")
    sent_before = server.count(r"^POST /v1/chat/completions ")
    result = remote(server.port).score(sources, edited, prompts, requirements)
    assert result.valid.tolist() == [False, True] and math.isnan(result.scores[0]) and "NaN" in result.failures[0]
    server.wait_for(r"^POST /v1/chat/completions 200", count=sent_before + 1, timeout=10)
    assert server.count(r"^POST /v1/chat/completions ") == sent_before + 1


def test_a_rejected_request_is_unscored_without_retries(server):
    start = time.monotonic()
    result = remote(server.port, api_key="wrong", backoff_s=5.0).score(*batch(2, seed=2))
    assert time.monotonic() - start < 4  # a 401 is final: no 5 s backoff
    assert not result.valid.any() and torch.isnan(result.scores).all()
    assert all("HTTP 401" in reason and "/v1/chat/completions" in reason for reason in result.failures.values())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_nothing_listening_leaves_every_sample_unscored():
    port = free_port()
    retrying = remote(port, wait_ready_s=0, timeout_s=0.5, max_retries=1, backoff_s=0.01).score(*batch(3, seed=3))
    assert not retrying.valid.any() and torch.isnan(retrying.scores).all() and len(retrying.failures) == 3
    for reason in retrying.failures.values():
        assert f"http://127.0.0.1:{port}/v1/chat/completions failed after 2 attempt(s)" in reason

    waiting = remote(port, wait_ready_s=0.3).score(*batch(3, seed=3))
    assert not waiting.valid.any() and torch.isnan(waiting.scores).all()
    for reason in waiting.failures.values():
        assert reason.startswith("server not ready") and f"http://127.0.0.1:{port}/health" in reason


def test_a_server_killed_and_restarted_on_the_same_port_is_waited_for(server):
    client = remote(server.port, wait_ready_s=60)
    assert client.score(*batch(2, seed=4)).valid.all()
    server.restart_after_kill()  # SIGKILL; the new server is still loading when the client asks
    result = client.score(*batch(2, seed=5))
    assert result.failures == {} and result.valid.all()
    assert server.wait_listening() == server.port


def test_a_response_without_score_tokens_is_unscored_with_the_reason():
    reward = remote(1, wait_ready_s=0)
    answer = {"choices": [{"logprobs": {"content": [{"top_logprobs": [{"token": "Yes", "logprob": -0.1},
                                                                       {"token": "No", "logprob": -2.4}]}]}}]}
    with pytest.raises(RemoteError, match="none of the score tokens"):
        reward.read_score(answer)
    with pytest.raises(RemoteError, match="support logprobs"):
        reward.read_score({"choices": [{"logprobs": None}]})
    score, mass = reward.read_score({"choices": [{"logprobs": {"content": [{"top_logprobs": [
        {"token": "5", "logprob": math.log(0.5)}, {"token": "0", "logprob": math.log(0.3)}, {"token": "5", "logprob": -9}]}]}}]})
    assert score == pytest.approx(0.5 / 0.8) and mass == pytest.approx(0.8)


@pytest.mark.parametrize(("options", "message"), [
    ({"url": "ftp://judge/v1"}, "reward.options.url"),
    ({"top_logprobs": 50}, "reward.options.top_logprobs: must be in 1..20"),
    ({"timeout_s": 0}, "reward.options.timeout_s: must be > 0"),
    ({"api_key": None, "api_key_env": "EDITR1_TEST_UNSET_VARIABLE"}, "reward.options.api_key_env"),
    ({"levels": 1}, "reward.options.levels"),
])
def test_bad_options_name_the_option(options, message):
    with pytest.raises(EditR1Error, match=message):
        build_reward("mllm_remote", {"url": "http://127.0.0.1:1/v1", "model": "judge", **options})


class FakeServer:
    """A loopback HTTP server answering request k with scripted response k (the last one repeats):
    (status, headers, body). Records (method, path) of every request."""

    def __init__(self, responses: list[tuple[int, dict, bytes]]):
        self.responses, self.requests = responses, []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.requests.append((self.command, self.path))
                status, headers, body = owner.responses[min(len(owner.requests), len(owner.responses)) - 1]
                self.send_response(status)
                for name, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = answer

            def log_message(self, *args):  # keep the test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake():
    servers = []

    def start(*responses):
        servers.append(FakeServer(list(responses)))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


SCORED = (200, {"Content-Type": "application/json"}, json.dumps({"choices": [{"logprobs": {"content": [
    {"top_logprobs": [{"token": "5", "logprob": math.log(0.5)}, {"token": "0", "logprob": math.log(0.5)}]}]}}]}).encode())


@pytest.mark.parametrize("body", [
    {"error": {"message": "the prompt is too long", "type": "BadRequestError", "code": 400}},  # OpenAI, vLLM
    {"object": "error", "message": "the prompt is too long", "type": "BadRequestError", "code": 400},  # SGLang, older vLLM
    {"message": "the prompt is too long"},
    {"detail": "the prompt is too long"},  # FastAPI
    "the prompt is too long",  # plain text
])
def test_the_servers_reason_is_read_from_every_error_body_shape(fake, body):
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    server = fake((400, {}, raw))
    with pytest.raises(RemoteError, match=r"HTTP 400: the prompt is too long$"):
        remote(server.port, wait_ready_s=0).post(b"{}")


def test_a_long_plain_text_error_body_is_shortened(fake):
    server = fake((502, {"Content-Type": "text/html"}, b"<html>" + b"upstream failed " * 200 + b"</html>"))
    with pytest.raises(RemoteError) as error:
        remote(server.port, wait_ready_s=0, max_retries=0).post(b"{}")
    message = str(error.value)
    assert "HTTP 502: <html>upstream failed upstream failed" in message and "(3213 characters)" in message
    assert len(message) < 500
    empty = fake((400, {}, b""))
    with pytest.raises(RemoteError, match="HTTP 400: Bad Request$"):  # nothing said: the reason phrase
        remote(empty.port, wait_ready_s=0).post(b"{}")


@pytest.mark.parametrize("message", [
    "At most 1 image(s) may be provided in one prompt.",
    "You set image=1 (or defaulted to 1) in `--limit-mm-per-prompt`, but passed 3 image items in the same prompt.",
])
def test_a_refusal_for_too_many_images_suggests_the_vllm_flag(fake, message):
    server = fake((400, {}, json.dumps({"object": "error", "message": message, "type": "BadRequestError", "code": 400}).encode()))
    result = remote(server.port, wait_ready_s=0).score(*batch(1, seed=8, references=[2]))
    reason = result.failures[0]
    assert message in reason and """--limit-mm-per-prompt '{"image": 4}'""" in reason and "image=4" in reason
    assert server.requests == [("POST", "/v1/chat/completions")]  # a 400 is final


def record_waits(reward, monkeypatch) -> list[float]:
    waits = []
    monkeypatch.setattr(reward, "_sleep", waits.append)
    return waits


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds_is_waited_instead_of_the_backoff(fake, monkeypatch, status):
    server = fake((status, {"Retry-After": "3"}, b'{"error": {"message": "busy"}}'), SCORED)
    reward = remote(server.port, wait_ready_s=0, backoff_s=0.01)
    waits = record_waits(reward, monkeypatch)
    assert reward.read_score(reward.post(b"{}")) == (pytest.approx(0.5), pytest.approx(1.0))
    assert waits == [3.0] and len(server.requests) == 2


def test_retry_after_as_an_http_date_and_its_cap(fake, monkeypatch):
    in_20_s = email.utils.format_datetime(datetime.now(timezone.utc) + timedelta(seconds=20), usegmt=True)
    server = fake((503, {"Retry-After": in_20_s}, b"loading"), (429, {"Retry-After": "3600"}, b""),
                  (503, {}, b""), (429, {"Retry-After": "soon"}, b""), SCORED)
    reward = remote(server.port, wait_ready_s=0, backoff_s=0.01, max_retries=4)
    waits = record_waits(reward, monkeypatch)
    reward.post(b"{}")
    assert 18 <= waits[0] <= 20  # the date has whole seconds
    assert waits[1:] == [MAX_BACKOFF_S, 0.04, 0.08]  # capped; no header or an unreadable one: the backoff
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0 and retry_after_s(" 2.5 ") == 2.5


def test_check_ready_says_it_waits_then_fails_naming_the_url_and_the_wait(capsys):
    port = free_port()
    remote(port, wait_ready_s=0).check_ready()  # 0: no /health to ask
    assert capsys.readouterr().err == ""
    with pytest.raises(EditR1Error, match=rf"http://127.0.0.1:{port}/health was not ready within 0.5s "
                                          r"\(reward.options.wait_ready_s\); last problem: URLError"):
        remote(port, wait_ready_s=0.5).check_ready()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"waiting up to 0.5s (reward.options.wait_ready_s) for the judge server at "
                               f"http://127.0.0.1:{port}/health: URLError")


def test_check_ready_waits_for_a_server_that_becomes_ready(fake, capsys):
    server = fake((503, {}, b'{"message": "loading the model"}'), (503, {}, b""), (200, {}, b"ok"))
    remote(server.port, wait_ready_s=60).check_ready()
    assert server.requests == [("GET", "/health")] * 3
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"waiting up to 60s (reward.options.wait_ready_s) for the judge server at "
                     f"http://127.0.0.1:{server.port}/health: HTTP 503: loading the model"]
    remote(server.port, wait_ready_s=60).check_ready()  # ready at once: nothing printed
    assert capsys.readouterr().err == ""
