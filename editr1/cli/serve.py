"""`editr1 serve-reward CONFIG`: load the judge, serve it until Ctrl-C (or SIGTERM)."""

from __future__ import annotations

import signal
import sys

from editr1.config import load_config
from editr1.rewards.mllm_judge import MLLMJudge
from editr1.serve.config import LOOPBACK_HOSTS, ServeConfig
from editr1.serve.reward_server import RewardServer


def serve_reward(config_path: str | None, overrides: list[str]) -> None:
    config = load_config(ServeConfig, config_path, overrides)
    api_key = config.resolve_api_key()
    if config.host not in LOOPBACK_HOSTS and api_key is None:
        print(f"editr1: warning: serving on {config.host} without an api_key: anyone who reaches this port "
              f"can use the judge", file=sys.stderr, flush=True)
    judge = MLLMJudge.from_pretrained(config.model, dtype=config.dtype, device=config.device, batch_size=config.batch_size)
    server = RewardServer(config, judge, api_key)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a process manager's stop is a Ctrl-C
    server.log(f"listening on {server.url} (model {config.model_name!r})")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    server.log("stopped")
