"""Judges that answer a benchmark's question in text: an OpenAI-compatible server, or a transformers model
in process.

A judge takes `(JudgeRequest, repeat)` pairs. Repeat 0 is the deterministic ask (temperature 0, seed 0);
repeat r > 0 samples at `repeat_temperature` with seed r, so asking the same samples N times measures the
judge's own spread. A request that fails (after the retries) gets a `JudgeReply` with `text=None` and the
reason in `error`: a judge never raises for one sample and never makes up a reply. `identity()` is
everything that makes two judges' replies comparable; the reply cache keys on it.
"""

from __future__ import annotations

import base64
import difflib
import http.client
import inspect
import io
import json
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any

from PIL import Image

from editr1.errors import EditR1Error
from editr1.eval.benchmarks.common import JudgeReply, JudgeRequest
from editr1.fingerprint import folder_fingerprint
from editr1.openai_http import PostFailed, error_body_message, http_error_detail, post_json

#: Called as each reply arrives, with the request's position in the list given to `ask_many`.
OnReply = Callable[[int, JudgeReply], None]

DEFAULT_REPEAT_TEMPERATURE = 0.7
#: GET /models is a quick question: an endpoint that does not answer it in this long is not ready.
READY_TIMEOUT_S = 10.0


class JudgeOptionError(EditR1Error):
    """A judge option with a bad value; `build_text_judge` prefixes the config section."""

    def __init__(self, option: str, message: str):
        super().__init__(f"{option}: {message}")
        self.option, self.message = option, message


def repeat_settings(repeat: int, temperature: float, repeat_temperature: float) -> tuple[float, int]:
    """(temperature, seed) of repeat `repeat`: the judge's own temperature and seed 0 for repeat 0, else
    `repeat_temperature` and seed `repeat`."""
    if repeat < 0:
        raise ValueError(f"repeat must be >= 0, got {repeat}")
    return (temperature, 0) if repeat == 0 else (repeat_temperature, repeat)


class TextJudge(ABC):
    """A judge answering `JudgeRequest`s in text."""

    #: What `identity()["kind"]` says and `build_text_judge` takes.
    kind: str = ""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """JSON-able description of everything that makes this judge's replies comparable (kind, model,
        endpoint without secrets, decoding settings); replies cached under one identity never serve another."""

    @abstractmethod
    def ask_many(self, requests: Sequence[tuple[JudgeRequest, int]], on_reply: OnReply) -> None:
        """Ask every `(request, repeat)`; call `on_reply(index, reply)` in the calling thread as each one
        finishes (in any order), so that the caller can keep replies as they come. Failures are error
        replies; only an exception raised by `on_reply` itself (or Ctrl-C) stops the call, which then
        starts nothing new."""

    def check_ready(self) -> None:
        """Fail fast (EditR1Error) when the judge cannot answer at all; nothing to check by default."""

    def ask(self, request: JudgeRequest, repeat: int = 0) -> JudgeReply:
        """One request, answered."""
        replies: dict[int, JudgeReply] = {}
        self.ask_many([(request, repeat)], lambda index, reply: replies.__setitem__(index, reply))
        return replies[0]


