"""A Qwen2-VL processor that works offline and without torchvision.

transformers' `Qwen2VLProcessor` always builds a video processor, which needs torchvision. Editing
models and judges only ever see images, so this subclass carries the PIL image processor and the
tokenizer alone. It loads the `processor/` folders of real Qwen-Image-Edit checkpoints too.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import Qwen2VLProcessor
from transformers.processing_utils import ProcessorMixin


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """`Qwen2VLProcessor` for images only: no video processor, so no torchvision."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


# Qwen2-VL's chat layout (system turn, <|im_start|>role ... <|im_end|>, images as vision-pad spans),
# for tiny models whose tokenizer is built here; real checkpoints ship their own template.
QWEN2VL_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def load_image_only_processor(folder: str | Path) -> ImageOnlyQwen2VLProcessor:
    """Load a Qwen2-VL / Qwen2.5-VL processor folder (image processor, tokenizer, chat template)."""
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    folder = Path(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    chat_template = None
    for name in ("chat_template.jinja", "chat_template.json"):
        if (folder / name).is_file():
            text = (folder / name).read_text()
            chat_template = json.loads(text)["chat_template"] if name.endswith(".json") else text
            break
    return ImageOnlyQwen2VLProcessor(
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(folder),
        tokenizer=tokenizer,
        chat_template=chat_template or getattr(tokenizer, "chat_template", None),
    )
