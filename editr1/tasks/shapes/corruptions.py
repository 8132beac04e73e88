"""Plausible wrong edits of a shapes sample, for teaching a judge what a bad edit looks like.

Each corruption is an image an imperfect editor could produce: the instruction applied to the wrong
object, in the wrong colour or cell, a bystander lost or repainted, an extra object, a half-done or
washed-out edit, noise. Only images are made here; their scores always come from the verifier.
"""

from __future__ import annotations

import random

import numpy as np

from editr1.tasks.shapes.scenes import (
    COLOR_NAMES,
    KINDS,
    Edit,
    Scene,
    Shape,
    apply_edit,
    render,
    shape_mask,
)


def _empty_cells(scene: Scene) -> list[int]:
    return [c for c in range(9) if scene.cell_is_empty(c)]


def _swap(scene: Scene, old: Shape, new: Shape | None) -> Scene:
    return Scene(tuple(s for s in scene.shapes if s != old) + ((new,) if new else ()))


def _scene_corruptions(rng: random.Random, source: Scene, edit: Edit, target: Scene) -> list[Scene]:
    """Wrong target scenes: a wrong object, colour or cell, a lost/repainted bystander, an extra object."""
    scenes = []
    bystanders = [s for s in target.shapes if s in source.shapes]
    if bystanders:
        victim = rng.choice(bystanders)
        scenes.append(_swap(target, victim, None))
        scenes.append(_swap(target, victim, Shape(victim.kind, rng.choice([c for c in COLOR_NAMES if c != victim.color]), victim.cell)))
    empty = _empty_cells(target)
    if empty:
        scenes.append(Scene(target.shapes + (Shape(rng.choice(KINDS), rng.choice(COLOR_NAMES), rng.choice(empty)),)))
    if edit.op == "recolor":
        wrong = [c for c in COLOR_NAMES if c not in (edit.color, edit.new_color)]
        old = source.find(edit.kind, edit.color)
        scenes.append(_swap(source, old, Shape(edit.kind, rng.choice(wrong), old.cell)))
    if edit.op in ("add", "move"):
        cells = [c for c in _empty_cells(source) if c != edit.cell]
        if cells:
            base = source if edit.op == "add" else _swap(source, source.find(edit.kind, edit.color), None)
            scenes.append(Scene(base.shapes + (Shape(edit.kind, edit.color, rng.choice(cells)),)))
    if edit.op == "add":
        wrong_kind = rng.choice([k for k in KINDS if k != edit.kind])
        scenes.append(Scene(source.shapes + (Shape(wrong_kind, edit.color, edit.cell),)))
    others = [s for s in source.shapes if (s.kind, s.color) != (edit.kind, edit.color)]
    if edit.op in ("remove", "recolor") and others:
        # The right operation on the wrong object.
        other = rng.choice(others)
        if edit.op == "remove":
            scenes.append(_swap(source, other, None))
        else:
            scenes.append(_swap(source, other, Shape(other.kind, edit.new_color, other.cell)))
    if edit.op == "move":
        scenes.append(_swap(source, source.find(edit.kind, edit.color), None))  # removed, not moved
    return [s for s in scenes if s != target]


def _pixel_corruption(rng: random.Random, np_rng: np.random.Generator, source: Scene, edit: Edit, target: Scene) -> np.ndarray:
    """A half-done, washed-out or noisy version of the right edit."""
    src, tgt = render(source).astype(np.float32), render(target).astype(np.float32)
    kind = rng.choice(("partial", "blend", "noise", "blur"))
    if kind == "partial":
        changed = np.zeros(src.shape[:2], dtype=bool)
        for shape in set(source.shapes) ^ set(target.shapes):
            changed |= shape_mask(shape)
        keep = np_rng.random(src.shape[:2]) < rng.uniform(0.2, 0.9)
        out = np.where((changed & ~keep)[..., None], src, tgt)
    elif kind == "blend":
        alpha = rng.uniform(0.3, 0.9)
        out = alpha * tgt + (1 - alpha) * src
    elif kind == "noise":
        out = tgt + np_rng.normal(0, rng.uniform(10, 90), tgt.shape)
    else:
        padded = np.pad(tgt, ((1, 1), (1, 1), (0, 0)), mode="edge")
        out = sum(padded[dy : dy + 32, dx : dx + 32] for dy in range(3) for dx in range(3)) / 9
        out = out * (rng.uniform(0.5, 1.0) if rng.random() < 0.5 else 1.0)  # sometimes also dimmed
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def corrupted_edits(rng: random.Random, source: Scene, edit: Edit, count: int) -> list[np.ndarray]:
    """`count` wrong or imperfect edits of (source, edit) as uint8 (32, 32, 3) images; the unchanged
    source is always among the candidates."""
    target = apply_edit(source, edit)
    np_rng = np.random.default_rng(rng.randrange(2**32))
    candidates = [render(s) for s in _scene_corruptions(rng, source, edit, target)]
    rng.shuffle(candidates)
    images = [render(source)]
    while len(images) < count:
        if candidates and rng.random() < 0.6:
            images.append(candidates.pop())
        else:
            images.append(_pixel_corruption(rng, np_rng, source, edit, target))
    return images[:count]