def _check_number(option: str, value: Any, minimum: float, integer: bool = False, strict: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise JudgeOptionError(option, f"expected {'an integer' if integer else 'a number'}, got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise JudgeOptionError(option, f"must be {'>' if strict else '>='} {minimum:g}, got {value!r}")


def _check_text(option: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise JudgeOptionError(option, f"expected a non-empty string, got {value!r}")


def png_data_url(image: Image.Image) -> str:
    """The image in RGB as a PNG data URL (lossless: the judge sees the pixels that were saved)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def chat_messages(request: JudgeRequest, image_parts: Sequence[dict]) -> list[dict]:
    """One user turn: the request's text, then its images in order (ImgEdit: rubric, original, edit)."""
    return [{"role": "user", "content": [{"type": "text", "text": request.text}, *image_parts]}]


class _Stopped(Exception):
    """A retry loop cut short because the call is being abandoned."""


class OpenAIJudge(TextJudge):
    """A model behind an OpenAI-compatible chat completions API (OpenAI, vLLM, SGLang, ...).

    `base_url` is the API base (`http://host:8000/v1`, `https://api.openai.com/v1`). Each request is one
    POST of the text and the images (PNG data URLs) with `temperature`, `max_tokens` and `seed`;
    `concurrency` at a time. Timeouts, connection errors, 408, 429 and 5xx are tried again up to
    `retries` more times, waiting `backoff_s` doubled per try or what a Retry-After header asks (both
    capped at MAX_BACKOFF_S); other statuses fail the request at once with the server's message.
    `extra_body` is merged into every request (e.g. `{"top_k": -1}` for a vLLM that applies the model's
    own generation defaults to sampled repeats); it is part of the identity.
    """

    kind = "openai"

    def __init__(self, base_url: str, model: str, api_key: str | None = None, api_key_env: str | None = None,
                 temperature: float = 0.0, max_tokens: int = 512, timeout_s: float = 120.0, retries: int = 4,
                 concurrency: int = 8, backoff_s: float = 1.0, repeat_temperature: float = DEFAULT_REPEAT_TEMPERATURE,
                 extra_body: dict[str, Any] | None = None):
        _check_text("base_url", base_url)
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise JudgeOptionError("base_url", f"expected an http(s) API base such as http://127.0.0.1:8000/v1, got {base_url!r}")
        if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
            raise JudgeOptionError("base_url", "expected a plain API base URL without credentials, query or fragment "
                                               "(pass the key with api_key or api_key_env)")
        _check_text("model", model)
        _check_number("temperature", temperature, 0)
        _check_number("repeat_temperature", repeat_temperature, 0, strict=True)
        _check_number("max_tokens", max_tokens, 1, integer=True)
        _check_number("timeout_s", timeout_s, 0, strict=True)
        _check_number("retries", retries, 0, integer=True)
        _check_number("concurrency", concurrency, 1, integer=True)
        _check_number("backoff_s", backoff_s, 0)
        if extra_body is not None and not isinstance(extra_body, dict):
            raise JudgeOptionError("extra_body", f"expected a mapping, got {extra_body!r}")
        reserved = sorted(set(extra_body or ()) & {"model", "messages", "temperature", "seed", "max_tokens", "stream", "n"})
        if reserved:
            raise JudgeOptionError("extra_body", f"may not set {', '.join(reserved)} (the judge's own options)")
        try:
            json.dumps(extra_body)
        except (TypeError, ValueError) as error:
            raise JudgeOptionError("extra_body", f"must be JSON ({error})") from None
        if api_key is not None and api_key_env is not None:
            raise JudgeOptionError("api_key", "set api_key or api_key_env, not both")
        if api_key_env is not None:
            _check_text("api_key_env", api_key_env)
            api_key = os.environ.get(api_key_env)
            if not api_key:
                raise JudgeOptionError("api_key_env", f"environment variable {api_key_env!r} is not set or empty")
        self.base_url = base_url.rstrip("/")
        self.completions_url = self.base_url + "/chat/completions"
        self.models_url = self.base_url + "/models"
        self.model, self.temperature, self.max_tokens = model, float(temperature), max_tokens
        self.timeout_s, self.retries, self.concurrency, self.backoff_s = timeout_s, retries, concurrency, backoff_s
        self.repeat_temperature = float(repeat_temperature)
        self.extra_body = dict(extra_body or {})
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def identity(self) -> dict[str, Any]:
        # The endpoint is not part of it (each reply records it): a judge restarted on another host or port
        # is the same judge, and its cached replies still count.
        return {"kind": self.kind, "model": self.model, "temperature": self.temperature,
                "repeat_temperature": self.repeat_temperature, "max_tokens": self.max_tokens,
                "extra_body": self.extra_body}

    def check_ready(self) -> None:
        """GET /models: EditR1Error when the endpoint does not answer, refuses the key, or lists models
        without `model`. A server without /models (404) is taken as ready."""
        request = urllib.request.Request(self.models_url, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=min(self.timeout_s, READY_TIMEOUT_S)) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return
            hint = "; check the API key (api_key / api_key_env)" if error.code in (401, 403) else ""
            raise EditR1Error(f"the judge endpoint {self.base_url} refused GET /models: HTTP {error.code}: "
                              f"{http_error_detail(error)}{hint}") from None
        except (OSError, http.client.HTTPException) as error:
            raise EditR1Error(f"the judge endpoint {self.base_url} is unreachable (GET {self.models_url}: "
                              f"{type(error).__name__}: {getattr(error, 'reason', error)}); is the server running "
                              f"and base_url its API base, e.g. http://127.0.0.1:8000/v1?") from None
        try:
            data = json.loads(raw)
        except ValueError:
            raise EditR1Error(f"the judge endpoint {self.base_url} answered GET /models with something that is not "
                              f"JSON; is base_url the API base, e.g. http://127.0.0.1:8000/v1?") from None
        entries = data.get("data") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            return  # not the usual listing: nothing to check the model against
        served = [entry["id"] for entry in entries if isinstance(entry, dict) and isinstance(entry.get("id"), str)]
        if self.model not in served:
            close = difflib.get_close_matches(self.model, served, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise EditR1Error(f"the judge endpoint {self.base_url} does not serve model {self.model!r}{hint}; "
                              f"it serves: {', '.join(served) or 'nothing'}")

    def ask_many(self, requests: Sequence[tuple[JudgeRequest, int]], on_reply: OnReply) -> None:
        if not requests:
            return
        for _, repeat in requests:
            repeat_settings(repeat, self.temperature, self.repeat_temperature)  # a bad repeat fails before any ask
        stop = threading.Event()
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests)), thread_name_prefix="judge")
        try:
            pending = {pool.submit(self._ask_one, request, repeat, stop): index
                       for index, (request, repeat) in enumerate(requests)}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    on_reply(pending.pop(future), future.result())
        except BaseException:
            stop.set()  # requests under way give up at their next wait
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)

    def request_body(self, request: JudgeRequest, repeat: int) -> tuple[bytes, dict[str, Any]]:
        """The POST body of one ask and the settings it records."""
        temperature, seed = repeat_settings(repeat, self.temperature, self.repeat_temperature)
        parts = [{"type": "image_url", "image_url": {"url": png_data_url(image)}} for image in request.images]
        body = {**self.extra_body, "model": self.model, "messages": chat_messages(request, parts),
                "temperature": temperature, "max_tokens": self.max_tokens, "seed": seed}
        settings = {"model": self.model, "endpoint": self.base_url, "temperature": temperature, "seed": seed,
                    "max_tokens": self.max_tokens, "repeat": repeat}
        return json.dumps(body).encode(), settings

    def _ask_one(self, request: JudgeRequest, repeat: int, stop: threading.Event) -> JudgeReply:
        try:
            body, settings = self.request_body(request, repeat)
        except Exception as error:  # an unreadable image: this sample fails, not the run
            return JudgeReply(None, f"could not build the request: {type(error).__name__}: {error}", 0,
                              {"model": self.model, "repeat": repeat})
        try:
            response, attempts = self._post(body, stop)
        except _Stopped as stopped:
            return JudgeReply(None, str(stopped), 0, settings)
        if isinstance(response, str):
            return JudgeReply(None, response, attempts, settings)
        text, problem, extra = read_reply(response)
        settings.update(extra)
        if problem is not None:
            return JudgeReply(None, f"POST {self.completions_url}: {problem}", attempts, settings)
        return JudgeReply(text, None, attempts, settings)

    def _wait(self, seconds: float, stop: threading.Event) -> None:
        """The pause before another try; cut short when the call is abandoned (a seam for tests)."""
        stop.wait(seconds)

    def _post(self, body: bytes, stop: threading.Event) -> tuple[dict | str, int]:
        """(the response JSON, attempts), or (why there is none, attempts) after the retries."""

        def check_stop() -> None:
            if stop.is_set():
                raise _Stopped("not asked: the evaluation was stopped")

        try:
            return post_json(self.completions_url, body, self.headers, timeout_s=self.timeout_s, retries=self.retries,
                             backoff_s=self.backoff_s, wait=lambda seconds: self._wait(seconds, stop),
                             before_attempt=check_stop)
        except PostFailed as error:
            return str(error), error.attempts


