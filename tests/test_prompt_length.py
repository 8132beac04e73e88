"""Instruction length against the text encoder's limit: each family states its real limit and counts
and cuts instructions in its own tokens; a dataset with an over-long instruction fails at load time
with file and line, or is cut; the Qwen adapters refuse one instead of allocating for it."""

import inspect
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from diffusers import FluxKontextPipeline, QwenImageEditPipeline, QwenImageEditPlusPipeline
from PIL import Image
from tiny_runs import tiny_presets
from tokenizers import normalizers

from editr1.data.jsonl import read_edit_jsonl
from editr1.data.prompt_length import fit_prompt, fit_prompt_lengths
from editr1.errors import DataError, EditR1Error
from editr1.models import qwen_image_edit, qwen_image_edit_plus
from editr1.models.flux2_klein import Flux2KleinAdapter
from editr1.models.flux_kontext import FluxKontextAdapter
from editr1.models.qwen_image_edit import QwenImageEditAdapter
from editr1.models.qwen_image_edit_plus import QwenImageEditPlusAdapter
from editr1.models.registry import build_tiny

FAMILIES = [preset.removeprefix("tiny:") for preset in tiny_presets()]
#: The prompt of the issue: 1.3 MB.
HUGE = "make it blue " * 100000
CORPUS = ["make it blue", "remove the red circle", "move the green square to the left"]


@pytest.fixture(scope="module", params=FAMILIES)
def adapter(request):
    return build_tiny(f"tiny:{request.param}", CORPUS, seed=0)


@pytest.fixture(scope="module")
def qwen():
    return build_tiny("tiny:qwen-image-edit", CORPUS, seed=0)


def _dataset(folder, prompts):
    """A JSONL file with `prompts` on lines 1, 3, 5, ... (blank lines between)."""
    path = folder / "train.jsonl"
    rows = [json.dumps({"image": "a.png", "prompt": p}) for p in prompts]
    path.write_text("\n\n".join(rows) + "\n")
    return path, read_edit_jsonl(path, check_images=False)


def test_defaults_are_the_released_models_limits():
    # diffusers' Qwen-Image edit pipelines: `encode_prompt(max_sequence_length=1024)` (also their
    # `tokenizer_max_length`; `check_inputs` refuses more).
    for pipeline in (QwenImageEditPipeline, QwenImageEditPlusPipeline):
        default = inspect.signature(pipeline.encode_prompt).parameters["max_sequence_length"].default
        assert default == 1024
    assert QwenImageEditAdapter.max_prompt_tokens == QwenImageEditPlusAdapter.max_prompt_tokens == 1024
    # FluxKontextPipeline: T5 `max_sequence_length=512`, which includes T5's end-of-sequence token.
    t5_length = inspect.signature(FluxKontextPipeline.__call__).parameters["max_sequence_length"].default
    assert t5_length == FluxKontextAdapter.max_sequence_length == 512
    assert FluxKontextAdapter.max_prompt_tokens == t5_length - 1


def test_counts_the_instructions_tokens_in_what_the_encoder_sees(adapter):
    prompt = "Make the sky red, then move the green square to the left; keep everything else."
    count = adapter.count_prompt_tokens(prompt)
    if isinstance(adapter, FluxKontextAdapter):
        # T5 sees the instruction and its end-of-sequence token.
        assert len(adapter.tokenizer_2(prompt).input_ids) == count + 1
    elif isinstance(adapter, Flux2KleinAdapter):
        # Qwen3 sees the instruction inside its chat.
        tokens = adapter.tokenizer
        assert len(tokens(adapter.chat_text(prompt)).input_ids) - len(tokens(adapter.chat_text("")).input_ids) == count
    else:
        # The chat around the instruction (template, image tokens) is fixed overhead.
        chat = (qwen_image_edit_plus.chat_text if isinstance(adapter, QwenImageEditPlusAdapter)
                else lambda p, _: qwen_image_edit.PROMPT_TEMPLATE.format(p))
        tokens = adapter.processor.tokenizer
        assert len(tokens(chat(prompt, 1)).input_ids) - len(tokens(chat("", 1)).input_ids) == count


def test_count_ignores_the_tokenizers_settings_from_an_encode():
    # FLUX's encode pads and truncates T5 to 512, and the tokenizer keeps those settings.
    flux = build_tiny("tiny:flux-kontext", CORPUS, seed=0)
    long_prompt = "make it blue " * 300
    expected = flux.count_prompt_tokens(long_prompt)
    flux.tokenizer_2(["x"], padding="max_length", max_length=512, truncation=True)
    assert flux.count_prompt_tokens(long_prompt) == expected > 512


def test_bound_is_never_below_the_count(adapter):
    for prompt in ["x", "make it blue", "  spaced   out  ", "ÉCRIRE en rouge ß", "😀 emoji 😀", "\n\ttabs\n", HUGE[:5000]]:
        assert adapter.count_prompt_tokens(prompt) <= adapter.prompt_token_bound(prompt), prompt


