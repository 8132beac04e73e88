"""The judge readouts besides the score logit: P(Yes) renormalised over {Yes, No}, and sampled scores. Each is
tested as a formula, in-process on a tiny judge (against an independent computation from its logits), and
served by `editr1 serve-reward` (equal to the in-process reward within the numerics)."""

from __future__ import annotations

import math

import pytest
import torch
from reward_serving import INSTRUCTIONS, ServerProcess, random_images, save_test_judge

from editr1.data.images import tensor_to_image
from editr1.errors import EditR1Error
from editr1.rewards.mllm_judge import MLLMJudge
from editr1.rewards.readouts import (
    ReadoutError,
    content_seed,
    mean_sampled_score,
    sample_tokens,
    single_token_ids,
    yes_probability,
    yes_probability_from_top_logprobs,
)
from editr1.rewards.registry import build_reward

ANSWERS = ("Yes", "No")
SAMPLES = 16
#: Low enough that most draws of the test judge are its (boosted) answer tokens.
TEMPERATURE = 0.5


def test_yes_probability_is_renormalised_over_yes_and_no():
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.0, 0.0, 3.0, 0.0]])
    p_yes, mass = yes_probability(logits, yes_id=0, no_id=1)
    full = torch.softmax(logits.double(), dim=-1)
    assert torch.allclose(p_yes, full[:, 0] / (full[:, 0] + full[:, 1]), atol=1e-12)
    assert torch.allclose(mass, full[:, 0] + full[:, 1], atol=1e-12)
    assert math.isclose(p_yes[1].item(), 0.5)


def test_yes_probability_from_a_servers_top_logprobs():
    p, mass = yes_probability_from_top_logprobs({"Yes": math.log(0.6), "No": math.log(0.2), "Maybe": math.log(0.1)})
    assert math.isclose(p, 0.75) and math.isclose(mass, 0.8)
    assert yes_probability_from_top_logprobs({"No": math.log(0.3)})[0] == 0.0  # Yes outside the top-k: probability 0
    with pytest.raises(ReadoutError, match="neither 'Yes' nor 'No'"):
        yes_probability_from_top_logprobs({"Maybe": 0.0})


def test_sampled_answers_count_only_score_tokens():
    assert mean_sampled_score(["5", " 3", "x", "1"], levels=6) == pytest.approx(((5 + 3 + 1) / 3 / 5, 0.75))
    with pytest.raises(ReadoutError, match="none of the 2 sampled answers is a score token"):
        mean_sampled_score(["x", "yes"], levels=6)


def test_sampling_is_seeded_and_follows_the_tempered_distribution():
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0])
    assert sample_tokens(logits, 0.7, 50, seed=3) == sample_tokens(logits, 0.7, 50, seed=3)
    assert sample_tokens(logits, 0.7, 50, seed=3) != sample_tokens(logits, 0.7, 50, seed=4)
    n, temperature = 4000, 0.7
    drawn = torch.tensor(sample_tokens(logits, temperature, n, seed=0))
    expected = torch.softmax(logits.double() / temperature, dim=-1)
    frequency = torch.bincount(drawn, minlength=4).double() / n
    # Each frequency is a mean of n Bernoulli draws: within 5 standard errors of its probability.
    assert ((frequency - expected).abs() <= 5 * (expected * (1 - expected) / n).sqrt()).all()
    assert set(sample_tokens(logits, 1e-4, 20, seed=1)) == {3}  # a near-zero temperature picks the argmax
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sample_tokens(logits, 0.0, 2, seed=0)


def test_a_seed_depends_on_the_sample_not_on_its_batch():
    a, b = (tensor_to_image(image) for image in random_images(2, seed=5))
    assert content_seed(0, "t", [a, b]) == content_seed(0, "t", [a, b])
    assert len({content_seed(0, "t", [a, b]), content_seed(1, "t", [a, b]), content_seed(0, "u", [a, b]),
                content_seed(0, "t", [b, a])}) == 4


def test_answers_must_be_single_tokens():
    class Tokenizer:
        def encode(self, text, add_special_tokens=False):
            return {"Yes": [5], "No": [6, 7]}[text]

    with pytest.raises(ValueError, match="'No' is 2 tokens"):
        single_token_ids(Tokenizer(), ("Yes", "No"), "yes_no")


@pytest.fixture(scope="module")
def judge_folder(tmp_path_factory):
    return save_test_judge(tmp_path_factory.mktemp("judge") / "judge", answers=ANSWERS)


def _batch(n, seed):
    images = random_images(2 * n, seed)
    return [[image] for image in images[n:]], images[:n], [INSTRUCTIONS[i % 2] for i in range(n)], [None] * n


def _logits(judge_folder, reward, samples):
    """The judge's first-token logits of `samples` under `reward`'s prompt, computed apart from the reward."""
    judge = MLLMJudge.from_pretrained(judge_folder)
    sources, edited, prompts, requirements = samples
    prompt = reward.readout.prompt
    return judge, judge.next_token_logits([
        (prompt.messages(p, r), [tensor_to_image(s[0]), tensor_to_image(e)])
        for s, e, p, r in zip(sources, edited, prompts, requirements)])


