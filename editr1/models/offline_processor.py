"""A Qwen2-VL processor that works offline and without torchvision.

transformers' `Qwen2VLProcessor` always builds a video processor, which needs torchvision. Editing
models and judges only ever see images, so this subclass carries the PIL image processor and the
tokenizer alone. It loads the `processor/` folders of real Qwen-Image-Edit checkpoints too.
"""

from __future__ import annotations

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