def test_bound_counts_after_normalization(qwen):
    # NFKC (T5's normalizer is one) turns U+FDFA, 3 bytes, into 18 characters: raw bytes are no bound.
    backend = qwen.processor.tokenizer.backend_tokenizer
    original, backend.normalizer = backend.normalizer, normalizers.NFKC()
    try:
        prompt = "\ufdfa" * 20
        assert qwen.count_prompt_tokens(prompt) > len(prompt.encode())
        assert qwen.count_prompt_tokens(prompt) <= qwen.prompt_token_bound(prompt)
    finally:
        backend.normalizer = original


def test_short_instructions_are_not_tokenized(qwen, monkeypatch):
    def fail(prompt):
        raise AssertionError("tokenized an instruction whose bytes already fit")

    monkeypatch.setattr(qwen, "count_prompt_tokens", fail)
    assert fit_prompt("make it blue", "w", qwen) == "make it blue"


def test_huge_instruction_fails_the_load_with_file_and_line(adapter, tmp_path):
    path, samples = _dataset(tmp_path, ["make it blue", HUGE])
    with pytest.raises(DataError) as error:
        fit_prompt_lengths(samples, path, adapter)
    count, limit = adapter.count_prompt_tokens(HUGE), adapter.max_prompt_tokens
    assert str(error.value) == (
        f"{path}:3: field 'prompt': {count} tokens; the limit is {limit} "
        "(data.max_prompt_tokens; set data.prompt_overflow: truncate to cut)"
    )


def test_huge_instruction_is_cut_to_exactly_the_limit(adapter, tmp_path, capsys):
    path, samples = _dataset(tmp_path, ["make it blue", HUGE, "remove the red circle"])
    fitted = fit_prompt_lengths(samples, path, adapter, overflow="truncate")
    limit = adapter.max_prompt_tokens
    assert adapter.count_prompt_tokens(fitted[1].prompt) == limit
    assert HUGE.startswith(fitted[1].prompt)
    assert fitted[1].line == 3 and fitted[1].id == samples[1].id
    assert [fitted[0], fitted[2]] == [samples[0], samples[2]]
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and f"{path}: 1 instruction(s) over {limit} tokens" in out and "line 3" in out
    # Exactly at the limit passes unchanged; one token lower a limit, and it is refused.
    assert fit_prompt(fitted[1].prompt, "w", adapter) == fitted[1].prompt
    with pytest.raises(DataError, match=f"^w: {limit} tokens; the limit is {limit - 1} "):
        fit_prompt(fitted[1].prompt, "w", adapter, max_tokens=limit - 1)


def test_configured_limit_lowers_but_cannot_raise_the_familys(adapter, tmp_path):
    path, samples = _dataset(tmp_path, ["make it blue", "remove the red circle and the blue square"])
    limit = adapter.count_prompt_tokens("make it blue")
    with pytest.raises(DataError, match=re.escape(f"{path}:3: field 'prompt'") + f".* the limit is {limit} "):
        fit_prompt_lengths(samples, path, adapter, max_tokens=limit)
    above = adapter.max_prompt_tokens + 1
    with pytest.raises(EditR1Error, match=f"data.max_prompt_tokens: {above} is above the {adapter.family} limit"):
        fit_prompt_lengths(samples, path, adapter, max_tokens=above)


def test_cut_keeps_whole_characters(qwen):
    # The tiny byte-level BPE spells an emoji in four byte tokens: a cut inside one drops it whole.
    cut = qwen.truncate_prompt("😀" * 10, 6)
    assert cut == "😀" and qwen.count_prompt_tokens(cut) == 4


def test_cut_that_keeps_only_blanks_is_an_error(qwen):
    with pytest.raises(DataError, match="^w: .* tokens, and its first 2 are blank"):
        fit_prompt("\n" * 40 + " " * 40 + "make it blue", "w", qwen, max_tokens=2, overflow="truncate")


@pytest.mark.parametrize("family", ["qwen-image-edit", "qwen-image-edit-plus"])
def test_qwen_encode_refuses_an_over_long_instruction_before_encoding(family, monkeypatch):
    model = build_tiny(f"tiny:{family}", CORPUS, seed=0)

    def fail(*args, **kwargs):
        raise AssertionError("encoded a batch with an over-long instruction")

    monkeypatch.setattr(model, "_encode_prompts", fail)
    monkeypatch.setattr(model, "encode_images", fail)
    image = Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8))
    with pytest.raises(EditR1Error, match=f"instruction 1 of the batch has {model.count_prompt_tokens(HUGE)} tokens; "
                                          f"{family} takes at most 1024"):
        model.encode_conditions([[image], [image]], ["make it blue", HUGE], 32, 32)


def test_data_layer_does_not_import_the_models():
    code = "import sys, editr1.data.prompt_length; print(sorted(m for m in sys.modules if m.startswith('editr1.models')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
