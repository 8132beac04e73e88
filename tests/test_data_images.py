import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from editr1.data.images import (
    image_to_tensor,
    load_image,
    resize_center_crop,
    tensor_to_image,
)
from editr1.errors import DataError, EditR1Error


def _save(tmp_path, name, img, **kw):
    p = tmp_path / name
    img.save(p, **kw)
    return p


def _png_header_only(path, width, height):
    """A PNG whose header claims width x height but holds no pixel data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def _pixels(img):
    return np.asarray(img).tolist()


def test_data_error_is_user_facing():
    assert issubclass(DataError, EditR1Error)


def test_loads_rgb_png(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    img = load_image(_save(tmp_path, "a.png", Image.fromarray(a)))
    assert img.mode == "RGB" and img.size == (7, 5)
    assert np.array_equal(np.asarray(img), a)


@pytest.mark.parametrize("make, what", [
    (lambda d: d / "missing.png", "file not found"),
    (lambda d: d, "not a regular file"),
])
def test_missing_or_not_a_file(tmp_path, make, what):
    path = make(tmp_path)
    with pytest.raises(DataError, match=what) as e:
        load_image(path)
    assert str(path) in str(e.value)


def test_not_an_image(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("hello")
    with pytest.raises(DataError, match="not a recognised image") as e:
        load_image(p)
    assert str(p) in str(e.value)


def test_truncated_png(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    p = _save(tmp_path, "t.png", Image.fromarray(noise))
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(DataError, match="corrupt or truncated") as e:
        load_image(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize("side", [9000, 10000, 20000])  # ours, PIL's warning, PIL's error
def test_bomb_rejected_before_decoding(tmp_path, side):
    limit_before = Image.MAX_IMAGE_PIXELS
    p = _png_header_only(tmp_path / "bomb.png", side, side)
    with pytest.raises(DataError, match="too large") as e:
        load_image(p)
    assert str(p) in str(e.value)
    assert Image.MAX_IMAGE_PIXELS == limit_before


def test_small_max_pixels(tmp_path):
    p = _save(tmp_path, "a.png", Image.new("RGB", (10, 10)))
    assert load_image(p, max_pixels=100).size == (10, 10)
    with pytest.raises(DataError, match="10x10 = 100 pixels, limit is 99"):
        load_image(p, max_pixels=99)


def test_palette_without_and_with_transparency(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    img.putdata([0, 1])
    assert _pixels(load_image(_save(tmp_path, "p.png", img))) == [[[0, 0, 0], [10, 20, 30]]]
    img.putpalette([200, 100, 50, 10, 20, 30] + [0] * 762)
    p = _save(tmp_path, "pt.png", img, transparency=0)
    assert _pixels(load_image(p)) == [[[0, 0, 0], [10, 20, 30]]]


def test_gray_modes(tmp_path):
    assert _pixels(load_image(_save(tmp_path, "l.png", Image.new("L", (1, 1), 77)))) == [[[77] * 3]]
    one = Image.new("1", (2, 1))
    one.putpixel((1, 0), 1)
    assert _pixels(load_image(_save(tmp_path, "1.png", one))) == [[[0] * 3, [255] * 3]]


def test_alpha_composited_over_black(tmp_path):
    la = Image.fromarray(np.array([[[200, 0], [200, 255], [200, 128]]], dtype=np.uint8), "LA")
    assert _pixels(load_image(_save(tmp_path, "la.png", la))) == [[[0] * 3, [200] * 3, [100] * 3]]
    rgba = Image.fromarray(np.array([[[255, 100, 50, 0], [255, 100, 50, 255]]], dtype=np.uint8), "RGBA")
    assert _pixels(load_image(_save(tmp_path, "rgba.png", rgba))) == [[[0, 0, 0], [255, 100, 50]]]


def test_cmyk(tmp_path):
    img = Image.new("CMYK", (1, 1), (0, 255, 255, 0))  # full magenta + yellow = red
    assert _pixels(load_image(_save(tmp_path, "c.tif", img))) == [[[255, 0, 0]]]


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    a = np.array([[0, 65535, 128 * 257]], dtype=np.uint16)
    img = Image.fromarray(a)
    assert img.mode == "I;16"
    assert _pixels(load_image(_save(tmp_path, "i16.png", img))) == [[[0] * 3, [255] * 3, [128] * 3]]
    i32 = Image.fromarray(a.astype(np.int32), "I")
    assert _pixels(load_image(_save(tmp_path, "i32.tif", i32))) == [[[0] * 3, [255] * 3, [128] * 3]]


def test_float_mode_taken_as_unit_range(tmp_path):
    f = Image.fromarray(np.array([[0.0, 1.0, 0.5, 2.0]], dtype=np.float32), "F")
    assert _pixels(load_image(_save(tmp_path, "f.tif", f))) == [[[0] * 3, [255] * 3, [128] * 3, [255] * 3]]


def test_resize_center_crop():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))
    a, b = resize_center_crop(img, 16, 16), resize_center_crop(img, 16, 16)
    assert a.size == (16, 16) and a.tobytes() == b.tobytes()
    assert resize_center_crop(img, 40, 20).size == (40, 20)
    same = resize_center_crop(img, 50, 30)
    assert same is not img and same.tobytes() == img.tobytes()
    cols = Image.fromarray(np.array([[[i * 60] * 3 for i in range(4)]] * 2, dtype=np.uint8))
    assert _pixels(resize_center_crop(cols, 2, 2)) == [[[60] * 3, [120] * 3]] * 2
    with pytest.raises(ValueError):
        resize_center_crop(img, 0, 4)


def test_tensor_round_trip_clamps_and_rounds():
    a = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    t = image_to_tensor(Image.fromarray(a))
    assert t.shape == (3, 4, 6) and t.dtype == torch.float32
    assert 0.0 <= t.min() and t.max() <= 1.0
    assert np.array_equal(np.asarray(tensor_to_image(t)), a)
    odd = torch.tensor([-1.0, 0.5, 2.0, 0.2]).view(1, 1, 4).expand(3, 1, 4)
    assert np.asarray(tensor_to_image(odd))[0, :, 0].tolist() == [0, 128, 255, 51]
    with pytest.raises(ValueError):
        tensor_to_image(torch.zeros(1, 4, 4))


def _marked(w, h):
    """A w x h image, black except one red pixel at the top-left corner."""
    img = Image.new("RGB", (w, h))
    img.putpixel((0, 0), (255, 0, 0))
    return img


def _oriented_jpeg(tmp_path, orientation):
    """The marked 6x4 image stored as a JPEG with EXIF Orientation = ``orientation``."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(tmp_path, f"o{orientation}.jpg", _marked(6, 4), exif=exif, quality=100, subsampling=0)


