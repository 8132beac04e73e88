"""HTTP with an OpenAI-compatible server (vLLM, SGLang, `editr1 serve-reward`, OpenAI): one POST loop
with bounded retries, and the server's own words when it refuses.

Retried: connection errors, timeouts, 5xx, 408 and 429, waiting `backoff_s` doubled per try, or what
a Retry-After header asks for (both capped at `MAX_BACKOFF_S`). Other 4xx fail at once: they will not
change on another try.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import math
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime, timezone

#: Statuses worth another try besides 5xx: a timeout and rate limiting; other 4xx will not change.
RETRY_STATUSES = frozenset({408, 429})
MAX_BACKOFF_S = 30.0
MAX_ERROR_BODY_BYTES = 65536
MAX_ERROR_TEXT = 300
#: Phrases of servers (vLLM's, in its versions) refusing a request for carrying too many images.
TOO_MANY_IMAGES = ("limit-mm-per-prompt", "limit_mm_per_prompt", "may be provided in one prompt",
                   "items in the same prompt", "too many images")
LIMIT_MM_HINT = ("; the judge server accepts fewer images per prompt than this request carries (the reference "
                 "images and the edit): start vLLM with --limit-mm-per-prompt '{\"image\": 4}' "
                 "(vLLM 0.8 and older: --limit-mm-per-prompt image=4)")


class PostFailed(Exception):
    """No usable response: `str(error)` says why, `attempts` how many requests were sent."""

    def __init__(self, message: str, attempts: int):
        super().__init__(message)
        self.attempts = attempts


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_TEXT else text[:MAX_ERROR_TEXT] + f"... ({len(text)} characters)"


def error_body_message(body: bytes) -> str | None:
    """The reason in an error response body: OpenAI's `{"error": {"message"}}`, the flat
    `{"object": "error", "message"}` / `{"message"}` of SGLang and older vLLM, `{"error": "..."}`,
    FastAPI's `{"detail": "..."}`, else the body as text (shortened); None for an empty body."""
    text = body.decode("utf-8", errors="replace").strip()
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return _shorten(text)
    if isinstance(data, dict):
        error = data.get("error")
        candidates = (error.get("message") if isinstance(error, dict) else error, data.get("message"), data.get("detail"))
        for candidate in candidates:
            if isinstance(candidate, str) and candidate.strip():
                return _shorten(candidate)
    return _shorten(text)


def http_error_detail(error: urllib.error.HTTPError) -> str:
    """The server's stated reason for an error status (else the reason phrase), with a hint when it
    refused a request for carrying too many images."""
    try:
        body = error.read(MAX_ERROR_BODY_BYTES)
    except (OSError, http.client.HTTPException):
        body = b""
    detail = error_body_message(body) or str(error.reason)
    if any(phrase in detail.lower() for phrase in TOO_MANY_IMAGES):
        detail += LIMIT_MM_HINT
    return detail


def retry_after_s(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delay seconds or an HTTP date); None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # "-0000": UTC by RFC 5322
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def post_json(url: str, body: bytes, headers: dict[str, str], *, timeout_s: float, retries: int, backoff_s: float,
              wait: Callable[[float], None], before_attempt: Callable[[], None] | None = None) -> tuple[dict, int]:
    """(the response JSON, attempts) of a POST, retried as the module says; `wait(seconds)` pauses
    between tries (a seam for tests, or a pause a caller can cut short), `before_attempt()` may raise to
    abandon the call. Raises PostFailed."""
    attempts = retries + 1
    for attempt in range(attempts):
        if before_attempt is not None:
            before_attempt()
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        wait_s = min(backoff_s * 2**attempt, MAX_BACKOFF_S)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            problem = f"HTTP {error.code}: {http_error_detail(error)}"
            if error.code < 500 and error.code not in RETRY_STATUSES:
                raise PostFailed(f"POST {url} (not retried): {problem}", attempt + 1) from None
            asked = retry_after_s(error.headers.get("Retry-After"))
            if asked is not None:
                wait_s = min(asked, MAX_BACKOFF_S)
        except (OSError, http.client.HTTPException) as error:  # refused, reset, timed out, cut short
            problem = f"{type(error).__name__}: {getattr(error, 'reason', error) or 'no details'}"
        else:
            try:
                return json.loads(raw), attempt + 1
            except ValueError as error:
                raise PostFailed(f"POST {url}: the response is not JSON ({error})", attempt + 1) from None
        if attempt + 1 < attempts:
            wait(wait_s)
    raise PostFailed(f"POST {url} failed after {attempts} attempt(s): {problem}", attempts)