def test_in_process_yes_no_is_p_yes_of_the_judges_logits(judge_folder):
    reward = build_reward("mllm", {"model": str(judge_folder), "readout": "yes_no"})
    samples = _batch(5, seed=1)
    result = reward.score(*samples)
    judge, logits = _logits(judge_folder, reward, samples)
    assert "Answer Yes or No" in reward.readout.prompt.text("x")
    yes, no = (judge.tokenizer.encode(answer, add_special_tokens=False)[0] for answer in ANSWERS)
    probabilities = torch.softmax(logits.double(), dim=-1)
    expected = probabilities[:, yes] / (probabilities[:, yes] + probabilities[:, no])
    assert result.valid.all()
    torch.testing.assert_close(result.scores.double(), expected, atol=1e-6, rtol=0)
    assert set(result.extras) == {"judge_yes_no_mass"}


def test_in_process_sampled_scores_are_the_mean_of_seeded_draws(judge_folder):
    options = {"model": str(judge_folder), "readout": "sampled", "samples": SAMPLES, "temperature": TEMPERATURE, "seed": 7}
    reward = build_reward("mllm", options)
    samples = _batch(4, seed=2)
    first, again = reward.score(*samples), reward.score(*samples)
    torch.testing.assert_close(first.scores, again.scores, rtol=0, atol=0, equal_nan=True)  # seeded: the same draws
    assert first.valid.any()
    judge, logits = _logits(judge_folder, reward, samples)
    sources, edited, prompts, requirements = samples
    for i in range(4):
        seed = content_seed(7, reward.readout.prompt.text(prompts[i]), [tensor_to_image(sources[i][0]),
                                                                        tensor_to_image(edited[i])])
        answers = [judge.tokenizer.decode([t]) for t in sample_tokens(logits[i], TEMPERATURE, SAMPLES, seed)]
        try:
            score, _ = mean_sampled_score(answers, 6)
        except ReadoutError:
            assert not first.valid[i] and "sampled answers" in first.failures[i]
            continue
        # One draw that flips with the logits' last bits moves the mean by at most 1 / SAMPLES.
        assert abs(first.scores[i].item() - score) <= 1 / SAMPLES + 1e-6
    by_one = torch.cat([reward.score([s], [e], [p], [r]).scores for s, e, p, r in zip(*samples)])
    both = by_one.isfinite() & first.scores.isfinite()
    assert (by_one[both] - first.scores[both]).abs().max() <= 1 / SAMPLES + 1e-6  # its batch does not choose its draws


@pytest.mark.parametrize("options, message", [
    ({"readout": "vote"}, "reward.options.readout: 'vote'; expected one of ['score', 'yes_no', 'sampled']"),
    ({"readout": "sampled", "temperature": 0}, "reward.options.temperature: must be > 0"),
    ({"readout": "sampled", "samples": 0}, "reward.options.samples: must be >= 1"),
])
def test_bad_readout_options_are_one_line(judge_folder, options, message):
    with pytest.raises(EditR1Error, match=message.replace("[", r"\[").replace("]", r"\]")):
        build_reward("mllm", {"model": str(judge_folder), **options})


def test_yes_no_needs_single_token_answers():
    from editr1.tasks.shapes import SHIPPED_JUDGE

    with pytest.raises(EditR1Error, match=r"reward.options.readout: 'Yes' is \d tokens"):
        build_reward("mllm", {"model": str(SHIPPED_JUDGE), "readout": "yes_no"})


@pytest.fixture(scope="module")
def server(judge_folder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("server")
    config = folder / "serve.yaml"
    config.write_text(f"model: {judge_folder}\nport: 0\nserved_model_name: judge\n")
    process = ServerProcess(config, folder / "stderr.txt")
    yield process
    assert process.stop() == 0


@pytest.mark.parametrize("readout", ["yes_no", "sampled"])
def test_served_readouts_equal_the_in_process_ones(server, judge_folder, readout):
    options = {"readout": readout, "samples": SAMPLES, "temperature": TEMPERATURE, "seed": 3}
    samples = _batch(6, seed=4)
    served = build_reward("mllm_remote", {"url": f"http://127.0.0.1:{server.port}/v1", "model": "judge", **options}
                          ).score(*samples)
    local = build_reward("mllm", {"model": str(judge_folder), **options}).score(*samples)
    assert torch.equal(served.valid, local.valid) and served.valid.any()
    # Yes/no: the served log-probabilities are float32. Sampled: the same seeded draws, up to one draw flipped by
    # the logits' last bits (1 / SAMPLES).
    tolerance = 1e-4 if readout == "yes_no" else 1 / SAMPLES + 1e-6
    assert (served.scores[served.valid] - local.scores[local.valid]).abs().max() <= tolerance
    if readout == "yes_no":
        assert served.scores.max() - served.scores.min() > 1e-3  # the comparison tells samples apart
