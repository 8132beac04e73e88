import pytest

from editr1.errors import EditR1Error
from editr1.rewards.judge_prompt import JudgePrompt

# Today's default prompt for one reference image, copied literally: the shipped judge
# (editr1/tasks/shapes/assets/shapes_judge) was distilled on exactly this text and layout.
ONE_REFERENCE_TEXT = (
    "The first image is the source image and the second image is the edited result. "
    "The editing instruction was: remove the red circle\n"
    "Requirements: keep the background black\n"
    "Rate from 0 to 5 how well the edit follows the instruction and the requirements, with high visual quality. "
    "0 means the wrong object was edited or the requirements fail completely; "
    "5 means the edit is correct, compliant and of high quality. Answer with the number only."
)
DISTILLED_TEMPLATE = (
    "The first image is the source image and the second image is the edited result. "
    "The editing instruction was: {instruction}\n{requirement}"
    "Rate from 0 to {max_score} how well the edit follows the instruction and the requirements, with high visual quality. "
    "0 means the wrong object was edited or the requirements fail completely; "
    "{max_score} means the edit is correct, compliant and of high quality. Answer with the number only."
)


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


def test_one_reference_prompt_is_byte_for_byte_what_the_shipped_judge_was_distilled_on():
    prompt = JudgePrompt()
    assert prompt.messages("remove the red circle", "keep the background black") == [
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": ONE_REFERENCE_TEXT}]}]
    without = ONE_REFERENCE_TEXT.replace("Requirements: keep the background black\n", "")
    assert prompt.text("remove the red circle") == without
    source, edit = {"type": "image_url", "image_url": {"url": "data:A"}}, {"type": "image_url", "image_url": {"url": "data:B"}}
    assert prompt.messages("remove the red circle", None, image_parts=(source, edit)) == [
        {"role": "user", "content": [source, edit, {"type": "text", "text": without}]}]
    assert JudgePrompt(max_score=3).text("x") == DISTILLED_TEMPLATE.format(instruction="x", requirement="", max_score=3)


def test_a_tiny_judge_learns_its_vocabulary_from_the_distilled_wording():
    from editr1.rewards.tiny_judge import TOKENIZER_CORPUS

    assert TOKENIZER_CORPUS[0] == DISTILLED_TEMPLATE  # `judge distill` rebuilds the shipped judge's tokenizer


@pytest.mark.parametrize("references, names", [(2, "Picture 1 and Picture 2"), (3, "Picture 1, Picture 2 and Picture 3")])
def test_several_references_are_named_and_the_edit_comes_last(references, names):
    messages = JudgePrompt().messages("put the cat from Picture 2 on the sofa of Picture 1", None, num_references=references)
    parts = messages[0]["content"]
    assert [p["type"] for p in parts] == ["image"] * (references + 1) + ["text"]
    text = parts[-1]["text"]
    assert text.startswith(f"The first {references} images are the reference images {names}, in that order, "
                           "and the last image is the edited result. The editing instruction was: put the cat")
    assert text.endswith("Answer with the number only.")
    with pytest.raises(ValueError, match=f"2 image parts for {references} reference image"):
        JudgePrompt().messages("x", None, image_parts=[{"type": "image"}] * 2, num_references=references)


def test_user_templates_and_several_references(tmp_path):
    layout = tmp_path / "layout.txt"
    layout.write_text("{images} ({num_references} reference(s)) Edit: {instruction}\n{requirement}Score 0-{max_score}.")
    prompt = JudgePrompt.from_file(layout)
    assert prompt.text("x") == ("The first image is the source image and the second image is the edited result. "
                                "(1 reference(s)) Edit: x\nScore 0-5.")
    assert prompt.text("x", "y", num_references=2) == (
        "The first 2 images are the reference images Picture 1 and Picture 2, in that order, and the last image is "
        "the edited result. (2 reference(s)) Edit: x\nRequirements: y\nScore 0-5.")
    fixed = tmp_path / "fixed.txt"
    fixed.write_text("Image 1 is the source, image 2 the edit. Edit: {instruction}")
    old_style = JudgePrompt.from_file(fixed)
    assert old_style.text("x") == "Image 1 is the source, image 2 the edit. Edit: x"  # existing templates keep working
    with pytest.raises(EditR1Error, match=r"fixed.txt: a sample has 2 reference images, .*neither \{images\} nor \{num_references\}"):
        old_style.messages("x", num_references=2)
