"""The OpenAI chat-completions subset a score-logit judge needs, as pure functions.

A request asks for one answer token (`max_tokens: 1`) and its top log-probabilities, greedily; or, with a
`temperature` above 0, for `n` sampled answer tokens (with a `seed` for reproducible draws). Images arrive as base64 data URLs and their header size is checked before any pixel is
decoded. Every rejection is a `ProtocolError` that names the offending field.
"""

from __future__ import annotations

import base64
import binascii
import io
import time
import uuid
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps

#: OpenAI's limit on `top_logprobs` (also vLLM's default `max_logprobs`).
MAX_TOP_LOGPROBS = 20
#: The most sampled answers one request may ask for (`n`).
MAX_SAMPLES = 128
#: Accepted data-URL media types and the PIL decoders they may use (no others are tried).
IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
ROLES = ("system", "user", "assistant")
#: JSON has no -inf; vLLM clamps impossible tokens' log-probabilities to this.
MIN_LOGPROB = -9999.0


class ProtocolError(Exception):
    """A request answered with `status`, an OpenAI-style error body and any extra response `headers`."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.status, self.message, self.kind)


def error_body(status: int, message: str, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "code": status}}


@dataclass
class ChatRequest:
    #: The messages with every image part replaced by a `{"type": "image"}` placeholder, as the
    #: in-process judge builds them, so both paths render the same prompt text.
    messages: list[dict]
    images: list[Image.Image]
    logprobs: bool
    top_logprobs: int
    #: Sampled answers: `n` draws at `temperature` with `seed` (None: greedy, one answer).
    temperature: float = 0.0
    samples: int = 1
    seed: int | None = None


def parse_chat_request(body: Any, served_model: str, max_image_pixels: int, max_images: int) -> ChatRequest:
    if not isinstance(body, dict):
        raise ProtocolError(400, "the request body must be a JSON object")
    model = body.get("model")
    if model != served_model:
        raise ProtocolError(404, f"model: {model!r} is not served here; this server serves {served_model!r}",
                            "not_found_error")
    _check_one_token(body)
    if body.get("stream"):
        raise ProtocolError(400, "stream: streaming is not supported (the answer is a single token)")
    temperature, samples, seed = _sampling(body)
    logprobs = body.get("logprobs") or False
    if not isinstance(logprobs, bool):
        raise ProtocolError(400, f"logprobs: expected true or false, got {logprobs!r}")
    top = body.get("top_logprobs") or 0
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS:
        raise ProtocolError(400, f"top_logprobs: expected an integer in 0..{MAX_TOP_LOGPROBS}, got {top!r}")
    if top and not logprobs:
        raise ProtocolError(400, "top_logprobs: needs logprobs: true")
    messages, image_urls = _parse_messages(body.get("messages"))
    if len(image_urls) > max_images:
        raise ProtocolError(400, f"messages: {len(image_urls)} images; the limit is {max_images} per request "
                                 f"(max_images_per_request)")
    images = [decode_image_url(url, where, max_image_pixels) for where, url in image_urls]
    return ChatRequest(messages, images, logprobs, top, temperature, samples, seed)


def _sampling(body: dict) -> tuple[float, int, int | None]:
    """(temperature, n, seed): temperature 0 answers greedily, once."""
    temperature = body.get("temperature")
    temperature = 0.0 if temperature is None else temperature
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise ProtocolError(400, f"temperature: expected a number in [0, 2], got {temperature!r}")
    samples = body.get("n")
    samples = 1 if samples is None else samples
    if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= MAX_SAMPLES:
        raise ProtocolError(400, f"n: expected an integer in 1..{MAX_SAMPLES}, got {samples!r}")
    if samples > 1 and temperature == 0:
        raise ProtocolError(400, f"n: {samples} answers need a temperature above 0 (at temperature 0 they are all the same)")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ProtocolError(400, f"seed: expected a non-negative integer, got {seed!r}")
    return float(temperature), samples, seed


def _check_one_token(body: dict) -> None:
    """The server reads the first answer token only; asking for more would silently get less."""
    given = {key: body[key] for key in ("max_tokens", "max_completion_tokens") if body.get(key) is not None}
    if not given:
        raise ProtocolError(400, "max_tokens: required and must be 1 (this judge server answers one token, "
                                 "whose log-probabilities carry the score)")
    for key, value in given.items():
        if value != 1 or isinstance(value, bool):
            raise ProtocolError(400, f"{key}: must be 1 (this judge server answers one token), got {value!r}")


def _parse_messages(messages: Any) -> tuple[list[dict], list[tuple[str, str]]]:
    """-> (messages with image placeholders, [(where, url)] of the images in order)."""
    if not isinstance(messages, list) or not messages:
        raise ProtocolError(400, "messages: expected a non-empty list")
    parsed, urls = [], []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ProtocolError(400, f"{where}.role: expected one of {list(ROLES)}")
        content = message.get("content")
        if isinstance(content, str):
            parsed.append({"role": message["role"], "content": content})
            continue
        if not isinstance(content, list):
            raise ProtocolError(400, f"{where}.content: expected a string or a list of parts")
        parts = []
        for j, part in enumerate(content):
            at = f"{where}.content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "image_url":
                image_url = part.get("image_url")
                url = image_url.get("url") if isinstance(image_url, dict) else None
                if not isinstance(url, str):
                    raise ProtocolError(400, f"{at}.image_url.url: expected a string")
                urls.append((at, url))
                parts.append({"type": "image"})
            else:
                raise ProtocolError(400, f"{at}: expected {{'type': 'text', 'text': ...}} or "
                                         f"{{'type': 'image_url', 'image_url': {{'url': ...}}}}")
        parsed.append({"role": message["role"], "content": parts})
    return parsed, urls


def decode_image_url(url: str, where: str, max_pixels: int) -> Image.Image:
    """A `data:image/...;base64,` URL -> an upright RGB image. The decoded size is bounded by the
    request body limit; the pixel count is checked from the header, before decoding. A camera JPEG
    stores its pixels sideways and says so in its EXIF Orientation tag; the judge must see what a
    viewer shows, so the tag is applied."""
    if not url.startswith("data:"):
        raise ProtocolError(400, f"{where}: only data: URLs are accepted (base64 PNG, JPEG or WebP), "
                                 f"got {url[:40]!r}")
    header, comma, payload = url[5:].partition(",")
    media, _, encoding = header.partition(";")
    if not comma or encoding != "base64":
        raise ProtocolError(400, f"{where}: expected data:<image type>;base64,<data>")
    if media not in IMAGE_TYPES:
        raise ProtocolError(400, f"{where}: unsupported image type {media!r}; expected one of {sorted(IMAGE_TYPES)}")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ProtocolError(400, f"{where}: invalid base64 ({error})") from error
    try:
        with Image.open(io.BytesIO(data), formats=list(IMAGE_TYPES.values())) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ProtocolError(413, f"{where}: image is {width}x{height} = {width * height} pixels; "
                                         f"the limit is {max_pixels} (max_image_pixels)")
            image.load()
            return ImageOps.exif_transpose(image).convert("RGB")
    except ProtocolError:
        raise
    except Image.DecompressionBombError as error:  # PIL's own guard fires inside open()
        raise ProtocolError(413, f"{where}: image is too many pixels ({error}); the limit is {max_pixels} "
                                 f"(max_image_pixels)") from error
    except Exception as error:  # decoders raise OSError, SyntaxError, ValueError...
        raise ProtocolError(400, f"{where}: not a readable {media} image ({type(error).__name__}: {error})") from error


def _token_entry(token: str, logprob: float) -> dict:
    return {"token": token, "logprob": max(logprob, MIN_LOGPROB), "bytes": list(token.encode("utf-8"))}


def chat_completion_response(model: str, top: list[tuple[str, float]], request: ChatRequest,
                             sampled: list[tuple[str, float]] | None = None) -> dict:
    """`top`: (token text, log-probability) of the most likely first tokens, best first. The answer is the
    first of them (greedy), or one choice per `sampled` token when the request asked for samples."""
    answers = sampled if sampled is not None else top[:1]
    choices = []
    for index, (token, logprob) in enumerate(answers):
        logprobs = None
        if request.logprobs:
            alternatives = [_token_entry(t, lp) for t, lp in top[: request.top_logprobs]]
            logprobs = {"content": [{**_token_entry(token, logprob), "top_logprobs": alternatives}]}
        choices.append({"index": index, "message": {"role": "assistant", "content": token}, "logprobs": logprobs,
                        "finish_reason": "length"})
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        # Prompt tokens are not counted: the judge's processor expands image tokens internally.
        "usage": {"prompt_tokens": None, "completion_tokens": len(choices), "total_tokens": None},
    }


def models_response(model: str) -> dict:
    return {"object": "list", "data": [{"id": model, "object": "model", "created": int(time.time()), "owned_by": "editr1"}]}
