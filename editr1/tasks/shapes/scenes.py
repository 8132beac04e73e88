"""A synthetic image-editing task with an exact ground truth.

Scenes
    A 32x32 RGB canvas, black background, split into a 3x3 grid of 10-pixel
    cells (cell ``c`` is row ``c // 3``, column ``c % 3``). Each shape fills an
    8x8 box at pixel ``(2 + 10 * col, 2 + 10 * row)``, so boxes are at least two
    pixels apart and never touch. Shapes are circle, square (the full box) and
    triangle (apex up) in red, green, blue or yellow, drawn without
    anti-aliasing so :func:`parse_scene` recovers a rendered scene exactly.
    Generated source scenes hold 2-3 shapes in distinct cells; (colour, kind)
    is unique within a scene, so "the red circle" names one object (a colour
    may repeat across kinds).

Instructions (case-insensitive, optional final full stop)
    recolor  "Change the red circle to blue" / "Make the red circle blue" /
             "Turn the red circle blue"
    remove   "Remove|Delete|Erase the green square"
    add      "Add|Draw a yellow triangle at the top left" / "Put a ... in the top left"
    move     "Move|Shift|Slide the blue circle to the bottom right"
    Cells are named "top|middle|bottom" + "left|center|right", except the
    middle cell, which is just "center". Add and move need an empty cell.

Held-out split
    ``HELD_OUT`` is a fixed set of three (kind, colour) pairs, one per kind.
    An edit's *edited objects* are the pair it refers to or creates, plus, for
    recolor, the pair it turns the object into. Training samples never have a
    held-out edited object; every test sample has at least one. Shapes that
    are not edited come from the same distribution in both splits, so
    held-out pairs do appear in training scenes, but only as bystanders.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from editr1.data.jsonl import write_jsonl
from editr1.errors import EditR1Error
from editr1.fileio import refuse_foreign_entries

CANVAS = 32
BOX = 8  # side of a shape's bounding box
_CELL_PITCH = 10
_BOX_OFFSET = 2  # top-left pixel of cell 0's box

KINDS = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
}
COLOR_NAMES = tuple(COLORS)
CELL_NAMES = (
    "top left", "top center", "top right",
    "middle left", "center", "middle right",
    "bottom left", "bottom center", "bottom right",
)
OPS = ("recolor", "remove", "add", "move")
SPLITS = ("train", "test")
ALL_PAIRS = tuple((k, c) for k in KINDS for c in COLOR_NAMES)
HELD_OUT = frozenset({("circle", "yellow"), ("square", "blue"), ("triangle", "red")})

# Black first: label 0 means background in quantised images.
PALETTE = np.array([(0, 0, 0)] + list(COLORS.values()), dtype=np.float32)


def _templates() -> dict[str, np.ndarray]:
    """Boolean 8x8 masks, one per kind."""
    y, x = np.mgrid[0:BOX, 0:BOX].astype(np.float32)
    c = (BOX - 1) / 2
    return {
        "circle": (x - c) ** 2 + (y - c) ** 2 <= (BOX / 2) ** 2,
        "square": np.ones((BOX, BOX), dtype=bool),
        "triangle": np.abs(x - c) <= (y + 1) / 2,
    }


TEMPLATES = _templates()


@dataclass(frozen=True)
class Shape:
    """One object: kind, colour name and cell index 0-8 (row-major)."""

    kind: str
    color: str
    cell: int

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown shape kind {self.kind!r}; expected one of {KINDS}")
        if self.color not in COLORS:
            raise ValueError(f"unknown colour {self.color!r}; expected one of {COLOR_NAMES}")
        if not isinstance(self.cell, int) or not 0 <= self.cell < 9:
            raise ValueError(f"cell must be an int in 0..8, got {self.cell!r}")


@dataclass(frozen=True)
class Scene:
    """A set of shapes in distinct cells, stored sorted by cell so equal scenes compare equal."""

    shapes: tuple[Shape, ...]

    def __post_init__(self):
        cells = [s.cell for s in self.shapes]
        if len(set(cells)) != len(cells):
            raise ValueError(f"two shapes share a cell: {sorted(cells)}")
        object.__setattr__(self, "shapes", tuple(sorted(self.shapes, key=lambda s: s.cell)))

    def find(self, kind: str, color: str) -> Shape:
        """The unique shape of this kind and colour; ValueError if absent or ambiguous."""
        hits = [s for s in self.shapes if s.kind == kind and s.color == color]
        if not hits:
            raise ValueError(f"the scene has no {color} {kind}")
        if len(hits) > 1:
            raise ValueError(f"'the {color} {kind}' is ambiguous: the scene has {len(hits)}")
        return hits[0]

    def cell_is_empty(self, cell: int) -> bool:
        return all(s.cell != cell for s in self.shapes)


@dataclass(frozen=True)
class Edit:
    """A parsed instruction. ``new_color`` is for recolor, ``cell`` for add and move."""

    op: str
    kind: str
    color: str
    new_color: str | None = None
    cell: int | None = None

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"unknown edit {self.op!r}; expected one of {OPS}")
        Shape(self.kind, self.color, 0)  # validates kind and colour
        if (self.op == "recolor") != (self.new_color is not None):
            raise ValueError("new_color is required for recolor and only for recolor")
        if self.new_color is not None:
            Shape(self.kind, self.new_color, 0)
            if self.new_color == self.color:
                raise ValueError(f"recolor to the same colour ({self.color})")
        if (self.op in ("add", "move")) != (self.cell is not None):
            raise ValueError("cell is required for add and move and only for them")
        if self.cell is not None:
            Shape(self.kind, self.color, self.cell)  # validates the cell


# ---------------------------------------------------------------- rendering


def _box(cell: int) -> tuple[slice, slice]:
    """Row and column slices of a cell's shape box."""
    row, col = divmod(cell, 3)
    y0 = _BOX_OFFSET + _CELL_PITCH * row
    x0 = _BOX_OFFSET + _CELL_PITCH * col
    return slice(y0, y0 + BOX), slice(x0, x0 + BOX)