def read_reply(response: Any) -> tuple[str | None, str | None, dict[str, Any]]:
    """(text, problem, settings to record) of a chat completion: the text of choices[0].message.content,
    or why there is none (no choices, no content, empty content)."""
    extra: dict[str, Any] = {}
    if isinstance(response, dict):
        for name, key in (("response_model", "model"), ("system_fingerprint", "system_fingerprint")):
            if isinstance(response.get(key), str):
                extra[name] = response[key]
    try:
        choice = response["choices"][0]
        message = choice["message"]
    except (KeyError, IndexError, TypeError):
        stated = error_body_message(json.dumps(response).encode()) if isinstance(response, dict) and response.get("error") else None
        return None, "the response has no choices[0].message" + (f" (it says: {stated})" if stated else ""), extra
    if isinstance(choice, dict) and choice.get("finish_reason") is not None:
        extra["finish_reason"] = choice["finish_reason"]
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):  # some servers answer in content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str) or not content.strip():
        refusal = message.get("refusal") if isinstance(message, dict) else None
        why = f" (refusal: {refusal})" if isinstance(refusal, str) and refusal else ""
        return None, f"the reply has no text in choices[0].message.content{why}", extra
    return content, None, extra


class TransformersJudge(TextJudge):
    """An image-text-to-text chat model (Qwen2.5-VL first) generating in process.

    Requests are batched `batch_size` at a time with left padding, grouped by repeat: repeat 0 decodes
    greedily, repeat r samples at `repeat_temperature` (top-k and top-p off) under `torch.manual_seed(r)`
    set before each batch (the caller's random state is restored after), so a sampled reply depends on
    the batch it was in. Whatever is generated is the reply, even blank text (asking again gives the
    same). A batch that fails is asked again one request at a time; a request that still fails gets an
    error reply.
    """

    kind = "transformers"

    def __init__(self, path: str, max_new_tokens: int = 256, device: str = "cpu", dtype: str = "float32",
                 batch_size: int = 4, repeat_temperature: float = DEFAULT_REPEAT_TEMPERATURE):
        from editr1.hub import resolve_model_path
        from editr1.rewards.mllm_judge import _DTYPES, MLLMJudge

        _check_text("path", path)
        _check_number("max_new_tokens", max_new_tokens, 1, integer=True)
        _check_number("batch_size", batch_size, 1, integer=True)
        _check_number("repeat_temperature", repeat_temperature, 0, strict=True)
        _check_text("device", device)
        if dtype not in _DTYPES:
            close = difflib.get_close_matches(str(dtype), _DTYPES, n=1)
            raise JudgeOptionError("dtype", f"expected one of {', '.join(sorted(_DTYPES))}, got {dtype!r}"
                                            + (f" (did you mean '{close[0]}'?)" if close else ""))
        self.path, self.max_new_tokens, self.dtype, self.batch_size = str(path), max_new_tokens, dtype, batch_size
        self.repeat_temperature = float(repeat_temperature)
        folder = resolve_model_path(path)
        self.model_fingerprint = folder_fingerprint(folder)  # weights re-saved under the same path: another judge
        self.judge = MLLMJudge.from_pretrained(folder, dtype=dtype, device=device, batch_size=batch_size)
        self.device_type = self.judge.device.type
        eos = self.judge.model.generation_config.eos_token_id
        eos = eos if eos is not None else self.judge.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.path, "model_fingerprint": self.model_fingerprint, "dtype": self.dtype,
                "device_type": self.device_type, "temperature": 0.0, "repeat_temperature": self.repeat_temperature,
                "top_k": 0, "top_p": 1.0, "max_new_tokens": self.max_new_tokens}

    def ask_many(self, requests: Sequence[tuple[JudgeRequest, int]], on_reply: OnReply) -> None:
        by_repeat: dict[int, list[int]] = {}
        for index, (_, repeat) in enumerate(requests):
            repeat_settings(repeat, 0.0, self.repeat_temperature)
            by_repeat.setdefault(repeat, []).append(index)
        for repeat, indices in sorted(by_repeat.items()):
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                try:
                    replies = self._generate([requests[i][0] for i in chunk], repeat)
                except Exception as error:
                    if len(chunk) == 1:
                        replies = [self._error_reply(error, repeat)]
                    else:  # find the request at fault: ask each alone
                        replies = []
                        for i in chunk:
                            try:
                                replies.extend(self._generate([requests[i][0]], repeat))
                            except Exception as single_error:
                                replies.append(self._error_reply(single_error, repeat))
                for i, reply in zip(chunk, replies):
                    on_reply(i, reply)

    def _settings(self, repeat: int) -> dict[str, Any]:
        temperature, seed = repeat_settings(repeat, 0.0, self.repeat_temperature)
        return {"model": self.path, "temperature": temperature, "seed": seed, "max_new_tokens": self.max_new_tokens,
                "repeat": repeat, "do_sample": repeat > 0}

    def _error_reply(self, error: Exception, repeat: int) -> JudgeReply:
        return JudgeReply(None, f"generation failed: {type(error).__name__}: {error}", 1, self._settings(repeat))

    def _generate(self, batch: list[JudgeRequest], repeat: int) -> list[JudgeReply]:
        import torch

        judge = self.judge
        texts = [judge.prompt_text(chat_messages(request, [{"type": "image"}] * len(request.images))) for request in batch]
        images = [image.convert("RGB") for request in batch for image in request.images]
        inputs = judge.processor(text=texts, images=images or None, padding=True, return_tensors="pt").to(judge.device)
        settings = self._settings(repeat)
        decoding: dict[str, Any] = {"do_sample": False}
        if repeat > 0:
            decoding = {"do_sample": True, "temperature": settings["temperature"], "top_k": 0, "top_p": 1.0}
        cuda = [judge.device.index or 0] if judge.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=cuda):
            torch.manual_seed(settings["seed"])
            output = judge.model.generate(**inputs, max_new_tokens=self.max_new_tokens, **decoding)
        generated = output[:, inputs["input_ids"].shape[1]:].cpu()
        replies = []
        for row in generated:
            ids = row.tolist()
            stopped = any(token in self.eos_ids for token in ids)
            text = judge.tokenizer.decode(row, skip_special_tokens=True)
            # Whatever the model generated is its answer, even blank: asking again gives the same.
            replies.append(JudgeReply(text, None, 1, {**settings, "finish_reason": "stop" if stopped else "length"}))
        return replies


