"""The score-logit readout (docs/algorithm.md, "Score-logit reward"), as pure functions.

A judge answers with one score token "0".."L-1" (L levels, 6 by default). The reward is the expected
score under the softmax over those L tokens' logits, divided by L - 1. The probability mass the
full-vocabulary softmax puts on the score tokens is reported alongside: a low mass means the prompt
or the template is off.
Both readouts (logits in-process, top-k log-probabilities from a server) give the same numbers,
because the full softmax and the restricted one share their numerator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

DEFAULT_LEVELS = 6  # scores 0..5


def score_tokens(levels: int = DEFAULT_LEVELS) -> list[str]:
    """The answer strings, "0" .. str(levels - 1)."""
    if levels < 2:
        raise ValueError(f"a score needs at least 2 levels, got {levels}")
    return [str(k) for k in range(levels)]


def score_token_ids(tokenizer, levels: int = DEFAULT_LEVELS) -> list[int]:
    """Look the score tokens up in `tokenizer`; each level must encode to exactly one token."""
    ids = []
    for text in score_tokens(levels):
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(
                f"score level {text!r} is {len(encoded)} tokens {encoded} in this tokenizer, not one; "
                f"the score-logit reward needs single-token levels (use fewer levels)"
            )
        ids.append(encoded[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"score levels map to repeated token ids {ids}")
    return ids


def expected_score(level_logits: torch.Tensor) -> torch.Tensor:
    """`(N, L)` logits of the levels -> `(N,)` expected level / (L - 1), in [0, 1]."""
    probabilities = torch.softmax(level_logits.double(), dim=-1)
    levels = torch.arange(level_logits.shape[-1], dtype=torch.float64, device=level_logits.device)
    return (probabilities * levels).sum(-1) / (level_logits.shape[-1] - 1)


def score_from_logits(logits: torch.Tensor, level_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """`(N, V)` next-token logits -> (scores in [0, 1], probability mass on the level tokens), float64."""
    ids = torch.as_tensor(list(level_ids), device=logits.device)
    log_probabilities = torch.log_softmax(logits.double(), dim=-1)
    level_log_probabilities = log_probabilities[:, ids]
    return expected_score(level_log_probabilities), level_log_probabilities.exp().sum(-1)


def score_from_top_logprobs(top_logprobs: Mapping[str, float], levels: int = DEFAULT_LEVELS) -> tuple[float, float, int]:
    """Expected score from a server's top-k log-probabilities of the first answer token.

    Returns (score, mass on the level tokens, number of levels present). Levels absent from the
    top-k get zero probability. Raises ValueError when no level is present: there is nothing to read.
    """
    present = {int(token): float(lp) for token, lp in top_logprobs.items() if token in score_tokens(levels)}
    if not present:
        raise ValueError(f"none of the score tokens {score_tokens(levels)} is among the top log-probabilities "
                         f"{sorted(top_logprobs)[:10]}")
    level_logprobs = torch.full((1, levels), float("-inf"), dtype=torch.float64)
    for level, logprob in present.items():
        level_logprobs[0, level] = logprob
    mass = float(level_logprobs.exp().sum())
    return float(expected_score(level_logprobs)[0]), mass, len(present)


def two_hot_levels(scores: torch.Tensor, levels: int = DEFAULT_LEVELS) -> torch.Tensor:
    """`(N,)` scores in [0, 1] -> `(N, L)` distributions over the levels whose expected score is exactly
    the input: the mass sits on the two levels around `score * (L - 1)` (a judge's distillation target)."""
    position = scores.double().clamp(0, 1) * (levels - 1)
    lower = position.floor().clamp(max=levels - 2).long()
    upper_weight = position - lower
    target = torch.zeros(scores.shape[0], levels, dtype=torch.float64)
    target.scatter_(1, lower[:, None], (1 - upper_weight)[:, None])
    target.scatter_(1, lower[:, None] + 1, upper_weight[:, None])
    return target
