"""The `mllm_remote` reward against a real `editr1 serve-reward` subprocess: the same scores as the
in-process `mllm` reward, explicit failures (never a made-up score), and a server restart."""

from __future__ import annotations

import math
import socket
import time

import pytest
import torch
from reward_serving import INSTRUCTIONS, ServerProcess, random_images, save_test_judge

from editr1.errors import EditR1Error
from editr1.rewards.registry import build_reward
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


def batch(n: int, seed: int):
    images = random_images(2 * n, seed)
    prompts = [INSTRUCTIONS[i % 2] for i in range(n)]
    requirements = [None if i % 2 else "keep the background unchanged" for i in range(n)]
    return images[:n], images[n:], prompts, requirements


def test_served_scores_equal_the_in_process_judge(server, judge_folder):
    samples = batch(6, seed=0)
    served = remote(server.port).score(*samples)
    local = build_reward("mllm", {"model": str(judge_folder)}).score(*samples)
    assert served.failures == {} and served.valid.all() and local.valid.all()
    torch.testing.assert_close(served.scores, local.scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(served.extras["judge_score_mass"], local.extras["judge_score_mass"], atol=1e-4, rtol=0)
    assert served.scores.max() - served.scores.min() > 1e-3  # the comparison tells samples apart


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
