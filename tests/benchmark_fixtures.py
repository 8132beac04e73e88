"""Tiny ImgEdit-Bench and GEdit-Bench copies in the published layouts, for tests and demos.

Everything here is made up (procedurally drawn images, our own placeholder prompt texts); only the
file layouts, field names and variable names follow the real benchmarks.

    python tests/benchmark_fixtures.py OUT_DIR

writes::

    OUT_DIR/imgedit/Basic/basic_edit.json        12 samples, all nine edit types
    OUT_DIR/imgedit/Basic/prompts.json           fixture rubrics (type -> text with <edit_prompt>)
    OUT_DIR/imgedit/singleturn/<category>/<file>.jpg
    OUT_DIR/gedit/GEdit-Bench/                   DatasetDict (split "train") saved with save_to_disk
    OUT_DIR/gedit/Step1X-Edit/GEdit-Bench/viescore/vie_prompts.py   fixture prompt module
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw

#: (key, image id relative to singleturn/, instruction, edit_type), deliberately not in key order.
IMGEDIT_ITEMS: tuple[tuple[str, str, str, str], ...] = (
    ("1082", "animal/000000101.jpg", "Make the turtle's shell bright green.", "adjust"),
    ("73", "for_add/000000102.jpg", "Add a yellow balloon floating above the tree.", "add"),
    ("5", "daily object/000000103.jpg", "Extract the blue mug and show it on a white background.", "extract"),
    ("640", "transport/000000104.jpg", "Replace the red car with a bicycle.", "replace"),
    ("12", "architecture/000000105.jpg", "Remove the lamp post on the left.", "remove"),
    ("300", "human/000000106.jpg", "Change the background to a beach at noon.", "background"),
    ("673", "style/000000107.jpg", "Render the scene as a pencil sketch.", "style"),
    ("900", "compose/000000108.jpg", "Remove the cup and turn the table dark brown.", "compose"),
    ("44", "human/000000109.jpg", "Make the person raise both arms.", "action"),
    ("2", "for_add/000000110.jpg", "Add a small cat sitting on the step.", "add"),
    ("1001", "daily object/000000111.jpg", "Extract the green bottle.", "extract"),
    ("88", "animal/000000112.jpg", "Remove the bird from the fence.", "remove"),
)

#: Criteria names the fixture rubrics ask for (made up for the fixture).
IMGEDIT_FIXTURE_NAMES: dict[str, tuple[str, str, str]] = {
    "add": ("Prompt Compliance", "Visual Naturalness", "Physical & Detail Integrity"),
    "adjust": ("Prompt Compliance", "Visual Naturalness", "Physical & Detail Integrity"),
    "extract": ("Object Identity", "Mask Precision", "Visual Quality"),
    "replace": ("Prompt Compliance", "Visual Naturalness", "Physical & Detail Integrity"),
    "remove": ("Prompt Compliance", "Visual Naturalness", "Physical & Detail Integrity"),
    "background": ("Prompt Compliance", "Visual Naturalness", "Physical & Detail Integrity"),
    "style": ("Style Fidelity", "Content Preservation", "Rendering Quality"),
    "compose": ("Prompt Compliance", "Visual Naturalness", "Physical & Detail Integrity"),
    "action": ("Action Fidelity", "Identity Preservation", "Visual Naturalness"),
}

#: (key, task_type, English instruction, Chinese instruction, Intersection_exist).
GEDIT_ITEMS: tuple[tuple[str, str, str, str, bool], ...] = (
    ("a1f3c0de01", "background_change", "Replace the background with a snowy forest.", "把背景换成雪中的森林。", True),
    ("a1f3c0de02", "background_change", "Put the dog on a sandy beach.", "把小狗放到沙滩上。", False),
    ("b2e4d1ef01", "color_alter", "Make the car red.", "把汽车变成红色。", True),
    ("c3d5e2f001", "subject-add", "Add a small dog next to the bench.", "在长椅旁边加一只小狗。", True),
    ("c3d5e2f002", "subject-add", "Add a hat to the man.", "给男人戴上一顶帽子。", False),
    ("d4c6f30101", "subject-remove", "Remove the lamp post.", "去掉路灯杆。", True),
    ("e5b7a41201", "text_change", 'Change the text on the sign to "OPEN".', "把招牌上的文字改成“OPEN”。", False),
    ("f6a8b52301", "tone_transfer", "Make the photo look like it was taken at sunset.", "让照片看起来像是日落时拍的。", True),
)

GEDIT_SOURCE_SIZE = (48, 40)
GEDIT_RAW_SIZE = (96, 80)

_PALETTE = (
    (200, 60, 60), (60, 160, 80), (70, 90, 200), (220, 180, 40), (150, 70, 170),
    (40, 170, 170), (230, 120, 40), (120, 120, 120), (30, 30, 90), (240, 230, 210),
)


def draw_image(index: int, size: tuple[int, int]) -> Image.Image:
    """A small deterministic picture: a background, a rectangle and an ellipse, all chosen by `index`."""
    w, h = size
    bg = _PALETTE[index % len(_PALETTE)]
    fg = _PALETTE[(index * 3 + 1) % len(_PALETTE)]
    other = _PALETTE[(index * 7 + 2) % len(_PALETTE)]
    img = Image.new("RGB", size, bg)
    d = ImageDraw.Draw(img)
    x0 = (index * 5) % (w // 2)
    y0 = (index * 3) % (h // 2)
    d.rectangle([x0, y0, x0 + w // 3, y0 + h // 3], fill=fg)
    d.ellipse([w // 2, h // 2 - (index % 4), w - 3, h - 3], fill=other)
    return img


def _fixture_rubric(edit_type: str) -> str:
    a, b, c = IMGEDIT_FIXTURE_NAMES[edit_type]
    return (
        f"FIXTURE RUBRIC ({edit_type}). Compare the two images and grade the edit.\n"
        f"{a}, {b} and {c}: each a whole number from 1 to 5.\n"
        "Reply format:\n"
        "Brief reasoning: one sentence.\n"
        f"{a}: 1-5\n{b}: 1-5\n{c}: 1-5\n"
        "Instruction: <edit_prompt>\n"
        "The images follow."
    )


def write_imgedit_fixture(root: str | Path) -> Path:
    """Write the ImgEdit fixture under ``root/imgedit`` and return that folder (it holds ``Basic/`` and
    ``singleturn/``: json at ``Basic/basic_edit.json``, image root ``singleturn``)."""
    base = Path(root) / "imgedit"
    images = base / "singleturn"
    basic = base / "Basic"
    basic.mkdir(parents=True, exist_ok=True)
    entries = {}
    for i, (key, rel, prompt, edit_type) in enumerate(IMGEDIT_ITEMS):
        path = images / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        size = (48, 48) if i % 2 == 0 else (64, 40)
        draw_image(i, size).save(path, format="JPEG", quality=90)
        entries[key] = {"id": rel, "prompt": prompt, "edit_type": edit_type}
    (basic / "basic_edit.json").write_text(json.dumps(entries, indent=4, ensure_ascii=False), encoding="utf-8")
    rubrics = {t: _fixture_rubric(t) for t in ("replace", "add", "adjust", "remove", "style", "action", "extract", "background", "compose")}
    (basic / "prompts.json").write_text(json.dumps(rubrics, indent=4, ensure_ascii=False), encoding="utf-8")
    return base


#: The fixture's stand-in for GEdit-Bench/viescore/vie_prompts.py: the official variable names,
#: our own short texts.
VIE_PROMPTS_FIXTURE = '''# Fixture stand-in for vie_prompts.py (same variable names, made-up texts).

_context_no_delimit = """FIXTURE CONTEXT: you rate AI-generated images.
Reply with a JSON object {"score": [...], "reasoning": "..."}."""

_context = """FIXTURE CONTEXT WITH DELIMITERS: wrap the JSON in ||V^=^V|| marks."""

_prompts_0shot_one_image_gen_rule = """FIXTURE RULE: one image made from a text prompt."""

_prompts_0shot_t2i_rule_SC = """FIXTURE T2I SC: does the image show <prompt>? Score 0 to 10."""

_prompts_0shot_two_image_edit_rule = """FIXTURE EDIT RULE: two images, the original and its edit."""

_prompts_0shot_tie_rule_SC = """
FIXTURE TIE SC: score 0 to 10 how well the edit follows <instruction>, and 0 to 10 how little else changed.
Put the two scores in the list: [success, overediting]."""

_prompts_0shot_rule_PQ = """FIXTURE PQ: score 0 to 10 the naturalness and 0 to 10 the absence of artifacts.
Put them in the list: [naturalness, artifacts]."""
'''

#: The SC and PQ prompts the fixture module must yield (for tests).
VIE_FIXTURE_SC = (
    'FIXTURE CONTEXT: you rate AI-generated images.\nReply with a JSON object {"score": [...], "reasoning": "..."}.'
    "\nFIXTURE EDIT RULE: two images, the original and its edit."
    "\n\nFIXTURE TIE SC: score 0 to 10 how well the edit follows <instruction>, and 0 to 10 how little else changed."
    "\nPut the two scores in the list: [success, overediting]."
)
VIE_FIXTURE_PQ = (
    'FIXTURE CONTEXT: you rate AI-generated images.\nReply with a JSON object {"score": [...], "reasoning": "..."}.'
    "\nFIXTURE PQ: score 0 to 10 the naturalness and 0 to 10 the absence of artifacts."
    "\nPut them in the list: [naturalness, artifacts]."
)


def write_vie_prompts_fixture(repo_root: str | Path) -> Path:
    """Write the fixture prompt module at ``repo_root/GEdit-Bench/viescore/vie_prompts.py``; return its path."""
    path = Path(repo_root) / "GEdit-Bench" / "viescore" / "vie_prompts.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(VIE_PROMPTS_FIXTURE, encoding="utf-8")
    return path


def gedit_rows() -> list[dict]:
    """The fixture rows (without images), in dataset order: items interleaved en, cn."""
    rows = []
    for key, task_type, en, cn, inter in GEDIT_ITEMS:
        for language, text in (("en", en), ("cn", cn)):
            rows.append(
                {"task_type": task_type, "key": key, "instruction": text, "instruction_language": language, "Intersection_exist": inter}
            )
    return rows


def save_quietly(dataset, path: str | Path) -> None:
    """`dataset.save_to_disk(path)` without the progress bar (restored afterwards)."""
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        dataset.save_to_disk(str(path))
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


def write_gedit_fixture(root: str | Path) -> Path:
    """Write the GEdit fixture under ``root/gedit``: the dataset (DatasetDict, split "train") at
    ``root/gedit/GEdit-Bench`` (returned) and the prompt module under the fake repo
    ``root/gedit/Step1X-Edit``. ``input_image`` is 48x40, ``input_image_raw`` 96x80."""
    from datasets import Dataset, DatasetDict, Features, Value
    from datasets import Image as ImageFeature

    base = Path(root) / "gedit"
    rows = gedit_rows()
    item_index = {key: i for i, (key, *_rest) in enumerate(GEDIT_ITEMS)}
    columns: dict[str, list] = {c: [] for c in ("task_type", "key", "instruction", "instruction_language", "input_image", "input_image_raw", "Intersection_exist")}
    for row in rows:
        i = item_index[row["key"]]
        for c in ("task_type", "key", "instruction", "instruction_language", "Intersection_exist"):
            columns[c].append(row[c])
        columns["input_image"].append(draw_image(i, GEDIT_SOURCE_SIZE))
        columns["input_image_raw"].append(draw_image(i, GEDIT_RAW_SIZE))
    features = Features(
        {
            "task_type": Value("string"),
            "key": Value("string"),
            "instruction": Value("string"),
            "instruction_language": Value("string"),
            "input_image": ImageFeature(),
            "input_image_raw": ImageFeature(),
            "Intersection_exist": Value("bool"),
        }
    )
    ds = Dataset.from_dict(columns, features=features)
    out = base / "GEdit-Bench"
    save_quietly(DatasetDict({"train": ds}), out)
    write_vie_prompts_fixture(base / "Step1X-Edit")
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python tests/benchmark_fixtures.py OUT_DIR", file=sys.stderr)
        return 2
    root = Path(args[0])
    imgedit = write_imgedit_fixture(root)
    gedit = write_gedit_fixture(root)
    print(f"ImgEdit: {imgedit / 'Basic' / 'basic_edit.json'} (image root {imgedit / 'singleturn'}, prompts {imgedit / 'Basic' / 'prompts.json'})")
    print(f"GEdit: {gedit} (prompts {root / 'gedit' / 'Step1X-Edit'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