def _red_corner(img):
    """Which corner of ``img`` holds the (lossy) red pixel."""
    w, h = img.size
    corners = {"top-left": (0, 0), "top-right": (w - 1, 0), "bottom-left": (0, h - 1), "bottom-right": (w - 1, h - 1)}
    return [name for name, xy in corners.items() if img.getpixel(xy)[0] > 128 and img.getpixel(xy)[1] < 128]


@pytest.mark.parametrize("orientation, size, corner", [
    (1, (6, 4), "top-left"),
    (3, (6, 4), "bottom-right"),  # stored upside down
    (6, (4, 6), "top-right"),     # stored rotated 90 degrees anticlockwise: shown turned clockwise
    (8, (4, 6), "bottom-left"),   # stored rotated 90 degrees clockwise
])
def test_exif_orientation_is_applied(tmp_path, orientation, size, corner):
    img = load_image(_oriented_jpeg(tmp_path, orientation))
    assert img.mode == "RGB" and img.size == size
    assert _red_corner(img) == [corner]


def test_exif_rotated_image_is_size_checked(tmp_path):
    p = _oriented_jpeg(tmp_path, 6)
    with pytest.raises(DataError, match="6x4 = 24 pixels, limit is 23"):
        load_image(p, max_pixels=23)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty file \(0 bytes\)") as e:
        load_image(p)
    assert str(p) in str(e.value)


def test_symlink_loop_and_dangling_symlink(tmp_path):
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    with pytest.raises(DataError, match="symlink loop") as e:
        load_image(loop)
    assert str(loop) in str(e.value)
    dangling = tmp_path / "dangling.png"
    dangling.symlink_to(tmp_path / "gone.png")
    with pytest.raises(DataError, match="dangling symlink, points to a missing file") as e:
        load_image(dangling)
    assert str(dangling) in str(e.value) and "gone.png" in str(e.value)


def test_size_error_names_the_config_field(tmp_path):
    p = _save(tmp_path, "a.png", Image.new("RGB", (10, 10)))
    with pytest.raises(DataError, match=r"limit is 99 \(data\.max_pixels\)$"):
        load_image(p, max_pixels=99, limit_name="data.max_pixels")


def test_pillow_bomb_error_quotes_the_configured_limit(tmp_path):
    # Pillow itself refuses this header inside Image.open, before our own size check runs.
    side = 20000
    assert side * side > 2 * Image.MAX_IMAGE_PIXELS
    p = _png_header_only(tmp_path / "bomb.png", side, side)
    with pytest.raises(DataError) as e:
        load_image(p, max_pixels=1000, limit_name="data.max_pixels")
    message = str(e.value)
    assert str(p) in message and "limit is 1000 (data.max_pixels)" in message
    assert str(Image.MAX_IMAGE_PIXELS) not in message  # Pillow's own limit is not the user's
    with pytest.raises(DataError, match=r"Pillow refuses .* even though data\.max_pixels allows 1000000000000$"):
        load_image(p, max_pixels=10**12, limit_name="data.max_pixels")


def test_limit_above_pillow_warning_level_is_honoured(tmp_path):
    # Between Image.MAX_IMAGE_PIXELS and twice it Pillow only warns: the configured limit decides.
    side = 10000
    assert Image.MAX_IMAGE_PIXELS < side * side < 2 * Image.MAX_IMAGE_PIXELS
    p = _png_header_only(tmp_path / "big.png", side, side)
    with pytest.raises(DataError, match=f"limit is {side * side - 1} \\(data.max_pixels\\)"):
        load_image(p, max_pixels=side * side - 1, limit_name="data.max_pixels")
