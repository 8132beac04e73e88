import math

import pytest
import torch

from editr1.processing.tiny_tokenizer import build_tiny_qwen_tokenizer
from editr1.rewards.score_logit import (
    expected_score,
    score_from_logits,
    score_from_top_logprobs,
    score_token_ids,
    two_hot_levels,
)


def test_expected_score_is_the_mean_level_over_the_restricted_softmax():
    logits = torch.tensor([[0.0, 1.0, 2.0, 0.5, -1.0, 3.0]])
    p = torch.softmax(logits.double(), -1)[0]
    assert float(expected_score(logits)[0]) == pytest.approx(float(sum(k * p[k] for k in range(6)) / 5), abs=1e-12)
    assert float(expected_score(torch.tensor([[0.0, -50, -50, -50, -50, -50]]))[0]) == pytest.approx(0.0, abs=1e-12)
    assert float(expected_score(torch.tensor([[-50.0, -50, -50, -50, -50, 0]]))[0]) == pytest.approx(1.0, abs=1e-12)


def test_full_logits_give_score_and_mass_on_level_tokens():
    torch.manual_seed(0)
    logits = torch.randn(3, 40)
    ids = [5, 9, 11, 2, 30, 31]
    scores, mass = score_from_logits(logits, ids)
    assert torch.allclose(scores, expected_score(logits[:, ids]))
    assert torch.allclose(mass, torch.softmax(logits.double(), -1)[:, ids].sum(-1))


def test_top_logprobs_reproduce_the_logit_readout():
    torch.manual_seed(1)
    logits = torch.randn(1, 50)
    ids = [10, 11, 12, 13, 14, 15]
    log_probabilities = torch.log_softmax(logits.double(), -1)[0]
    top = {str(k): float(log_probabilities[i]) for k, i in enumerate(ids)} | {"the": -0.5, "x": -3.0}
    score, mass, present = score_from_top_logprobs(top)
    expected, expected_mass = score_from_logits(logits, ids)
    assert score == pytest.approx(float(expected[0]), abs=1e-12)
    assert mass == pytest.approx(float(expected_mass[0]), abs=1e-12)
    assert present == 6


def test_levels_missing_from_top_k_get_zero_mass_and_none_present_is_an_error():
    score, mass, present = score_from_top_logprobs({"5": math.log(0.3), "3": math.log(0.1), "a": math.log(0.6)})
    assert present == 2
    assert mass == pytest.approx(0.4)
    assert score == pytest.approx((5 * 0.75 + 3 * 0.25) / 5)
    with pytest.raises(ValueError, match="none of the score tokens"):
        score_from_top_logprobs({"yes": -0.1, "no": -2.0})


def test_score_tokens_are_looked_up_and_must_be_single_tokens():
    tokenizer = build_tiny_qwen_tokenizer(["rate it from 0 to 5", "score 10 of 10"])
    ids = score_token_ids(tokenizer)
    assert [tokenizer.decode([i]) for i in ids] == ["0", "1", "2", "3", "4", "5"]
    with pytest.raises(ValueError, match="'10' is 2 tokens"):  # Qwen splits numbers into digits
        score_token_ids(tokenizer, levels=11)


def test_two_hot_targets_have_the_score_as_their_expectation():
    scores = torch.tensor([0.0, 0.13, 0.5, 0.999, 1.0])
    target = two_hot_levels(scores)
    assert torch.allclose(target.sum(-1), torch.ones(5, dtype=torch.float64))
    levels = torch.arange(6, dtype=torch.float64)
    assert torch.allclose((target * levels).sum(-1) / 5, scores.double(), atol=1e-7)
    assert (target > 0).sum(-1).max() <= 2
