"""Turn `EditSample`s into model inputs at a fixed resolution, with a small in-memory image cache."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from PIL import Image

from editr1.data.images import MAX_IMAGE_PIXELS, image_to_tensor, load_image, resize_center_crop
from editr1.data.jsonl import EditSample


@lru_cache(maxsize=4096)
def _load_resized(path: Path, size: int, max_pixels: int) -> Image.Image:
    return resize_center_crop(load_image(path, max_pixels), size, size)


def source_images(sample: EditSample, size: int, max_pixels: int = MAX_IMAGE_PIXELS) -> list[Image.Image]:
    """The sample's source image(s), RGB, resized and centre-cropped to `size` x `size`."""
    return [_load_resized(path, size, max_pixels) for path in sample.images]


def target_tensor(sample: EditSample, size: int, max_pixels: int = MAX_IMAGE_PIXELS) -> torch.Tensor:
    if sample.target is None:
        raise ValueError(f"sample {sample.id} (line {sample.line}) has no target image")
    return image_to_tensor(_load_resized(sample.target, size, max_pixels))


def first_source_tensor(sample: EditSample, size: int, max_pixels: int = MAX_IMAGE_PIXELS) -> torch.Tensor:
    """The first source image as a tensor: what rewards compare the edit with."""
    return image_to_tensor(source_images(sample, size, max_pixels)[0])
