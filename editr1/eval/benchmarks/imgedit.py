"""ImgEdit-Bench (basic single-turn suite): reading, judge requests, reply parsing, aggregation.

Layout (see docs/benchmarks.md): ``Basic/basic_edit.json`` is an object keyed by a string
number; each value is ``{"id": <image path relative to the image root>, "prompt": ..., "edit_type": ...}``.
The source images usually sit under ``singleturn/``. The key names the output: the official scorer
reads ``<results>/<key>.png``.

Judging: the rubric for the sample's type with ``<edit_prompt>`` replaced by the instruction, then the
source image, then the edited image. The reply ends with three ``Name: N`` lines (N an integer 1..5).
Sample score = mean of the three; type score = mean over the type; overall = unweighted mean of the
nine type scores. Replies that do not parse are counted, never guessed and never silently dropped.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from editr1.errors import DataError
from editr1.eval.benchmarks.common import BenchSample, JudgeRequest, ReplyParseError
from editr1.eval.benchmarks.official_prompts import read_json_file, resolve_prompt_file

BENCHMARK = "imgedit"

#: The nine canonical types, in the order of the published tables.
IMGEDIT_TYPES: tuple[str, ...] = (
    "add",
    "adjust",
    "extract",
    "replace",
    "remove",
    "background",
    "style",
    "compose",
    "action",
)

#: Other spellings seen in forks, mapped to the canonical type.
IMGEDIT_ALIASES: dict[str, str] = {"alter": "adjust"}

#: The placeholder that the rubrics (official and editr1's) carry for the instruction.
EDIT_PROMPT_PLACEHOLDER = "<edit_prompt>"

#: Where an ImgEdit download keeps the rubric file, relative to a folder the user may give.
PROMPT_FILE_CANDIDATES = ("prompts.json", "Basic/prompts.json")


def canonical_type(edit_type: str) -> str:
    """The canonical type name for `edit_type` ("alter" -> "adjust"); ValueError for an unknown one."""
    t = str(edit_type).strip().lower()
    t = IMGEDIT_ALIASES.get(t, t)
    if t not in IMGEDIT_TYPES:
        raise ValueError(f"unknown ImgEdit edit_type {edit_type!r} (known: {', '.join(IMGEDIT_TYPES)}; alias alter=adjust)")
    return t


def display_name(edit_type: str) -> str:
    """The name the published tables use: "compose" -> "Hybrid", others capitalised."""
    t = canonical_type(edit_type)
    return "Hybrid" if t == "compose" else t.capitalize()


# ---------------------------------------------------------------------------------------------------
# Reading


def _key_order(key: str) -> tuple[int, int, str]:
    return (0, int(key), key) if key.isdigit() else (1, 0, key)


def _check_key(key: str, where: str) -> None:
    if not key or key in (".", "..") or "/" in key or "\\" in key or "\x00" in key:
        raise DataError(f"{where}: key {key!r} cannot name an output file <key>.png")


def read_imgedit(json_path: str | Path, image_root: str | Path, check_images: bool = True) -> list[BenchSample]:
    """The samples of `basic_edit.json`, sorted numerically by key.

    `image_root` is the folder the ``id`` paths are relative to (``singleturn`` in the usual
    unpacking). Every problem is a DataError naming the file and the key."""
    path = Path(json_path).expanduser()
    if not path.is_file():
        raise DataError(f"ImgEdit: {path} does not exist (expected Basic/basic_edit.json of the benchmark)")
    data = read_json_file(path, "ImgEdit")
    if not isinstance(data, dict):
        raise DataError(f"ImgEdit: {path} must hold one JSON object keyed by sample number, got {type(data).__name__}")
    if not data:
        raise DataError(f"ImgEdit: {path} holds no samples")
    root = Path(image_root).expanduser().resolve()
    if check_images and not root.is_dir():
        raise DataError(f"ImgEdit: image root {root} is not a folder (the folder that {path.name}'s \"id\" paths are relative to)")
    samples = []
    for key in sorted(data, key=_key_order):
        where = f"ImgEdit {path} key {key!r}"
        _check_key(key, where)
        value = data[key]
        if not isinstance(value, dict):
            raise DataError(f"{where}: value must be an object with id, prompt, edit_type, got {type(value).__name__}")
        missing = [f for f in ("id", "prompt", "edit_type") if f not in value]
        if missing:
            raise DataError(f"{where}: missing field(s) {', '.join(missing)}")
        for f in ("id", "prompt", "edit_type"):
            if not isinstance(value[f], str) or not value[f].strip():
                raise DataError(f"{where}: field {f!r} must be a non-empty string")
        try:
            task_type = canonical_type(value["edit_type"])
        except ValueError as e:
            raise DataError(f"{where}: {e}") from None
        rel = value["id"]
        if os.path.isabs(rel) or os.path.normpath(rel).split(os.sep)[0] == "..":
            raise DataError(f"{where}: image id {rel!r} must be a path inside the image root")
        source = root / rel
        if check_images and not source.is_file():
            raise DataError(f"{where}: image {source} does not exist (id {rel!r} under image root {root})")
        samples.append(
            BenchSample(
                benchmark=BENCHMARK,
                key=key,
                task_type=task_type,
                instruction=value["prompt"],
                language="en",
                intersection=True,
                source_path=source,
                row=None,
            )
        )
    return samples


# ---------------------------------------------------------------------------------------------------
# Prompts


def load_official_imgedit_prompts(path: str | Path) -> dict[str, str]:
    """The user's official rubric file: `prompts.json` itself, or a folder holding `prompts.json` or
    `Basic/prompts.json`. Returns canonical type -> rubric text (``alter`` is read as ``adjust``)."""
    file = resolve_prompt_file(path, PROMPT_FILE_CANDIDATES, "ImgEdit prompts")
    data = read_json_file(file, "ImgEdit prompts")
    if not isinstance(data, dict):
        raise DataError(f"ImgEdit prompts: {file} must hold a JSON object mapping edit_type to rubric text")
    out: dict[str, str] = {}
    for name, text in data.items():
        try:
            t = canonical_type(name)
        except ValueError:
            continue  # extra entries are not ours to judge
        if not isinstance(text, str):
            raise DataError(f"ImgEdit prompts: {file} entry {name!r} must be a string")
        if EDIT_PROMPT_PLACEHOLDER not in text:
            raise DataError(f"ImgEdit prompts: {file} entry {name!r} has no {EDIT_PROMPT_PLACEHOLDER} placeholder")
        out[t] = text
    missing = [t for t in IMGEDIT_TYPES if t not in out]
    if missing:
        raise DataError(f"ImgEdit prompts: {file} has no rubric for {', '.join(missing)}")
    return {t: out[t] for t in IMGEDIT_TYPES}


#: editr1's own criteria names per type (first: does the edit do what was asked).
IMGEDIT_CRITERIA: dict[str, tuple[str, str, str]] = {
    "add": ("Instruction Compliance", "Visual Naturalness", "Detail Preservation"),
    "adjust": ("Instruction Compliance", "Visual Naturalness", "Detail Preservation"),
    "extract": ("Object Fidelity", "Cutout Cleanliness", "Image Quality"),
    "replace": ("Instruction Compliance", "Visual Naturalness", "Detail Preservation"),
    "remove": ("Removal Completeness", "Fill Naturalness", "Detail Preservation"),
    "background": ("Instruction Compliance", "Visual Naturalness", "Subject Preservation"),
    "style": ("Style Fidelity", "Content Preservation", "Image Quality"),
    "compose": ("Instruction Compliance", "Visual Naturalness", "Detail Preservation"),
    "action": ("Action Compliance", "Identity Preservation", "Visual Naturalness"),
}

_TASKS = {
    "add": "something new has to be put into the picture",
    "adjust": "an attribute of something already in the picture (colour, material, size, shape, ...) has to change",
    "extract": "one object has to be cut out of the picture and shown alone on a plain background",
    "replace": "one thing in the picture has to be swapped for another",
    "remove": "something has to disappear from the picture",
    "background": "the background has to change while the main subject stays as it is",
    "style": "the whole picture has to be re-rendered in another visual style",
    "compose": "several edits at once have to be carried out, all of them",
    "action": "a person or animal has to change its pose, gesture or action",
}

_CRITERIA_TEXT = {
    "Instruction Compliance": "is every part of the instruction carried out, on the right object, and nothing else asked for left undone? 1 = ignored or wrong, 5 = fully and exactly done.",
    "Visual Naturalness": "does the changed part look like it belongs: plausible lighting, shadows, scale, perspective and edges? 1 = obviously pasted or broken, 5 = indistinguishable from a real photo or a consistent image.",
    "Detail Preservation": "is everything the instruction did not mention left as it was (identity, layout, textures, text, colours)? 1 = much unrelated damage, 5 = untouched.",
    "Object Fidelity": "is the object shown the one the instruction names, complete, with its own shape, colours and details? 1 = wrong or missing object, 5 = exactly that object, whole.",
    "Cutout Cleanliness": "is the object cleanly separated: no leftover background, no missing parts, clean edges on a plain backdrop? 1 = messy or not extracted, 5 = clean cutout.",
    "Image Quality": "is the result sharp, with faithful colours and free of artefacts, noise or distortion? 1 = badly degraded, 5 = pristine.",
    "Removal Completeness": "is the named object gone entirely, with no remnants, ghosts, or shadows of it left? 1 = still there, 5 = fully gone.",
    "Fill Naturalness": "does the area where the object was look like a natural continuation of its surroundings? 1 = smear or hole, 5 = seamless.",
    "Subject Preservation": "does the foreground subject keep its identity, outline, pose and details while the background changes? 1 = subject damaged or changed, 5 = unchanged subject.",
    "Style Fidelity": "does the picture clearly show the requested style (palette, brushwork, rendering) throughout? 1 = no style change, 5 = convincing style.",
    "Content Preservation": "are the scene's content, composition and recognisable objects kept under the new style? 1 = content lost, 5 = all content kept.",
    "Action Compliance": "does the subject now perform exactly the requested action or pose? 1 = unchanged or wrong, 5 = exactly as asked.",
    "Identity Preservation": "is the subject still recognisably the same individual, with the scene kept otherwise? 1 = different subject, 5 = same subject.",
}


def _editr1_rubric(edit_type: str) -> str:
    first, second, third = IMGEDIT_CRITERIA[edit_type]
    lines = [
        "You are grading the result of an image edit. Two images follow this text: first the original, "
        "then the edited result.",
        f"Kind of edit: {_TASKS[edit_type]}.",
        f"Instruction: {EDIT_PROMPT_PLACEHOLDER}",
        "",
        "Give three grades, each a whole number from 1 (very poor) to 5 (excellent):",
    ]
    for i, name in enumerate((first, second, third), 1):
        lines.append(f"{i}. {name}: {_CRITERIA_TEXT[name]}")
    lines += [
        f"If the instruction is not carried out, neither {second} nor {third} may be graded above "
        f"{first}: an untouched image is not a good edit.",
        "",
        "Reply with exactly these four lines and nothing else:",
        "Reasoning: <one short sentence>",
        f"{first}: <1-5>",
        f"{second}: <1-5>",
        f"{third}: <1-5>",
    ]
    return "\n".join(lines)


#: editr1's own rubrics (NOT the official ones: scores made with them are not comparable with
#: published ImgEdit numbers). Same reply format as the official ones: a reasoning line, then three
#: ``Name: N`` lines.
EDITR1_IMGEDIT_PROMPTS: dict[str, str] = {t: _editr1_rubric(t) for t in IMGEDIT_TYPES}


def imgedit_request(sample: BenchSample, rubric_text: str, source: Image.Image, edited: Image.Image) -> JudgeRequest:
    """The judge question for one sample: the rubric with the instruction filled in, then (source, edited).

    Images are sent as given; the caller converts them (RGB, PNG)."""
    if EDIT_PROMPT_PLACEHOLDER not in rubric_text:
        raise DataError(f"ImgEdit rubric for {sample.task_type!r} has no {EDIT_PROMPT_PLACEHOLDER} placeholder")
    text = rubric_text.replace(EDIT_PROMPT_PLACEHOLDER, sample.instruction)
    return JudgeRequest(text=text, images=(source, edited), kind="imgedit")


# ---------------------------------------------------------------------------------------------------
# Reply parsing

_SCORE_LINE = re.compile(
    r"""^(?P<name>[^\W\d_][\w &/()'.,+-]*?)\s*[:：]\s*
        (?P<num>[+-]?\d+(?:\.\d+)?)
        (?:\s*(?:/|out\s+of)\s*(?P<den>\d+(?:\.\d+)?))?
        \s*\.?
        (?:\s*$|\s*\(.*$|\s+[-–—]\s.*$|\s*[,;]\s.*$)""",
    re.VERBOSE | re.IGNORECASE,
)
_LEAD = re.compile(r"^\s*(?:[-*•>#]+\s*|\d+[.)]\s+)*")


def _clean_line(line: str) -> str:
    s = line.replace("**", "").replace("__", "").replace("`", "")
    s = _LEAD.sub("", s)
    return s.strip()


def parse_imgedit_reply(text: str | None) -> tuple[list[int], list[str]]:
    """The three scores (ints 1..5) and their names, from the LAST three ``Name: N`` lines of a reply.

    Tolerates markdown bold, list markers, ``4/5`` and surrounding text. Raises ReplyParseError when
    fewer than three score lines exist, or one of the last three is not an integer in 1..5."""
    if text is None or not str(text).strip():
        raise ReplyParseError("empty reply")
    found: list[tuple[str, str, str | None]] = []
    for raw in str(text).splitlines():
        m = _SCORE_LINE.match(_clean_line(raw))
        if m:
            found.append((m.group("name").strip(), m.group("num"), m.group("den")))
    if len(found) < 3:
        raise ReplyParseError(f"found {len(found)} 'Name: N' score line(s), need 3")
    scores: list[int] = []
    names: list[str] = []
    for name, num, den in found[-3:]:
        if den is not None and float(den) != 5:
            raise ReplyParseError(f"{name}: score given out of {den}, expected 1..5")
        value = float(num)
        if not value.is_integer():
            raise ReplyParseError(f"{name}: score {num} is not an integer")
        if not 1 <= value <= 5:
            raise ReplyParseError(f"{name}: score {num} out of range 1..5")
        scores.append(int(value))
        names.append(name)
    return scores, names


# ---------------------------------------------------------------------------------------------------
# Aggregation


def overall_from_type_means(means: Mapping[str, float]) -> float:
    """The benchmark's overall: the unweighted mean of the nine type means (no rounding).

    Raises ValueError if a type is missing or None (never averages over fewer than nine)."""
    canon: dict[str, float] = {}
    for t, v in means.items():
        canon[canonical_type(t)] = v
    missing = [t for t in IMGEDIT_TYPES if canon.get(t) is None]
    if missing:
        raise ValueError(f"ImgEdit overall needs all nine type means; missing {', '.join(missing)}")
    return sum(float(canon[t]) for t in IMGEDIT_TYPES) / len(IMGEDIT_TYPES)


def _check_scores(scores: Any) -> list[int]:
    if not isinstance(scores, (list, tuple)) or len(scores) != 3:
        raise ValueError(f"ImgEdit scores must be a list of 3 integers 1..5 or None, got {scores!r}")
    for s in scores:
        if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 5:
            raise ValueError(f"ImgEdit scores must be a list of 3 integers 1..5 or None, got {scores!r}")
    return list(scores)


def aggregate_imgedit(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-type and overall scores from per-sample rows ``{"task_type": ..., "scores": [a, b, c] | None}``.

    Returns a JSON-able dict::

        {"types": {type: {"display_name", "mean" (None if no scored sample), "n", "n_scored", "n_unscored"}},
         "overall": float | None, "types_missing": [types without a scored sample],
         "n": int, "n_scored": int, "n_unscored": int}

    ``overall`` is None whenever a type has no scored sample (it is never averaged over fewer types).
    Values are unrounded."""
    per_type: dict[str, list[float]] = {t: [] for t in IMGEDIT_TYPES}
    counts: dict[str, int] = {t: 0 for t in IMGEDIT_TYPES}
    for row in rows:
        t = canonical_type(row["task_type"])
        counts[t] += 1
        scores = row.get("scores")
        if scores is None:
            continue
        s = _check_scores(scores)
        per_type[t].append(sum(s) / 3.0)
    types: dict[str, dict[str, Any]] = {}
    means: dict[str, float] = {}
    for t in IMGEDIT_TYPES:
        vals = per_type[t]
        mean = math.fsum(vals) / len(vals) if vals else None
        if mean is not None:
            means[t] = mean
        types[t] = {
            "display_name": display_name(t),
            "mean": mean,
            "n": counts[t],
            "n_scored": len(vals),
            "n_unscored": counts[t] - len(vals),
        }
    missing = [t for t in IMGEDIT_TYPES if t not in means]
    n = sum(counts.values())
    n_scored = sum(len(v) for v in per_type.values())
    return {
        "types": types,
        "overall": None if missing else overall_from_type_means(means),
        "types_missing": missing,
        "n": n,
        "n_scored": n_scored,
        "n_unscored": n - n_scored,
    }


# ---------------------------------------------------------------------------------------------------
# Official layout


def imgedit_official_path(out_dir: str | Path, sample: BenchSample) -> Path:
    """Where the official scorer expects the edit of `sample`: ``<out_dir>/<key>.png``."""
    _check_key(sample.key, "ImgEdit")
    return Path(out_dir) / f"{sample.key}.png"
