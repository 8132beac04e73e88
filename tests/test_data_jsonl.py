import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from editr1.data.jsonl import EditSample, read_edit_jsonl, write_jsonl
from editr1.errors import DataError


@pytest.fixture
def data_dir(tmp_path):
    """A dataset folder with two good images and two targets under img/ and tgt/."""
    d = tmp_path / "data"
    for sub in ("img", "tgt"):
        (d / sub).mkdir(parents=True)
        for i in (1, 2):
            Image.new("RGB", (4, 4), (i * 50, 0, 0)).save(d / sub / f"{i}.png")
    return d


def _write(d: Path, *lines, name="train.jsonl"):
    """Write raw lines; dict lines are JSON-encoded."""
    p = d / name
    p.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
    return p


def _error(path, **kw) -> str:
    with pytest.raises(DataError) as e:
        read_edit_jsonl(path, **kw)
    return str(e.value)


def test_good_file(data_dir):
    p = _write(
        data_dir,
        {"id": "a", "image": "img/1.png", "prompt": "Make it blue", "requirement": "keep size",
         "target": "tgt/1.png", "score": 3, "meta": {"k": [1]}},
        "",
        {"image": ["img/1.png", "img/2.png"], "prompt": "Blend them"},
        {"id": 7, "image": str((data_dir / "img/2.png").resolve()), "prompt": "x"},
    )
    a, b, c = read_edit_jsonl(p)
    assert a == EditSample("a", (data_dir / "img/1.png",), "Make it blue", "keep size",
                           data_dir / "tgt/1.png", 1, {"score": 3, "meta": {"k": [1]}})
    assert b.id == "3" and b.line == 3 and b.images == (data_dir / "img/1.png", data_dir / "img/2.png")
    assert b.requirement is None and b.target is None and b.extra == {}
    assert c.id == "7" and c.images == ((data_dir / "img/2.png").resolve(),)


def test_paths_resolve_against_jsonl_folder_not_cwd(data_dir, monkeypatch, tmp_path):
    _write(data_dir, {"image": "img/1.png", "prompt": "x"})
    monkeypatch.chdir(tmp_path)
    (s,) = read_edit_jsonl(Path("data/train.jsonl"))
    assert s.images == (Path("data/img/1.png"),)


@pytest.mark.parametrize("line, field, what", [
    ('{"image": "img/1.png", "prompt": ', None, "invalid JSON"),
    ('["img/1.png", "x"]', None, "expected a JSON object, got array"),
    ({"image": "img/1.png"}, "prompt", "missing"),
    ({"image": "img/1.png", "prompt": "  "}, "prompt", "must not be empty"),
    ({"image": "img/1.png", "prompt": 5}, "prompt", "expected a string, got number"),
    ({"prompt": "x"}, "image", "missing"),
    ({"image": 3, "prompt": "x"}, "image", "expected a path string or a list"),
    ({"image": [], "prompt": "x"}, "image", "empty"),
    ({"image": ["img/1.png", None], "prompt": "x"}, "image[1]", "expected a path string, got null"),
    ({"image": "img/1.png", "prompt": "x", "requirement": 1}, "requirement", "expected a string"),
    ({"image": "img/1.png", "prompt": "x", "id": True}, "id", "expected a string or an integer"),
    ({"image": "img/1.png", "prompt": "x", "target": 2}, "target", "expected a path string"),
    ('{"image": "img/1.png", "prompt": "x", "prompt": "y"}', "prompt", "more than once"),
])
def test_bad_line_names_file_line_and_field(data_dir, line, field, what):
    p = _write(data_dir, {"image": "img/1.png", "prompt": "fine"}, line)
    msg = _error(p)
    prefix = f"{p}:2: " + (f"field '{field}': " if field else "")
    assert msg.startswith(prefix), msg
    assert what in msg


def test_missing_image_file(data_dir):
    p = _write(data_dir, *([{"image": "img/1.png", "prompt": "x"}] * 6), {"image": "img/7.png", "prompt": "x"})
    assert _error(p) == f"{p}:7: field 'image': file not found: {data_dir / 'img/7.png'}"
    assert len(read_edit_jsonl(p, check_images=False)) == 7


def test_missing_image_in_list_names_index(data_dir):
    p = _write(data_dir, {"image": ["img/1.png", "img/9.png"], "prompt": "x"})
    assert _error(p).startswith(f"{p}:1: field 'image[1]': file not found")


