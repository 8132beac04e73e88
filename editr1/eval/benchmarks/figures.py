"""Figures of a benchmark results folder: a per-type bar chart and a gallery of best and worst samples.

Both read what ``editr1 eval imgedit|gedit`` writes (``results.json`` and the rows of ``samples.jsonl``).
Images are shown at one display size (the longer side :data:`DISPLAY_SIDE` pixels, aspect kept), so
tiny images and sources and edits of different sizes sit in one grid; a missing or unreadable image is
drawn as a grey cell captioned "missing", so a figure never hides which file was wrong.
"""

from __future__ import annotations

import io
import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from editr1.data.images import load_image
from editr1.errors import DataError
from editr1.eval.benchmarks.gedit import GEDIT_LANGUAGES, GEDIT_TYPES, json_objects
from editr1.eval.benchmarks.imgedit import IMGEDIT_TYPES, display_name
from editr1.eval.visuals import image_grid
from editr1.fileio import write_bytes_atomic

#: The metrics of each benchmark, and the one that ranks samples and heads tables.
BENCH_METRICS: dict[str, tuple[str, ...]] = {"imgedit": ("score",), "gedit": ("SC", "PQ", "O")}
HEADLINE: dict[str, str] = {"imgedit": "score", "gedit": "O"}
#: The score range of each benchmark's metrics (bar-chart axis).
SCORE_RANGE: dict[str, tuple[float, float]] = {"imgedit": (1.0, 5.0), "gedit": (0.0, 10.0)}

#: Said in a panel title when error bars are drawn.
SPREAD_LEGEND = "; error bars: the judge's spread of the type mean over repeats (1 sd)"
#: Longer side, in pixels, of every image in a grid.
DISPLAY_SIDE = 256
#: How much of the judge's reasoning a gallery title shows (per reply).
REASONING_CHARS = 160
#: The folder name gallery PNGs go in.
GALLERY_FOLDER = "gallery"
_MISSING = (200, 200, 200)


# ---------------------------------------------------------------------------------------------------
# Shared helpers (compare.py uses them too)


def type_order(benchmark: str, types: Sequence[str]) -> list[str]:
    """`types` in the benchmark's table order; unknown names last, sorted."""
    canon = IMGEDIT_TYPES if benchmark == "imgedit" else GEDIT_TYPES
    present = set(types)
    return [t for t in canon if t in present] + sorted(present - set(canon))


def type_label(benchmark: str, task_type: str) -> str:
    """The name a table shows: ImgEdit's display name ("Hybrid" for compose), GEdit's type name."""
    if benchmark == "imgedit":
        try:
            return display_name(task_type)
        except ValueError:
            return task_type
    return task_type


def language_order(languages: Sequence[str]) -> list[str]:
    present = set(languages)
    return [lang for lang in GEDIT_LANGUAGES if lang in present] + sorted(present - set(GEDIT_LANGUAGES))


def finite(value: Any) -> float | None:
    """`value` as a float when it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def benchmark_of_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    """"imgedit" when the rows' metrics hold "score", "gedit" when they hold "O"."""
    for row in rows:
        metrics = row.get("metrics")
        if isinstance(metrics, Mapping):
            if "score" in metrics:
                return "imgedit"
            if "O" in metrics:
                return "gedit"
    raise DataError("cannot tell the benchmark of these samples: no row has metrics 'score' (ImgEdit) or 'O' (GEdit)")


def resolve_path(results_dir: str | Path, path: Any) -> Path | None:
    """A row's image path: absolute as given, else relative to the results folder; None if absent."""
    if not isinstance(path, str) or not path:
        return None
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(results_dir) / p


def fit_for_display(image: Image.Image, side: int = DISPLAY_SIDE) -> Image.Image:
    """`image` scaled (aspect kept) so its longer side is `side` pixels: NEAREST when enlarging (tiny
    images stay crisp), LANCZOS when shrinking."""
    w, h = image.size
    scale = side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        return image.convert("RGB")
    method = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    return image.convert("RGB").resize(size, method)


