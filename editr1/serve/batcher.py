"""Dynamic batching: concurrent requests share one judge forward pass.

One worker thread owns the judge. It takes the oldest queued request, gathers more until it has
`max_batch_size` or `max_wait_ms` has passed since the first, reads the next-token logits of the
whole batch at once and resolves each request's future with its top tokens, and its sampled answers when it
asked for some (`Sampling`: drawn as the in-process judge draws them, `editr1.rewards.readouts.sample_tokens`).
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from editr1.rewards.mllm_judge import Conversation, MLLMJudge
from editr1.rewards.readouts import sample_tokens

#: (token text, log-probability) of the most likely first answer tokens, best first.
TopTokens = list[tuple[str, float]]


@dataclass(frozen=True)
class Sampling:
    """`samples` first tokens drawn at `temperature` (> 0) with a generator seeded by `seed`."""

    temperature: float
    samples: int
    seed: int


@dataclass
class Answer:
    top: TopTokens
    #: The sampled tokens (text, log-probability), when the request asked for samples; else None (greedy).
    sampled: TopTokens | None = None


@dataclass
class _Job:
    conversation: Conversation
    top_k: int
    sampling: Sampling | None = None
    future: Future = field(default_factory=Future)


class Batcher:
    def __init__(self, judge: MLLMJudge, max_batch_size: int, max_wait_ms: float):
        self._judge, self._max_batch, self._max_wait_s = judge, max_batch_size, max_wait_ms / 1000
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._token_text: dict[int, str] = {}  # decoded token strings, filled by the worker only
        self._thread = threading.Thread(target=self._run, name="judge-batcher", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, conversation: Conversation, top_k: int, sampling: Sampling | None = None) -> Future:
        """Queue one conversation; the future resolves to its `Answer` (at least one top token)."""
        job = _Job(conversation, max(1, top_k), sampling)
        with self._lock:
            if self._closed:
                raise RuntimeError("the judge server is shutting down")
            self._queue.put(job)
        return job.future

    def close(self) -> None:
        """Stop taking requests, finish the queued ones, stop the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)  # after every job already queued: those are served first
        self._thread.join()

    def _run(self) -> None:
        stop = False
        while not stop:
            batch, stop = self._gather()
            if batch:
                self._serve(batch)

    def _gather(self) -> tuple[list[_Job], bool]:
        first = self._queue.get()
        if first is None:
            return [], True
        batch, deadline = [first], time.monotonic() + self._max_wait_s
        while len(batch) < self._max_batch:
            remaining = deadline - time.monotonic()
            try:
                # Past the deadline, still take what is already queued: it costs no waiting.
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return batch, True
            batch.append(job)
        return batch, False

    def _serve(self, batch: list[_Job]) -> None:
        try:
            results = self._top_tokens(batch)
        except Exception as error:  # noqa: BLE001 - any failure is reported to the requests, the worker goes on
            if len(batch) > 1:
                # One bad input (say, an aspect ratio the processor refuses) must not fail its neighbours.
                for job in batch:
                    self._serve([job])
            else:
                batch[0].future.set_exception(error)
            return
        for job, result in zip(batch, results):
            job.future.set_result(result)

    def _top_tokens(self, batch: list[_Job]) -> list[Answer]:
        logits = self._judge.next_token_logits([job.conversation for job in batch])
        if torch.isnan(logits).any():
            raise RuntimeError("the judge's logits contain NaN")
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        values, indices = logprobs.topk(max(job.top_k for job in batch), dim=-1)
        answers = []
        for row, job in enumerate(batch):
            top = [(self._text(i), v) for i, v in zip(indices[row, : job.top_k].tolist(), values[row, : job.top_k].tolist())]
            sampled = None
            if job.sampling is not None:
                drawn = sample_tokens(logits[row], job.sampling.temperature, job.sampling.samples, job.sampling.seed)
                sampled = [(self._text(i), float(logprobs[row, i])) for i in drawn]
            answers.append(Answer(top, sampled))
        return answers

    def _text(self, token_id: int) -> str:
        if token_id not in self._token_text:
            self._token_text[token_id] = self._judge.tokenizer.decode([token_id])
        return self._token_text[token_id]
