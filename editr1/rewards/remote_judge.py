"""The `mllm_remote` reward: a judge readout (score logit by default) from an OpenAI-compatible server.

`editr1 serve-reward`, vLLM and SGLang all answer a chat completion with `max_tokens: 1` and the top
log-probabilities of that token; the score logit (levels absent from the top-k get zero mass) and the yes/no
readout are read from those. The sampled readout asks for `n` answers at a `temperature`, with a per-sample
`seed` (editr1/rewards/readouts.py). Images (each reference, then the edit) travel as
PNG data URLs of `tensor_to_image`, the exact pixels the in-process `mllm` reward sees. A sample the
server cannot score is unscored, with the reason.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import math
import os
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import torch

from editr1.data.images import tensor_to_image
from editr1.errors import EditR1Error
from editr1.openai_http import PostFailed, http_error_detail, post_json
from editr1.rewards.base import Reward, RewardBatch, check_batch
from editr1.rewards.readouts import ReadoutError, build_readout, content_seed
from editr1.rewards.score_logit import DEFAULT_LEVELS, score_tokens

HEALTH_POLL_S = 0.25
HEALTH_PROBE_TIMEOUT_S = 5.0
MAX_TOP_LOGPROBS = 20


class RemoteError(Exception):
    """Why one sample could not be scored by the server."""


def _option_error(name: str, message: str) -> EditR1Error:
    return EditR1Error(f"reward.options.{name}: {message}")


def _image_part(picture) -> dict:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)  # lossless; fast beats small here
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}}


class RemoteJudgeReward(Reward):
    """Expected 0..L score of a judge behind an OpenAI-compatible `url`, normalised to [0, 1].

    `url` is the API base (`http://host:8000/v1`), `model` the name the server knows the judge by.
    One request per sample (its reference images, the edit, the text), `concurrency` at a time; each
    is tried `max_retries` more times after a connection error, timeout, 5xx, 408 or 429, waiting
    `backoff_s` doubled per try, or what a Retry-After header asks for (both capped at
    MAX_BACKOFF_S). At start-up (`check_ready`) and before each `score` call, `GET <root>/health` is
    polled for up to `wait_ready_s` seconds (0: no check, for servers without /health); a server not
    ready by then fails start-up, and later leaves the whole call unscored.
    """

    name = "mllm_remote"
    #: Options a resumed training run may change (see `Reward.resume_safe_options`).
    resume_safe_options = (
        "url", "api_key", "api_key_env", "timeout_s", "max_retries", "backoff_s", "concurrency", "wait_ready_s")
    _sleep = staticmethod(time.sleep)  # a seam: tests record the waits instead of sleeping

    def __init__(self, url: str, model: str, api_key: str | None = None, api_key_env: str | None = None,
                 template: str | None = None, levels: int = DEFAULT_LEVELS, top_logprobs: int = MAX_TOP_LOGPROBS,
                 timeout_s: float = 60.0, max_retries: int = 3, backoff_s: float = 0.5, concurrency: int = 16,
                 wait_ready_s: float = 300.0, readout: str = "score", temperature: float = 1.0, samples: int = 8,
                 seed: int = 0):
        if not url.startswith(("http://", "https://")):
            raise _option_error("url", f"expected an http(s) base URL such as http://127.0.0.1:8000/v1, got {url!r}")
        try:
            score_tokens(levels)
        except ValueError as error:
            raise _option_error("levels", str(error)) from error
        if not 1 <= top_logprobs <= MAX_TOP_LOGPROBS:
            raise _option_error("top_logprobs", f"must be in 1..{MAX_TOP_LOGPROBS}, got {top_logprobs}")
        for option, value, ok, rule in (("timeout_s", timeout_s, timeout_s > 0, "> 0"),
                                        ("max_retries", max_retries, max_retries >= 0, ">= 0"),
                                        ("backoff_s", backoff_s, backoff_s >= 0, ">= 0"),
                                        ("concurrency", concurrency, concurrency >= 1, ">= 1"),
                                        ("wait_ready_s", wait_ready_s, wait_ready_s >= 0, ">= 0 (0: no wait)")):
            if not ok:
                raise _option_error(option, f"must be {rule}, got {value}")
        if api_key is not None and api_key_env is not None:
            raise _option_error("api_key", "set api_key or api_key_env, not both")
        if api_key_env is not None:
            api_key = os.environ.get(api_key_env)
            if not api_key:
                raise _option_error("api_key_env", f"environment variable {api_key_env!r} is not set or empty")
        base = url.rstrip("/")
        self.completions_url = base + "/chat/completions"
        # vLLM, SGLang and editr1 serve /health at the root, beside /v1.
        self.health_url = base.removesuffix("/v1") + "/health"
        self.model, self.levels, self.top_logprobs = model, levels, top_logprobs
        self.timeout_s, self.max_retries, self.backoff_s = timeout_s, max_retries, backoff_s
        self.concurrency, self.wait_ready_s = concurrency, wait_ready_s
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.readout = build_readout(readout, template, levels, temperature, samples)
        self.prompt, self.seed = self.readout.prompt, seed

    def score(self, sources, edited, prompts, requirements) -> RewardBatch:
        check_batch(sources, edited, prompts, requirements)
        n = len(edited)
        scores = torch.full((n,), float("nan"), dtype=torch.float64)
        mass = torch.full((n,), float("nan"), dtype=torch.float64)
        failures: dict[int, str] = {}
        rows = []
        for i in range(n):
            self.prompt.check_layout(len(sources[i]))  # a template error fails the call before anything is sent
            if all(torch.isfinite(image).all() for image in [*sources[i], edited[i]]):
                rows.append(i)
            else:
                failures[i] = "image contains NaN or infinite values (not sent to the judge)"
        not_ready = self.wait_ready() if rows else None
        if not_ready:
            failures.update({i: not_ready for i in rows})
            rows = []
        if rows:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(rows))) as pool:
                futures = {i: pool.submit(self.score_one, sources[i], edited[i], prompts[i], requirements[i]) for i in rows}
            for i, future in futures.items():
                try:
                    scores[i], mass[i] = future.result()
                except RemoteError as error:
                    failures[i] = str(error)
        return RewardBatch(scores.float(), torch.isfinite(scores), {self.readout.diagnostic: mass.float()}, failures)

    def score_one(self, sources: list[torch.Tensor], edited: torch.Tensor, prompt: str,
                  requirement: str | None) -> tuple[float, float]:
        """(score, probability mass on the score tokens) of one sample; raises RemoteError."""
        return self.read_score(self.post(self.request_body(sources, edited, prompt, requirement)))

    def request_body(self, sources: list[torch.Tensor], edited: torch.Tensor, prompt: str, requirement: str | None) -> bytes:
        pictures = [tensor_to_image(image) for image in [*sources, edited]]
        parts = [_image_part(picture) for picture in pictures]
        messages = self.prompt.messages(prompt, requirement, image_parts=parts, num_references=len(sources))
        seed = content_seed(self.seed, self.prompt.text(prompt, requirement, len(sources)), pictures)
        return json.dumps({"model": self.model, "messages": messages,
                           **self.readout.request_fields(seed, self.top_logprobs)}).encode()

    def post(self, body: bytes) -> dict:
        """POST a chat completion, retrying what may pass on another try; raises RemoteError."""
        try:
            return post_json(self.completions_url, body, self.headers, timeout_s=self.timeout_s,
                             retries=self.max_retries, backoff_s=self.backoff_s, wait=self._sleep)[0]
        except PostFailed as error:
            raise RemoteError(str(error)) from None

    def read_score(self, response: dict) -> tuple[float, float]:
        try:
            score, diagnostic = self.readout.from_response(response)
        except ReadoutError as error:
            raise RemoteError(f"{self.completions_url}: {error}") from None
        if not math.isfinite(score):
            raise RemoteError(f"{self.completions_url}: the score read from the answer is not finite")
        return score, diagnostic

    def health_problem(self, timeout: float) -> str | None:
        """None if GET /health answers 200 now, else what went wrong."""
        try:
            request = urllib.request.Request(self.health_url, headers=self.headers)
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return None if response.status == 200 else f"HTTP {response.status}"
        except urllib.error.HTTPError as error:
            return f"HTTP {error.code}: {http_error_detail(error)}"
        except (OSError, http.client.HTTPException) as error:
            return f"{type(error).__name__}: {getattr(error, 'reason', error)}"

    def _poll_health(self) -> str | None:
        """Poll /health for up to wait_ready_s: None once it answers 200, else the last problem.
        A server not ready at the first probe is reported at once on stderr, once per outage."""
        deadline, announce = time.monotonic() + self.wait_ready_s, True
        while True:
            # /health answers at once when the server is up: a host that does not answer is reported
            # after seconds, not after a full request timeout.
            problem = self.health_problem(max(0.1, min(self.timeout_s, HEALTH_PROBE_TIMEOUT_S, deadline - time.monotonic())))
            if problem is None:
                return None
            if announce:
                print(f"waiting up to {self.wait_ready_s:g}s (reward.options.wait_ready_s) for the judge server at "
                      f"{self.health_url}: {problem}", file=sys.stderr, flush=True)
                announce = False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return problem
            self._sleep(min(HEALTH_POLL_S, remaining))

    def wait_ready(self) -> str | None:
        """None once GET /health answers 200; else, after wait_ready_s, why the server is not ready."""
        if self.wait_ready_s == 0:
            return None
        problem = self._poll_health()
        if problem is None:
            return None
        return f"server not ready: GET {self.health_url} gave no 200 within {self.wait_ready_s:g}s (last: {problem})"

    def check_ready(self) -> None:
        """At start-up: wait for the judge server, saying so on stderr; EditR1Error if it never comes up."""
        if self.wait_ready_s == 0:
            return
        problem = self._poll_health()
        if problem is not None:
            raise EditR1Error(f"the judge server at {self.health_url} was not ready within {self.wait_ready_s:g}s "
                              f"(reward.options.wait_ready_s); last problem: {problem}")
