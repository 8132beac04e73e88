import pytest
import torch

from editr1.errors import EditR1Error
from editr1.processing.tiny_tokenizer import build_tiny_qwen_tokenizer
from editr1.rewards.registry import build_reward


def _images(n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 32, 32, generator=generator) for _ in range(n)]


def test_batched_scores_equal_one_at_a_time(tiny_judge_dir):
    reward = build_reward("mllm", {"model": str(tiny_judge_dir), "batch_size": 8})
    sources, edited = _images(5, 0), _images(5, 1)
    prompts = ["remove the red circle", "make the blue square green now please", "remove the red circle",
               "add a green square at the top left", "x"]
    requirements = [None, "keep the rest", None, None, "a much longer requirement string than the others"]
    batched = reward.score(sources, edited, prompts, requirements)
    single = [reward.score([s], [e], [p], [r]) for s, e, p, r in zip(sources, edited, prompts, requirements)]
    assert batched.valid.all()
    assert torch.allclose(batched.scores, torch.cat([b.scores for b in single]), atol=1e-5)
    assert ((batched.scores >= 0) & (batched.scores <= 1)).all()
    mass = batched.extras["judge_score_mass"]
    assert ((mass > 0) & (mass <= 1)).all()
    again = reward.score(sources, edited, prompts, requirements)
    assert torch.equal(again.scores, batched.scores)  # deterministic


def test_non_finite_images_are_unscored_never_zero(tiny_judge_dir):
    reward = build_reward("mllm", {"model": str(tiny_judge_dir)})
    edited = _images(3)
    edited[1][0, 0, 0] = float("nan")
    result = reward.score(_images(3, 5), edited, ["remove the red circle"] * 3, [None] * 3)
    assert result.valid.tolist() == [True, False, True]
    assert torch.isnan(result.scores[1]) and "NaN" in result.failures[1]


def test_judge_errors_are_clear(tiny_judge_dir, tmp_path):
    with pytest.raises(EditR1Error, match="levels"):
        build_reward("mllm", {"model": str(tiny_judge_dir), "levels": 11})
    with pytest.raises(EditR1Error, match="no such model folder"):
        build_reward("mllm", {"model": str(tmp_path / "missing")})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EditR1Error, match="cannot load a judge"):
        build_reward("mllm", {"model": str(empty)})


def test_built_and_reloaded_tokenizers_split_text_alike(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = build_tiny_qwen_tokenizer(["rate it 0 to 5, then 123 apples\n\nok"])
    tokenizer.save_pretrained(tmp_path)
    text = "Rate from 0 to 5: 1234 apples\n\n ok <|im_start|>user\n"
    assert tokenizer(text)["input_ids"] == AutoTokenizer.from_pretrained(tmp_path)(text)["input_ids"]
