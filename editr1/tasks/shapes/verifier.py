"""Programmatic ground-truth reward for the synthetic shapes editing task.

The source image and the instruction determine the exact target (see :mod:`editr1.tasks.shapes.scenes`).
A pixel is *right* when every channel is within ``TOLERANCE`` of the target's colour, so smeared or
washed-out colours count as wrong. With M the pixels the edit must change (the edited object
before and after), the score is the product of three fractions:

    edit      = right pixels within M                            (was the instruction carried out)
    preserve  = mean over the untouched objects of their right pixels   (was everything else kept)
    clean     = max(0, 1 - wrong background pixels / OBJECT_PIXELS)     (no stray paint)
    score     = edit * preserve * clean

A product, because each part is necessary: an edit that deletes a bystander or sprays stray colour
must not score well (a weighted sum was easy to game: an RL policy learned to paint blobs over the
canvas and still scored 0.95). The exact target scores 1.0; an unchanged copy scores 0.0 for every
instruction kind, since none of the pixels in M is right.
"""

from __future__ import annotations

import numpy as np
import torch

from editr1.tasks.shapes.scenes import (
    Edit,
    Scene,
    Shape,
    apply_edit,
    parse_instruction,
    parse_scene,
    quantize,
    render,
    shape_mask,
)
from editr1.errors import EditR1Error
from editr1.rewards.base import Reward, RewardBatch, check_batch

TOLERANCE = 0.25
OBJECT_PIXELS = 64  # a square's area: that many stray pixels zero the clean term


def _edited_shapes(scene: Scene, edit: Edit) -> list[Shape]:
    """The edited object as it is before the edit and as it should be after."""
    if edit.op == "add":
        return [Shape(edit.kind, edit.color, edit.cell)]
    old = scene.find(edit.kind, edit.color)
    if edit.op == "move":
        return [old, Shape(edit.kind, edit.color, edit.cell)]
    return [old]  # remove; recolor keeps the same pixels


def _as_unit_float(image: np.ndarray, name: str) -> np.ndarray:
    """float64 copy in [0, 1] of an integer 0..255 or float image; ValueError for NaN/inf."""
    a = np.asarray(image)
    if np.issubdtype(a.dtype, np.integer):
        return np.clip(a, 0, 255).astype(np.float64) / 255.0
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} image contains NaN or infinite values")
    return np.clip(a, 0.0, 1.0)


#: How the score is made: the exact product above, or the first, additive verifier that RL learned to game (kept
#: to demonstrate reward hacking, `editr1 demo --hacking`):
#:     0.7 * mean over M of [nearest palette colour of the edit == the target's]
#:   + 0.3 * (1 - mean |edited - target| outside M)
#: The nearest colour forgives smeared and blotchy paint, and a mean difference over the whole canvas barely
#: notices stray paint or a lost object.
FORMULAS = ("product", "additive")


def verify_edit(source: np.ndarray, edited: np.ndarray, instruction: str, formula: str = "product") -> float:
    """Score ``edited`` against the exact target implied by source + instruction: ``edit * preserve * clean``,
    or with ``formula="additive"`` the gameable first version (`FORMULAS`).

    ``source`` must be an exact rendering (uint8 HxWx3 or float in [0, 1]);
    ``edited`` is uint8 or float in [0, 1] of the same shape. Raises ValueError
    when the source is not a clean scene, the instruction is outside the
    grammar or does not apply to the scene: no score is ever guessed.
    """
    scene = parse_scene(source, strict=True)
    edit = parse_instruction(instruction)
    target_scene = apply_edit(scene, edit)
    target = render(target_scene)
    out = _as_unit_float(edited, "edited")
    if out.shape != target.shape:
        raise ValueError(f"edited image has shape {out.shape}, expected {target.shape}")

    right = np.abs(out - target.astype(np.float64) / 255.0).max(axis=-1) <= TOLERANCE
    changed = np.zeros(target.shape[:2], dtype=bool)
    for shape in _edited_shapes(scene, edit):
        changed |= shape_mask(shape)
    if formula == "additive":
        colour_right = quantize(out)[changed] == quantize(target)[changed]
        outside = np.abs(out - target.astype(np.float64) / 255.0)[~changed]
        return float(0.7 * colour_right.mean() + 0.3 * (1.0 - outside.mean()))
    untouched = set(scene.shapes) & set(target_scene.shapes)
    kept = np.zeros_like(changed)
    preserved = []
    for shape in untouched:
        mask = shape_mask(shape)
        kept |= mask
        preserved.append(right[mask].mean())
    background = ~changed & ~kept
    edit_score = right[changed].mean()
    preserve_score = float(np.mean(preserved)) if preserved else 1.0
    clean_score = max(0.0, 1.0 - (~right[background]).sum() / OBJECT_PIXELS)
    return float(edit_score * preserve_score * clean_score)


def _to_hwc(t: torch.Tensor) -> np.ndarray:
    """[3, H, W] tensor in [0, 1] -> float64 (H, W, 3) array."""
    if t.ndim != 3 or t.shape[0] != 3:
        raise ValueError(f"expected a tensor of shape [3, H, W], got {tuple(t.shape)}")
    return t.detach().to("cpu", torch.float64).permute(1, 2, 0).numpy()


class ShapesVerifier(Reward):
    """Batch wrapper around :func:`verify_edit`; the requirement strings are not used. `formula`: "product" (the
    exact verifier) or "additive" (the gameable early version, for the reward-hacking demonstration)."""

    name = "shapes_verifier"

    def __init__(self, formula: str = "product"):
        if formula not in FORMULAS:
            raise EditR1Error(f"reward.options.formula: {formula!r}; expected one of {list(FORMULAS)}")
        self.formula = formula

    def score(
        self,
        sources: list[list[torch.Tensor]],
        edited: list[torch.Tensor],
        prompts: list[str],
        requirements: list[str | None],
    ) -> RewardBatch:
        """Scores in [0, 1], one per sample. A sample that cannot be verified (an instruction outside
        the grammar, a non-finite edit) is marked invalid with a NaN score, never a guess. The shapes
        task has one source image per sample: the first reference is the one verified against."""
        check_batch(sources, edited, prompts, requirements)
        scores, failures = [], {}
        for i, (references, out, prompt) in enumerate(zip(sources, edited, prompts)):
            # Sources arrive as float tensors; round back to the exact uint8 rendering.
            src_u8 = np.rint(np.clip(_to_hwc(references[0]), 0.0, 1.0) * 255.0).astype(np.uint8)
            try:
                scores.append(verify_edit(src_u8, _to_hwc(out), prompt, self.formula))
            except ValueError as error:
                scores.append(float("nan"))
                failures[i] = str(error)
        values = torch.tensor(scores, dtype=torch.float32)
        return RewardBatch(values, ~torch.isnan(values), failures=failures)
