"""GEdit-Bench (Step1X-Edit): reading, VIEScore-style judge requests, reply parsing, aggregation.

The benchmark is a Hugging Face dataset (split ``train``) saved locally with ``datasets``; columns
task_type, key, instruction, instruction_language (``en``/``cn``), input_image, input_image_raw,
Intersection_exist. See docs/benchmarks.md.

Sample keys. The dataset's ``key`` is unique only within a language (the English and Chinese rows of
one item share it), so :class:`BenchSample.key` is ``"<language>/<key>"`` (unique in the benchmark, as
BenchSample asks) and :func:`gedit_dataset_key` gives the dataset's own key back. File names always
use the dataset key: ``<model>/fullset/<task_type>/<language>/<key>.png``.

Source image. The official generation example saves the ``input_image`` column as ``<key>_SRCIMG.png``
and the official scorer judges against that file, resizing the edit to its size (PIL's default
``resize`` filter, bicubic). :func:`gedit_source_image` therefore reads ``input_image``.

Scoring (VIEScore, 0..10): SC = min of the semantic-consistency list, PQ = min of the perceptual
quality list, O = sqrt(SC * PQ) per sample; per-type means; the unweighted mean over the 11 types; the
same over the rows with ``Intersection_exist``. Unparsable replies are counted, never replaced by a
number.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from editr1.errors import DataError, EditR1Error
from editr1.eval.benchmarks.common import BenchSample, JudgeRequest, ReplyParseError
from editr1.eval.benchmarks.official_prompts import read_string_constants, resolve_prompt_file

BENCHMARK = "gedit"

#: The eleven task types, in the order of the official scripts.
GEDIT_TYPES: tuple[str, ...] = (
    "background_change",
    "color_alter",
    "material_alter",
    "motion_change",
    "ps_human",
    "style_change",
    "subject-add",
    "subject-remove",
    "subject-replace",
    "text_change",
    "tone_transfer",
)

GEDIT_LANGUAGES: tuple[str, ...] = ("en", "cn")

GEDIT_COLUMNS: tuple[str, ...] = (
    "task_type",
    "key",
    "instruction",
    "instruction_language",
    "input_image",
    "input_image_raw",
    "Intersection_exist",
)

#: The column the official scorer judges against (saved as ``<key>_SRCIMG.png``).
SOURCE_COLUMN = "input_image"

#: The placeholder the official image-editing SC rule carries for the instruction (VIEScore "tie").
INSTRUCTION_PLACEHOLDER = "<instruction>"

#: Which module-level names of the official ``vie_prompts.py`` make the two prompts, as the official
#: VIEScore class (task "tie") builds them. SC = "\n".join(context, edit_rule, sc_rule);
#: PQ = "\n".join(context, pq_rule). Edit here if your copy names them differently.
OFFICIAL_GEDIT_PROMPT_NAMES: dict[str, str] = {
    "context": "_context_no_delimit",
    "edit_rule": "_prompts_0shot_two_image_edit_rule",
    "sc_rule": "_prompts_0shot_tie_rule_SC",
    "pq_rule": "_prompts_0shot_rule_PQ",
}
SC_PARTS: tuple[str, ...] = ("context", "edit_rule", "sc_rule")
PQ_PARTS: tuple[str, ...] = ("context", "pq_rule")

#: Where the prompt module sits below a folder the user may give (repo root, GEdit-Bench, viescore).
PROMPT_FILE_CANDIDATES = (
    "GEdit-Bench/viescore/vie_prompts.py",
    "viescore/vie_prompts.py",
    "vie_prompts.py",
)


@dataclass(frozen=True)
class GEditPrompts:
    """The two VIEScore prompts: `sc` (with the instruction placeholder) and `pq`."""

    sc: str
    pq: str


def gedit_dataset_key(sample: BenchSample) -> str:
    """The dataset's own ``key`` of a GEdit sample (BenchSample.key is ``"<language>/<key>"``)."""
    prefix = f"{sample.language}/"
    return sample.key[len(prefix):] if sample.key.startswith(prefix) else sample.key


