"""Score rollout chunks as they come out of the sampler.

With `overlap`, each chunk is scored on a background thread while the next chunk is sampled, which
hides a remote judge's latency (and, on a GPU box, an in-process judge's time) behind rollout work.
Results are joined in submission order, so the scores do not depend on timing.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from editr1.rewards.base import Reward, RewardBatch, concat_reward_batches


class RolloutScorer:
    def __init__(self, reward: Reward, overlap: bool):
        self.reward = reward
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="editr1-reward") if overlap else None
        self.pending: list[Future] = []

    def submit(self, sources: list[torch.Tensor], edited: list[torch.Tensor], prompts: list[str],
               requirements: list[str | None]) -> None:
        if self.executor is not None:
            self.pending.append(self.executor.submit(self._timed, sources, edited, prompts, requirements))
            return
        done: Future = Future()
        done.set_result(self._timed(sources, edited, prompts, requirements))
        self.pending.append(done)

    def collect(self) -> tuple[RewardBatch, float]:
        """Every submitted chunk's scores, joined, and the seconds spent computing them."""
        results = [future.result() for future in self.pending]
        self.pending = []
        return concat_reward_batches([batch for batch, _ in results]), sum(seconds for _, seconds in results)

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)

    def _timed(self, *args) -> tuple[RewardBatch, float]:
        tick = time.monotonic()
        batch = self.reward.score(*args)
        return batch, time.monotonic() - tick
