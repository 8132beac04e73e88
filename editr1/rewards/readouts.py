"""How a judge's first answer token becomes a reward: three readouts, in-process (logits) and served (an
OpenAI-compatible answer) alike. docs/rewards.md, "Judge readouts".

- `score` (the default, Edit-R1's): the expected score under the softmax over the score tokens' logits.
- `yes_no`: the judge is asked a yes/no question; the reward is P("Yes") renormalised over {"Yes", "No"}.
- `sampled`: the judge's answer is sampled `samples` times at `temperature`; the reward is the mean sampled
  score over the answers that are scores (the baseline the score logit is compared with). The draws are
  seeded from the option `seed` and the sample's own content (its prompt text and pixels), so a sample gets
  the same draws whatever batch it is in, and a run is reproducible.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import torch
from PIL import Image

from editr1.rewards.judge_prompt import JudgePrompt, YES_NO_TEMPLATE
from editr1.rewards.score_logit import (
    DEFAULT_LEVELS,
    score_from_logits,
    score_from_top_logprobs,
    score_token_ids,
    score_tokens,
)

READOUTS = ("score", "yes_no", "sampled")
YES, NO = "Yes", "No"


class ReadoutError(ValueError):
    """Why one answer could not be read as a score."""


def single_token_ids(tokenizer, texts: Sequence[str], what: str) -> list[int]:
    """Each text's token id; every text must be exactly one token, and they must differ."""
    ids = []
    for text in texts:
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(f"{text!r} is {len(encoded)} tokens {encoded} in this tokenizer, not one; the {what} "
                             "readout needs single-token answers")
        ids.append(encoded[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"the answers {list(texts)} map to repeated token ids {ids}")
    return ids


def yes_probability(logits: torch.Tensor, yes_id: int, no_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(N, V)` next-token logits -> (P(Yes) / (P(Yes) + P(No)), P(Yes) + P(No) under the full softmax), float64."""
    log_probabilities = torch.log_softmax(logits.double(), dim=-1)
    pair = log_probabilities[:, [yes_id, no_id]]
    return torch.softmax(pair, dim=-1)[:, 0], pair.exp().sum(-1)


def yes_probability_from_top_logprobs(top_logprobs: Mapping[str, float]) -> tuple[float, float]:
    """(P(Yes) renormalised over {Yes, No}, their mass) from a server's top log-probabilities; an answer absent
    from the top-k has probability 0. ReadoutError when neither is there."""
    present = {text: float(top_logprobs[text]) for text in (YES, NO) if text in top_logprobs}
    if not present:
        raise ReadoutError(f"neither {YES!r} nor {NO!r} is among the top log-probabilities {sorted(top_logprobs)[:10]}")
    yes, no = (math.exp(present.get(text, -math.inf)) for text in (YES, NO))
    return yes / (yes + no), yes + no


def content_seed(seed: int, text: str, images: Sequence[Image.Image]) -> int:
    """A 63-bit seed from `seed` and a sample's content: its prompt text and its images' pixels."""
    digest = hashlib.sha256(f"{seed}\0{text}\0".encode())
    for image in images:
        digest.update(f"{image.mode}{image.size}".encode())
        digest.update(image.tobytes())
    return int.from_bytes(digest.digest()[:8], "big") >> 1


def sample_tokens(logits: torch.Tensor, temperature: float, samples: int, seed: int) -> list[int]:
    """`samples` token ids drawn with replacement from softmax(`logits` / temperature) (one row, the full
    vocabulary), with a generator seeded by `seed`: the same draws in-process and in editr1's judge server."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    probabilities = torch.softmax(logits.double().cpu() / temperature, dim=-1)
    generator = torch.Generator().manual_seed(seed)
    return torch.multinomial(probabilities, samples, replacement=True, generator=generator).tolist()


def mean_sampled_score(answers: Sequence[str], levels: int) -> tuple[float, float]:
    """(mean score / (levels - 1) over the answers that are score tokens, the fraction that were). ReadoutError
    when none was a score."""
    tokens = score_tokens(levels)
    scores = [int(answer.strip()) for answer in answers if answer.strip() in tokens]
    if not scores:
        raise ReadoutError(f"none of the {len(answers)} sampled answers is a score token "
                           f"{tokens[0]}..{tokens[-1]} (first: {answers[0]!r})" if answers else "no sampled answer")
    return sum(scores) / len(scores) / (levels - 1), len(scores) / len(answers)


class Readout(ABC):
    """What the judge is asked (`prompt`) and how its answer becomes a score in [0, 1], plus one diagnostic
    per sample (`diagnostic`: its name in the reward's extras)."""

    name: str
    diagnostic: str

    def __init__(self, prompt: JudgePrompt, levels: int):
        self.prompt, self.levels = prompt, levels

    @abstractmethod
    def bind(self, tokenizer) -> None:
        """In-process: look the answer tokens up in the judge's tokenizer (ValueError if they are not single
        tokens)."""

    @abstractmethod
    def from_logits(self, logits: torch.Tensor, seeds: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, dict[int, str]]:
        """`(N, V)` first-token logits (and each sample's seed) -> (scores, diagnostics) in float64, and why each
        score that could not be read (NaN) could not."""

    @abstractmethod
    def request_fields(self, seed: int, top_logprobs: int) -> dict:
        """The chat-completion fields that ask a server for this readout's answer."""

    @abstractmethod
    def from_response(self, response: dict) -> tuple[float, float]:
        """(score, diagnostic) from a server's chat completion; ReadoutError when it holds none."""


def _top_logprobs(response: dict) -> dict[str, float]:
    try:
        entries = response["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        top: dict[str, float] = {}
        for entry in entries:  # best first; a token text seen twice keeps its best entry
            top.setdefault(entry["token"], float(entry["logprob"]))
        return top
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise ReadoutError(f"the response has no choices[0].logprobs.content[0].top_logprobs ({type(error).__name__}: "
                           f"{error}); does the server support logprobs?") from None


class ScoreLogit(Readout):
    name, diagnostic = "score", "judge_score_mass"

    def bind(self, tokenizer) -> None:
        self.level_ids = score_token_ids(tokenizer, self.levels)

    def from_logits(self, logits, seeds):
        return (*score_from_logits(logits, self.level_ids), {})

    def request_fields(self, seed, top_logprobs):
        return {"max_tokens": 1, "temperature": 0.0, "logprobs": True, "top_logprobs": top_logprobs}

    def from_response(self, response):
        try:
            score, mass, _ = score_from_top_logprobs(_top_logprobs(response), self.levels)
        except ValueError as error:
            raise ReadoutError(str(error)) from None
        return score, mass


class YesNoLogit(Readout):
    name, diagnostic = "yes_no", "judge_yes_no_mass"

    def bind(self, tokenizer) -> None:
        self.yes_id, self.no_id = single_token_ids(tokenizer, (YES, NO), "yes_no")

    def from_logits(self, logits, seeds):
        return (*yes_probability(logits, self.yes_id, self.no_id), {})

    def request_fields(self, seed, top_logprobs):
        return {"max_tokens": 1, "temperature": 0.0, "logprobs": True, "top_logprobs": top_logprobs}

    def from_response(self, response):
        return yes_probability_from_top_logprobs(_top_logprobs(response))


class SampledScore(Readout):
    name, diagnostic = "sampled", "judge_sampled_score_fraction"

    def __init__(self, prompt: JudgePrompt, levels: int, temperature: float, samples: int):
        super().__init__(prompt, levels)
        self.temperature, self.samples = temperature, samples

    def bind(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        score_token_ids(tokenizer, self.levels)  # the answers must be readable as single score tokens

    def from_logits(self, logits, seeds):
        scores = torch.full((logits.shape[0],), float("nan"), dtype=torch.float64)
        fractions = torch.zeros(logits.shape[0], dtype=torch.float64)
        failures = {}
        for row, seed in enumerate(seeds):
            drawn = sample_tokens(logits[row], self.temperature, self.samples, seed)
            try:
                scores[row], fractions[row] = mean_sampled_score([self.tokenizer.decode([t]) for t in drawn], self.levels)
            except ReadoutError as error:
                failures[row] = str(error)
        return scores, fractions, failures

    def request_fields(self, seed, top_logprobs):
        return {"max_tokens": 1, "temperature": self.temperature, "n": self.samples, "seed": seed}

    def from_response(self, response):
        try:
            answers = [choice["message"]["content"] or "" for choice in response["choices"]]
        except (KeyError, TypeError) as error:
            raise ReadoutError(f"the response has no choices[].message.content ({type(error).__name__}: {error})") from None
        if len(answers) != self.samples:
            raise ReadoutError(f"asked for {self.samples} sampled answers (n), got {len(answers)}")
        return mean_sampled_score(answers, self.levels)


def build_readout(readout: str, template: str | None, levels: int = DEFAULT_LEVELS, temperature: float = 1.0,
                  samples: int = 8, option_prefix: str = "reward.options") -> Readout:
    """The readout named `readout` with its prompt: `template` (a file) or the readout's default."""
    from editr1.errors import EditR1Error

    if readout not in READOUTS:
        raise EditR1Error(f"{option_prefix}.readout: {readout!r}; expected one of {list(READOUTS)}")
    if readout == "sampled" and not temperature > 0:
        raise EditR1Error(f"{option_prefix}.temperature: must be > 0 for sampled answers, got {temperature}")
    if readout == "sampled" and samples < 1:
        raise EditR1Error(f"{option_prefix}.samples: must be >= 1, got {samples}")
    default = YES_NO_TEMPLATE if readout == "yes_no" else None
    if template:
        prompt = JudgePrompt.from_file(template, levels - 1)
    else:
        prompt = JudgePrompt(default, levels - 1) if default else JudgePrompt(max_score=levels - 1)
    if readout == "score":
        return ScoreLogit(prompt, levels)
    if readout == "yes_no":
        return YesNoLogit(prompt, levels)
    return SampledScore(prompt, levels, temperature, samples)
