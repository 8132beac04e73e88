"""Image grids and reward curves for inspecting a run.

Grid layout (all in pixels, after upscaling): a ``PAD`` border around and
between cells; every cell is as large as the largest image; each row is
``[title lines] + cell + [one caption line]``. Titles wrap to the grid width,
captions are cut to the cell width.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from editr1.data.images import tensor_to_image

PAD = 4
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)
#: Pixels between words. The default font's own space is 2 pixels, narrower than the gaps some
#: letters leave, so "Put a small hat" read as "Puta small hat": words are drawn one by one.
WORD_GAP = 4


@functools.lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def line_height() -> int:
    """Height in pixels of one caption or title line."""
    bottom = _font().getbbox("Agjy|")[3]
    return int(math.ceil(bottom)) + 3


def _text_width(text: str) -> float:
    """Width of ``text`` as :func:`_draw_text` draws it."""
    words = text.split(" ")
    return sum(_font().getlength(word) for word in words) + WORD_GAP * (len(words) - 1)


def _draw_text(draw: ImageDraw.ImageDraw, x: float, y: float, text: str) -> None:
    """Draw one line of ``text`` with :data:`WORD_GAP` pixels for each space."""
    for word in text.split(" "):
        draw.text((x, y), word, fill=TEXT_COLOUR, font=_font())
        x += _font().getlength(word) + WORD_GAP


def _fit(text: str, max_width: float) -> str:
    """Cut ``text`` (with "...") so that it fits in ``max_width`` pixels."""
    if _text_width(text) <= max_width:
        return text
    while text and _text_width(text + "...") > max_width:
        text = text[:-1]
    return text + "..." if text else ""


def wrap_text(text: str, max_width: float) -> list[str]:
    """Greedy word wrap to ``max_width`` pixels; over-long words are split."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        current = ""
        for word in paragraph.split():
            candidate = f"{current} {word}" if current else word
            if _text_width(candidate) <= max_width:
                current = candidate
                continue
            if current:
                lines.append(current)
            current = ""
            for ch in word:  # the word alone does not fit: break it anywhere
                if current and _text_width(current + ch) > max_width:
                    lines.append(current)
                    current = ""
                current += ch
        lines.append(current)
    return [line for line in lines if line] if text.strip() else []


def _to_pil(img: Tensor | Image.Image, scale: int) -> Image.Image:
    pil = img.convert("RGB") if isinstance(img, Image.Image) else tensor_to_image(img)
    if scale != 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)
    return pil


