"""One benchmark evaluation: generate every edit (cached as PNGs), judge each per protocol (replies
cached), aggregate as the benchmark does, and write the results folder.

The folder (`out`) holds `generation.json` (what made the edits, the weights by path and by fingerprint: a
folder never mixes two models or settings), `edits/<key>.png` (each with a digest of the instruction and
source it was made from), `judgments.jsonl` (the reply cache), and, rewritten at the end of each
run from those, `results.json`, `samples.jsonl`, `samples.csv`, `types.png` and `gallery/`. A second
run generates nothing and asks the judge nothing; a killed run resumes at the first missing edit or
reply. Generation is model-agnostic: the caller passes an `Editor` (built lazily, only if an edit is
missing).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from editr1.data.images import load_image
from editr1.errors import EditR1Error
from editr1.eval.benchmarks import gedit, imgedit
from editr1.eval.benchmarks.common import BenchSample, JudgeReply, JudgeRequest, ReplyParseError
from editr1.eval.benchmarks.figures import gallery, type_bar_chart
from editr1.eval.benchmarks.judges import TextJudge
from editr1.eval.benchmarks.reply_cache import ReplyCache, canonical_json, image_sha256
from editr1.eval.benchmarks.stats import judge_spread
from editr1.fileio import refuse_foreign_entries, write_bytes_atomic, write_text_atomic
from editr1.fingerprint import short

GENERATION_FILE, CACHE_FILE, RESULTS_FILE, SAMPLES_FILE = "generation.json", "judgments.jsonl", "results.json", "samples.jsonl"
EDITS = "edits"
#: What an export in the official layout holds (`--export-official`): the edits it was made from.
EXPORT_RECORD = "editr1_export.json"
#: The PNG text field of an edit holding `edit_input_digest`.
EDIT_INPUT_KEY = "editr1-input"
#: What an evaluation writes in its folder (and `eval compare`'s default output, `compare_<A>`).
RESULTS_FOLDER_ENTRIES = (GENERATION_FILE, EDITS, CACHE_FILE, RESULTS_FILE, SAMPLES_FILE, "samples.csv", "types.png",
                          "gallery", "sources", "compare_*")
#: Samples judged per call to the judge: bounds the images held in memory.
JUDGE_CHUNK = 64
NOT_COMPARABLE = ("NOT comparable with published numbers: judged with editr1's own prompts; pass --official-prompts "
                  "with your copy of the benchmark's prompt files to judge as the benchmark does")
OTHER_JUDGE = ("published numbers were judged by GPT-4.1: scores from another judge compare only with scores from the "
               "same judge, prompts and temperature")


class Editor(ABC):
    """Makes the edits: `edit(samples, sources)` returns one RGB image per sample, each from the fixed
    seed, so that batching never changes an edit."""

    @abstractmethod
    def edit(self, samples: Sequence[BenchSample], sources: Sequence[Image.Image]) -> list[Image.Image]: ...


@dataclass
class Prompts:
    texts: Any
    record: dict[str, Any]


class Protocol(ABC):
    """A benchmark's facts: its samples, prompts, judge requests, reply parsing and aggregation."""

    name: str
    #: The per-sample metrics, the headline one first.
    metrics: tuple[str, ...]
    types: tuple[str, ...]
    #: Other spellings of types accepted by `--types`.
    aliases: dict[str, str] = {}

    @abstractmethod
    def load(self, data: Path, images: Path | None) -> list[BenchSample]: ...

    @abstractmethod
    def source(self, sample: BenchSample) -> Image.Image: ...

    @abstractmethod
    def prompts(self, official: Path | None) -> Prompts: ...

    @abstractmethod
    def requests(self, sample: BenchSample, prompts: Prompts, source: Image.Image, edit: Image.Image) -> list[JudgeRequest]: ...

    @abstractmethod
    def score(self, replies: dict[str, str]) -> tuple[dict[str, float], dict[str, Any]]:
        """Metrics from one sample's reply texts by request kind, and what was parsed; ReplyParseError."""

    @abstractmethod
    def aggregate(self, rows: list[dict]) -> dict: ...

    @abstractmethod
    def export(self, folder: Path, model_name: str, sample: BenchSample, source: Image.Image, edit: Path) -> None: ...

    @abstractmethod
    def export_root(self, folder: Path, model_name: str) -> Path:
        """The folder of one model's files in the official layout under `folder`."""


