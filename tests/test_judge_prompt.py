import pytest

from editr1.errors import EditR1Error
from editr1.rewards.judge_prompt import JudgePrompt


def test_default_prompt_orders_images_then_text_with_instruction_and_requirement():
    prompt = JudgePrompt()
    messages = prompt.messages("remove the red circle", "keep the background black")
    parts = messages[0]["content"]
    assert [p["type"] for p in parts] == ["image", "image", "text"]
    text = parts[2]["text"]
    assert "remove the red circle" in text and "Requirements: keep the background black" in text
    assert "0 to 5" in text and "number only" in text
    assert "Requirements" not in prompt.text("remove the red circle")


def test_template_file_with_named_placeholders(tmp_path):
    path = tmp_path / "judge.txt"
    path.write_text("Edit: {instruction}\n{requirement}Score 0-{max_score}.")
    assert JudgePrompt.from_file(path, max_score=9).text("x", "y") == "Edit: x\nRequirements: y\nScore 0-9."


@pytest.mark.parametrize("text, message", [
    ("Rate {instruction} by {style}", "unknown placeholder"),
    ("Rate the edit", "must contain {instruction}"),
    ("Rate {instruction", "invalid template"),
])
def test_bad_templates_name_the_file(tmp_path, text, message):
    path = tmp_path / "judge.txt"
    path.write_text(text)
    with pytest.raises(EditR1Error, match=message) as error:
        JudgePrompt.from_file(path)
    assert str(path) in str(error.value)


def test_missing_template_file(tmp_path):
    with pytest.raises(EditR1Error, match="not found"):
        JudgePrompt.from_file(tmp_path / "nope.txt")
