"""`ServeConfig`: the settings of `editr1 serve-reward`, loaded with `editr1.config.load_config`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from editr1.config import ConfigError

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeConfig:
    """`editr1 serve-reward`: the score-logit judge behind an OpenAI-compatible API."""

    #: The judge: a transformers chat-model folder or hub id (as the `mllm` reward's `model`).
    model: str = field(default="", metadata={"path": "if_exists"})
    #: Loopback by default; any other address must be set explicitly (and wants an api_key).
    host: str = "127.0.0.1"
    #: 0 picks a free port; the server prints the one it got.
    port: int = 8000
    #: Bearer token clients must send; or api_key_env, the name of an environment variable holding it.
    api_key: str | None = None
    api_key_env: str | None = None
    #: The `model` name clients send; null: the `model` value.
    served_model_name: str | None = None
    #: Requests gathered into one judge call, and how long the first of them waits for company.
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_body_bytes: int = 32 * 1024 * 1024
    max_image_pixels: int = 16 * 1024 * 1024
    max_images_per_request: int = 8
    #: Chat completions being received, decoded or judged at once; one more is answered 503 with
    #: Retry-After at once (its body unread). GET /health and /v1/models are not counted.
    max_concurrent_requests: int = 128
    #: A connection is closed when a request's headers have not all arrived this long after it
    #: opened or after its previous response (idle keep-alive connections included).
    header_timeout_s: float = 10.0
    #: A request's body must arrive within this long after its headers, else 408.
    body_timeout_s: float = 60.0
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"
    #: Conversations per forward pass inside one judge call.
    batch_size: int = 8

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("model: required: the judge's model folder or hub id")
        if self.api_key is not None and self.api_key_env is not None:
            raise ConfigError("api_key, api_key_env: set one of them, not both")
        if self.api_key == "":
            raise ConfigError("api_key: empty; leave it unset to serve without a token")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port: must be in 0..65535, got {self.port}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"max_wait_ms: must be >= 0, got {self.max_wait_ms}")
        for name in ("header_timeout_s", "body_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}: must be > 0, got {getattr(self, name)}")
        for name in ("max_batch_size", "max_body_bytes", "max_image_pixels", "max_images_per_request",
                     "max_concurrent_requests", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model

    def resolve_api_key(self) -> str | None:
        if self.api_key_env is None:
            return self.api_key
        value = os.environ.get(self.api_key_env)
        if not value:
            raise ConfigError(f"api_key_env: environment variable {self.api_key_env!r} is not set or empty")
        return value