def _prompts_record(source: str, path: Path | None, texts: Any) -> dict[str, Any]:
    digest = hashlib.sha256(canonical_json(texts).encode()).hexdigest()
    return {"source": source, "path": None if path is None else str(Path(path).resolve()), "sha256": digest}


class ImgEditProtocol(Protocol):
    name, metrics, types, aliases = "imgedit", ("score",), imgedit.IMGEDIT_TYPES, imgedit.IMGEDIT_ALIASES

    def load(self, data: Path, images: Path | None) -> list[BenchSample]:
        data = Path(data).expanduser()
        json_path = data if data.is_file() else data / "Basic" / "basic_edit.json"
        root = images if images is not None else (json_path.parent.parent / "singleturn")
        return imgedit.read_imgedit(json_path, root)

    def source(self, sample: BenchSample) -> Image.Image:
        # Upright by its EXIF orientation, RGB, and a one-line error for an unreadable file.
        return load_image(sample.source_path)

    def prompts(self, official: Path | None) -> Prompts:
        if official is None:
            return Prompts(imgedit.EDITR1_IMGEDIT_PROMPTS, _prompts_record("editr1", None, imgedit.EDITR1_IMGEDIT_PROMPTS))
        texts = imgedit.load_official_imgedit_prompts(official)
        return Prompts(texts, _prompts_record("official", official, texts))

    def requests(self, sample, prompts, source, edit):
        return [imgedit.imgedit_request(sample, prompts.texts[sample.task_type], source, edit)]

    def score(self, replies):
        scores, names = imgedit.parse_imgedit_reply(replies["imgedit"])
        return {"score": sum(scores) / len(scores)}, {"scores": scores, "criteria": names}

    def aggregate(self, rows):
        return imgedit.aggregate_imgedit(
            {"task_type": r["task_type"], "scores": (r["parsed"] or {}).get("scores")} for r in rows)

    def export(self, folder, model_name, sample, source, edit):
        _export_file(imgedit.imgedit_official_path(folder, sample), edit.read_bytes())

    def export_root(self, folder, model_name):
        return Path(folder)  # ImgEdit's layout has no model level: one folder per model


class GEditProtocol(Protocol):
    name, metrics, types = "gedit", ("O", "SC", "PQ"), gedit.GEDIT_TYPES

    def __init__(self, languages: Sequence[str] = gedit.GEDIT_LANGUAGES):
        self.languages, self.dataset = tuple(languages), None

    def load(self, data, images):
        samples, self.dataset = gedit.read_gedit(data, self.languages)
        return samples

    def source(self, sample):
        return gedit.gedit_source_image(self.dataset, sample)

    def prompts(self, official):
        if official is None:
            texts = gedit.EDITR1_GEDIT_PROMPTS
            return Prompts(texts, _prompts_record("editr1", None, [texts.sc, texts.pq]))
        texts = gedit.load_official_gedit_prompts(official)
        return Prompts(texts, _prompts_record("official", official, [texts.sc, texts.pq]))

    def requests(self, sample, prompts, source, edit):
        return [gedit.gedit_sc_request(sample, prompts.texts.sc, source, edit),
                gedit.gedit_pq_request(sample, prompts.texts.pq, edit, source)]

    def score(self, replies):
        sc, pq = gedit.parse_viescore_reply(replies["gedit_sc"]), gedit.parse_viescore_reply(replies["gedit_pq"])
        semantic, quality = min(sc), min(pq)
        return {"O": (semantic * quality) ** 0.5, "SC": semantic, "PQ": quality}, {"sc": sc, "pq": pq}

    def aggregate(self, rows):
        return gedit.aggregate_gedit(
            {"task_type": r["task_type"], "language": r["language"], "intersection": r["intersection"],
             "sc": (r["parsed"] or {}).get("sc"), "pq": (r["parsed"] or {}).get("pq")} for r in rows)

    def export_root(self, folder, model_name):
        return gedit.gedit_official_root(folder, model_name)

    def export(self, folder, model_name, sample, source, edit):
        edit_path, source_path = gedit.gedit_official_paths(folder, model_name, sample)
        _export_file(edit_path, edit.read_bytes())
        _export_file(source_path, _png_bytes(source))


