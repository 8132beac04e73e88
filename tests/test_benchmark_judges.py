"""Benchmark judges: the OpenAI-compatible client against a scripted loopback server (retries,
Retry-After, timeouts, concurrency, repeats, readiness), the in-process transformers judge on a tiny
model, the reply cache, and the bootstrap / judge-spread statistics."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from scripted_judge_server import (
    Malformed,
    ScriptedJudgeServer,
    Status,
    imgedit_reply,
    imgedit_scores,
    marker_script,
    viescore_reply,
)

from editr1.errors import EditR1Error
from editr1.eval.benchmarks.common import JudgeReply, JudgeRequest
from editr1.eval.benchmarks.judges import OpenAIJudge, TransformersJudge, build_text_judge
from editr1.eval.benchmarks.reply_cache import ReplyCache, image_sha256
from editr1.eval.benchmarks.stats import judge_spread, paired_bootstrap


def images(n: int = 2, size: int = 24, seed: int = 0) -> tuple[Image.Image, ...]:
    rng = np.random.default_rng(seed)
    return tuple(Image.fromarray(rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)) for _ in range(n))


def request(text: str, n_images: int = 2, kind: str = "imgedit", seed: int = 0) -> JudgeRequest:
    return JudgeRequest(text, images(n_images, seed=seed), kind)


def ask_all(judge, pairs) -> tuple[dict[int, JudgeReply], list[str]]:
    """The replies by index, and the threads `on_reply` ran in."""
    replies, threads = {}, []

    def on_reply(index, reply):
        assert index not in replies
        replies[index] = reply
        threads.append(threading.current_thread().name)

    judge.ask_many(pairs, on_reply)
    return replies, threads


def http_judge(server: ScriptedJudgeServer, **options) -> OpenAIJudge:
    return OpenAIJudge(server.base_url, server.model, **{"backoff_s": 0.01, "timeout_s": 5.0, **options})


# --- OpenAIJudge ------------------------------------------------------------------------------------


def test_replies_arrive_in_the_calling_thread_with_text_then_images():
    with ScriptedJudgeServer(marker_script(imgedit_reply)) as server:
        judge = http_judge(server)
        judge.check_ready()
        pairs = [(request(f"rubric {i}", n_images=1 + i % 2, seed=i), 0) for i in range(5)]
        replies, threads = ask_all(judge, pairs)
    assert set(replies) == set(range(5))
    assert set(threads) == {threading.current_thread().name}
    for i, (req, _) in enumerate(pairs):
        assert replies[i].error is None and replies[i].attempts == 1
        assert replies[i].text == imgedit_reply(req.text)
        assert replies[i].settings["temperature"] == 0.0 and replies[i].settings["seed"] == 0
        assert replies[i].settings["finish_reason"] == "stop"
    by_text = {record["text"]: record for record in server.requests}
    for i, (req, _) in enumerate(pairs):
        record = by_text[req.text]
        assert record["part_types"] == ["text"] + ["image_url"] * len(req.images)  # text first, then images
        assert [info["size"] for info in record["image_info"]] == [image.size for image in req.images]
        assert all(info["format"] == "PNG" and info["mode"] == "RGB" for info in record["image_info"])
        assert [info["pixel"] for info in record["image_info"]] == [image.getpixel((0, 0)) for image in req.images]
        assert record["max_tokens"] == 512 and record["model"] == server.model
    assert imgedit_scores("rubric 0") == imgedit_scores("rubric 0")  # the scripted replies are deterministic


def test_images_are_sent_as_rgb_png():
    rgba = Image.new("RGBA", (8, 6), (10, 20, 30, 40))
    with ScriptedJudgeServer(lambda request_json, call: viescore_reply("x")) as server:
        reply = http_judge(server).ask(JudgeRequest("score", (rgba, rgba.convert("L")), "gedit_sc"))
    assert json.loads(reply.text)["score"] == [int(s) for s in json.loads(viescore_reply("x"))["score"]]
    info = server.requests[0]["image_info"]
    assert [i["mode"] for i in info] == ["RGB", "RGB"] and info[0]["pixel"] == (10, 20, 30)


def test_a_500_is_retried_until_it_passes_and_the_attempts_are_counted():
    with ScriptedJudgeServer(marker_script(imgedit_reply, flaky_times=2)) as server:
        replies, _ = ask_all(http_judge(server), [(request("FLAKY rubric"), 0), (request("plain"), 0)])
    assert replies[0].text == imgedit_reply("FLAKY rubric") and replies[0].attempts == 3
    assert replies[1].attempts == 1
    assert server.calls_with("FLAKY") == 3


def test_retry_after_is_honoured(monkeypatch):
    waits = []
    original = OpenAIJudge._wait
    monkeypatch.setattr(OpenAIJudge, "_wait", lambda self, seconds, stop: (waits.append(seconds), original(self, seconds, stop)))

    def script(request_json, call):
        return Status(503, "busy", retry_after="0.3") if call == 1 else Status(429, "slow down") if call == 2 else "ok"

    with ScriptedJudgeServer(script) as server:
        start = time.monotonic()
        reply = http_judge(server, backoff_s=0.05).ask(request("x"))
        elapsed = time.monotonic() - start
    assert reply.text == "ok" and reply.attempts == 3
    assert waits == [0.3, 0.1]  # Retry-After, then the backoff (0.05 doubled) for a 429 without one
    assert elapsed >= 0.4


def test_a_timeout_is_retried():
    with ScriptedJudgeServer(marker_script(imgedit_reply, timeout_delay_s=1.5, timeout_times=1)) as server:
        start = time.monotonic()
        reply = http_judge(server, timeout_s=0.4).ask(request("TIMEOUT rubric"))
        elapsed = time.monotonic() - start
    assert reply.text == imgedit_reply("TIMEOUT rubric") and reply.attempts == 2
    assert elapsed < 1.4  # gave up on the slow answer instead of waiting for it


def test_a_400_is_not_retried_and_says_why():
    with ScriptedJudgeServer(marker_script(imgedit_reply)) as server:
        reply = http_judge(server).ask(request("BADREQUEST rubric"))
    assert reply.text is None and reply.attempts == 1 and server.calls == 1
    assert "HTTP 400" in reply.error and "scripted bad request" in reply.error and "not retried" in reply.error


def test_exhausted_retries_give_an_error_reply_not_an_exception():
    with ScriptedJudgeServer(lambda request_json, call: Status(500, "always broken")) as server:
        replies, _ = ask_all(http_judge(server, retries=2), [(request("a"), 0), (request("b"), 1)])
    for reply in replies.values():
        assert reply.text is None and reply.attempts == 3
        assert "failed after 3 attempt(s)" in reply.error and "HTTP 500: always broken" in reply.error
    assert server.calls == 6


def test_malformed_and_empty_replies_are_errors():
    def script(request_json, call):
        text = request_json["messages"][0]["content"][0]["text"]
        return Malformed() if text == "malformed" else Malformed(b'{"choices": []}') if text == "nochoice" else "fine"

    with ScriptedJudgeServer(script) as server:
        judge = http_judge(server)
        assert "not JSON" in judge.ask(request("malformed")).error
        assert "no choices[0].message" in judge.ask(request("nochoice")).error
        assert judge.ask(request("other")).text == "fine"
    with ScriptedJudgeServer(marker_script(imgedit_reply)) as server:
        reply = http_judge(server).ask(request("EMPTY"))
        assert reply.text is None and "no text" in reply.error


def test_an_unreachable_server_is_an_error_reply():
    with ScriptedJudgeServer(marker_script()) as server:
        url = server.base_url
    reply = OpenAIJudge(url, "m", retries=1, backoff_s=0.01, timeout_s=1).ask(request("x"))
    assert reply.text is None and reply.attempts == 2 and "failed after 2 attempt(s)" in reply.error


def test_concurrency_is_limited():
    with ScriptedJudgeServer(marker_script(imgedit_reply, delay_s=0.15)) as server:
        replies, _ = ask_all(http_judge(server, concurrency=3), [(request(f"r{i}", 1), 0) for i in range(9)])
    assert all(reply.text for reply in replies.values())
    assert server.max_in_flight == 3


def test_repeats_send_their_temperature_and_seed():
    with ScriptedJudgeServer(marker_script(viescore_reply)) as server:
        judge = http_judge(server, repeat_temperature=0.9, max_tokens=64, extra_body={"top_k": -1})
        replies, _ = ask_all(judge, [(request("same", 1), repeat) for repeat in range(3)])
    sent = sorted((r["seed"], r["temperature"], r["max_tokens"], r["extra"]["top_k"]) for r in server.requests)
    assert sent == [(0, 0.0, 64, -1), (1, 0.9, 64, -1), (2, 0.9, 64, -1)]
    assert [replies[r].settings["seed"] for r in range(3)] == [0, 1, 2]
    assert replies[2].settings["temperature"] == 0.9 and replies[2].settings["repeat"] == 2


def test_an_on_reply_failure_stops_the_call():
    with ScriptedJudgeServer(marker_script(imgedit_reply, delay_s=0.05)) as server:
        judge = http_judge(server, concurrency=2)

        def on_reply(index, reply):
            raise OSError("disk full")

        with pytest.raises(OSError, match="disk full"):
            judge.ask_many([(request(f"r{i}", 1), 0) for i in range(20)], on_reply)
        time.sleep(0.2)
        assert server.calls < 20


def test_check_ready():
    with ScriptedJudgeServer(marker_script(), model="judge-7b", served_models=["judge-7b", "other"]) as server:
        OpenAIJudge(server.base_url, "judge-7b").check_ready()
        with pytest.raises(EditR1Error, match=r"does not serve model 'judge-7c' \(did you mean 'judge-7b'\?\).*judge-7b, other"):
            OpenAIJudge(server.base_url, "judge-7c").check_ready()
    with ScriptedJudgeServer(marker_script(), models_status=404) as server:
        OpenAIJudge(server.base_url, "anything").check_ready()  # no /models: no model check
    with ScriptedJudgeServer(marker_script(), api_key="sesame") as server:
        with pytest.raises(EditR1Error, match="HTTP 401: invalid API key; check the API key"):
            OpenAIJudge(server.base_url, server.model, api_key="wrong").check_ready()
        judge = OpenAIJudge(server.base_url, server.model, api_key="sesame")
        judge.check_ready()
        assert judge.ask(request("x")).text == imgedit_reply("x")
        assert "sesame" not in json.dumps(judge.identity())
    with pytest.raises(EditR1Error, match="unreachable"):
        OpenAIJudge(url_of_closed_port(), "m").check_ready()


def url_of_closed_port() -> str:
    with ScriptedJudgeServer(marker_script()) as server:
        url = server.base_url
    return url


def test_identity_and_build_errors(monkeypatch):
    judge = build_text_judge({"kind": "openai", "base_url": "http://h:8000/v1/", "model": "m", "max_tokens": 100}, "eval.judge")
    assert judge.identity() == {"kind": "openai", "model": "m", "temperature": 0.0,
                                "repeat_temperature": 0.7, "max_tokens": 100, "extra_body": {}}
    cases = [
        ({"kind": "opnai"}, r"eval\.judge\.kind: unknown judge kind 'opnai' \(did you mean 'openai'\?\)"),
        ({"base_url": "http://h/v1"}, r"eval\.judge\.kind: missing"),
        ({"kind": "openai", "base_url": "http://h/v1", "model": "m", "max_token": 5},
         r"eval\.judge\.max_token: unknown option for a 'openai' judge \(did you mean 'max_tokens'\?\)"),
        ({"kind": "openai", "base_url": "http://h/v1"}, r"eval\.judge\.model: required"),
        ({"kind": "openai", "base_url": "h:8000", "model": "m"}, r"eval\.judge\.base_url: expected an http"),
        ({"kind": "openai", "base_url": "http://u:p@h/v1", "model": "m"}, r"eval\.judge\.base_url: .*without credentials"),
        ({"kind": "openai", "base_url": "http://h/v1", "model": "m", "concurrency": 0}, r"eval\.judge\.concurrency: must be >= 1"),
        ({"kind": "openai", "base_url": "http://h/v1", "model": "m", "temperature": "hot"}, r"eval\.judge\.temperature: expected a number"),
        ({"kind": "openai", "base_url": "http://h/v1", "model": "m", "api_key_env": "EDITR1_NO_SUCH_KEY"},
         r"eval\.judge\.api_key_env: environment variable 'EDITR1_NO_SUCH_KEY' is not set"),
        ({"kind": "transformers", "path": "x", "dtype": "float31"}, r"eval\.judge\.dtype: .*did you mean 'float32'"),
    ]
    monkeypatch.delenv("EDITR1_NO_SUCH_KEY", raising=False)
    for spec, message in cases:
        with pytest.raises(EditR1Error, match=message):
            build_text_judge(spec, "eval.judge")
    monkeypatch.setenv("EDITR1_TEST_KEY", "k")
    keyed = build_text_judge({"kind": "openai", "base_url": "http://h/v1", "model": "m", "api_key_env": "EDITR1_TEST_KEY"}, "j")
    assert keyed.headers["Authorization"] == "Bearer k"


# --- TransformersJudge ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_text_judge_dir(tmp_path_factory):
    from editr1.rewards.tiny_judge import build_tiny_judge, save_judge

    folder = tmp_path_factory.mktemp("text_judge")
    save_judge(build_tiny_judge(["Prompt Compliance Visual Naturalness score the edit"], image_size=32,
                                hidden=64, layers=2), folder, torch.float32)
    return folder


def test_transformers_judge_replies_in_text(tiny_text_judge_dir):
    judge = build_text_judge({"kind": "transformers", "path": str(tiny_text_judge_dir), "max_new_tokens": 6,
                              "batch_size": 2}, "judge")
    identity = judge.identity()
    assert identity["kind"] == "transformers" and len(identity["model_fingerprint"]) == 64
    pairs = [(request("score the edit", 2, seed=1), 0), (request("Visual Naturalness", 1, seed=2), 0),
             (request("Prompt Compliance of the edit", 2, seed=3), 0), (request("score the edit", 2, seed=1), 1)]
    before = torch.random.get_rng_state()
    replies, threads = ask_all(judge, pairs)
    assert torch.equal(before, torch.random.get_rng_state())  # the caller's random state is left alone
    assert set(replies) == {0, 1, 2, 3} and set(threads) == {threading.current_thread().name}
    for index, reply in replies.items():
        assert reply.error is None and isinstance(reply.text, str)
        assert reply.settings["seed"] == pairs[index][1] and reply.settings["do_sample"] == (pairs[index][1] > 0)
    again, _ = ask_all(judge, pairs)
    assert [again[i].text for i in range(3)] == [replies[i].text for i in range(3)]  # greedy: the same replies
    assert again[3].text == replies[3].text  # sampled: the same seed, the same batch, the same reply


def test_transformers_judge_turns_a_failing_request_into_an_error_reply(tiny_text_judge_dir):
    judge = TransformersJudge(str(tiny_text_judge_dir), max_new_tokens=4, batch_size=3)
    # a prompt that names an image without sending one: the processor refuses this request alone
    broken = JudgeRequest("score <|vision_start|><|image_pad|><|vision_end|>", (), "imgedit")
    replies, _ = ask_all(judge, [(request("score the edit", 1), 0), (broken, 0), (request("the edit", 2), 0)])
    assert replies[1].text is None and replies[1].error.startswith("generation failed:")
    assert isinstance(replies[0].text, str) and isinstance(replies[2].text, str)


# --- ReplyCache -------------------------------------------------------------------------------------


IDENTITY = {"kind": "openai", "model": "m", "endpoint": "http://h/v1", "temperature": 0.0}


def test_cache_round_trip_and_keys(tmp_path):
    path = tmp_path / "replies.jsonl"
    req = request("rubric", 2)
    with ReplyCache(path) as cache:
        key = cache.key(IDENTITY, req, 0)
        assert cache.get(key) is None
        assert cache.put(key, JudgeReply("Prompt Compliance: 4", None, 2, {"seed": 0}), {"sample": "a/1"})
        assert cache.get(key).text == "Prompt Compliance: 4"
    reopened = ReplyCache(path)
    assert reopened.truncated_lines == 0 and len(reopened) == 1
    same = JudgeRequest("rubric", tuple(image.copy() for image in req.images), "imgedit")
    hit = reopened.get(reopened.key(IDENTITY, same, 0))
    assert hit == JudgeReply("Prompt Compliance: 4", None, 2, {"seed": 0})
    misses = [({**IDENTITY, "model": "m2"}, req, 0), (IDENTITY, req, 1), (IDENTITY, JudgeRequest("rubric", req.images, "gedit_sc"), 0),
              (IDENTITY, JudgeRequest("rubric!", req.images, "imgedit"), 0),
              (IDENTITY, JudgeRequest("rubric", req.images[::-1], "imgedit"), 0),
              (IDENTITY, JudgeRequest("rubric", req.images[:1], "imgedit"), 0)]
    for identity, other, repeat in misses:
        assert reopened.get(reopened.key(identity, other, repeat)) is None
    record = json.loads(path.read_text())
    assert record["judge"] == IDENTITY and record["kind"] == "imgedit" and record["repeat"] == 0
    assert record["sample"] == "a/1" and record["attempts"] == 2 and len(record["prompt_sha256"]) == 64
    assert image_sha256(req.images[0]) == image_sha256(req.images[0].convert("RGBA").convert("RGB"))


def test_error_replies_are_not_cached(tmp_path):
    cache = ReplyCache(tmp_path / "c.jsonl")
    key = cache.key(IDENTITY, request("x"), 0)
    assert not cache.put(key, JudgeReply(None, "HTTP 500", 5))
    assert cache.get(key) is None and not (tmp_path / "c.jsonl").exists()


def test_a_truncated_last_line_is_tolerated_and_cut_before_appending(tmp_path):
    path = tmp_path / "c.jsonl"
    cache = ReplyCache(path)
    keys = [cache.key(IDENTITY, request(f"r{i}", 1), 0) for i in range(3)]
    for i, key in enumerate(keys[:2]):
        cache.put(key, JudgeReply(f"reply {i}"))
    cache.close()
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"key": "' + keys[2][:10].encode())  # killed while writing the third line
    cache = ReplyCache(path)
    assert cache.truncated_lines == 1 and len(cache) == 2 and cache.get(keys[1]).text == "reply 1"
    cache.put(cache.key(IDENTITY, request("r2", 1), 0), JudgeReply("reply 2"))
    cache.close()
    assert path.read_bytes().startswith(whole)  # complete lines untouched
    reloaded = ReplyCache(path)
    assert reloaded.truncated_lines == 0 and [reloaded.get(k).text for k in keys] == ["reply 0", "reply 1", "reply 2"]


def test_a_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "c.jsonl"
    cache = ReplyCache(path)
    for i in range(2):
        cache.put(cache.key(IDENTITY, request(f"r{i}", 1), 0), JudgeReply(f"reply {i}"))
    cache.close()
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{not json", lines[1]]) + "\n")
    with pytest.raises(EditR1Error, match=rf"{path.name}, line 2: not a reply cache line"):
        ReplyCache(path)


# --- statistics -------------------------------------------------------------------------------------


def test_bootstrap_interval_covers_the_true_difference():
    rng = np.random.default_rng(0)
    diffs = {"add": 0.3 + rng.normal(0, 1, 400), "remove": 0.3 + rng.normal(0, 0.5, 300)}
    result = paired_bootstrap(diffs, n_resamples=2000, seed=1)
    assert result["overall"]["low"] < 0.3 < result["overall"]["high"]
    assert result["overall"]["low"] > 0  # clearly better
    assert result["types"]["add"]["n"] == 400 and result["overall"]["n_types"] == 2
    assert result == paired_bootstrap(diffs, n_resamples=2000, seed=1)  # deterministic for a seed
    alone = paired_bootstrap({"add": diffs["add"]}, n_resamples=2000, seed=1)
    assert alone["types"]["add"] == result["types"]["add"]  # a type's interval ignores the other types
    with pytest.raises(ValueError, match="not finite"):
        paired_bootstrap({"add": [0.1, float("nan")]})


def test_bootstrap_coverage_is_near_nominal():
    covered = 0
    for replication in range(200):
        rng = np.random.default_rng(1000 + replication)
        diffs = {"a": 0.3 + rng.normal(0, 1, 200), "b": 0.3 + rng.exponential(0.5, 150) - 0.5}  # one skewed
        overall = paired_bootstrap(diffs, n_resamples=500, seed=replication)["overall"]
        covered += overall["low"] <= 0.3 <= overall["high"]
    assert 0.88 <= covered / 200 <= 0.99


def test_judge_spread():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 10, 500)
    scores = truth + rng.normal(0, 1.0, (8, 500))
    spread = judge_spread(scores)
    assert 0.85 < spread["per_sample_std"] < 1.1  # E[sample std] is a little under sigma
    assert 0.02 < spread["mean_std"] < 0.09  # about 1 / sqrt(500)
    scores[0, 0] = np.nan
    spread = judge_spread(scores, types=["a"] * 250 + ["b"] * 250)
    assert spread["n_samples"] == 500 and spread["n_complete"] == 499 and len(spread["repeat_means"]) == 8
    with pytest.raises(ValueError, match="two or more repeats"):
        judge_spread(scores[:1])