def shape_mask(shape: Shape) -> np.ndarray:
    """Boolean (32, 32) mask of the pixels ``shape`` covers."""
    mask = np.zeros((CANVAS, CANVAS), dtype=bool)
    mask[_box(shape.cell)] = TEMPLATES[shape.kind]
    return mask


def render(scene: Scene) -> np.ndarray:
    """Draw ``scene`` as a uint8 (32, 32, 3) array, pure palette colours only."""
    img = np.zeros((CANVAS, CANVAS, 3), dtype=np.uint8)
    for s in scene.shapes:
        img[_box(s.cell)][TEMPLATES[s.kind]] = COLORS[s.color]
    return img


def quantize(image: np.ndarray) -> np.ndarray:
    """Index (0 = black, 1.. = COLOR_NAMES) of each pixel's nearest palette colour.

    Accepts integer 0..255 or float 0..1 images of shape (H, W, 3).
    """
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {a.shape}")
    integer = np.issubdtype(a.dtype, np.integer)
    a = a.astype(np.float32) if integer else a.astype(np.float32) * 255.0
    d = ((a[:, :, None, :] - PALETTE[None, None]) ** 2).sum(axis=-1)
    return d.argmin(axis=-1)


def parse_scene(image: np.ndarray, strict: bool = False) -> Scene:
    """Recover the scene drawn in ``image`` (uint8 0..255 or float 0..1, 32x32x3).

    Each cell's box is quantised to the palette; its non-black mask picks the
    nearest template (or "empty") by Hamming distance and its colour is the
    majority non-black colour. Exact for rendered scenes. With ``strict``,
    anything that is not exactly a rendering raises ValueError.
    """
    a = np.asarray(image)
    if a.shape != (CANVAS, CANVAS, 3):
        raise ValueError(f"expected a ({CANVAS}, {CANVAS}, 3) image, got shape {a.shape}")
    labels = quantize(a)
    kinds = ("",) + KINDS
    stack = np.stack([np.zeros((BOX, BOX), dtype=bool)] + [TEMPLATES[k] for k in KINDS])
    shapes = []
    for cell in range(9):
        box = labels[_box(cell)]
        ink = box > 0
        best = int((stack != ink).sum(axis=(1, 2)).argmin())
        if best == 0:
            continue
        votes = np.bincount(box[ink], minlength=len(PALETTE))[1:]
        shapes.append(Shape(kinds[best], COLOR_NAMES[int(votes.argmax())], cell))
    scene = Scene(tuple(shapes))
    if strict and not np.array_equal(render(scene), _as_uint8(a)):
        raise ValueError("image is not an exact rendering of a shapes scene")
    return scene