def test_corrupt_png(data_dir):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    bad = data_dir / "img/bad.png"
    Image.fromarray(noise).save(bad)
    bad.write_bytes(bad.read_bytes()[:300])
    p = _write(data_dir, {"image": "img/1.png", "prompt": "x", "target": "img/bad.png"})
    msg = _error(p)
    assert msg.startswith(f"{p}:1: field 'target': corrupt or truncated image: {bad}"), msg


def test_bomb_header(data_dir):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = data_dir / "img/bomb.png"
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    p = _write(data_dir, {"image": "img/bomb.png", "prompt": "x"})
    assert _error(p).startswith(f"{p}:1: field 'image': image too large")


def test_small_max_pixels(data_dir):
    p = _write(data_dir, {"image": "img/1.png", "prompt": "x"})
    assert _error(p, max_pixels=15).startswith(f"{p}:1: field 'image': image too large")
    assert len(read_edit_jsonl(p, max_pixels=16)) == 1


def test_target_required(data_dir):
    p = _write(data_dir, {"image": "img/1.png", "prompt": "x", "target": "tgt/1.png"},
               {"image": "img/2.png", "prompt": "y"})
    assert len(read_edit_jsonl(p)) == 2
    assert _error(p, require_target=True).startswith(f"{p}:2: field 'target': missing")


def test_duplicate_id(data_dir):
    p = _write(data_dir, {"id": "2", "image": "img/1.png", "prompt": "x"},
               {"image": "img/2.png", "prompt": "y"})  # default id "2" clashes
    assert _error(p) == f"{p}:2: field 'id': duplicate id '2' (first used on line 1)"


def test_missing_and_empty_files(tmp_path):
    assert "file not found" in _error(tmp_path / "nope.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    assert _error(empty) == f"{empty}: no samples (the file is empty)"


def test_write_jsonl_round_trip_and_atomicity(tmp_path):
    p = tmp_path / "sub" / "out.jsonl"
    write_jsonl(p, [{"a": 1, "p": Path("x/y.png")}, {"b": "é"}])
    assert p.read_text(encoding="utf-8") == '{"a": 1, "p": "x/y.png"}\n{"b": "é"}\n'
    before = p.read_bytes()

    def rows():
        yield {"c": 1}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_jsonl(p, rows())
    with pytest.raises(TypeError):
        write_jsonl(p, [{"bad": object()}])
    assert p.read_bytes() == before
    assert os.listdir(p.parent) == ["out.jsonl"]  # no temp files left behind


@pytest.mark.parametrize("row, kw, expected", [
    ({"image": "img/1.png", "promt": "x"}, {},
     "field 'prompt': missing (required); found unknown field 'promt' — did you mean 'prompt'?"),
    ({"images": "img/1.png", "prompt": "x"}, {},
     "field 'image': missing (required); found unknown field 'images' — did you mean 'image'?"),
    ({"image": "img/1.png", "prompt": "x", "traget": "tgt/1.png"}, {"require_target": True},
     "field 'target': missing (required for this dataset); found unknown field 'traget' — did you mean 'target'?"),
    ({"image": "img/1.png", "instruction": "x"}, {}, "field 'prompt': missing (required)"),
])
def test_misspelt_required_field_is_named(data_dir, row, kw, expected):
    good = [{"image": f"img/{i}.png", "prompt": "fine", "target": f"tgt/{i}.png"} for i in (1, 2)]
    p = _write(data_dir, *good, row)
    assert _error(p, **kw) == f"{p}:3: {expected}"


def test_size_error_names_the_limit_field(data_dir):
    p = _write(data_dir, {"image": "img/1.png", "prompt": "x"})
    assert _error(p, max_pixels=15).endswith("limit is 15 (data.max_pixels)")
    assert _error(p, max_pixels=15, max_pixels_field="eval.max_pixels").endswith("limit is 15 (eval.max_pixels)")


def test_jsonl_symlink_loop(tmp_path):
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)
    assert _error(loop) == f"{loop}: symlink loop"


def test_write_jsonl_new_file_gets_the_usual_mode(tmp_path):
    from editr1.fileio import default_file_mode

    write_jsonl(tmp_path / "new.jsonl", [{"a": 1}])
    assert (tmp_path / "new.jsonl").stat().st_mode & 0o777 == default_file_mode()