PROTOCOLS: dict[str, Callable[[], Protocol]] = {"imgedit": ImgEditProtocol, "gedit": GEditProtocol}


@dataclass
class BenchmarkRun:
    protocol: Protocol
    data: Path
    out: Path
    judge: TextJudge
    #: What made (or will make) the edits: model identity and generation settings.
    generation: dict[str, Any]
    make_editor: Callable[[], Editor]
    images: Path | None = None
    official_prompts: Path | None = None
    limit: int | None = None
    types: Sequence[str] | None = None
    judge_repeats: int = 1
    batch_size: int = 4
    export_official: Path | None = None
    model_name: str = "editr1"
    #: Called with (phase, done, total) as edits are made and replies arrive.
    progress: Callable[[str, int, int], None] | None = None
    #: Counters of this run's work, for the summary (and the tests).
    counts: dict[str, int] = field(default_factory=lambda: {"generated": 0, "judge_requests": 0})
    judge_checked: bool = False


def select_samples(samples: list[BenchSample], types: Sequence[str] | None, limit: int | None, known: Sequence[str],
                   aliases: dict[str, str] | None = None) -> list[BenchSample]:
    if types:
        types = {(aliases or {}).get(t, t) for t in types}
        unknown = sorted(types - set(known))
        if unknown:
            raise EditR1Error(f"--types: unknown type(s) {', '.join(unknown)}; known: {', '.join(known)}")
        samples = [s for s in samples if s.task_type in types]
    if limit is not None:
        if limit < 1:
            raise EditR1Error(f"--limit {limit}: must be at least 1")
        samples = samples[:limit]
    if not samples:
        raise EditR1Error("no benchmark sample left to evaluate (check --types and --limit)")
    return samples


def edit_path(out: Path, sample: BenchSample) -> Path:
    return out / EDITS / f"{sample.key}.png"


def _has_edits(out: Path) -> bool:
    return any((out / EDITS).rglob("*.png")) if (out / EDITS).is_dir() else False


def _check_generation(out: Path, generation: dict[str, Any]) -> None:
    """A folder holds the edits of one model and one set of settings (read-only check)."""
    if out.exists() and not out.is_dir():
        raise EditR1Error(f"--out {out}: is a file; give a folder")
    refuse_foreign_entries(out, RESULTS_FOLDER_ENTRIES, "editr1 eval")
    path = out / GENERATION_FILE
    if path.is_file() and not _has_edits(out):
        return  # a run that stopped before its first edit: its settings bind nothing yet
    if path.is_file():
        recorded = _read_record(path, "move the folder away or choose another --out")
        changed = _changed_keys(recorded, generation)
        if changed:
            if changed == ["fingerprint"]:
                _refuse_rewritten_weights(out, recorded, generation)
            raise EditR1Error(f"{out}: holds edits made with other settings ({', '.join(changed)} differ: "
                              f"{[recorded.get(k) for k in changed]} there, {[generation.get(k) for k in changed]} now); "
                              "choose another --out")
    elif (out / EDITS).exists():
        raise EditR1Error(f"{out}: has an {EDITS}/ folder but no {GENERATION_FILE}; choose another --out")


def _refuse_rewritten_weights(out: Path, recorded: dict[str, Any], generation: dict[str, Any]) -> None:
    """A folder whose edits other weights under the same paths made: the error names which weights changed."""
    then = recorded.get("fingerprint")
    if not isinstance(then, dict):
        raise EditR1Error(f"{out}: holds edits whose weights were not fingerprinted (made by an older editr1): "
                          "they may come from other weights under the same paths; choose another --out")
    now = generation.get("fingerprint") or {}
    rewritten = [f"the {role} {generation[role]} (fingerprint {short(then.get(role))} there, {short(now.get(role))} now)"
                 for role in ("model", "lora") if then.get(role) != now.get(role)]
    raise EditR1Error(f"{out}: holds edits made with other weights under the same path: {' and '.join(rewritten)} "
                      "changed since; choose another --out")


