"""Turn `EditSample`s into model inputs at a fixed resolution, with a small in-memory image cache.

Samples come from `read_edit_jsonl`, which already opened every image under the configured
`data.max_pixels`; here only Pillow's hard limit (2 x `PIL.Image.MAX_IMAGE_PIXELS`) applies.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path

import torch
from PIL import Image

from editr1.data.images import image_to_tensor, load_image, resize_center_crop
from editr1.data.jsonl import EditSample


@lru_cache(maxsize=4096)
def _load_resized(path: Path, size: int) -> Image.Image:
    return resize_center_crop(load_image(path, max_pixels=sys.maxsize), size, size)


def source_images(sample: EditSample, size: int) -> list[Image.Image]:
    """The sample's source image(s), RGB, resized and centre-cropped to `size` x `size`."""
    return [_load_resized(path, size) for path in sample.images]


def target_tensor(sample: EditSample, size: int) -> torch.Tensor:
    if sample.target is None:
        raise ValueError(f"sample {sample.id} (line {sample.line}) has no target image")
    return image_to_tensor(_load_resized(sample.target, size))


def source_tensors(sample: EditSample, size: int) -> list[torch.Tensor]:
    """Every source image of the sample as tensors: what rewards compare the edit with."""
    return [image_to_tensor(image) for image in source_images(sample, size)]