def _as_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 copy of an integer 0..255 or float [0, 1] image."""
    a = np.asarray(image)
    if np.issubdtype(a.dtype, np.integer):
        return np.clip(a, 0, 255).astype(np.uint8)
    return np.rint(np.clip(a.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


# ------------------------------------------------------------- instructions

_PHRASINGS: dict[str, tuple[str, ...]] = {
    "recolor": (
        "Change the {color} {kind} to {new_color}",
        "Make the {color} {kind} {new_color}",
        "Turn the {color} {kind} {new_color}",
    ),
    "remove": ("Remove the {color} {kind}", "Delete the {color} {kind}", "Erase the {color} {kind}"),
    "add": (
        "Add a {color} {kind} at the {cell}",
        "Draw a {color} {kind} at the {cell}",
        "Put a {color} {kind} in the {cell}",
    ),
    "move": (
        "Move the {color} {kind} to the {cell}",
        "Shift the {color} {kind} to the {cell}",
        "Slide the {color} {kind} to the {cell}",
    ),
}
N_PHRASINGS = 3

_WORDS = {
    "color": "|".join(COLOR_NAMES),
    "new_color": "|".join(COLOR_NAMES),
    "kind": "|".join(KINDS),
    "cell": "|".join(CELL_NAMES),
}


def _compile(template: str) -> re.Pattern:
    """Turn a phrasing template into an anchored regex with named groups."""
    parts = []
    for literal, name, _, _ in string.Formatter().parse(template.lower()):
        parts.append(re.escape(literal))
        if name:
            parts.append(f"(?P<{name}>{_WORDS[name]})")
    return re.compile("".join(parts))


_PATTERNS = [(op, _compile(t)) for op, ts in _PHRASINGS.items() for t in ts]


def instruction_text(edit: Edit, variant: int = 0) -> str:
    """The instruction for ``edit`` in phrasing ``variant`` (0..N_PHRASINGS-1)."""
    if not 0 <= variant < N_PHRASINGS:
        raise ValueError(f"variant must be in 0..{N_PHRASINGS - 1}, got {variant}")
    cell = CELL_NAMES[edit.cell] if edit.cell is not None else None
    return _PHRASINGS[edit.op][variant].format(
        color=edit.color, kind=edit.kind, new_color=edit.new_color, cell=cell
    )


def parse_instruction(text: str) -> Edit:
    """Parse an instruction of the grammar above; ValueError for anything else."""
    norm = " ".join(str(text).split()).lower().rstrip(".")
    for op, pattern in _PATTERNS:
        m = pattern.fullmatch(norm)
        if m:
            g = m.groupdict()
            cell = CELL_NAMES.index(g["cell"]) if "cell" in g else None
            try:
                return Edit(op, g["kind"], g["color"], g.get("new_color"), cell)
            except ValueError as e:
                raise ValueError(f"instruction {text!r}: {e}") from None
    raise ValueError(f"instruction outside the shapes grammar: {text!r}")


def apply_edit(scene: Scene, edit: Edit) -> Scene:
    """The scene after ``edit``; ValueError when it does not apply to ``scene``."""
    others = [s for s in scene.shapes if (s.kind, s.color) != (edit.kind, edit.color)]
    if edit.op == "add":
        if len(others) != len(scene.shapes):
            raise ValueError(f"the scene already has a {edit.color} {edit.kind}")
        new = Shape(edit.kind, edit.color, edit.cell)
    else:
        old = scene.find(edit.kind, edit.color)
        if edit.op == "remove":
            return Scene(tuple(others))
        if edit.op == "recolor":
            if any((s.kind, s.color) == (edit.kind, edit.new_color) for s in others):
                raise ValueError(f"the scene already has a {edit.new_color} {edit.kind}")
            new = Shape(edit.kind, edit.new_color, old.cell)
        else:
            new = Shape(edit.kind, edit.color, edit.cell)
    if edit.op in ("add", "move") and not scene.cell_is_empty(edit.cell):
        raise ValueError(f"the {CELL_NAMES[edit.cell]} cell is not empty")
    return Scene(tuple(others) + (new,))


def describe_scene(scene: Scene) -> str:
    """A caption listing every object, e.g. "a red circle at the top left, a blue square at the center"."""
    if not scene.shapes:
        return "an empty black canvas"
    return ", ".join(f"a {s.color} {s.kind} at the {CELL_NAMES[s.cell]}" for s in scene.shapes)


# --------------------------------------------------------------- sampling


def edited_pairs(edit: Edit) -> frozenset[tuple[str, str]]:
    """(kind, colour) pairs an edit refers to or creates; the split criterion."""
    pairs = {(edit.kind, edit.color)}
    if edit.new_color is not None:
        pairs.add((edit.kind, edit.new_color))
    return frozenset(pairs)


def is_held_out(edit: Edit) -> bool:
    """True when the edit touches a held-out pair (test split only)."""
    return bool(edited_pairs(edit) & HELD_OUT)


def make_sample(rng: random.Random, split: str, op: str | None = None) -> tuple[Scene, Edit, Scene]:
    """Draw (source scene, edit, target scene) for ``split``.

    ``op`` picks the instruction kind; by default it is uniform over OPS.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if op is None:
        op = rng.choice(OPS)
    if op not in OPS:
        raise ValueError(f"unknown edit {op!r}; expected one of {OPS}")
    want_held_out = split == "test"
    while True:  # rejection: accepts 1/4 to 3/4 of draws
        kind, color = rng.choice(ALL_PAIRS)
        new_color = rng.choice([c for c in COLOR_NAMES if c != color]) if op == "recolor" else None
        pairs = {(kind, color)} | ({(kind, new_color)} if new_color else set())
        if bool(pairs & HELD_OUT) == want_held_out:
            break
    n_shapes = rng.choice((2, 3))
    n_context = n_shapes if op == "add" else n_shapes - 1
    # Cells for bystanders, then the edited object's (unless add), then the destination.
    n_cells = n_context + (op != "add") + (op in ("add", "move"))
    cells = rng.sample(range(9), n_cells)
    # Bystanders avoid the edited pairs so references stay unique after the edit.
    context_pairs = rng.sample([p for p in ALL_PAIRS if p not in pairs], n_context)
    context = [Shape(k, c, cell) for (k, c), cell in zip(context_pairs, cells)]
    rest = cells[n_context:]
    if op == "add":
        source = Scene(tuple(context))
        edit = Edit("add", kind, color, cell=rest[0])
    else:
        source = Scene(tuple(context) + (Shape(kind, color, rest[0]),))
        edit = Edit(op, kind, color, new_color, rest[1] if op == "move" else None)
    return source, edit, apply_edit(source, edit)


