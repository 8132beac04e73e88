"""Judge replies kept on disk as they arrive, so that a rerun (or a killed run resumed) asks only what
is missing.

The cache is one append-only JSONL file. Each line is one reply with its text, keyed by a digest of the
judge's identity, the request (text, kind, the pixels of each image) and the repeat index: a reply of
another judge, prompt, image or repeat never matches. Only replies with text are kept; error replies
are not cached, so the next run asks those again. Lines are flushed and fsynced one by one: a killed
run keeps every line it finished, and at worst leaves a partial last line, which loading skips (and
counts in `truncated_lines`) and the next append cuts off. Complete lines are never changed. One
process writes a cache at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from PIL import Image

from editr1.errors import EditR1Error
from editr1.eval.benchmarks.common import JudgeReply, JudgeRequest

#: The fields every line has; `put`'s `extra` may not use these names.
RECORD_FIELDS = ("key", "judge", "prompt_sha256", "kind", "repeat", "text", "error", "attempts", "settings", "time")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def image_sha256(image: Image.Image) -> str:
    """A digest of the image's RGB pixels and size: the same for the same pixels, whatever the file
    format, and independent of PNG encoder versions."""
    rgb = image.convert("RGB")
    digest = hashlib.sha256(f"RGB {rgb.width}x{rgb.height}\0".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def reply_key(judge_identity: dict[str, Any], request: JudgeRequest, repeat: int) -> str:
    """sha256 over the judge identity (canonical JSON), the request's text and kind, each image's pixel
    digest in order, and the repeat index."""
    digest = hashlib.sha256()
    fields = [canonical_json(judge_identity), request.text, request.kind, str(len(request.images)),
              *(image_sha256(image) for image in request.images), str(int(repeat))]
    for field in fields:  # length-prefixed: no two field lists give the same bytes
        data = field.encode("utf-8")
        digest.update(f"{len(data)}:".encode())
        digest.update(data)
    return digest.hexdigest()


class ReplyCache:
    """The judged replies in the JSONL file `path` (created on the first `put`).

    `key(identity, request, repeat)` names a reply, `get(key)` returns it if cached, `put(key, reply,
    extra)` appends it. Loading tolerates a partial last line (a kill while writing; `truncated_lines`
    says 1) but not a bad line before it (EditR1Error with the file and line).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.replies: dict[str, JudgeReply] = {}
        #: 1 if the file ended in a partial line (skipped, and cut off before the next append), else 0.
        self.truncated_lines = 0
        self._meta: dict[str, dict[str, Any]] = {}
        self._valid_end = 0  # bytes up to the end of the last complete line
        self._needs_newline = False
        self._file = None
        self._lock = threading.Lock()
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except OSError as error:
            raise EditR1Error(f"{self.path}: cannot read the reply cache ({error})") from None
        lines = data.split(b"\n")
        offset = 0
        for number, raw in enumerate(lines, start=1):
            last = number == len(lines)  # the part after the last newline: empty, or a partial line
            end = offset + len(raw) + (0 if last else 1)
            if raw.strip():
                try:
                    record = json.loads(raw)
                    key, text = record["key"], record["text"]
                    if not isinstance(key, str) or not isinstance(text, str):
                        raise ValueError("'key' and 'text' must be strings")
                    reply = JudgeReply(text, None, int(record.get("attempts", 1)), dict(record.get("settings") or {}))
                except (ValueError, KeyError, TypeError, AttributeError) as error:
                    if last:
                        self.truncated_lines = 1
                        break
                    raise EditR1Error(f"{self.path}, line {number}: not a reply cache line ({error}); the file is "
                                      f"damaged: remove that line (or the file, to judge everything again)") from None
                self.replies[key] = reply
                if last:
                    self._needs_newline = True  # a whole line whose newline was not written
            self._valid_end = end
            offset = end

    def __len__(self) -> int:
        return len(self.replies)

    def __contains__(self, key: str) -> bool:
        return key in self.replies

    def key(self, judge_identity: dict[str, Any], request: JudgeRequest, repeat: int) -> str:
        """The key of `request` asked of the judge `judge_identity` (see `reply_key`); the cache keeps what
        `put` records about it (judge, prompt digest, kind, repeat) until that key is put."""
        key = reply_key(judge_identity, request, repeat)
        self._meta[key] = {"judge": judge_identity, "prompt_sha256": hashlib.sha256(request.text.encode()).hexdigest(),
                           "kind": request.kind, "repeat": int(repeat)}
        return key

    def get(self, key: str) -> JudgeReply | None:
        return self.replies.get(key)

    def put(self, key: str, reply: JudgeReply, extra: dict[str, Any] | None = None) -> bool:
        """Append `reply` under `key` (from this cache's `key()`), with `extra` fields (e.g. the sample's
        benchmark key); flushed and fsynced before returning. A reply without text is not cached (it is
        asked again next run): returns False, else True."""
        if reply.text is None:
            return False
        extra = dict(extra or {})
        clash = sorted(set(extra) & set(RECORD_FIELDS))
        if clash:
            raise ValueError(f"extra fields may not be named {', '.join(clash)}")
        with self._lock:
            meta = self._meta.get(key)
            if meta is None:
                raise KeyError(f"{key}: not a key made by this cache's key()")
            record = {"key": key, **meta, "text": reply.text, "error": reply.error, "attempts": reply.attempts,
                      "settings": reply.settings, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      **extra}
            line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
            handle = self._open()
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
            self.replies[key] = JudgeReply(reply.text, None, reply.attempts, dict(reply.settings))
            self._meta.pop(key, None)
        return True

    def _open(self):
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "ab")
            if self.truncated_lines and handle.seek(0, os.SEEK_END) > self._valid_end:
                handle.truncate(self._valid_end)  # the partial line a kill left: never a whole record
            if self._needs_newline:
                handle.write(b"\n")
                self._needs_newline = False
            self._file = handle
        return self._file

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> "ReplyCache":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
