import json
import random
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from editr1.data.jsonl import read_edit_jsonl
from editr1.errors import EditR1Error
from editr1.tasks.shapes.scenes import (
    ALL_PAIRS,
    CELL_NAMES,
    COLORS,
    HELD_OUT,
    N_PHRASINGS,
    OPS,
    Edit,
    Scene,
    Shape,
    apply_edit,
    edited_pairs,
    instruction_text,
    make_sample,
    parse_instruction,
    parse_scene,
    render,
    write_shapes_dataset,
)
from editr1.tasks.shapes.verifier import ShapesVerifier, verify_edit

SCENE = Scene((Shape("circle", "red", 0), Shape("square", "green", 4), Shape("triangle", "red", 8)))


def _random_scene(rng):
    n = rng.randint(1, 9)
    pairs = [rng.choice(ALL_PAIRS) for _ in range(n)]
    return Scene(tuple(Shape(k, c, cell) for (k, c), cell in zip(pairs, rng.sample(range(9), n))))


def test_render_uses_palette_only_and_shapes_do_not_touch():
    img = render(Scene(tuple(Shape("square", "red", c) for c in range(9))))
    colours = {tuple(p) for p in img.reshape(-1, 3)}
    assert colours == {(0, 0, 0), (255, 0, 0)}
    # Full squares in every cell: rows/columns between cells stay black.
    for gap in (0, 1, 10, 11, 20, 21, 30, 31):
        assert not img[gap].any() and not img[:, gap].any()


def test_render_parse_round_trip():
    rng = random.Random(0)
    for _ in range(300):
        scene = _random_scene(rng)
        img = render(scene)
        assert parse_scene(img, strict=True) == scene
        assert parse_scene(img.astype(np.float32) / 255) == scene


def test_parse_scene_tolerates_noise_and_strict_rejects_it():
    img = render(SCENE).astype(np.float64) / 255
    noisy = np.clip(img + np.random.default_rng(0).normal(0, 0.15, img.shape), 0, 1)
    assert parse_scene(noisy) == SCENE
    with pytest.raises(ValueError, match="not an exact rendering"):
        parse_scene(noisy, strict=True)
    with pytest.raises(ValueError, match="shape"):
        parse_scene(np.zeros((16, 16, 3), np.uint8))


def test_scene_is_canonical_and_validated():
    assert Scene(tuple(reversed(SCENE.shapes))) == SCENE
    with pytest.raises(ValueError, match="share a cell"):
        Scene((Shape("circle", "red", 1), Shape("square", "blue", 1)))
    with pytest.raises(ValueError):
        Shape("hexagon", "red", 0)


@pytest.mark.parametrize("text, expected", [
    ("Change the red circle to blue", [Shape("circle", "blue", 0), Shape("square", "green", 4),
                                       Shape("triangle", "red", 8)]),
    ("Remove the green square", [Shape("circle", "red", 0), Shape("triangle", "red", 8)]),
    ("Add a yellow triangle at the top right", [Shape("circle", "red", 0), Shape("triangle", "yellow", 2),
                                                Shape("square", "green", 4), Shape("triangle", "red", 8)]),
    ("move the red triangle to the center", None),  # center is taken
    ("Move the red triangle to the middle left.", [Shape("circle", "red", 0), Shape("triangle", "red", 3),
                                                   Shape("square", "green", 4)]),
])
def test_each_instruction_kind_applies(text, expected):
    edit = parse_instruction(text)
    if expected is None:
        with pytest.raises(ValueError, match="center cell is not empty"):
            apply_edit(SCENE, edit)
    else:
        assert apply_edit(SCENE, edit) == Scene(tuple(expected))


@pytest.mark.parametrize("edit, why", [
    (Edit("remove", "circle", "blue"), "no blue circle"),
    (Edit("recolor", "triangle", "red", "blue"), None),
    (Edit("add", "circle", "red", cell=5), "already has a red circle"),
    (Edit("add", "circle", "blue", cell=0), "top left cell is not empty"),
])
def test_inapplicable_edits_raise(edit, why):
    if why is None:
        apply_edit(SCENE, edit)  # sanity: this one applies
    else:
        with pytest.raises(ValueError, match=why):
            apply_edit(SCENE, edit)
    scene = Scene((Shape("circle", "red", 0), Shape("circle", "blue", 1)))
    with pytest.raises(ValueError, match="already has a blue circle"):
        apply_edit(scene, Edit("recolor", "circle", "red", "blue"))