def display_image(path: Path | None, side: int = DISPLAY_SIDE) -> tuple[Image.Image, bool]:
    """(the image at `path` ready for a grid, True) or (a grey placeholder, False) when it is missing or
    unreadable."""
    if path is not None:
        try:
            return fit_for_display(load_image(path), side), True
        except DataError:
            pass
    return Image.new("RGB", (side, side), _MISSING), False


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def text_image(text: str, width: int = 480) -> Image.Image:
    """A small white image saying `text` (for a figure that has nothing to show)."""
    return image_grid([[Image.new("RGB", (width, 1), (255, 255, 255))]], scale=1, row_titles=[text])


def language_tag(benchmark: str, key: str, language: Any) -> str:
    """" [cn]" after a GEdit key that does not already start with its language; else ""."""
    if benchmark != "gedit" or not language or str(key).startswith(f"{language}/"):
        return ""
    return f" [{language}]"


def format_metrics(metrics: Mapping[str, Any], names: Sequence[str]) -> str:
    """"score 4.33" for ImgEdit; "SC 8 PQ 7 O 7.48" for GEdit (whole numbers without decimals; a missing
    value is "-")."""
    parts = []
    for name in names:
        v = finite(metrics.get(name))
        if v is None:
            text = "-"
        elif len(names) > 1 and v.is_integer():
            text = f"{v:.0f}"
        else:
            text = f"{v:.2f}"
        parts.append(f"{name} {text}")
    return " ".join(parts)


def model_label(model: Any) -> str:
    """A short name of the edited model from results.json's ``model``: model [+ lora] [(run)]."""
    if not isinstance(model, Mapping):
        return str(model) if model else "?"
    name = str(model.get("model") or model.get("family") or "?")
    if model.get("lora"):
        name += f" + {Path(str(model['lora'])).name or model['lora']}"
    if model.get("run"):
        name += f" ({Path(str(model['run'])).name or model['run']})"
    return name


# ---------------------------------------------------------------------------------------------------
# Bar chart


def _spread_value(value: Any) -> float | None:
    if isinstance(value, Mapping):
        for name in ("mean_std", "std", "per_sample_std"):
            if name in value:
                return finite(value[name])
        return None
    return finite(value)


def type_spread(judge_spread: Any, task_type: str, metric: str | None = None,
                language: str | None = None, subset: str = "fullset") -> float | None:
    """The judge's spread of one type's mean, if `judge_spread` holds one; else None.

    Reads, after descending through a language key, a subset key ("fullset") and a metric key where
    present: ``{"types" | "per_type": {type: number | {"mean_std" | "std" | "per_sample_std": number}}}``
    (``mean_std``, the spread of the type mean across repeats, is preferred: it is the error of a bar)."""
    node = judge_spread
    for key in (language, subset, metric):
        if isinstance(node, Mapping) and key is not None and isinstance(node.get(key), Mapping):
            node = node[key]
    if not isinstance(node, Mapping):
        return None
    per_type = node.get("types", node.get("per_type"))
    if not isinstance(per_type, Mapping) or task_type not in per_type:
        return None
    return _spread_value(per_type[task_type])


def _title_number(value: Any) -> str:
    v = finite(value)
    return "n/a" if v is None else f"{v:.2f}"


def _overall_text(value: Any, missing: Any) -> str:
    """The overall for a title; when it is absent, why (how many types have no scored sample)."""
    if finite(value) is not None or not isinstance(missing, list) or not missing:
        return _title_number(value)
    return f"n/a ({len(missing)} type{'s' if len(missing) > 1 else ''} without a score)"


def _save_figure(fig, out_png: str | Path) -> Path:
    out = Path(out_png)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_bytes_atomic(out, buf.getvalue())
    return out


