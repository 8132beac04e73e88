"""`editr1 serve-reward CONFIG`: load the judge, serve it until Ctrl-C (or SIGTERM)."""

from __future__ import annotations

import signal
import sys

from editr1.rewards.mllm_judge import MLLMJudge
from editr1.serve.config import LOOPBACK_HOSTS, ServeConfig
from editr1.serve.reward_server import RewardServer


def serve_reward(config: ServeConfig) -> None:
    api_key = config.resolve_api_key()
    if config.host not in LOOPBACK_HOSTS and api_key is None:
        print(f"editr1: warning: serving on {config.host} without an api_key: anyone who reaches this port "
              f"can use the judge", file=sys.stderr, flush=True)
    judge = MLLMJudge.from_pretrained(config.model, dtype=config.dtype, device=config.device, batch_size=config.batch_size)
    server = RewardServer(config, judge, api_key)
    # A process manager's stop is a Ctrl-C: uvicorn stops gracefully on either, then raises the
    # signal again, which must end here as KeyboardInterrupt, not kill the process before `close`.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    server.log(f"listening on {server.url} (model {config.model_name!r})")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    server.log("stopped")
