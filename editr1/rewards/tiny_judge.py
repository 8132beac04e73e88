"""A tiny Qwen2.5-VL judge, built offline from configs.

The real judge architecture (`Qwen2_5_VLForConditionalGeneration`, Qwen2-VL image processor, Qwen
chat layout) at toy scale: 4x4-pixel patches merged 2x2, so a 32x32 image is 16 tokens. Random until
trained; the one `editr1 judge distill` trained on the shapes task ships as
`editr1/tasks/shapes/assets/shapes_judge`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
    Qwen2VLImageProcessorPil,
)

from editr1.fileio import fix_modes
from editr1.processing.qwen2vl_image_only import (
    QWEN2VL_CHAT_TEMPLATE,
    ImageOnlyQwen2VLProcessor,
)
from editr1.processing.tiny_tokenizer import build_tiny_qwen_tokenizer
from editr1.rewards.judge_prompt import DEFAULT_TEMPLATE, ONE_REFERENCE
from editr1.rewards.mllm_judge import MLLMJudge
from editr1.rewards.score_logit import score_tokens

#: The text a tiny judge's vocabulary is learned from (besides the caller's instructions): the default
#: template as it read when the shipped judge was distilled, so that `judge distill` reproduces it.
TOKENIZER_CORPUS = (DEFAULT_TEMPLATE.replace("{images}", ONE_REFERENCE), "You are a helpful assistant.",
                    "system user assistant", *score_tokens())


def build_tiny_judge(corpus: Iterable[str] = (), image_size: int = 32, seed: int = 0, hidden: int = 128,
                     layers: int = 4, vision_hidden: int = 64, vision_depth: int = 2, batch_size: int = 64) -> MLLMJudge:
    """A randomly initialised tiny judge; `corpus` (instructions) shapes the tokenizer's vocabulary."""
    torch.manual_seed(seed)
    tokenizer = build_tiny_qwen_tokenizer([*TOKENIZER_CORPUS, *corpus])
    pixels = image_size * image_size
    image_processor = Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, min_pixels=pixels, max_pixels=pixels)
    processor = ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                          chat_template=QWEN2VL_CHAT_TEMPLATE)
    ids = tokenizer.convert_tokens_to_ids
    heads = 4
    half = hidden // heads // 2
    spatial = half * 3 // 8  # mrope splits half the head dim into (time, height, width), as Qwen's [16, 24, 24]
    special = dict(bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"))
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=2, max_position_embeddings=1024,
            rope_parameters={"rope_type": "default", "mrope_section": [half - 2 * spatial, spatial, spatial],
                             "rope_theta": 1e4},
            **special,
        ),
        vision_config=dict(
            depth=vision_depth, hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_heads=4,
            out_hidden_size=hidden, patch_size=4, spatial_merge_size=2, temporal_patch_size=2,
            window_size=image_size, fullatt_block_indexes=list(range(vision_depth)),
        ),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), tie_word_embeddings=True, **special,
    )
    return MLLMJudge(Qwen2_5_VLForConditionalGeneration(config), processor, batch_size)


def save_judge(judge: MLLMJudge, folder: Path, dtype: torch.dtype | None = None) -> None:
    """A transformers-format folder that `MLLMJudge.from_pretrained` (and the `mllm` reward) loads."""
    folder.mkdir(parents=True, exist_ok=True)
    model = judge.model if dtype is None else judge.model.to(dtype)
    model.save_pretrained(folder)
    judge.processor.image_processor.save_pretrained(folder)
    judge.processor.tokenizer.save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(judge.processor.chat_template)
    fix_modes(folder)
    if dtype is not None:
        judge.model.float()