def image_grid(rows: Sequence[Sequence[Tensor]], captions: Sequence[Sequence[str]] | None = None,
               scale: int = 4, *, row_titles: Sequence[str] | None = None) -> Image.Image:
    """Lay out rows of [3, H, W] images in [0, 1] (or PIL images) as one RGB image.

    Each image is upscaled ``scale`` times with NEAREST. ``captions`` (same shape
    as ``rows``) puts one line under each cell; ``row_titles`` puts wrapped text
    above each row. Rows may have different lengths.
    """
    if not rows or not any(len(r) for r in rows):
        raise ValueError("image_grid needs at least one image")
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive int, got {scale!r}")
    _check_captions(rows, captions)
    if row_titles is not None and len(row_titles) != len(rows):
        raise ValueError(f"got {len(row_titles)} row titles for {len(rows)} rows")

    cells = [[_to_pil(img, scale) for img in row] for row in rows]
    cell_w = max(c.width for row in cells for c in row)
    cell_h = max(c.height for row in cells for c in row)
    n_cols = max(len(row) for row in cells)
    width = PAD + n_cols * (cell_w + PAD)
    lh = line_height()
    cap_h = lh if captions is not None else 0
    titles = [wrap_text(t, width - 2 * PAD) for t in row_titles] if row_titles else [[] for _ in rows]
    height = PAD + sum(len(t) * lh + cell_h + cap_h + PAD for t in titles)

    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    y = PAD
    for r, row in enumerate(cells):
        for line in titles[r]:
            _draw_text(draw, PAD, y, line)
            y += lh
        for c, cell in enumerate(row):
            x = PAD + c * (cell_w + PAD)
            canvas.paste(cell, (x + (cell_w - cell.width) // 2, y + (cell_h - cell.height) // 2))
            if captions is not None:
                text = _fit(captions[r][c], cell_w)
                tx = x + (cell_w - _text_width(text)) / 2
                _draw_text(draw, tx, y + cell_h + 1, text)
        y += cell_h + cap_h + PAD
    return canvas


def _check_captions(rows: Sequence[Sequence[Tensor]], captions: Sequence[Sequence[str]] | None) -> None:
    if captions is None:
        return
    if len(captions) != len(rows) or any(len(c) != len(r) for c, r in zip(captions, rows)):
        raise ValueError("captions must have exactly the same shape as rows")


def _sources(source: Tensor | Sequence[Tensor]) -> tuple[list[Tensor], list[str]]:
    """A sample's source image(s) and their captions: "source", or "picture 1", "picture 2", ..."""
    images = [source] if isinstance(source, (Tensor, Image.Image)) else list(source)
    if len(images) == 1:
        return images, ["source"]
    return images, [f"picture {i + 1}" for i in range(len(images))]


def group_grid(source: Tensor | Sequence[Tensor], samples: Sequence[Tensor], rewards: Sequence[float],
               prompt: str, scale: int = 4) -> Image.Image:
    """One group: the source (every reference image of a multi-reference sample) then its K samples
    captioned with their rewards, prompt above."""
    samples = list(samples)
    rewards = [float(r) for r in rewards]
    if len(samples) != len(rewards):
        raise ValueError(f"got {len(samples)} samples but {len(rewards)} rewards")
    references, names = _sources(source)
    row = [*references, *samples]
    caps = [*names, *(f"{r:.3f}" for r in rewards)]
    return image_grid([row], [caps], scale, row_titles=[prompt])


def before_after_grid(sources: Sequence[Tensor | Sequence[Tensor]], befores: Sequence[Tensor], afters: Sequence[Tensor],
                      prompts: Sequence[str], before_scores: Sequence[float],
                      after_scores: Sequence[float], targets: Sequence[Tensor] | None = None,
                      scale: int = 4) -> Image.Image:
    """One row per sample: source(s) | [target] | before (score) | after (score), prompt above."""
    n = len(sources)
    lengths = [len(befores), len(afters), len(prompts), len(before_scores), len(after_scores)]
    if targets is not None:
        lengths.append(len(targets))
    if n == 0 or any(k != n for k in lengths):
        raise ValueError(f"before_after_grid needs equally long, non-empty inputs, got {[n, *lengths]}")
    rows, caps = [], []
    for i in range(n):
        row, cap = _sources(sources[i])
        if targets is not None:
            row.append(targets[i])
            cap.append("target")
        row += [befores[i], afters[i]]
        cap += [f"before {float(before_scores[i]):.3f}", f"after {float(after_scores[i]):.3f}"]
        rows.append(row)
        caps.append(cap)
    return image_grid(rows, caps, scale, row_titles=list(prompts))


def _std_key(key: str) -> str:
    """``reward_mean`` -> ``reward_std``; ``loss`` -> ``loss_std``."""
    return (key[: -len("_mean")] if key.endswith("_mean") else key) + "_std"


def _series(metrics: Sequence[dict], key: str, extra: str | None = None) -> tuple[list, list, list]:
    """Steps, values and (optional) ``extra`` values of rows with a finite ``key``."""
    steps, values, extras = [], [], []
    for row in metrics:
        v = row.get(key)
        if not isinstance(v, (int, float)) or not math.isfinite(v) or "step" not in row:
            continue  # missing, or null because it was NaN/inf when logged
        steps.append(row["step"])
        values.append(float(v))
        e = row.get(extra) if extra else None
        extras.append(float(e) if isinstance(e, (int, float)) and math.isfinite(e) else 0.0)
    return steps, values, extras


def _has_key(metrics: Sequence[dict], key: str) -> bool:
    return any(isinstance(row.get(key), (int, float)) for row in metrics)


def reward_curve(metrics: Sequence[dict], out_path: Path, keys: Sequence[str] = ("reward_mean",),
                 eval_keys: Sequence[str] = ("heldout_reward",),
                 title: str = "Reward vs step") -> Path:
    """Plot training ``keys`` (±std band) and held-out ``eval_keys`` (±stderr bars) vs step.

    Keys that never appear are skipped; with nothing to plot the PNG says so.
    Returns ``out_path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A bare Figure on an Agg canvas avoids pyplot's global state and backend choice.
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    plotted = False
    for key in keys:
        std_key = _std_key(key)
        steps, values, stds = _series(metrics, key, std_key)
        if not steps:
            continue
        (line,) = ax.plot(steps, values, label=key, linewidth=1.5)
        if _has_key(metrics, std_key):
            lo = [v - s for v, s in zip(values, stds)]
            hi = [v + s for v, s in zip(values, stds)]
            ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2, label=f"{key} ± std")
        plotted = True
    for key in eval_keys:
        err_key = f"{key}_stderr"
        steps, values, errs = _series(metrics, key, err_key)
        if not steps:
            continue
        yerr = errs if _has_key(metrics, err_key) else None
        ax.errorbar(steps, values, yerr=yerr, fmt="o--", capsize=3, label=key)
        plotted = True
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel("reward")
    ax.grid(True, alpha=0.3)
    if plotted:
        ax.legend(loc="best", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, format="png")
    return out_path