# ---------------------------------------------------------------------------------------------------
# Reading


def _load(path: Path):
    import datasets

    try:
        obj = datasets.load_from_disk(str(path))
    except FileNotFoundError as e:
        raise DataError(
            f"GEdit: {path} is not a dataset saved with datasets.save_to_disk ({e}); save the benchmark with "
            "load_dataset('stepfun-ai/GEdit-Bench').save_to_disk(PATH)"
        ) from None
    except Exception as e:  # a damaged arrow file or state.json
        raise DataError(f"GEdit: cannot load the dataset at {path}: {type(e).__name__}: {e}") from None
    if isinstance(obj, datasets.DatasetDict):
        if "train" not in obj:
            raise DataError(f"GEdit: {path} has splits {', '.join(obj)}, expected 'train'")
        obj = obj["train"]
    return obj


def _as_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise DataError(f"{where}: Intersection_exist must be a boolean, got {value!r}")


def read_gedit(path: str | Path, languages: Sequence[str] = GEDIT_LANGUAGES) -> tuple[list[BenchSample], Any]:
    """The samples of a locally saved GEdit-Bench, in dataset order, and the dataset (to read images).

    `path` is a ``save_to_disk`` folder of a DatasetDict (split ``train`` is used) or of a Dataset.
    Only rows whose ``instruction_language`` is in `languages` are returned; ``row`` is the row index
    in the dataset, ``key`` is ``"<language>/<dataset key>"``."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"GEdit: {p} does not exist")
    if not p.is_dir():
        raise DataError(f"GEdit: {p} is not a folder (expected a dataset saved with datasets.save_to_disk)")
    ds = _load(p)
    missing = [c for c in GEDIT_COLUMNS if c not in ds.column_names]
    if missing:
        raise DataError(
            f"GEdit: {p} lacks column(s) {', '.join(missing)} (has {', '.join(ds.column_names)}; "
            f"expected {', '.join(GEDIT_COLUMNS)})"
        )
    meta = ds.select_columns(["task_type", "key", "instruction", "instruction_language", "Intersection_exist"]).to_dict()
    wanted = tuple(languages)
    samples: list[BenchSample] = []
    seen: dict[tuple[str, str], int] = {}
    for i in range(len(ds)):
        where = f"GEdit {p} row {i}"
        task_type = meta["task_type"][i]
        if task_type not in GEDIT_TYPES:
            raise DataError(f"{where}: unknown task_type {task_type!r} (known: {', '.join(GEDIT_TYPES)})")
        language = meta["instruction_language"][i]
        if language not in wanted:
            continue
        key = meta["key"][i]
        if not isinstance(key, str):
            key = str(key)
        if not key or key in (".", "..") or "/" in key or "\\" in key or "\x00" in key:
            raise DataError(f"{where}: key {key!r} cannot name an output file <key>.png")
        instruction = meta["instruction"][i]
        if not isinstance(instruction, str) or not instruction.strip():
            raise DataError(f"{where} (key {key!r}): empty instruction")
        if (language, key) in seen:
            raise DataError(f"{where}: key {key!r} already used by row {seen[(language, key)]} for language {language!r}")
        seen[(language, key)] = i
        samples.append(
            BenchSample(
                benchmark=BENCHMARK,
                key=f"{language}/{key}",
                task_type=task_type,
                instruction=instruction,
                language=language,
                intersection=_as_bool(meta["Intersection_exist"][i], f"{where} (key {key!r})"),
                source_path=None,
                row=i,
            )
        )
    if not samples:
        raise DataError(f"GEdit: {p} has no rows with instruction_language in {', '.join(wanted)}")
    return samples, ds


def gedit_source_image(dataset: Any, sample: BenchSample, column: str = SOURCE_COLUMN) -> Image.Image:
    """The sample's source image as RGB, from `column` (``input_image``, what the official scorer uses).

    Checks that the row still holds the sample's key (so a different dataset is not read by mistake)."""
    if sample.row is None:
        raise DataError(f"GEdit sample {sample.key!r} has no dataset row")
    item = dataset.select_columns([column, "key", "instruction_language"])[sample.row]
    if str(item["key"]) != gedit_dataset_key(sample) or item["instruction_language"] != sample.language:
        raise DataError(
            f"GEdit row {sample.row} holds key {item['key']!r} ({item['instruction_language']}), "
            f"not {sample.key!r}: the dataset is not the one the samples were read from"
        )
    image = item[column]
    if not isinstance(image, Image.Image):
        raise DataError(f"GEdit row {sample.row} (key {sample.key!r}): column {column!r} is not an image")
    return image.convert("RGB")