def type_bar_chart(results: Mapping[str, Any], out_png: str | Path) -> Path:
    """Per-type bars of a results.json: ImgEdit's score (display names, 1..5 axis); GEdit's SC, PQ and O
    grouped per type, one panel per language present (full set, 0..10 axis).

    The model is in the title, the overall in each panel's title; a type with unscored samples carries
    "k unscored" above its bar; the results' note is the subtitle; a per-type judge spread (see :func:`type_spread`) is drawn
    as error bars. Only types with samples are shown. Returns `out_png`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    benchmark = results.get("benchmark")
    if benchmark not in BENCH_METRICS:
        raise DataError(f"results: unknown benchmark {benchmark!r} (expected imgedit or gedit)")
    aggregate = results.get("aggregate") or {}
    spread = results.get("judge_spread")
    note = str(results.get("note") or "").strip()
    lo, hi = SCORE_RANGE[benchmark]
    label = model_label(results.get("model"))

    if benchmark == "imgedit":
        panels = [(None, aggregate)]
    else:
        langs = language_order([k for k, v in aggregate.items() if isinstance(v, Mapping)])
        panels = [(lang, aggregate[lang].get("fullset") or {}) for lang in langs] or [("en", {})]

    fig = Figure(figsize=(9 if benchmark == "imgedit" else 13, 1.2 + 3.6 * len(panels)), dpi=100)
    FigureCanvasAgg(fig)
    for i, (lang, agg) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        types_info = agg.get("types") if isinstance(agg.get("types"), Mapping) else {}
        types = type_order(benchmark, [t for t, v in types_info.items() if isinstance(v, Mapping) and v.get("n", 0)])
        if benchmark == "imgedit":
            drawn = _imgedit_bars(ax, types, types_info, spread)
            ax.set_title(f"overall {_overall_text(agg.get('overall'), agg.get('types_missing'))}"
                         + (SPREAD_LEGEND if drawn else ""), fontsize=11)
            ax.set_ylabel("score (1-5)")
        else:
            drawn = _gedit_bars(ax, types, types_info, spread, lang)
            missing = agg.get("types_missing") if isinstance(agg.get("types_missing"), Mapping) else {}
            ax.set_title(f"[{lang}, full set] SC {_title_number(agg.get('SC'))}, "
                         f"PQ {_title_number(agg.get('PQ'))}, O {_overall_text(agg.get('O'), missing.get('O'))}"
                         + (SPREAD_LEGEND if drawn else ""),
                         fontsize=11)
            ax.set_ylabel("score (0-10)")
        ax.set_ylim(lo, hi + (hi - lo) * 0.08)
        ax.grid(True, axis="y", alpha=0.3)
        if not types:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    height = fig.get_size_inches()[1]
    fig.text(0.5, 1 - 0.08 / height, f"{'ImgEdit' if benchmark == 'imgedit' else 'GEdit'}: {label}", ha="center",
             va="top", fontsize=12)
    header = 0.42  # inches taken by the title
    if note:  # the subtitle
        wrapped = "\n".join(textwrap.wrap(note, 150 if benchmark == "gedit" else 110))
        fig.text(0.5, 1 - header / height, wrapped, ha="center", va="top", fontsize=8, color="dimgray")
        header += 0.05 + 0.15 * (wrapped.count("\n") + 1)
    fig.tight_layout(rect=(0, 0, 1, 1 - min(0.4, header / height)))
    return _save_figure(fig, out_png)


def _unscored(count: Any) -> int:
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 0


def _annotate_unscored(ax, x: float, y: float, count: Any) -> None:
    if _unscored(count):
        ax.annotate(f"{count} unscored", (x, y), xytext=(0, 3), textcoords="offset points", ha="center",
                    va="bottom", fontsize=7, color="firebrick")


def _error_bars(ax, xs: Sequence[float], tops: Sequence[float | None], errs: Sequence[float | None]) -> bool:
    """Judge-spread bars, only where a type has both a value and a spread; True if any was drawn."""
    points = [(x, t, e) for x, t, e in zip(xs, tops, errs) if t is not None and e is not None]
    if points:
        ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points], fmt="none",
                    ecolor="black", elinewidth=1, capsize=3)
    return bool(points)


def _imgedit_bars(ax, types: list[str], info: Mapping[str, Any], spread: Any) -> bool:
    lo, _ = SCORE_RANGE["imgedit"]
    xs = list(range(len(types)))
    means = [finite(info[t].get("mean")) for t in types]
    errs = [type_spread(spread, t, "score") for t in types]
    ax.bar(xs, [m if m is not None else 0.0 for m in means], color="tab:blue")
    drawn = _error_bars(ax, xs, means, errs)
    for x, t, m, e in zip(xs, types, means, errs):
        if m is None:
            text = "no score"
            if _unscored(info[t].get("n_unscored")):
                text += f"\n{info[t]['n_unscored']} unscored"
            ax.text(x, lo + 0.05, text, ha="center", va="bottom", fontsize=7, color="firebrick")
            continue
        ax.text(x, (max(m, lo) + lo) / 2, f"{m:.2f}", ha="center", va="center", fontsize=8, color="white")
        _annotate_unscored(ax, x, max(lo, m + (e or 0.0)), info[t].get("n_unscored"))
    ax.set_xticks(xs)
    ax.set_xticklabels([type_label("imgedit", t) for t in types], fontsize=9)
    return drawn


def _gedit_bars(ax, types: list[str], info: Mapping[str, Any], spread: Any, lang: str | None) -> bool:
    xs = list(range(len(types)))
    width = 0.27
    colours = {"SC": "tab:blue", "PQ": "tab:orange", "O": "tab:green"}
    tops = [0.0 for _ in types]
    drawn = False
    for j, metric in enumerate(BENCH_METRICS["gedit"]):
        at = [x + (j - 1) * width for x in xs]
        values = [finite(info[t].get(metric)) for t in types]
        errs = [type_spread(spread, t, metric, lang) for t in types]
        ax.bar(at, [v or 0.0 for v in values], width, label=metric, color=colours[metric])
        drawn = _error_bars(ax, at, values, errs) or drawn
        for k, (v, e) in enumerate(zip(values, errs)):
            tops[k] = max(tops[k], (v or 0.0) + (e or 0.0))
    for x, t, top in zip(xs, types, tops):
        _annotate_unscored(ax, x, top, info[t].get("n_unscored"))
    ax.set_xticks(xs)
    ax.set_xticklabels(types, fontsize=8, rotation=20, ha="right")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return drawn


# ---------------------------------------------------------------------------------------------------
# Gallery

_LIST_MARKER = re.compile(r"^\s*(?:[-*•>#]+\s*|\d+[.)]\s+)*")
#: A "Name: N" line (markdown bold, "N/5" and a trailing period allowed), after list markers are removed.
_SCORE_LINE = re.compile(
    r"^[^\w]*[^\W\d_][^:：]*[:：]\s*[*_]*\s*[+-]?\d+(?:\.\d+)?\s*(?:/\s*\d+(?:\.\d+)?)?\s*[*_.]*\s*$"
)
_REASONING_LABEL = re.compile(r"^[\s*_#>-]*(?:reasoning|reason|analysis|explanation)[*_]*\s*[:：]\s*", re.IGNORECASE)


def _cut(text: str, limit: int = REASONING_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def imgedit_reasoning(reply: Any) -> str:
    """The lines of an ImgEdit reply before its first ``Name: N`` score line ("Reasoning:" label removed);
    the start of the reply when no line looks like a score."""
    if not isinstance(reply, str) or not reply.strip():
        return ""
    lines = reply.strip().splitlines()
    before: list[str] = []
    for line in lines:
        if _SCORE_LINE.match(_LIST_MARKER.sub("", line).strip()):
            break
        before.append(line)
    text = " ".join(_REASONING_LABEL.sub("", line).strip() for line in before).strip()
    return text or " ".join(reply.split())


def viescore_reasoning(reply: Any) -> str:
    """The ``reasoning`` field of the first JSON object in a VIEScore reply that has one; else the reply."""
    if not isinstance(reply, str) or not reply.strip():
        return ""
    for obj in json_objects(reply):
        if isinstance(obj, dict) and isinstance(obj.get("reasoning"), str) and obj["reasoning"].strip():
            return obj["reasoning"].strip()
    return " ".join(reply.split())


def judge_reasoning(row: Mapping[str, Any], benchmark: str, limit: int = REASONING_CHARS) -> str:
    """What the judge said about one sample, cut to `limit` characters per reply ("" when no reply):
    ImgEdit's reasoning line(s); GEdit's SC and PQ ``reasoning`` fields."""
    replies = row.get("replies") if isinstance(row.get("replies"), Mapping) else {}
    if benchmark == "imgedit":
        text = next((imgedit_reasoning(v) for v in replies.values() if isinstance(v, str) and v.strip()), "")
        return _cut(text, limit) if text else ""
    parts = []
    for kind, label in (("gedit_sc", "SC"), ("gedit_pq", "PQ")):
        text = viescore_reasoning(replies.get(kind))
        if text:
            parts.append(f"{label}: {_cut(text, limit)}")
    if not parts:  # replies under other kind names
        parts = [_cut(viescore_reasoning(v), limit) for v in replies.values() if isinstance(v, str) and v.strip()][:1]
    return " | ".join(parts)


def _gallery_folder(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    return out if out.name == GALLERY_FOLDER else out / GALLERY_FOLDER


def _safe_name(task_type: str) -> str:
    name = re.sub(r"[^\w.-]+", "_", task_type).strip("._")
    return name or "type"


def gallery(rows: Sequence[Mapping[str, Any]], results_dir: str | Path, out_dir: str | Path,
            per_type: int = 3, note: str = "") -> list[Path]:
    """One PNG per task type with its `per_type` best and `per_type` worst scored samples (headline
    metric: ImgEdit's score, GEdit's O; ties broken by key). Each grid row is source | edit, captioned
    with the scores, titled with the key, instruction and the start of the judge's reasoning.

    Files go to ``out_dir/gallery/<type>.png`` (or ``out_dir/<type>.png`` when `out_dir` is itself named
    ``gallery``). Unscored samples are never shown; a type without a scored sample gets no file. Image
    paths in the rows are relative to `results_dir` (or absolute). `note` (e.g. that the scores are not
    comparable with published ones) heads every grid. Returns the paths written, in the benchmark's type order."""
    if per_type < 1:
        raise ValueError(f"per_type must be at least 1, got {per_type}")
    if not rows:
        return []
    benchmark = benchmark_of_rows(rows)
    metric = HEADLINE[benchmark]
    names = BENCH_METRICS[benchmark]
    by_type: dict[str, list[tuple[float, str, Mapping[str, Any]]]] = {}
    for row in rows:
        metrics = row.get("metrics") if isinstance(row.get("metrics"), Mapping) else {}
        value = finite(metrics.get(metric))
        if value is None or row.get("status", "scored") != "scored":
            continue
        by_type.setdefault(str(row.get("task_type")), []).append((value, str(row.get("key")), row))
    folder = _gallery_folder(out_dir)
    written: list[Path] = []
    for task_type in type_order(benchmark, list(by_type)):
        ranked = sorted(by_type[task_type], key=lambda item: (-item[0], item[1]))
        best = ranked[:per_type]
        worst = ranked[max(per_type, len(ranked) - per_type):]
        grid_rows, captions, titles = [], [], []
        for tag, items in (("best", best), ("worst", worst)):
            for value, key, row in items:
                tag = tag if len(ranked) > per_type else "scored"  # too few to call any of them best or worst
                source, ok_s = display_image(resolve_path(results_dir, row.get("source")))
                edit, ok_e = display_image(resolve_path(results_dir, row.get("edit")))
                grid_rows.append([source, edit])
                captions.append(["source" if ok_s else "source missing",
                                 format_metrics(row.get("metrics") or {}, names) if ok_e else "edit missing"])
                title = f"{tag} {key}{language_tag(benchmark, key, row.get('language'))}: {row.get('instruction', '')}"
                if note and not titles:
                    title = f"note: {note}\n{title}"
                reasoning = judge_reasoning(row, benchmark)
                if reasoning:
                    title += f"\njudge: {reasoning}"
                titles.append(title)
        grid = image_grid(grid_rows, captions, scale=1, row_titles=titles)
        path = folder / f"{_safe_name(task_type)}.png"
        write_bytes_atomic(path, png_bytes(grid))
        written.append(path)
    return written