def _save_png(array: np.ndarray, path: Path) -> None:
    # Default PNG options only, so the bytes depend on the pixels alone.
    Image.fromarray(array, "RGB").save(path, format="PNG")


def write_shapes_dataset(out_dir: Path, n_train: int, n_test: int, seed: int) -> dict:
    """Write images/, targets/, train.jsonl and test.jsonl under ``out_dir``.

    Instruction kinds are exactly balanced (up to n % 4) and shuffled. The same
    seed gives byte-identical files. Returns {"train": n_train, "test": n_test}.
    """
    if n_train < 0 or n_test < 0:
        raise ValueError(f"sample counts must be >= 0, got n_train={n_train}, n_test={n_test}")
    out_dir = Path(out_dir)
    refuse_foreign_entries(out_dir, ("images", "targets", "train.jsonl", "test.jsonl"), "editr1 data shapes")
    written = [name for name in ("train.jsonl", "test.jsonl") if (out_dir / name).exists()]
    if written:  # a dataset of the same names may be the user's own: never replaced
        raise EditR1Error(f"{out_dir}: already holds {' and '.join(written)}; choose a new or empty folder")
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "targets").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        # A string seed is hashed with SHA-512, so streams are stable across runs.
        rng = random.Random(f"editr1-shapes:{seed}:{split}")
        ops = [OPS[i % len(OPS)] for i in range(n)]
        rng.shuffle(ops)
        rows = []
        for i, op in enumerate(ops):
            source, edit, target = make_sample(rng, split, op)
            sample_id = f"{split}-{i:05d}"
            _save_png(render(source), out_dir / "images" / f"{sample_id}.png")
            _save_png(render(target), out_dir / "targets" / f"{sample_id}.png")
            rows.append({
                "id": sample_id,
                "image": f"images/{sample_id}.png",
                "prompt": instruction_text(edit, rng.randrange(N_PHRASINGS)),
                "target": f"targets/{sample_id}.png",
                "edit_kind": op,
            })
        write_jsonl(out_dir / f"{split}.jsonl", rows)
    return {"train": n_train, "test": n_test}
