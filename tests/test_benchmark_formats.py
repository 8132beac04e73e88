"""ImgEdit-Bench and GEdit-Bench formats: readers, prompt files, reply parsers, aggregation, paths."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from PIL import Image

from benchmark_fixtures import (
    GEDIT_ITEMS,
    GEDIT_RAW_SIZE,
    GEDIT_SOURCE_SIZE,
    IMGEDIT_FIXTURE_NAMES,
    IMGEDIT_ITEMS,
    VIE_FIXTURE_PQ,
    VIE_FIXTURE_SC,
    save_quietly,
    write_gedit_fixture,
    write_imgedit_fixture,
)
from editr1.errors import DataError, EditR1Error
from editr1.eval.benchmarks.common import BenchSample, ReplyParseError
from editr1.eval.benchmarks.gedit import (
    EDITR1_GEDIT_PROMPTS,
    GEDIT_TYPES,
    aggregate_gedit,
    gedit_dataset_key,
    gedit_official_paths,
    gedit_pq_request,
    gedit_sc_request,
    gedit_source_image,
    load_official_gedit_prompts,
    parse_viescore_reply,
    read_gedit,
    render_sc,
    resize_to_source,
)
from editr1.eval.benchmarks.imgedit import (
    EDITR1_IMGEDIT_PROMPTS,
    IMGEDIT_CRITERIA,
    IMGEDIT_TYPES,
    aggregate_imgedit,
    display_name,
    imgedit_official_path,
    imgedit_request,
    load_official_imgedit_prompts,
    overall_from_type_means,
    parse_imgedit_reply,
    read_imgedit,
)
from editr1.eval.benchmarks.official_prompts import read_string_constants

# ---------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    write_imgedit_fixture(root)
    write_gedit_fixture(root)
    return root


@pytest.fixture
def imgedit_copy(fixture_root, tmp_path) -> Path:
    """A private copy of the ImgEdit fixture that a test may damage."""
    dst = tmp_path / "imgedit"
    shutil.copytree(fixture_root / "imgedit", dst)
    return dst


def _edit_json(base: Path, change) -> Path:
    path = base / "Basic" / "basic_edit.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------
# ImgEdit: reading


def test_imgedit_types_and_display_names():
    assert IMGEDIT_TYPES == ("add", "adjust", "extract", "replace", "remove", "background", "style", "compose", "action")
    assert [display_name(t) for t in IMGEDIT_TYPES] == [
        "Add", "Adjust", "Extract", "Replace", "Remove", "Background", "Style", "Hybrid", "Action",
    ]
    assert display_name("alter") == "Adjust"


def test_read_imgedit_fixture(fixture_root):
    base = fixture_root / "imgedit"
    samples = read_imgedit(base / "Basic" / "basic_edit.json", base / "singleturn")
    assert [s.key for s in samples] == sorted((k for k, *_ in IMGEDIT_ITEMS), key=int)
    assert {s.task_type for s in samples} == set(IMGEDIT_TYPES)
    by_key = {s.key: s for s in samples}
    for key, rel, prompt, edit_type in IMGEDIT_ITEMS:
        s = by_key[key]
        assert (s.benchmark, s.task_type, s.instruction, s.language, s.intersection) == ("imgedit", edit_type, prompt, "en", True)
        assert s.source_path.is_absolute() and s.source_path.is_file()
        assert s.source_path == (base / "singleturn" / rel).resolve()
    assert by_key["5"].source_path.parent.name == "daily object"


def test_read_imgedit_accepts_alter(imgedit_copy):
    path = _edit_json(imgedit_copy, lambda d: d["1082"].update(edit_type="alter"))
    samples = read_imgedit(path, imgedit_copy / "singleturn")
    assert {s.key: s.task_type for s in samples}["1082"] == "adjust"


def test_read_imgedit_missing_file(tmp_path):
    with pytest.raises(DataError, match="basic_edit.json does not exist"):
        read_imgedit(tmp_path / "Basic" / "basic_edit.json", tmp_path)


def test_read_imgedit_bad_json_names_line(imgedit_copy):
    path = imgedit_copy / "Basic" / "basic_edit.json"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[3] = lines[3].rstrip(",")  # drop a comma on line 4
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_imgedit(path, imgedit_copy / "singleturn")
    assert str(path) in str(e.value) and "line 5" in str(e.value)


def test_read_imgedit_duplicate_key(imgedit_copy):
    path = imgedit_copy / "Basic" / "basic_edit.json"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace('"73": {', '"1082": {', 1), encoding="utf-8")
    with pytest.raises(DataError, match="key '1082' twice"):
        read_imgedit(path, imgedit_copy / "singleturn")


def test_read_imgedit_missing_field(imgedit_copy):
    path = _edit_json(imgedit_copy, lambda d: d["640"].pop("prompt"))
    with pytest.raises(DataError) as e:
        read_imgedit(path, imgedit_copy / "singleturn")
    assert "'640'" in str(e.value) and "prompt" in str(e.value) and str(path) in str(e.value)


def test_read_imgedit_unknown_type_lists_known(imgedit_copy):
    path = _edit_json(imgedit_copy, lambda d: d["73"].update(edit_type="recolour"))
    with pytest.raises(DataError) as e:
        read_imgedit(path, imgedit_copy / "singleturn")
    msg = str(e.value)
    assert "'73'" in msg and "recolour" in msg and all(t in msg for t in IMGEDIT_TYPES)


def test_read_imgedit_missing_image(imgedit_copy):
    (imgedit_copy / "singleturn" / "transport" / "000000104.jpg").unlink()
    with pytest.raises(DataError) as e:
        read_imgedit(imgedit_copy / "Basic" / "basic_edit.json", imgedit_copy / "singleturn")
    assert "'640'" in str(e.value) and "000000104.jpg" in str(e.value)


def test_read_imgedit_refuses_paths_outside_root(imgedit_copy):
    path = _edit_json(imgedit_copy, lambda d: d["12"].update(id="../Basic/prompts.json"))
    with pytest.raises(DataError, match="inside the image root"):
        read_imgedit(path, imgedit_copy / "singleturn")


def test_imgedit_request_order_and_text(fixture_root):
    base = fixture_root / "imgedit"
    sample = read_imgedit(base / "Basic" / "basic_edit.json", base / "singleturn")[0]
    src, edit = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (16, 16), "blue")
    rubric = load_official_imgedit_prompts(base)[sample.task_type]
    req = imgedit_request(sample, rubric, src, edit)
    assert req.kind == "imgedit"
    assert req.images[0] is src and req.images[1] is edit  # sent as given
    assert "<edit_prompt>" not in req.text and f"Instruction: {sample.instruction}\n" in req.text
    assert req.text == rubric.replace("<edit_prompt>", sample.instruction)


def test_imgedit_official_path(tmp_path):
    s = BenchSample(benchmark="imgedit", key="1082", task_type="adjust", instruction="x")
    assert imgedit_official_path(tmp_path, s) == tmp_path / "1082.png"


# ---------------------------------------------------------------------------------------------------
# ImgEdit: prompts


def test_load_official_imgedit_prompts_file_and_folders(fixture_root):
    base = fixture_root / "imgedit"
    from_file = load_official_imgedit_prompts(base / "Basic" / "prompts.json")
    assert list(from_file) == list(IMGEDIT_TYPES)
    assert load_official_imgedit_prompts(base) == from_file
    assert load_official_imgedit_prompts(base / "Basic") == from_file
    assert all("<edit_prompt>" in t for t in from_file.values())


def test_load_official_imgedit_prompts_errors(imgedit_copy):
    path = imgedit_copy / "Basic" / "prompts.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data.pop("compose")
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DataError, match="no rubric for compose") as e:
        load_official_imgedit_prompts(path)
    assert str(path) in str(e.value)
    data["compose"] = "no placeholder here"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DataError, match="'compose' has no <edit_prompt>"):
        load_official_imgedit_prompts(imgedit_copy)
    with pytest.raises(DataError, match="no prompt file"):
        load_official_imgedit_prompts(imgedit_copy / "singleturn")


def test_editr1_imgedit_prompts_answer_format():
    assert list(EDITR1_IMGEDIT_PROMPTS) == list(IMGEDIT_TYPES)
    for t, text in EDITR1_IMGEDIT_PROMPTS.items():
        assert text.count("<edit_prompt>") == 1
        a, b, c = IMGEDIT_CRITERIA[t]
        # A reply written exactly in the format the rubric asks for parses to those names.
        reply = f"Reasoning: fine.\n{a}: 4\n{b}: 3\n{c}: 5"
        assert parse_imgedit_reply(reply) == ([4, 3, 5], [a, b, c])


# ---------------------------------------------------------------------------------------------------
# ImgEdit: reply parsing


def test_parse_imgedit_official_format():
    reply = (
        "Brief reasoning: The lamp is gone but a faint shadow remains.\n"
        "Prompt Compliance: 4\nVisual Naturalness: 3\nPhysical & Detail Integrity: 3"
    )
    assert parse_imgedit_reply(reply) == ([4, 3, 3], ["Prompt Compliance", "Visual Naturalness", "Physical & Detail Integrity"])


@pytest.mark.parametrize(
    "reply",
    [
        "**Brief reasoning:** ok\n**Object Identity:** 5\n**Mask Precision:** 4\n**Visual Quality:** 2",
        "Brief reasoning: ok\n**Object Identity**: 5/5\n**Mask Precision**: 4 / 5\n**Visual Quality**: 2/5",
        "  Object Identity :   5  \n\tMask Precision:4\n- Visual Quality: 2.",
        "1. Object Identity: 5\n2. Mask Precision: 4 (edges slightly rough)\n3. Visual Quality: 2 - blurry",
        "The mug was cut out well; 3 small flaws remain.\nScores follow:\n\nObject Identity: 5\nMask Precision: 4\nVisual Quality: 2\n",
        # An earlier draft of the scores: the LAST three lines count.
        "Object Identity: 1\nMask Precision: 1\nVisual Quality: 1\nOn reflection:\nObject Identity: 5\nMask Precision: 4\nVisual Quality: 2",
        "Object Identity： 5\nMask Precision： 4\nVisual Quality： 2",
    ],
)
def test_parse_imgedit_variants(reply):
    assert parse_imgedit_reply(reply) == ([5, 4, 2], ["Object Identity", "Mask Precision", "Visual Quality"])


@pytest.mark.parametrize(
    "reply, reason",
    [
        (None, "empty"),
        ("   ", "empty"),
        ("Brief reasoning: good edit.", "found 0"),
        ("Prompt Compliance: 4\nVisual Naturalness: 3", "found 2"),
        ("Prompt Compliance: 4\nVisual Naturalness: high\nPhysical & Detail Integrity: 5", "found 2"),
        ("Prompt Compliance: 6\nVisual Naturalness: 3\nPhysical & Detail Integrity: 3", "out of range"),
        ("Prompt Compliance: 0\nVisual Naturalness: 3\nPhysical & Detail Integrity: 3", "out of range"),
        ("Prompt Compliance: 4.5\nVisual Naturalness: 3\nPhysical & Detail Integrity: 3", "not an integer"),
        ("Prompt Compliance: 8/10\nVisual Naturalness: 3\nPhysical & Detail Integrity: 3", "out of 10"),
    ],
)
def test_parse_imgedit_refuses(reply, reason):
    with pytest.raises(ReplyParseError, match=reason):
        parse_imgedit_reply(reply)


# ---------------------------------------------------------------------------------------------------
# ImgEdit: aggregation

PUBLISHED_IMGEDIT = [
    # (per type in table order add adjust extract replace remove background style hybrid action, overall)
    ([4.29, 4.44, 4.32, 4.69, 4.72, 4.41, 4.91, 3.83, 4.83], 4.49),
    ([4.34, 4.40, 4.37, 4.62, 4.65, 4.31, 4.89, 3.90, 4.80], 4.48),
    ([4.32, 4.36, 4.04, 4.64, 4.52, 4.37, 4.84, 3.39, 4.71], 4.35),
    ([4.38, 4.16, 3.43, 4.66, 4.14, 4.38, 4.81, 3.82, 4.69], 4.27),
    ([4.12, 3.80, 2.04, 4.22, 3.09, 3.97, 4.51, 3.35, 4.25], 3.71),
    ([4.19, 4.20, 2.43, 4.32, 3.91, 4.08, 4.68, 3.72, 4.63], 4.02),
]


@pytest.mark.parametrize("means, overall", PUBLISHED_IMGEDIT)
def test_overall_reproduces_published_rows(means, overall):
    assert round(overall_from_type_means(dict(zip(IMGEDIT_TYPES, means))), 2) == overall


def test_overall_needs_all_nine():
    means = dict.fromkeys(IMGEDIT_TYPES, 4.0)
    means.pop("action")
    with pytest.raises(ValueError, match="action"):
        overall_from_type_means(means)


def test_aggregate_imgedit_hand_computed():
    rows = [
        {"task_type": "add", "scores": [5, 4, 3]},  # 4
        {"task_type": "add", "scores": [3, 3, 3]},  # 3
        {"task_type": "add", "scores": None},  # unparsed
        {"task_type": "alter", "scores": [5, 5, 2]},  # adjust 4
        {"task_type": "extract", "scores": [1, 1, 1]},  # 1
        {"task_type": "replace", "scores": [5, 5, 5]},  # 5
        {"task_type": "remove", "scores": [4, 4, 1]},  # 3
        {"task_type": "background", "scores": [2, 2, 2]},  # 2
        {"task_type": "style", "scores": [5, 4, 4]},  # 13/3
        {"task_type": "compose", "scores": [3, 4, 5]},  # 4
        {"task_type": "action", "scores": [1, 2, 3]},  # 2
        {"task_type": "action", "scores": [5, 5, 5]},  # 5
    ]
    out = aggregate_imgedit(rows)
    json.dumps(out)  # JSON-able
    t = out["types"]
    assert t["add"] == {"display_name": "Add", "mean": 3.5, "n": 3, "n_scored": 2, "n_unscored": 1}
    assert t["adjust"]["mean"] == 4.0 and t["compose"]["display_name"] == "Hybrid"
    assert t["style"]["mean"] == pytest.approx(13 / 3)
    assert t["action"]["mean"] == 3.5
    expected = (3.5 + 4 + 1 + 5 + 3 + 2 + 13 / 3 + 4 + 3.5) / 9
    assert out["overall"] == pytest.approx(expected, abs=1e-12)
    assert out["types_missing"] == []
    assert (out["n"], out["n_scored"], out["n_unscored"]) == (12, 11, 1)


def test_aggregate_imgedit_type_with_only_unparsed_samples():
    rows = [{"task_type": t, "scores": [4, 4, 4]} for t in IMGEDIT_TYPES if t != "compose"]
    rows += [{"task_type": "compose", "scores": None}, {"task_type": "compose", "scores": None}]
    out = aggregate_imgedit(rows)
    assert out["overall"] is None
    assert out["types_missing"] == ["compose"]
    assert out["types"]["compose"] == {"display_name": "Hybrid", "mean": None, "n": 2, "n_scored": 0, "n_unscored": 2}
    assert out["types"]["add"]["mean"] == 4.0


def test_aggregate_imgedit_refuses_bad_rows():
    with pytest.raises(ValueError):
        aggregate_imgedit([{"task_type": "add", "scores": [4, 4]}])
    with pytest.raises(ValueError):
        aggregate_imgedit([{"task_type": "add", "scores": [4, 4, 6]}])
    with pytest.raises(ValueError):
        aggregate_imgedit([{"task_type": "zoom", "scores": [4, 4, 4]}])


# ---------------------------------------------------------------------------------------------------
# GEdit: reading


def test_read_gedit_fixture(fixture_root):
    samples, ds = read_gedit(fixture_root / "gedit" / "GEdit-Bench")
    assert len(samples) == 2 * len(GEDIT_ITEMS) == len(ds)
    assert [s.row for s in samples] == list(range(len(ds)))
    assert len({s.key for s in samples}) == len(samples)  # unique in the benchmark
    for s in samples:
        assert s.benchmark == "gedit" and s.source_path is None
        assert s.key == f"{s.language}/{gedit_dataset_key(s)}"
    by = {(s.language, gedit_dataset_key(s)): s for s in samples}
    for key, task_type, en, cn, inter in GEDIT_ITEMS:
        assert (by["en", key].task_type, by["en", key].instruction, by["en", key].intersection) == (task_type, en, inter)
        assert (by["cn", key].task_type, by["cn", key].instruction, by["cn", key].intersection) == (task_type, cn, inter)
    assert {s.task_type for s in samples} >= {"subject-add", "subject-remove", "background_change", "text_change"}
    assert {s.intersection for s in samples} == {True, False}
    en_only, _ = read_gedit(fixture_root / "gedit" / "GEdit-Bench", languages=("en",))
    assert [s.key for s in en_only] == [s.key for s in samples if s.language == "en"]


def test_gedit_source_image_is_input_image(fixture_root):
    samples, ds = read_gedit(fixture_root / "gedit" / "GEdit-Bench")
    img = gedit_source_image(ds, samples[3])
    assert img.mode == "RGB" and img.size == GEDIT_SOURCE_SIZE
    assert gedit_source_image(ds, samples[3], column="input_image_raw").size == GEDIT_RAW_SIZE
    moved = BenchSample(**{**samples[3].__dict__, "row": 0})
    with pytest.raises(DataError, match="not the one"):
        gedit_source_image(ds, moved)


def test_read_gedit_plain_dataset(fixture_root, tmp_path):
    import datasets

    ds = datasets.load_from_disk(str(fixture_root / "gedit" / "GEdit-Bench"))["train"]
    save_quietly(ds, tmp_path / "plain")
    samples, _ = read_gedit(tmp_path / "plain")
    assert len(samples) == len(ds)


def test_read_gedit_missing_and_non_dataset_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist") as e:
        read_gedit(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="save_to_disk") as e:
        read_gedit(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(e.value)


def _resave(fixture_root, dst: Path, change) -> Path:
    import datasets

    ds = datasets.load_from_disk(str(fixture_root / "gedit" / "GEdit-Bench"))["train"]
    save_quietly(datasets.DatasetDict({"train": change(ds)}), dst)
    return dst


def test_read_gedit_missing_column(fixture_root, tmp_path):
    path = _resave(fixture_root, tmp_path / "d", lambda ds: ds.remove_columns(["Intersection_exist"]))
    with pytest.raises(DataError, match="Intersection_exist") as e:
        read_gedit(path)
    assert str(path) in str(e.value)


def test_read_gedit_unknown_task_type(fixture_root, tmp_path):
    def change(ds):
        return ds.map(lambda r, i: {"task_type": "zoom_in" if i == 5 else r["task_type"]}, with_indices=True)

    path = _resave(fixture_root, tmp_path / "d", change)
    with pytest.raises(DataError, match="row 5: unknown task_type 'zoom_in'") as e:
        read_gedit(path)
    assert "subject-add" in str(e.value)


def test_read_gedit_duplicate_key_in_one_language(fixture_root, tmp_path):
    first = GEDIT_ITEMS[0][0]

    def change(ds):
        return ds.map(lambda r, i: {"key": first if i == 2 else r["key"]}, with_indices=True)

    path = _resave(fixture_root, tmp_path / "d", change)
    with pytest.raises(DataError, match=f"row 2: key '{first}' already used by row 0"):
        read_gedit(path)


# ---------------------------------------------------------------------------------------------------
# GEdit: requests and prompts


def test_gedit_requests_resize_edit_to_source():
    sample = BenchSample(benchmark="gedit", key="en/k1", task_type="color_alter", instruction="Make the car red.")
    src = Image.new("RGB", (48, 40), "white")
    edit = Image.new("RGB", (64, 64), "red")
    sc = gedit_sc_request(sample, EDITR1_GEDIT_PROMPTS.sc, src, edit)
    assert sc.kind == "gedit_sc" and sc.images[0] is src and sc.images[1].size == (48, 40)
    assert "Make the car red." in sc.text and "<instruction>" not in sc.text
    pq = gedit_pq_request(sample, EDITR1_GEDIT_PROMPTS.pq, edit, src)
    assert pq.kind == "gedit_pq" and len(pq.images) == 1 and pq.images[0].size == (48, 40)
    assert pq.text == EDITR1_GEDIT_PROMPTS.pq
    same = Image.new("RGB", (48, 40))
    assert resize_to_source(same, src) is same
    assert resize_to_source(edit, src).getpixel((10, 10)) == (255, 0, 0)


def test_render_sc():
    assert render_sc("Rate: <instruction>. Again: <instruction>", "add a hat") == "Rate: add a hat. Again: add a hat"
    with pytest.raises(DataError, match="<instruction>"):
        render_sc("no placeholder", "x")


def test_load_official_gedit_prompts_from_fixture(fixture_root):
    repo = fixture_root / "gedit" / "Step1X-Edit"
    prompts = load_official_gedit_prompts(repo)
    assert (prompts.sc, prompts.pq) == (VIE_FIXTURE_SC, VIE_FIXTURE_PQ)
    assert load_official_gedit_prompts(repo / "GEdit-Bench") == prompts
    assert load_official_gedit_prompts(repo / "GEdit-Bench" / "viescore" / "vie_prompts.py") == prompts
    assert "<instruction>" in prompts.sc


def test_load_official_gedit_prompts_missing_name(tmp_path):
    path = tmp_path / "vie_prompts.py"
    path.write_text('_context_no_delimit = "ctx"\n_prompts_0shot_two_image_edit_rule = "rule"\n_prompts_0shot_rule_PQ = "pq"\n')
    with pytest.raises(DataError) as e:
        load_official_gedit_prompts(path)
    assert str(path) in str(e.value) and "_prompts_0shot_tie_rule_SC" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no prompt file"):
        load_official_gedit_prompts(tmp_path / "empty")


def test_prompt_module_is_never_executed(tmp_path):
    marker = tmp_path / "EXECUTED"
    path = tmp_path / "vie_prompts.py"
    path.write_text(
        "import os\n"
        f"os.system('touch {marker}')\n"
        f"open({str(marker)!r}, 'w').write('x')\n"
        "_context_no_delimit = ('part one, '\n    'part two')\n"
        "_prompts_0shot_two_image_edit_rule = f'''edit rule'''\n"
        "_base = 'tie: <instruction>'\n"
        "_prompts_0shot_tie_rule_SC = _base + ' [a, b]'\n"
        "_prompts_0shot_rule_PQ: str = 'pq ' + \"rule\"\n"
        "_dynamic = os.getcwd()\n"
        "_formatted = f'{_base}'\n"
        "_replaced = 'x'\n"
        "_replaced = os.getcwd()\n"
        "def f():\n    os.system('touch ' + 'y')\n"
        "f()\n"
    )
    constants = read_string_constants(path)
    assert not marker.exists()
    assert "_dynamic" not in constants and "_formatted" not in constants and "_replaced" not in constants
    prompts = load_official_gedit_prompts(path)
    assert not marker.exists()
    assert prompts.sc == "part one, part two\nedit rule\ntie: <instruction> [a, b]"
    assert prompts.pq == "part one, part two\npq rule"


def test_load_official_gedit_prompts_name_override(tmp_path):
    path = tmp_path / "vie_prompts.py"
    path.write_text('C = "c"\nE = "e"\nS = "s <instruction>"\nP = "p"\n')
    prompts = load_official_gedit_prompts(path, names={"context": "C", "edit_rule": "E", "sc_rule": "S", "pq_rule": "P"})
    assert (prompts.sc, prompts.pq) == ("c\ne\ns <instruction>", "c\np")


def test_editr1_gedit_prompts():
    assert EDITR1_GEDIT_PROMPTS.sc.count("<instruction>") == 1
    assert '{"score": [' in EDITR1_GEDIT_PROMPTS.sc and '{"score": [' in EDITR1_GEDIT_PROMPTS.pq
    assert "<instruction>" not in EDITR1_GEDIT_PROMPTS.pq


# ---------------------------------------------------------------------------------------------------
# GEdit: reply parsing


@pytest.mark.parametrize(
    "reply, scores",
    [
        ('{"score": [8, 6], "reasoning": "The car is red; the wheels changed too."}', [8.0, 6.0]),
        ('```json\n{\n  "score": [7, 9],\n  "reasoning": "ok"\n}\n```', [7.0, 9.0]),
        ('Here is my rating.\n```\n{"score": [10, 10], "reasoning": "perfect"}\n```\nThanks.', [10.0, 10.0]),
        ('||V^=^V||\n{"score": [3, 4], "reasoning": "a {brace} in text"}\n||V^=^V||', [3.0, 4.0]),
        ('The {edit} is fine. {"reasoning": "fine", "score": [0, 7.5]}', [0.0, 7.5]),
        ('{"score": [5], "reasoning": "one score"}', [5.0]),
        ('```json\n{"score": [6, 2], "reasoning": "x"}\n```', [6.0, 2.0]),
    ],
)
def test_parse_viescore_reply(reply, scores):
    assert parse_viescore_reply(reply) == scores


@pytest.mark.parametrize(
    "reply, reason",
    [
        (None, "empty"),
        ("", "empty"),
        ("I would give it an 8.", "no JSON object"),
        ("[6, 0]", "no JSON object"),
        ('{"reasoning": "no score"}', "no 'score'"),
        ('{"score": [], "reasoning": ""}', "non-empty list"),
        ('{"score": 7, "reasoning": ""}', "non-empty list"),
        ('{"score": [11, 5]}', "out of range"),
        ('{"score": [-1, 5]}', "out of range"),
        ('{"score": ["8", 5]}', "non-number"),
        ('{"score": [true, 5]}', "non-number"),
        ('{"score": [editing_success, over_editing], "reasoning": "..."}', "no JSON object"),
        ('{"score": [8, 6]} or maybe {"score": [5, 5]}', "several different"),
    ],
)
def test_parse_viescore_refuses(reply, reason):
    with pytest.raises(ReplyParseError, match=reason):
        parse_viescore_reply(reply)


# ---------------------------------------------------------------------------------------------------
# GEdit: aggregation


def _gedit_rows():
    en = [
        # (type, sc, pq, intersection): per sample SC = min(sc), PQ = min(pq), O = sqrt(SC * PQ)
        ("background_change", [8, 6], [9, 7], True),  # 6, 7, sqrt(42)
        ("background_change", [4, 9], [2, 8], False),  # 4, 2, sqrt(8)
        ("color_alter", [10, 10], None, True),  # 10, -, -
        ("color_alter", [5, 5], [5, 5], True),  # 5, 5, 5
        ("material_alter", [9, 3], [4], True),  # 3, 4, sqrt(12)
        ("motion_change", [7], [7], True),  # 7, 7, 7
        ("ps_human", [6, 6], [6, 6], True),  # 6, 6, 6
        ("style_change", [8, 8], [2, 9], True),  # 8, 2, 4
        ("subject-add", [2, 3], [8, 8], True),  # 2, 8, 4
        ("subject-remove", [9, 9], [9, 10], True),  # 9, 9, 9
        ("subject-replace", [1, 1], [9, 9], True),  # 1, 9, 3
        ("text_change", [0, 5], [10, 10], True),  # 0, 10, 0
        ("tone_transfer", [10, 10], [10, 10], True),  # 10, 10, 10
    ]
    cn = [
        ("background_change", None, None, True),
        ("subject-add", [6.0, 8.0], [5.0, 9.0], False),  # 6, 5, sqrt(30)
    ]
    rows = [{"task_type": t, "language": "en", "intersection": i, "sc": sc, "pq": pq} for t, sc, pq, i in en]
    rows += [{"task_type": t, "language": "cn", "intersection": i, "sc": sc, "pq": pq} for t, sc, pq, i in cn]
    return rows


def test_aggregate_gedit_hand_computed():
    out = aggregate_gedit(_gedit_rows())
    json.dumps(out)
    assert list(out) == ["en", "cn"]
    full = out["en"]["fullset"]
    bg = full["types"]["background_change"]
    assert (bg["SC"], bg["PQ"]) == (5.0, 4.5)
    assert bg["O"] == pytest.approx((math.sqrt(42) + math.sqrt(8)) / 2)
    assert bg["O"] != pytest.approx(math.sqrt(5.0 * 4.5))  # O is per sample, not from the means
    color = full["types"]["color_alter"]
    assert (color["SC"], color["PQ"], color["O"]) == (7.5, 5.0, 5.0)
    assert (color["n"], color["n_scored"], color["n_unscored"], color["n_unscored_sc"], color["n_unscored_pq"]) == (2, 1, 1, 0, 1)
    assert full["types"]["material_alter"]["O"] == pytest.approx(math.sqrt(12))
    assert full["types"]["style_change"]["O"] == 4.0
    sc_means = [5, 7.5, 3, 7, 6, 8, 2, 9, 1, 0, 10]
    pq_means = [4.5, 5, 4, 7, 6, 2, 8, 9, 9, 10, 10]
    o_means = [(math.sqrt(42) + math.sqrt(8)) / 2, 5, math.sqrt(12), 7, 6, 4, 4, 9, 3, 0, 10]
    assert full["SC"] == pytest.approx(58.5 / 11)
    assert full["PQ"] == pytest.approx(74.5 / 11)
    assert full["SC"] == pytest.approx(sum(sc_means) / 11) and full["PQ"] == pytest.approx(sum(pq_means) / 11)
    assert full["O"] == pytest.approx(sum(o_means) / 11)
    assert full["types_missing"] == {"SC": [], "PQ": [], "O": []}
    assert (full["n"], full["n_scored"], full["n_unscored"]) == (13, 12, 1)

    inter = out["en"]["intersection"]
    assert inter["types"]["background_change"]["SC"] == 6.0
    assert inter["types"]["background_change"]["O"] == pytest.approx(math.sqrt(42))
    assert inter["SC"] == pytest.approx(59.5 / 11)
    assert inter["PQ"] == pytest.approx((7 + 5 + 4 + 7 + 6 + 2 + 8 + 9 + 9 + 10 + 10) / 11)
    assert inter["O"] == pytest.approx((math.sqrt(42) + 5 + math.sqrt(12) + 7 + 6 + 4 + 4 + 9 + 3 + 0 + 10) / 11)
    assert inter["n"] == 12


def test_aggregate_gedit_missing_types_give_none():
    out = aggregate_gedit(_gedit_rows())
    cn = out["cn"]["fullset"]
    assert cn["SC"] is None and cn["PQ"] is None and cn["O"] is None
    assert cn["types"]["background_change"] == {
        "SC": None, "PQ": None, "O": None, "n": 1, "n_scored": 0, "n_unscored": 1, "n_unscored_sc": 1, "n_unscored_pq": 1,
    }
    assert cn["types_missing"]["SC"] == [t for t in GEDIT_TYPES if t != "subject-add"]
    assert cn["types"]["subject-add"]["O"] == pytest.approx(math.sqrt(30))
    cn_inter = out["cn"]["intersection"]
    assert cn_inter["types"]["subject-add"]["n"] == 0 and cn_inter["types"]["subject-add"]["SC"] is None
    assert cn_inter["types_missing"]["O"] == list(GEDIT_TYPES)


def test_aggregate_gedit_refuses_bad_rows():
    base = {"task_type": "color_alter", "language": "en", "intersection": True, "pq": [5, 5]}
    with pytest.raises(ValueError):
        aggregate_gedit([{**base, "sc": []}])
    with pytest.raises(ValueError):
        aggregate_gedit([{**base, "sc": [12, 3]}])
    with pytest.raises(ValueError):
        aggregate_gedit([{**base, "task_type": "zoom", "sc": [5, 5]}])


# ---------------------------------------------------------------------------------------------------
# GEdit: official layout


def test_gedit_official_paths(tmp_path):
    s = BenchSample(benchmark="gedit", key="cn/c3d5e2f001", task_type="subject-add", instruction="x", language="cn", row=3)
    edit, src = gedit_official_paths(tmp_path, "my-model", s)
    assert edit == tmp_path / "my-model" / "fullset" / "subject-add" / "cn" / "c3d5e2f001.png"
    assert src == tmp_path / "my-model" / "fullset" / "subject-add" / "cn" / "c3d5e2f001_SRCIMG.png"
    with pytest.raises(EditR1Error):
        gedit_official_paths(tmp_path, "org/model", s)


def test_fixture_writer_is_deterministic(tmp_path):
    a = write_imgedit_fixture(tmp_path / "a")
    b = write_imgedit_fixture(tmp_path / "b")
    for rel in ("Basic/basic_edit.json", "Basic/prompts.json", "singleturn/animal/000000101.jpg"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    assert set(json.loads((a / "Basic" / "prompts.json").read_text())) == set(IMGEDIT_FIXTURE_NAMES)
