import pytest
import torch

from editr1.data.images import tensor_to_image
from editr1.errors import EditR1Error
from editr1.processing.tiny_tokenizer import build_tiny_qwen_tokenizer
from editr1.rewards.registry import build_reward


def _images(n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 32, 32, generator=generator) for _ in range(n)]


def test_batched_scores_equal_one_at_a_time(tiny_judge_dir):
    reward = build_reward("mllm", {"model": str(tiny_judge_dir), "batch_size": 8})
    sources, edited = [[image] for image in _images(5, 0)], _images(5, 1)
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
    result = reward.score([[image] for image in _images(3, 5)], edited, ["remove the red circle"] * 3, [None] * 3)
    assert result.valid.tolist() == [True, False, True]
    assert torch.isnan(result.scores[1]) and "NaN" in result.failures[1]
    second = _images(2, 6)
    second[1][0, 1, 1] = float("inf")  # a bad second reference image counts too
    again = reward.score([[_images(1, 7)[0], second[0]], [_images(1, 8)[0], second[1]]], _images(2, 9), ["x"] * 2, [None] * 2)
    assert again.valid.tolist() == [True, False] and "NaN or infinite" in again.failures[1]


def test_the_judge_sees_every_reference_image_then_the_edit(tiny_judge_dir):
    reward = build_reward("mllm", {"model": str(tiny_judge_dir)})
    seen, original = [], reward.judge.next_token_logits

    def recording(conversations):
        seen.extend(conversations)
        return original(conversations)

    reward.judge.next_token_logits = recording
    first, second, edit = _images(3, 11)
    result = reward.score([[first, second]], [edit], ["put the cat from Picture 2 on the sofa of Picture 1"], [None])
    assert result.valid.all()
    (messages, images), = seen
    assert [tensor_to_image(t).tobytes() for t in (first, second, edit)] == [image.tobytes() for image in images]
    parts = messages[0]["content"]
    assert [p["type"] for p in parts] == ["image", "image", "image", "text"]
    assert "Picture 1 and Picture 2" in parts[-1]["text"] and "the last image is the edited result" in parts[-1]["text"]


def test_batched_equals_one_at_a_time_with_mixed_reference_counts(tiny_judge_dir):
    reward = build_reward("mllm", {"model": str(tiny_judge_dir), "batch_size": 4})
    pool = _images(9, 21)
    sources = [pool[:1], pool[1:3], pool[3:6], pool[6:8], pool[8:9]]
    edited = _images(5, 22)
    prompts = ["remove the red circle", "make the blue square green", "x", "put Picture 2 into Picture 1", "y"]
    requirements = [None, "keep the rest", None, None, "z"]
    batched = reward.score(sources, edited, prompts, requirements)
    single = torch.cat([reward.score([s], [e], [p], [r]).scores for s, e, p, r in zip(sources, edited, prompts, requirements)])
    assert batched.valid.all()
    torch.testing.assert_close(batched.scores, single, atol=1e-5, rtol=0)
    # The references matter: the same edit judged against other references scores differently.
    swapped = reward.score([pool[1:3][::-1]], [edited[1]], [prompts[1]], [requirements[1]])
    assert abs(float(swapped.scores[0]) - float(batched.scores[1])) > 1e-6


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
