"""Score rollout chunks as they come out of the sampler.

With `overlap`, each chunk is scored on a background thread while the next chunk is sampled, which
hides a remote judge's latency (and, on a GPU box, an in-process judge's time) behind rollout work.
Results are joined in submission order, so the scores do not depend on timing. Each chunk's answer is
checked against the reward contract (`CheckedReward`), so a breach or a crash is reported for its samples.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from editr1.data.jsonl import EditSample
from editr1.rewards.base import RewardBatch, concat_reward_batches
from editr1.rewards.checked import CheckedReward
from editr1.rewards.combined import CombinedReward


class RolloutScorer:
    """Scores the edits of training samples read from `data_file`."""

    def __init__(self, reward: CheckedReward | CombinedReward, data_file: str, overlap: bool):
        self.reward, self.data_file = reward, data_file
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="editr1-reward") if overlap else None
        self.pending: list[Future] = []

    def submit(self, sources: list[list[torch.Tensor]], edited: list[torch.Tensor], samples: list[EditSample]) -> None:
        """Score `edited[i]`, an edit of `samples[i]` from `sources[i]`."""
        if self.executor is not None:
            self.pending.append(self.executor.submit(self._timed, sources, edited, samples))
            return
        done: Future = Future()
        done.set_result(self._timed(sources, edited, samples))
        self.pending.append(done)

    def collect(self) -> tuple[RewardBatch, float]:
        """Every submitted chunk's scores, joined, and the seconds spent computing them."""
        results = [future.result() for future in self.pending]
        self.pending = []
        return concat_reward_batches([batch for batch, _ in results]), sum(seconds for _, seconds in results)

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)

    def _timed(self, sources, edited, samples) -> tuple[RewardBatch, float]:
        tick = time.monotonic()
        batch = self.reward.score(sources, edited, samples, self.data_file)
        return batch, time.monotonic() - tick