# ---------------------------------------------------------------------------------------------------
# Judge requests


def resize_to_source(edited: Image.Image, source: Image.Image) -> Image.Image:
    """`edited` at the source's size (bicubic, PIL's default filter, as the official scorer resizes)."""
    if edited.size == source.size:
        return edited
    return edited.resize(source.size, Image.Resampling.BICUBIC)


def render_sc(prompt: str, instruction: str) -> str:
    """The SC prompt with the instruction in place of ``<instruction>`` (every occurrence)."""
    if INSTRUCTION_PLACEHOLDER not in prompt:
        raise DataError(f"GEdit SC prompt has no {INSTRUCTION_PLACEHOLDER} placeholder for the instruction")
    return prompt.replace(INSTRUCTION_PLACEHOLDER, instruction)


def gedit_sc_request(sample: BenchSample, prompt: str, source: Image.Image, edited: Image.Image) -> JudgeRequest:
    """Semantic consistency: the SC prompt with the instruction, then the source and the edit (resized
    to the source's size)."""
    return JudgeRequest(
        text=render_sc(prompt, sample.instruction),
        images=(source, resize_to_source(edited, source)),
        kind="gedit_sc",
    )


def gedit_pq_request(sample: BenchSample, prompt: str, edited: Image.Image, source: Image.Image) -> JudgeRequest:
    """Perceptual quality: the PQ prompt, then the edit alone, resized to the source's size as the
    official scorer does (`source` is needed only for its size; it is not sent)."""
    return JudgeRequest(text=prompt, images=(resize_to_source(edited, source),), kind="gedit_pq")


# ---------------------------------------------------------------------------------------------------
# Prompts


def load_official_gedit_prompts(path: str | Path, names: Mapping[str, str] | None = None) -> GEditPrompts:
    """The official VIEScore prompts from the user's ``vie_prompts.py`` (the file, or a folder holding
    ``GEdit-Bench/viescore/vie_prompts.py`` or ``viescore/vie_prompts.py``), read with `ast` only.

    `names` overrides :data:`OFFICIAL_GEDIT_PROMPT_NAMES` (keys context, edit_rule, sc_rule, pq_rule)."""
    file = resolve_prompt_file(path, PROMPT_FILE_CANDIDATES, "GEdit VIEScore prompts")
    constants = read_string_constants(file)
    mapping = dict(OFFICIAL_GEDIT_PROMPT_NAMES)
    if names:
        mapping.update(names)
    parts: dict[str, str] = {}
    for role, var in mapping.items():
        if var not in constants:
            raise DataError(f"GEdit VIEScore prompts: {file} has no string constant {var} (the {role} part)")
        parts[role] = constants[var]
    sc = "\n".join(parts[r] for r in SC_PARTS)
    pq = "\n".join(parts[r] for r in PQ_PARTS)
    if INSTRUCTION_PLACEHOLDER not in sc:
        raise DataError(
            f"GEdit VIEScore prompts: {file}: the SC prompt ({', '.join(mapping[r] for r in SC_PARTS)}) "
            f"has no {INSTRUCTION_PLACEHOLDER} placeholder"
        )
    return GEditPrompts(sc=sc, pq=pq)


