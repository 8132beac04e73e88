"""The `viescore` reward: GEdit-Bench's judging protocol (VIEScore) as a reward, so that a training run
can judge its held-out edits the way the benchmark does, every `eval.every` iterations, next to the
training reward (`eval.reward: {name: viescore, options: {judge: {...}}}`).

Per sample: semantic consistency (source and edit, with the instruction) and perceptual quality (the
edit alone), each the minimum of its JSON score list, 0 to 10; the reward is `sqrt(SC * PQ) / 10`.
A reply that does not parse, or a failed request, leaves the sample unscored with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from editr1.data.images import tensor_to_image
from editr1.eval.benchmarks.common import BenchSample, JudgeReply, ReplyParseError
from editr1.eval.benchmarks.gedit import (
    EDITR1_GEDIT_PROMPTS,
    gedit_pq_request,
    gedit_sc_request,
    load_official_gedit_prompts,
    parse_viescore_reply,
)
from editr1.eval.benchmarks.judges import build_text_judge
from editr1.rewards.base import Reward, RewardBatch, check_batch

#: VIEScore's scale.
MAX_SCORE = 10.0


class VIEScoreReward(Reward):
    """`judge`: a judge mapping as `editr1 eval gedit --judge` takes (kind openai or transformers);
    `official_prompts`: the Step1X-Edit repository or its `vie_prompts.py` (else editr1's prompts)."""

    name = "viescore"
    resume_safe_options = ()

    def __init__(self, judge: dict[str, Any], official_prompts: str | None = None):
        self.judge = build_text_judge(judge, where="reward.options.judge")
        self.prompts = EDITR1_GEDIT_PROMPTS if official_prompts is None else load_official_gedit_prompts(Path(official_prompts))

    def check_ready(self) -> None:
        self.judge.check_ready()

    def score(self, sources, edited, prompts, requirements) -> RewardBatch:
        check_batch(sources, edited, prompts, requirements)
        requests = []
        for i, (refs, edit, prompt) in enumerate(zip(sources, edited, prompts)):
            sample = BenchSample("gedit", str(i), "", prompt)
            source, image = tensor_to_image(refs[0]), tensor_to_image(edit)
            requests += [(gedit_sc_request(sample, self.prompts.sc, source, image), 0),
                         (gedit_pq_request(sample, self.prompts.pq, image, source), 0)]
        replies: dict[int, JudgeReply] = {}
        self.judge.ask_many(requests, replies.__setitem__)
        scores = torch.full((len(edited),), float("nan"))
        failures: dict[int, str] = {}
        for i in range(len(edited)):
            sc, pq = replies[2 * i], replies[2 * i + 1]
            problem = sc.error or pq.error
            if problem is None:
                try:
                    semantic, quality = min(parse_viescore_reply(sc.text)), min(parse_viescore_reply(pq.text))
                    scores[i] = (semantic * quality) ** 0.5 / MAX_SCORE
                    continue
                except ReplyParseError as error:
                    problem = f"the judge's reply does not parse ({error})"
            failures[i] = problem
        return RewardBatch(scores, torch.isfinite(scores), failures=failures)