def test_instruction_text_round_trip_every_edit_and_phrasing():
    edits = [Edit("recolor", k, c, n) for k, c in ALL_PAIRS for n in COLORS if n != c]
    edits += [Edit("remove", k, c) for k, c in ALL_PAIRS]
    edits += [Edit(op, k, c, cell=cell) for op in ("add", "move") for k, c in ALL_PAIRS for cell in range(9)]
    texts = set()
    for e in edits:
        for v in range(N_PHRASINGS):
            text = instruction_text(e, v)
            texts.add(text)
            assert parse_instruction(text) == e
            assert parse_instruction("  " + text.upper() + ". ") == e
    assert len(texts) == len(edits) * N_PHRASINGS
    assert instruction_text(Edit("add", "triangle", "yellow", cell=0)) == "Add a yellow triangle at the top left"
    assert CELL_NAMES[4] == "center" and CELL_NAMES[1] == "top center"


@pytest.mark.parametrize("text", [
    "Paint the sky red", "Change the red circle to red", "Remove a green square",
    "Add a purple circle at the top left", "Move the blue circle to the middle", "",
])
def test_text_outside_grammar_raises(text):
    with pytest.raises(ValueError):
        parse_instruction(text)


def test_make_sample_respects_split_and_balance():
    rng = random.Random(0)
    counts = Counter()
    for split in ("train", "test"):
        for i in range(400):
            source, edit, target = make_sample(rng, split, OPS[i % 4])
            assert 2 <= len(source.shapes) <= 3
            assert apply_edit(source, edit) == target
            assert len({(s.kind, s.color) for s in target.shapes}) == len(target.shapes)
            assert bool(edited_pairs(edit) & HELD_OUT) == (split == "test")
        counts.update(make_sample(rng, "train")[1].op for _ in range(400))
    assert min(counts.values()) > 150  # default op is uniform
    with pytest.raises(ValueError):
        make_sample(rng, "val")


def _read(out_dir):
    return {p.relative_to(out_dir).as_posix(): p.read_bytes() for p in sorted(out_dir.rglob("*")) if p.is_file()}