def _record_generation(out: Path, generation: dict[str, Any]) -> None:
    if not (out / GENERATION_FILE).is_file() or not _has_edits(out):
        try:
            out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(out / GENERATION_FILE, json.dumps(generation, indent=2))
        except OSError as error:
            raise EditR1Error(f"--out {out}: cannot write there ({error.strerror or error})") from error


def _png_bytes(image: Image.Image, text: dict[str, str] | None = None) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _save_png(image: Image.Image, path: Path, text: dict[str, str] | None = None) -> None:
    write_bytes_atomic(path, _png_bytes(image, text))  # a kill leaves either no edit or a whole one


def edit_input_digest(sample: BenchSample, source: Image.Image) -> str:
    """What an edit is made from besides the model and settings: its instruction and source pixels."""
    return hashlib.sha256(f"{sample.key}\0{sample.instruction}\0{image_sha256(source)}".encode()).hexdigest()


def _check_edit_inputs(out: Path, samples: list[BenchSample], digests: dict[str, str]) -> None:
    """Refuse a folder whose edits were made from other sources or instructions under the same keys (the
    benchmark's files changed, or another copy of it was given)."""
    stale = []
    for sample in samples:
        path = edit_path(out, sample)
        if path.is_file():
            with Image.open(path) as image:
                made_from = image.info.get(EDIT_INPUT_KEY)  # written before the pixels: read without decoding them
            if made_from != digests[sample.key]:
                stale.append(sample.key)
    if stale:
        raise EditR1Error(f"{out}: {len(stale)} edit(s) were made from another source image or instruction than "
                          f"--data gives now ({', '.join(stale[:3])}{', ...' if len(stale) > 3 else ''}); "
                          "choose another --out")


def _read_record(path: Path, remedy: str) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise EditR1Error(f"{path}: not valid JSON ({error}); {remedy}") from error
    if not isinstance(record, dict):
        raise EditR1Error(f"{path}: expected a JSON object; {remedy}")
    return record