_EDITR1_SC = """You are an expert reviewer of edited images. Two images follow: the first is the original, \
the second is the same image after an editor tried to follow this instruction:
<instruction>

Give two integer scores from 0 to 10:
- editing success: how completely and correctly the second image carries out the instruction \
(0 = not at all or the wrong change, 10 = exactly what was asked);
- over-editing: how well everything the instruction did not ask to change is kept from the original \
(0 = the image was changed beyond recognition, 10 = only the requested change was made).
An image identical to the original gets 0 for editing success.

Answer with one JSON object and nothing else:
{"score": [editing_success, over_editing], "reasoning": "one or two sentences"}"""

_EDITR1_PQ = """You are an expert reviewer of image quality. One image follows; judge it as a picture, \
regardless of what it was meant to show.

Give two integer scores from 0 to 10:
- naturalness: how believable the scene looks (lighting, shadows, perspective, proportions, how \
objects fit together; 0 = clearly impossible, 10 = fully natural);
- artifacts: how free the image is of distortions, smears, blur, noise, broken text, extra or \
deformed limbs and other generation flaws (0 = heavily damaged, 10 = none at all).

Answer with one JSON object and nothing else:
{"score": [naturalness, artifacts], "reasoning": "one or two sentences"}"""

#: editr1's own VIEScore-style prompts (NOT the official ones: scores made with them are not
#: comparable with published GEdit numbers).
EDITR1_GEDIT_PROMPTS = GEditPrompts(sc=_EDITR1_SC, pq=_EDITR1_PQ)


# ---------------------------------------------------------------------------------------------------
# Reply parsing

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


def json_objects(text: str) -> list[Any]:
    """Every JSON object that can be decoded starting at a '{' in `text` (fenced blocks first)."""
    decoder = json.JSONDecoder()
    out: list[Any] = []
    chunks = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for chunk in chunks:
        i = chunk.find("{")
        while i != -1:
            try:
                obj, end = decoder.raw_decode(chunk, i)
            except json.JSONDecodeError:
                i = chunk.find("{", i + 1)
                continue
            out.append(obj)
            i = chunk.find("{", end)
    return out


def parse_viescore_reply(text: str | None) -> list[float]:
    """The ``score`` list of a VIEScore reply: a JSON object anywhere in the text (fences, delimiters
    and surrounding prose allowed) whose ``score`` is a non-empty list of numbers in 0..10.

    Raises ReplyParseError otherwise; never returns a default or random score."""
    if text is None or not str(text).strip():
        raise ReplyParseError("empty reply")
    objects = [o for o in json_objects(str(text)) if isinstance(o, dict)]
    if not objects:
        raise ReplyParseError("no JSON object in the reply")
    with_score = [o for o in objects if "score" in o]
    if not with_score:
        raise ReplyParseError("JSON object has no 'score' field")
    distinct: list[Any] = []
    for o in with_score:
        if o["score"] not in distinct:
            distinct.append(o["score"])
    if len(distinct) > 1:
        raise ReplyParseError(f"several different 'score' objects in the reply: {distinct!r}")
    score = distinct[0]
    if not isinstance(score, list) or not score:
        raise ReplyParseError(f"'score' must be a non-empty list of numbers, got {score!r}")
    values: list[float] = []
    for v in score:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ReplyParseError(f"'score' holds a non-number {v!r}")
        if not 0 <= v <= 10:
            raise ReplyParseError(f"score {v} out of range 0..10")
        values.append(float(v))
    return values


# ---------------------------------------------------------------------------------------------------
# Aggregation


