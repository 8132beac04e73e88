"""Safe image loading and the image <-> tensor conversions used everywhere.

Every failure to load an image becomes a :class:`DataError` naming the path, so
a bad file in a dataset is reported instead of crashing a training job later.
"""

from __future__ import annotations

import errno
import os
import stat
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from editr1.errors import DataError

#: Largest image (width * height) that :func:`load_image` accepts by default.
MAX_IMAGE_PIXELS = 64 * 1024 * 1024

# Modes whose samples are wider than 8 bits; they are scaled, never clipped.
_WIDE_INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def load_image(path: Path, max_pixels: int = MAX_IMAGE_PIXELS, limit_name: str | None = None) -> Image.Image:
    """Open ``path``, fully decode it, turn it upright and return it as an 8-bit RGB image.

    The EXIF orientation is applied, so a photo stored on its side loads the way viewers show it.
    Raises DataError (naming the path) for a missing, empty, unreadable, corrupt, truncated or
    oversized (> ``max_pixels`` pixels, checked from the header before decoding) file;
    ``limit_name`` (e.g. "data.max_pixels") is the setting that error names. Pillow refuses
    headers above 2 x ``Image.MAX_IMAGE_PIXELS`` inside ``Image.open`` whatever ``max_pixels`` says.
    """
    path = Path(path)
    problem = file_problem(path)
    if problem is not None:
        raise DataError(f"{problem}: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"empty file (0 bytes): {path}")
    try:
        # Between Image.MAX_IMAGE_PIXELS and twice it Pillow only warns; _check_size is the guard
        # there. (catch_warnings is process-global: fine for loader processes, not threads.)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                _check_size(img, path, max_pixels, limit_name)
                img.load()
                # Turning keeps the pixel count, so the header check above still bounds memory.
                ImageOps.exif_transpose(img, in_place=True)
                return _to_rgb(img)
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise DataError(_pillow_refused(path, max_pixels, limit_name)) from e
    except UnidentifiedImageError as e:
        raise DataError(f"not a recognised image format: {path}") from e
    except PermissionError as e:
        raise DataError(f"unreadable (permission denied): {path}") from e
    except Exception as e:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError...
        raise DataError(f"corrupt or truncated image: {path} ({type(e).__name__}: {e})") from e


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a regular file, in a few words; None when it can."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            return f"dangling symlink, points to a missing file ({os.readlink(path)})"
        return "file not found"
    except PermissionError:
        return "unreadable (permission denied)"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symlink loop"
        return f"unreadable ({e.strerror or e})"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    return None


def _limit(max_pixels: int, limit_name: str | None) -> str:
    return f"limit is {max_pixels}" + (f" ({limit_name})" if limit_name else "")


def _check_size(img: Image.Image, path: Path, limit: int, limit_name: str | None) -> None:
    """Reject images by their header size, before any pixel is decoded."""
    w, h = img.size
    if w <= 0 or h <= 0:
        raise DataError(f"image has no pixels ({w}x{h}): {path}")
    if w * h > limit:
        raise DataError(f"image too large: {path} is {w}x{h} = {w * h} pixels, {_limit(limit, limit_name)}")


def _pillow_refused(path: Path, max_pixels: int, limit_name: str | None) -> str:
    """The message for a header that Pillow's own bomb guard refused inside Image.open."""
    hard = 2 * Image.MAX_IMAGE_PIXELS
    if max_pixels < hard:
        return f"image too large: {path} has more than {hard} pixels, {_limit(max_pixels, limit_name)}"
    allowed = f"{limit_name} allows {max_pixels}" if limit_name else f"the limit is {max_pixels}"
    return (f"image too large: {path} has more than {hard} pixels, which Pillow refuses "
            f"(2 x PIL.Image.MAX_IMAGE_PIXELS) even though {allowed}")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparent pixels go over black."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img.copy()
    if mode in _WIDE_INT_MODES:
        # 16-bit data (PIL opens 16-bit PNG/TIFF as these, "I" included): map
        # 0..65535 linearly onto 0..255, where PIL's convert would clip.
        a = np.asarray(img).astype(np.float64)
        return _gray_to_rgb(np.clip(a, 0, 65535) / 257.0)
    if mode == "F":
        # Float images are taken to hold intensities in [0, 1].
        a = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0)
        return _gray_to_rgb(np.clip(a, 0.0, 1.0) * 255.0)
    if _has_alpha(img):
        return _over_black(img.convert("RGBA"))
    return img.convert("RGB")


def _has_alpha(img: Image.Image) -> bool:
    """True when the image carries an alpha channel or a transparency key."""
    return img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info


def _gray_to_rgb(values: np.ndarray) -> Image.Image:
    """Turn a 2-D array of 0..255 floats into an RGB image, rounding."""
    g = np.rint(values).astype(np.uint8)
    return Image.fromarray(np.repeat(g[:, :, None], 3, axis=2), "RGB")


def _over_black(rgba: Image.Image) -> Image.Image:
    """Composite an RGBA image over a black background."""
    a = np.asarray(rgba).astype(np.uint32)
    rgb = (a[:, :, :3] * a[:, :, 3:4] + 127) // 255
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def resize_center_crop(img: Image.Image, width: int, height: int) -> Image.Image:
    """Scale ``img`` to cover width x height, then crop the centre.

    Deterministic: bicubic resampling, integer crop offsets. An image already
    at the target size is returned as an unmodified copy.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    w, h = img.size
    if (w, h) == (width, height):
        return img.copy()
    scale = max(width / w, height / h)
    # max() guards against rounding a covering size down by one pixel.
    new_w = max(width, round(w * scale))
    new_h = max(height, round(h * scale))
    resized = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left = (new_w - width) // 2
    top = (new_h - height) // 2
    return resized.crop((left, top, left + width, top + height))


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """Return a float32 tensor [3, H, W] with values in [0, 1]."""
    if img.mode != "RGB":
        img = _to_rgb(img)
    a = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div_(255.0)


def tensor_to_image(t: torch.Tensor) -> Image.Image:
    """Convert a [3, H, W] tensor in [0, 1] to an RGB image (clamped, rounded)."""
    if t.ndim != 3 or t.shape[0] != 3:
        raise ValueError(f"expected a tensor of shape [3, H, W], got {tuple(t.shape)}")
    t = torch.nan_to_num(t.detach().to("cpu", torch.float32), nan=0.0)
    a = t.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return Image.fromarray(a.permute(1, 2, 0).contiguous().numpy(), "RGB")