JUDGE_KINDS: dict[str, type[TextJudge]] = {"openai": OpenAIJudge, "transformers": TransformersJudge}


def build_text_judge(spec: dict[str, Any], where: str = "judge") -> TextJudge:
    """The judge a config mapping describes: `kind` (one of JUDGE_KINDS) and that kind's options, e.g.
    `{"kind": "openai", "base_url": "http://127.0.0.1:8000/v1", "model": "qwen"}`. Errors name `where`."""
    if not isinstance(spec, dict):
        raise EditR1Error(f"{where}: expected a mapping with 'kind' and the judge's options, got {spec!r}")
    if "kind" not in spec:
        raise EditR1Error(f"{where}.kind: missing; one of {', '.join(JUDGE_KINDS)}")
    kind = spec["kind"]
    if kind not in JUDGE_KINDS:
        close = difflib.get_close_matches(str(kind), JUDGE_KINDS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f"; known: {', '.join(JUDGE_KINDS)}"
        raise EditR1Error(f"{where}.kind: unknown judge kind {kind!r}{hint}")
    cls = JUDGE_KINDS[kind]
    parameters = inspect.signature(cls.__init__).parameters
    names = [name for name in parameters if name != "self"]
    options = {key: value for key, value in spec.items() if key != "kind"}
    for key in options:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; known: {', '.join(names)}"
            raise EditR1Error(f"{where}.{key}: unknown option for a {kind!r} judge{hint}")
    for name in names:
        if parameters[name].default is inspect.Parameter.empty and name not in options:
            raise EditR1Error(f"{where}.{name}: required for a {kind!r} judge")
    try:
        return cls(**options)
    except JudgeOptionError as error:
        raise EditR1Error(f"{where}.{error.option}: {error.message}") from None