def test_dataset_is_deterministic_and_loadable(tmp_path):
    assert write_shapes_dataset(tmp_path / "a", 40, 12, seed=3) == {"train": 40, "test": 12}
    write_shapes_dataset(tmp_path / "b", 40, 12, seed=3)
    write_shapes_dataset(tmp_path / "c", 40, 12, seed=4)
    a, b, c = _read(tmp_path / "a"), _read(tmp_path / "b"), _read(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys() and a["train.jsonl"] != c["train.jsonl"]
    assert len(a) == 2 * 52 + 2

    rows = [json.loads(x) for x in a["train.jsonl"].decode().splitlines()]
    assert Counter(r["edit_kind"] for r in rows) == {op: 10 for op in OPS}
    assert set(rows[0]) == {"id", "image", "prompt", "target", "edit_kind"}
    for split, n in (("train", 40), ("test", 12)):
        samples = read_edit_jsonl(tmp_path / "a" / f"{split}.jsonl", require_target=True)
        assert len(samples) == n
        for s in samples:
            edit = parse_instruction(s.prompt)
            assert edit.op == s.extra["edit_kind"]
            assert bool(edited_pairs(edit) & HELD_OUT) == (split == "test")
            src = np.asarray(Image.open(s.images[0]))
            tgt = np.asarray(Image.open(s.target))
            assert render(apply_edit(parse_scene(src, strict=True), edit)).tobytes() == tgt.tobytes()


def _samples(op, n=25, seed=0):
    rng = random.Random(seed)
    return [make_sample(rng, "train" if i % 2 else "test", op) for i in range(n)]


@pytest.mark.parametrize("op", OPS)
def test_verifier_orders_outputs_sensibly(op):
    noise = np.random.default_rng(0)
    for source, edit, target in _samples(op):
        src, tgt, text = render(source), render(target), instruction_text(edit)
        assert verify_edit(src, tgt, text) == pytest.approx(1.0)
        assert verify_edit(src, tgt.astype(np.float32) / 255, text) == pytest.approx(1.0)
        unchanged = verify_edit(src, src, text)
        assert unchanged == 0.0
        noisy = np.clip(tgt / 255 + noise.normal(0, 0.1, tgt.shape), 0, 1)
        assert unchanged < verify_edit(src, noisy, text) < 1.0


def test_wrong_recolor_scores_lower_than_right():
    for source, edit, target in _samples("recolor"):
        wrong_colour = next(c for c in COLORS if c not in (edit.color, edit.new_color))
        # Built by hand: a bystander may already have the wrong colour and kind.
        cell = source.find(edit.kind, edit.color).cell
        wrong = Scene(tuple(x for x in target.shapes if x.cell != cell) + (Shape(edit.kind, wrong_colour, cell),))
        src, text = render(source), instruction_text(edit)
        assert verify_edit(src, render(wrong), text) < verify_edit(src, render(target), text)


@pytest.mark.parametrize("op", OPS)
def test_verifier_penalises_lost_bystanders_and_stray_paint(op):
    for source, edit, target in _samples(op):
        src, tgt, text = render(source), render(target), instruction_text(edit)
        bystanders = [s for s in target.shapes if s in source.shapes]
        if bystanders:
            # The edit done right, but one untouched object deleted: at most (n-1)/n.
            lost = render(Scene(tuple(s for s in target.shapes if s != bystanders[0])))
            assert verify_edit(src, lost, text) <= (len(bystanders) - 1) / len(bystanders) + 1e-9
        # The edit done right, plus a smear of stray colour on empty background.
        smeared = tgt.copy()
        empty = np.argwhere((tgt == 0).all(axis=-1) & (src == 0).all(axis=-1))[:32]
        smeared[empty[:, 0], empty[:, 1]] = (200, 0, 0)
        assert verify_edit(src, smeared, text) == pytest.approx(0.5)
        # Washed-out colours quantise to the right palette entry but are not clean.
        washed = (tgt.astype(np.float64) / 255 * 0.6).clip(0, 1)
        assert verify_edit(src, washed, text) == 0.0


@pytest.mark.parametrize("op", OPS)
def test_the_gameable_additive_formula_forgives_what_the_exact_one_does_not(op):
    for source, edit, target in _samples(op):
        src, tgt, text = render(source), render(target), instruction_text(edit)
        additive = lambda image: verify_edit(src, image, text, formula="additive")  # noqa: E731
        assert additive(tgt) == pytest.approx(1.0) and additive(src) == pytest.approx(0.3)
        # Stray paint and washed-out colours: zero for the exact verifier, nearly full marks for the additive one.
        smeared = tgt.copy()
        empty = np.argwhere((tgt == 0).all(axis=-1) & (src == 0).all(axis=-1))[:64]
        smeared[empty[:, 0], empty[:, 1]] = (200, 0, 0)
        washed = (tgt.astype(np.float64) / 255 * 0.6).clip(0, 1)
        for gamed in (smeared, washed):
            assert verify_edit(src, gamed, text) == 0.0 and additive(gamed) > 0.85
    with pytest.raises(EditR1Error, match="reward.options.formula: 'sum'"):
        ShapesVerifier(formula="sum")


def test_verifier_refuses_to_guess():
    src = render(SCENE)
    with pytest.raises(ValueError, match="outside the shapes grammar"):
        verify_edit(src, src, "Make it prettier")
    with pytest.raises(ValueError, match="no blue circle"):
        verify_edit(src, src, "Remove the blue circle")
    with pytest.raises(ValueError, match="not an exact rendering"):
        verify_edit(np.full_like(src, 7), src, "Remove the red circle")
    with pytest.raises(ValueError, match="NaN"):
        verify_edit(src, np.full(src.shape, np.nan), "Remove the red circle")
    with pytest.raises(ValueError, match="shape"):
        verify_edit(src, np.zeros((16, 16, 3), np.uint8), "Remove the red circle")


def test_shapes_verifier_batch():
    (s1, e1, t1), (s2, e2, t2) = _samples("move", n=2)
    as_t = lambda a: torch.from_numpy(a).permute(2, 0, 1).float() / 255  # noqa: E731
    v = ShapesVerifier()
    assert v.name == "shapes_verifier"
    scores = v.score([[as_t(render(s1))], [as_t(render(s2))]], [as_t(render(t1)), as_t(render(s2))],
                     [instruction_text(e1), instruction_text(e2)], [None, None]).scores
    assert scores.dtype == torch.float32 and scores.shape == (2,)
    assert scores.tolist() == pytest.approx([1.0, 0.0])
    unverifiable = v.score([[as_t(render(s1))]] * 2, [as_t(render(t1))] * 2, [instruction_text(e1), "Make it prettier"], [None] * 2)
    assert unverifiable.valid.tolist() == [True, False] and torch.isnan(unverifiable.scores[1])
    assert list(unverifiable.failures) == [1]
    with pytest.raises(ValueError, match="batch sizes differ"):
        v.score([[as_t(render(s1))]], [], ["x"], [None])