def _changed_keys(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    if canonical_json(recorded) == canonical_json(current):
        return []
    return sorted(k for k in recorded.keys() | current.keys() if canonical_json(recorded.get(k)) != canonical_json(current.get(k)))


def _check_export(run: BenchmarkRun) -> Path:
    """Before any work: the export folder of this model holds nothing, or this model's earlier export (its
    record says which edits it holds); returns that folder."""
    export, out = Path(run.export_official).resolve(), Path(run.out).resolve()
    if export == out or out in export.parents or export in out.parents:
        raise EditR1Error(f"--export-official {run.export_official}: overlaps --out {run.out}; give a folder outside it "
                          "(each is a folder of its own)")
    root = run.protocol.export_root(run.export_official, run.model_name)
    record = root / EXPORT_RECORD
    if not record.is_file():
        refuse_foreign_entries(root, (), "editr1 eval --export-official")
        return root
    made = _read_record(record, "export to another folder")
    changed = _changed_keys(made, run.generation)
    if changed:
        hint = " (--model-name names each model's folder)" if root != Path(run.export_official) else ""
        raise EditR1Error(f"--export-official: {root} holds the export of other edits ({made.get('model')}"
                          f"{' + LoRA ' + str(made['lora']) if made.get('lora') else ''}; {', '.join(changed)} differ); "
                          f"export each model to its own folder{hint}")
    return root


def _export_file(path: Path, data: bytes) -> None:
    """Write an exported file; one that exists with other content (another model's export) is refused."""
    if path.exists():
        if path.read_bytes() == data:
            return
        raise EditR1Error(f"--export-official: {path} exists with other content (another model's export?); "
                          "export each model to its own folder")
    write_bytes_atomic(path, data)


def generate_missing(run: BenchmarkRun, samples: list[BenchSample], digests: dict[str, str]) -> None:
    """Edit the samples in batches of `batch_size`, aligned to the sample list: a batch with a missing
    edit is sampled again whole, so that every edit comes from the batch a straight run gives it (a
    batched matmul may round differently with other batch-mates), and only its missing edits are
    written. Existing edits are never rewritten."""
    editor = None
    for start in range(0, len(samples), run.batch_size):
        chunk = samples[start : start + run.batch_size]
        missing = [not edit_path(run.out, s).is_file() for s in chunk]
        if not any(missing):
            continue
        editor = editor or run.make_editor()
        edits = editor.edit(chunk, [run.protocol.source(s) for s in chunk])
        for sample, image, write in zip(chunk, edits, missing):
            if write:
                _save_png(image, edit_path(run.out, sample), {EDIT_INPUT_KEY: digests[sample.key]})
        run.counts["generated"] += sum(missing)
        if run.progress is not None:
            run.progress("generate", start + len(chunk), len(samples))


def _load_edit(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def judge_all(run: BenchmarkRun, samples: list[BenchSample], prompts: Prompts, cache: ReplyCache
              ) -> dict[tuple[str, int], dict[str, JudgeReply]]:
    """Every sample's replies by (key, repeat) and request kind: cached ones, then the missing ones asked."""
    identity = run.judge.identity()
    replies: dict[tuple[str, int], dict[str, JudgeReply]] = {}
    done = 0
    for start in range(0, len(samples), JUDGE_CHUNK):
        chunk = samples[start : start + JUDGE_CHUNK]
        asked: list[tuple[JudgeRequest, int]] = []
        owners: list[tuple[str, str]] = []
        for sample in chunk:
            source = run.protocol.source(sample)
            edit = _load_edit(edit_path(run.out, sample))
            for repeat in range(run.judge_repeats):
                for request in run.protocol.requests(sample, prompts, source, edit):
                    key = cache.key(identity, request, repeat)
                    cached = cache.get(key)
                    if cached is not None:
                        replies.setdefault((sample.key, repeat), {})[request.kind] = cached
                    else:
                        asked.append((request, repeat))
                        owners.append((sample.key, key))

        def keep(index: int, reply: JudgeReply) -> None:
            sample_key, key = owners[index]
            request, repeat = asked[index]
            cache.put(key, reply, {"sample": sample_key})
            replies.setdefault((sample_key, repeat), {})[request.kind] = reply

        if asked:
            if not run.judge_checked:
                run.judge.check_ready()
                run.judge_checked = True
            run.counts["judge_requests"] += len(asked)
            run.judge.ask_many(asked, keep)
        done += len(chunk)
        if run.progress is not None:
            run.progress("judge", done, len(samples))
    return replies


def sample_row(protocol: Protocol, sample: BenchSample, out: Path, replies: dict[str, JudgeReply]) -> dict[str, Any]:
    """One sample's line of `samples.jsonl`: metrics (null when unscored), status, raw replies."""
    row: dict[str, Any] = {
        "key": sample.key, "task_type": sample.task_type, "language": sample.language,
        "intersection": sample.intersection, "instruction": sample.instruction,
        "source": str(sample.source_path) if sample.source_path is not None else f"sources/{sample.key}.png",
        "edit": str(edit_path(out, sample).relative_to(out)),
        "metrics": {name: None for name in protocol.metrics}, "parsed": None, "status": "scored",
        "replies": {kind: reply.text for kind, reply in replies.items()},
        "problems": {kind: reply.error for kind, reply in replies.items() if reply.error},
    }
    if row["problems"]:
        row["status"] = "judge_error"
        return row
    try:
        row["metrics"], row["parsed"] = protocol.score({kind: reply.text for kind, reply in replies.items()})
    except ReplyParseError as error:
        row["status"], row["problems"] = "unparsable", {"parse": str(error)}
    return row


def _repeat_metrics(protocol: Protocol, replies: dict[str, JudgeReply]) -> dict[str, float | None]:
    if any(reply.error for reply in replies.values()):
        return {name: None for name in protocol.metrics}
    try:
        return protocol.score({kind: reply.text for kind, reply in replies.items()})[0]
    except ReplyParseError:
        return {name: None for name in protocol.metrics}


def _spread(protocol: Protocol, rows: list[dict]) -> dict | None:
    if not rows or not rows[0]["repeats"]:
        return None
    headline = protocol.metrics[0]
    values = [[row["metrics"][headline], *(r[headline] for r in row["repeats"])] for row in rows]
    by_repeat = [[v if v is not None else float("nan") for v in column] for column in zip(*values)]
    return judge_spread(by_repeat, types=[row["task_type"] for row in rows])


def evaluate_benchmark(run: BenchmarkRun) -> dict:
    """Generate, judge, aggregate and write the results folder; returns `results.json`'s content."""
    protocol = run.protocol
    samples = select_samples(protocol.load(run.data, run.images), run.types, run.limit, protocol.types, protocol.aliases)
    prompts = protocol.prompts(run.official_prompts)
    _check_generation(run.out, run.generation)
    export_root = _check_export(run) if run.export_official is not None else None
    # Every source readable before hours of generation, and every existing edit made from it.
    digests = {sample.key: edit_input_digest(sample, protocol.source(sample)) for sample in samples}
    _check_edit_inputs(run.out, samples, digests)
    if any(not edit_path(run.out, s).is_file() for s in samples):
        # Before hours of generation, not after; a run with every edit made asks only if a reply is missing.
        run.judge.check_ready()
        run.judge_checked = True
    _record_generation(run.out, run.generation)
    generate_missing(run, samples, digests)
    if protocol.name == "gedit":  # the source as judged, for galleries and comparisons
        for sample in samples:
            target = run.out / f"sources/{sample.key}.png"
            if not target.is_file():
                _save_png(protocol.source(sample), target)
    with ReplyCache(run.out / CACHE_FILE) as cache:
        replies = judge_all(run, samples, prompts, cache)
    rows = []
    for sample in samples:
        row = sample_row(protocol, sample, run.out, replies[(sample.key, 0)])
        row["repeats"] = [_repeat_metrics(protocol, replies[(sample.key, r)]) for r in range(1, run.judge_repeats)]
        rows.append(row)
    judge_identity = run.judge.identity()
    official_judge = "gpt-4.1" in str(judge_identity.get("model", "")).lower()
    # Edits made otherwise than the published protocol (a size cap): the caller says why, in the generation
    # settings (so a folder's edits all share them).
    unpublished = list(run.generation.get("not_comparable", ()))
    # Comparable with published numbers: the published edits, the official prompts, the published judge.
    comparable = prompts.record["source"] == "official" and official_judge and not unpublished
    notes = [] if prompts.record["source"] == "official" else [NOT_COMPARABLE]
    if not official_judge:
        notes.append(OTHER_JUDGE)
    notes.extend(unpublished)
    results = {
        "benchmark": protocol.name, "metrics": list(protocol.metrics), "model": run.generation, "judge": judge_identity,
        "prompts": prompts.record, "comparable": comparable, "note": "; ".join(notes),
        "settings": {"limit": run.limit, "types": list(run.types) if run.types else None,
                     "judge_repeats": run.judge_repeats, "data": str(Path(run.data).resolve())},
        "counts": {"samples": len(rows), **{status: sum(r["status"] == status for r in rows)
                                             for status in ("scored", "unparsable", "judge_error")}},
        "unscored_by_type": _unscored_by_type(rows),
        "aggregate": protocol.aggregate(rows),
        "judge_spread": _spread(protocol, rows),
    }
    write_results(run.out, results, rows)
    if run.export_official is not None:
        write_text_atomic(export_root / EXPORT_RECORD, json.dumps(run.generation, indent=2))
        for sample in samples:
            protocol.export(run.export_official, run.model_name, sample, protocol.source(sample), edit_path(run.out, sample))
    return results


def _unscored_by_type(rows: list[dict]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        if row["status"] != "scored":
            entry = counts.setdefault(row["task_type"], {"unparsable": 0, "judge_error": 0})
            entry[row["status"]] += 1
    return counts


def write_results(out: Path, results: dict, rows: list[dict]) -> None:
    write_text_atomic(out / RESULTS_FILE, json.dumps(results, indent=2, ensure_ascii=False))
    # Every row says whether its scores compare with published ones (and why not).
    marked = [{**row, "comparable": results["comparable"], "note": results["note"]} for row in rows]
    write_text_atomic(out / SAMPLES_FILE, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in marked))
    text = io.StringIO()
    metrics = results["metrics"]
    writer = csv.writer(text)
    subset = ["language", "intersection"] if results["benchmark"] == "gedit" else []
    writer.writerow(["key", "task_type", *subset, "status", *metrics, "problem", "instruction", "edit"])
    for row in rows:
        problem = "; ".join(f"{k}: {v}" for k, v in row["problems"].items())
        writer.writerow([row["key"], row["task_type"], *(row[column] for column in subset), row["status"],
                         *(row["metrics"][m] for m in metrics), problem, row["instruction"], row["edit"]])
    # Every file says whether its numbers compare with published ones.
    write_text_atomic(out / "samples.csv", (f"# {results['note']}\n" if results["note"] else "") + text.getvalue())
    type_bar_chart(results, out / "types.png")
    gallery(rows, out, out / "gallery", note=results["note"])


def export_jsonl(protocol: Protocol, samples: list[BenchSample], out: Path) -> Path:
    """The samples as an edit JSONL (`out/samples.jsonl`, sources in `out/images/`), for a training run's
    held-out evaluation (`data.heldout`) judged with the `viescore` reward while it trains."""
    from editr1.data.jsonl import write_jsonl

    path = out / "samples.jsonl"
    refuse_foreign_entries(out, ("samples.jsonl", "images"), "editr1 data benchmark")
    if path.exists():
        raise EditR1Error(f"{path}: exists; choose another --out")
    rows = []
    for sample in samples:
        image = out / "images" / f"{sample.key}.png"
        _save_png(protocol.source(sample), image)
        rows.append({"id": sample.key, "image": str(image.relative_to(out)), "prompt": sample.instruction,
                     "task_type": sample.task_type, "language": sample.language})
    write_jsonl(path, rows)
    return path


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_results(results: dict) -> str:
    """The printed table: per-type means, unscored counts and the overall, with the results' note."""
    aggregate, lines = results["aggregate"], []
    if results["benchmark"] == "imgedit":
        lines.append(f"{'type':<12} {'n':>5} {'unscored':>9} {'score':>7}")
        for name, entry in aggregate["types"].items():
            if not entry["n"]:
                continue
            mean = "-" if entry["mean"] is None else f"{entry['mean']:.3f}"
            lines.append(f"{entry['display_name']:<12} {entry['n']:>5} {entry['n_unscored']:>9} {mean:>7}")
        overall = aggregate["overall"]
        lines.append(f"{'Overall':<12} {aggregate['n']:>5} {aggregate['n_unscored']:>9} "
                     f"{'-' if overall is None else format(overall, '.3f'):>7}")
        if aggregate.get("types_missing"):
            lines.append(f"(no overall: no score for {', '.join(aggregate['types_missing'])})")
    else:
        for language, subsets in aggregate.items():
            for subset, entry in subsets.items():
                lines.append(f"[{language} / {subset}]")
                lines.append(f"{'type':<18} {'n':>5} {'unscored':>9} {'SC':>6} {'PQ':>6} {'O':>6}")
                for name, t in entry["types"].items():
                    if not t["n"]:
                        continue
                    cells = ["-" if t[m] is None else f"{t[m]:.3f}" for m in ("SC", "PQ", "O")]
                    lines.append(f"{name:<18} {t['n']:>5} {t['n_unscored']:>9} " + " ".join(f"{c:>6}" for c in cells))
                cells = ["-" if entry[m] is None else f"{entry[m]:.3f}" for m in ("SC", "PQ", "O")]
                lines.append(f"{'Overall':<18} {entry['n']:>5} {entry['n_unscored']:>9} " + " ".join(f"{c:>6}" for c in cells))
    spread = results.get("judge_spread")
    if spread:
        lines.append(f"judge spread over {spread['repeats']} repeats: one sample's score moves by "
                     f"{_number(spread.get('per_sample_std'))} (std), the benchmark score by {_number(spread.get('mean_std'))}")
    if results["note"]:
        lines.append(f"note: {results['note']}")
    return "\n".join(lines)