def _check_list(values: Any, what: str) -> float | None:
    if values is None:
        return None
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"GEdit {what} must be a non-empty list of numbers 0..10 or None, got {values!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 10:
            raise ValueError(f"GEdit {what} must be a non-empty list of numbers 0..10 or None, got {values!r}")
    return float(min(values))


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def _summarise(samples: list[tuple[str, float | None, float | None, float | None]]) -> dict[str, Any]:
    by_type: dict[str, dict[str, list[float]]] = {t: {"SC": [], "PQ": [], "O": []} for t in GEDIT_TYPES}
    counts = {t: 0 for t in GEDIT_TYPES}
    for t, sc, pq, o in samples:
        counts[t] += 1
        for name, v in (("SC", sc), ("PQ", pq), ("O", o)):
            if v is not None:
                by_type[t][name].append(v)
    types: dict[str, Any] = {}
    for t in GEDIT_TYPES:
        v = by_type[t]
        types[t] = {
            "SC": _mean(v["SC"]),
            "PQ": _mean(v["PQ"]),
            "O": _mean(v["O"]),
            "n": counts[t],
            "n_scored": len(v["O"]),
            "n_unscored": counts[t] - len(v["O"]),
            "n_unscored_sc": counts[t] - len(v["SC"]),
            "n_unscored_pq": counts[t] - len(v["PQ"]),
        }
    out: dict[str, Any] = {"types": types}
    missing: dict[str, list[str]] = {}
    for name in ("SC", "PQ", "O"):
        miss = [t for t in GEDIT_TYPES if types[t][name] is None]
        missing[name] = miss
        out[name] = None if miss else math.fsum(types[t][name] for t in GEDIT_TYPES) / len(GEDIT_TYPES)
    out["types_missing"] = missing
    n = sum(counts.values())
    n_scored = sum(types[t]["n_scored"] for t in GEDIT_TYPES)
    out.update(n=n, n_scored=n_scored, n_unscored=n - n_scored)
    return out


def aggregate_gedit(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """SC / PQ / O per language and subset from per-sample rows
    ``{"task_type", "language", "intersection", "sc": list | None, "pq": list | None}``.

    Per sample SC = min(sc), PQ = min(pq), O = sqrt(SC * PQ) (only when both exist). Returns::

        {language: {"fullset" | "intersection": {
            "types": {type: {"SC", "PQ", "O", "n", "n_scored", "n_unscored", "n_unscored_sc", "n_unscored_pq"}},
            "SC", "PQ", "O": unweighted mean over the 11 types, or None when a type lacks that score,
            "types_missing": {"SC": [...], "PQ": [...], "O": [...]},
            "n", "n_scored", "n_unscored"}}}

    Languages are those present in the rows (``en``, ``cn`` first). Type means are over the samples
    where that quantity exists; ``n_scored`` counts samples with both SC and PQ. Values are unrounded."""
    per_lang: dict[str, list[tuple[str, float | None, float | None, float | None, bool]]] = {}
    for row in rows:
        t = row["task_type"]
        if t not in GEDIT_TYPES:
            raise ValueError(f"unknown GEdit task_type {t!r}")
        sc = _check_list(row.get("sc"), "sc")
        pq = _check_list(row.get("pq"), "pq")
        o = math.sqrt(sc * pq) if sc is not None and pq is not None else None
        per_lang.setdefault(str(row["language"]), []).append((t, sc, pq, o, bool(row["intersection"])))
    order = [lang for lang in GEDIT_LANGUAGES if lang in per_lang] + sorted(set(per_lang) - set(GEDIT_LANGUAGES))
    result: dict[str, Any] = {}
    for lang in order:
        items = per_lang[lang]
        result[lang] = {
            "fullset": _summarise([(t, sc, pq, o) for t, sc, pq, o, _ in items]),
            "intersection": _summarise([(t, sc, pq, o) for t, sc, pq, o, inter in items if inter]),
        }
    return result


# ---------------------------------------------------------------------------------------------------
# Official layout


def gedit_official_root(out_dir: str | Path, model_name: str) -> Path:
    """``<out>/<model>``: one model's folder in the official layout."""
    if not model_name or model_name in (".", "..") or "/" in model_name or "\\" in model_name:
        raise EditR1Error(f"GEdit model name {model_name!r} must be one folder name (no '/' or '\\')")
    return Path(out_dir) / model_name


def gedit_official_paths(out_dir: str | Path, model_name: str, sample: BenchSample) -> tuple[Path, Path]:
    """(edit, source) paths of the official layout:
    ``<out>/<model>/fullset/<task_type>/<language>/<key>.png`` and ``..._SRCIMG.png`` beside it."""
    key = gedit_dataset_key(sample)
    folder = gedit_official_root(out_dir, model_name) / "fullset" / sample.task_type / sample.language
    return folder / f"{key}.png", folder / f"{key}_SRCIMG.png"
