"""Compare two benchmark results folders (A = baseline, B = candidate) sample by sample.

Two evaluations are compared only when their numbers mean the same thing: the same benchmark, the same
judge identity and the same prompts (source and sha256); anything else is refused with the field that
differs. The models, LoRAs and run settings (limit, types, ...) may differ: samples are paired by key,
and only samples scored in both folders (every metric a finite number) are compared; how many were
dropped on each side is reported.

Per group (ImgEdit: language "en", full set; GEdit: each language, full set and intersection) and per
metric, the difference B - A per type and overall (the unweighted mean of the type means, as the
benchmarks aggregate) with a paired, stratified bootstrap interval (:func:`stats.paired_bootstrap`).
The overall covers the types that have paired samples; ``types_missing`` names the benchmark types
that have none (then the overall is not the benchmark's full overall). A difference gets an interval
only when every type behind it has `MIN_PAIRED` or more paired samples (resampling one sample always
draws that sample: a zero-width interval that says nothing), and is marked significant when that
interval excludes 0, however narrow it is.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from editr1.errors import EditR1Error
from editr1.eval.benchmarks.figures import (
    BENCH_METRICS,
    HEADLINE,
    display_image,
    finite,
    format_metrics,
    language_order,
    language_tag,
    model_label,
    png_bytes,
    resolve_path,
    text_image,
    type_label,
    type_order,
)
from editr1.eval.benchmarks.gedit import GEDIT_TYPES
from editr1.eval.benchmarks.imgedit import IMGEDIT_TYPES
from editr1.eval.benchmarks.stats import paired_bootstrap
from editr1.eval.visuals import image_grid
from editr1.fileio import refuse_foreign_entries, write_bytes_atomic, write_text_atomic
from editr1.fingerprint import short

RESULTS_FILE = "results.json"
SAMPLES_FILE = "samples.jsonl"
COMPARISON_JSON = "comparison.json"
COMPARISON_CSV = "comparison.csv"
CHANGED_PNG = "changed_most.png"
CSV_COLUMNS = ("benchmark", "language", "subset", "type", "metric", "n", "mean_a", "mean_b", "diff", "low", "high")
#: How many samples "changed most" lists by default.
N_CHANGED = 8
CONFIDENCE = 0.95
#: Paired samples a type needs for a difference over it to get an interval (and so a star).
MIN_PAIRED = 2


# ---------------------------------------------------------------------------------------------------
# Reading


def read_results(results_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(results.json, the rows of samples.jsonl) of a results folder.

    EditR1Error naming the file for a missing folder or file, invalid JSON, a wrong shape or an unknown
    benchmark; for samples.jsonl also the line number (bad JSON, a row that is not an object, a missing
    or duplicate key, a metric that is neither a number nor null)."""
    folder = Path(results_dir).expanduser()
    if not folder.is_dir():
        raise EditR1Error(f"results folder {folder} does not exist (expected {RESULTS_FILE} and {SAMPLES_FILE} in it)")
    path = folder / RESULTS_FILE
    if not path.is_file():
        raise EditR1Error(f"{path} does not exist: {folder} is not a benchmark results folder")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise EditR1Error(f"{path}: cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise EditR1Error(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(results, dict):
        raise EditR1Error(f"{path}: must hold one JSON object, got {type(results).__name__}")
    benchmark = results.get("benchmark")
    if benchmark not in BENCH_METRICS:
        raise EditR1Error(f"{path}: field 'benchmark' is {benchmark!r}, expected 'imgedit' or 'gedit'")
    for name in ("judge", "prompts"):
        if not isinstance(results.get(name), dict):
            raise EditR1Error(f"{path}: field {name!r} must be an object, got {results.get(name)!r}")
    rows = _read_samples(folder / SAMPLES_FILE, BENCH_METRICS[benchmark])
    return results, rows


def _read_samples(path: Path, metric_names: Sequence[str]) -> list[dict[str, Any]]:
    if not path.is_file():
        raise EditR1Error(f"{path} does not exist: the results folder has no per-sample rows")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise EditR1Error(f"{path}: cannot read: {e}") from None
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise EditR1Error(f"{where}: not valid JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(row, dict):
            raise EditR1Error(f"{where}: must be a JSON object, got {type(row).__name__}")
        key = row.get("key")
        if not isinstance(key, str) or not key:
            raise EditR1Error(f"{where}: 'key' must be a non-empty string, got {key!r}")
        if key in seen:
            raise EditR1Error(f"{where}: key {key!r} already on line {seen[key]}")
        seen[key] = number
        if not isinstance(row.get("task_type"), str) or not row["task_type"]:
            raise EditR1Error(f"{where} (key {key!r}): 'task_type' must be a non-empty string")
        metrics = row.get("metrics")
        if not isinstance(metrics, dict):
            raise EditR1Error(f"{where} (key {key!r}): 'metrics' must be an object with {', '.join(metric_names)}")
        for name in metric_names:
            value = metrics.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise EditR1Error(f"{where} (key {key!r}): metric {name!r} must be a number or null, got {value!r}")
        rows.append(row)
    return rows


def _scored_values(row: Mapping[str, Any], metric_names: Sequence[str]) -> dict[str, float] | None:
    """The row's metrics when it is scored and every metric is finite; else None."""
    if row.get("status", "scored") != "scored":
        return None
    values = {name: finite(row["metrics"].get(name)) for name in metric_names}
    return None if any(v is None for v in values.values()) else values  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------
# Refusals


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k in value:
            out.update(_flatten(value[k], f"{prefix}.{k}"))
        return out if out else {prefix: {}}
    return {prefix: value}


_ABSENT = object()


def _differences(a: Any, b: Any, prefix: str) -> list[str]:
    fa, fb = _flatten(a, prefix), _flatten(b, prefix)
    out = []
    for name in list(fa) + [k for k in fb if k not in fa]:
        va, vb = fa.get(name, _ABSENT), fb.get(name, _ABSENT)
        if va != vb:
            show_a = "(absent)" if va is _ABSENT else json.dumps(va, default=str)
            show_b = "(absent)" if vb is _ABSENT else json.dumps(vb, default=str)
            out.append(f"{name}: A {show_a} vs B {show_b}")
    return out


def check_comparable(results_a: Mapping[str, Any], results_b: Mapping[str, Any], dir_a: Any = "A",
                     dir_b: Any = "B") -> None:
    """EditR1Error unless A and B have the same benchmark, judge identity and prompts (source, sha256);
    the message names every field that differs with A's and B's values."""
    problems: list[str] = []
    if results_a.get("benchmark") != results_b.get("benchmark"):
        problems.append(f"benchmark: A {results_a.get('benchmark')!r} vs B {results_b.get('benchmark')!r}")
    problems += _differences(results_a.get("judge"), results_b.get("judge"), "judge")
    pa, pb = results_a.get("prompts") or {}, results_b.get("prompts") or {}
    for field in ("source", "sha256"):
        problems += _differences(pa.get(field) if isinstance(pa, Mapping) else None,
                                 pb.get(field) if isinstance(pb, Mapping) else None, f"prompts.{field}")
    if problems:
        raise EditR1Error(
            f"refusing to compare {dir_a} (A) with {dir_b} (B): their scores are not comparable because "
            + "; ".join(problems)
            + " (a comparison needs the same benchmark, judge identity and prompts)"
        )


# ---------------------------------------------------------------------------------------------------
# Comparing


def _pair(dir_a: Path, rows_a: list[dict], dir_b: Path, rows_b: list[dict], metric_names: Sequence[str]):
    by_key_b = {row["key"]: row for row in rows_b}
    keys_a = {row["key"] for row in rows_a}
    pairs = []
    unscored_a = unscored_b = unscored_both = 0
    for row_a in rows_a:
        row_b = by_key_b.get(row_a["key"])
        if row_b is None:
            continue
        for field, default in (("task_type", None), ("language", "en"), ("intersection", True)):
            va, vb = row_a.get(field, default), row_b.get(field, default)
            if va != vb:
                raise EditR1Error(
                    f"sample {row_a['key']!r} has {field} {va!r} in {dir_a / SAMPLES_FILE} but {vb!r} in "
                    f"{dir_b / SAMPLES_FILE}: the two folders were not made from the same benchmark data"
                )
        va, vb = _scored_values(row_a, metric_names), _scored_values(row_b, metric_names)
        unscored_a += va is None
        unscored_b += vb is None
        unscored_both += va is None and vb is None
        if va is not None and vb is not None:
            pairs.append((row_a, row_b, va, vb))
    n_paired = len(pairs)
    counts = {
        "n_a": len(rows_a),
        "n_b": len(rows_b),
        "n_paired": n_paired,
        "only_in_a": len(keys_a - set(by_key_b)),
        "only_in_b": len(set(by_key_b) - keys_a),
        "unscored_a": unscored_a,
        "unscored_b": unscored_b,
        "unscored_both": unscored_both,
        "dropped_a": len(rows_a) - n_paired,
        "dropped_b": len(rows_b) - n_paired,
    }
    return pairs, counts


def _group(benchmark: str, language: str, subset: str, pairs: list, metric_names: Sequence[str],
           n_resamples: int, seed: int) -> dict[str, Any]:
    by_type: dict[str, list[tuple[dict[str, float], dict[str, float]]]] = {}
    for row_a, _, va, vb in pairs:
        by_type.setdefault(row_a["task_type"], []).append((va, vb))
    types = type_order(benchmark, list(by_type))
    canon = IMGEDIT_TYPES if benchmark == "imgedit" else GEDIT_TYPES
    metrics: dict[str, Any] = {}
    for metric in metric_names:
        diffs = {t: [vb[metric] - va[metric] for va, vb in by_type[t]] for t in types}
        boot = paired_bootstrap(diffs, n_resamples=n_resamples, seed=seed, confidence=CONFIDENCE)
        per_type: dict[str, Any] = {}
        for t in types:
            mean_a = math.fsum(va[metric] for va, _ in by_type[t]) / len(by_type[t])
            mean_b = math.fsum(vb[metric] for _, vb in by_type[t]) / len(by_type[t])
            per_type[t] = _entry(len(by_type[t]), mean_a, mean_b, boot["types"][t], len(by_type[t]) >= MIN_PAIRED)
        overall_a = math.fsum(per_type[t]["mean_a"] for t in types) / len(types)
        overall_b = math.fsum(per_type[t]["mean_b"] for t in types) / len(types)
        overall = _entry(boot["overall"]["n"], overall_a, overall_b, boot["overall"],
                         all(len(by_type[t]) >= MIN_PAIRED for t in types))
        overall["n_types"] = len(types)
        metrics[metric] = {"types": per_type, "overall": overall}
    return {
        "language": language,
        "subset": subset,
        "n": len(pairs),
        "types": types,
        "types_missing": [t for t in canon if t not in by_type],
        "metrics": metrics,
    }


def _entry(n: int, mean_a: float, mean_b: float, boot: Mapping[str, Any], resampled: bool) -> dict[str, Any]:
    """One table cell. `resampled`: every type behind it has `MIN_PAIRED` or more samples; otherwise
    `low` and `high` are None (a type of one sample would pin its share of the interval to that sample).
    `significant`: the interval excludes 0."""
    low, high = (float(boot["low"]), float(boot["high"])) if resampled else (None, None)
    return {"n": int(n), "mean_a": mean_a, "mean_b": mean_b, "diff": float(boot["mean"]), "low": low, "high": high,
            "significant": resampled and (low > 0 or high < 0)}


def weights_line(model: Any) -> str:
    """The weights an evaluation edited with, from results.json's ``model``: the model and LoRA paths with
    the start of their fingerprints, so that two evaluations of one path with other weights differ."""
    if not isinstance(model, Mapping):
        return f"model {model or '?'} (fingerprint not recorded)"
    fingerprint = model.get("fingerprint")
    digests = fingerprint if isinstance(fingerprint, Mapping) else {}
    parts = []
    for name, label in (("model", "model"), ("lora", "LoRA")):
        path = model.get(name)
        parts.append(f"{label} {path} (fingerprint {short(digests.get(name))})" if path else f"no {label}")
    return ", ".join(parts)


def _side(folder: Path, results: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "dir": str(folder),
        "label": model_label(results.get("model")),
        "model": results.get("model"),
        "weights": weights_line(results.get("model")),
        "settings": results.get("settings"),
        "prompts": results.get("prompts"),
        "comparable": results.get("comparable"),
        "note": results.get("note") or "",
    }


def compare_results(dir_a: str | Path, dir_b: str | Path, n_resamples: int = 10000, seed: int = 0,
                    n_changed: int = N_CHANGED) -> dict[str, Any]:
    """Compare results folder B against A (B - A), sample by sample. See the module docstring.

    Returns a JSON-able dict: ``benchmark``, ``metrics``, ``headline``, ``a`` and ``b`` (folder, model,
    weights (:func:`weights_line`), settings, prompts, note), ``judge``, ``prompts``, ``comparable``/``note``
    (whether the numbers can sit beside published ones), ``pairing`` (n_a, n_b, n_paired, only_in_a,
    only_in_b, unscored_a, unscored_b, unscored_both, dropped_a, dropped_b), ``bootstrap`` (n_resamples,
    seed, confidence, min_paired), ``groups`` (list of {language, subset, n, types, types_missing,
    metrics: {metric: {"types": {type: entry}, "overall": entry + n_types}}}, entry = {n, mean_a, mean_b,
    diff, low, high, significant}; low and high None where a type behind the entry has fewer than
    `MIN_PAIRED` samples) and ``changed_most`` (the `n_changed` paired samples with the largest nonzero
    |B - A| of the headline metric, largest first: key, task_type, language, instruction, a, b, diff,
    metrics_a, metrics_b and the source / edit_a / edit_b image paths).

    EditR1Error for an unreadable folder, folders that are not comparable, a key whose type or
    language differs between the folders, or no sample scored in both."""
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise EditR1Error(f"the number of bootstrap resamples must be a positive integer, got {n_resamples!r}")
    folder_a, folder_b = Path(dir_a).expanduser(), Path(dir_b).expanduser()
    results_a, rows_a = read_results(folder_a)
    results_b, rows_b = read_results(folder_b)
    check_comparable(results_a, results_b, folder_a, folder_b)
    benchmark = results_a["benchmark"]
    metric_names = BENCH_METRICS[benchmark]
    headline = HEADLINE[benchmark]
    pairs, counts = _pair(folder_a, rows_a, folder_b, rows_b, metric_names)
    if not pairs:
        raise EditR1Error(
            f"no sample is scored in both {folder_a} (A: {counts['n_a']} rows) and {folder_b} (B: {counts['n_b']} "
            f"rows): {counts['only_in_a']} only in A, {counts['only_in_b']} only in B, {counts['unscored_a']} "
            f"unscored in A, {counts['unscored_b']} unscored in B"
        )

    groups = []
    languages = language_order({str(row_a.get("language", "en")) for row_a, *_ in pairs})
    subsets = ("fullset",) if benchmark == "imgedit" else ("fullset", "intersection")
    for language in languages:
        in_language = [p for p in pairs if str(p[0].get("language", "en")) == language]
        for subset in subsets:
            chosen = in_language if subset == "fullset" else [p for p in in_language if p[0].get("intersection", True)]
            if chosen:
                groups.append(_group(benchmark, language, subset, chosen, metric_names, n_resamples, seed))

    changed = [p for p in pairs if p[3][headline] != p[2][headline]]
    changed.sort(key=lambda p: (-abs(p[3][headline] - p[2][headline]), p[0]["key"]))
    changed_most = []
    for row_a, row_b, va, vb in changed[: max(0, int(n_changed))]:
        source = resolve_path(folder_a, row_a.get("source")) or resolve_path(folder_b, row_b.get("source"))
        edit_a, edit_b = resolve_path(folder_a, row_a.get("edit")), resolve_path(folder_b, row_b.get("edit"))
        changed_most.append({
            "key": row_a["key"],
            "task_type": row_a["task_type"],
            "language": row_a.get("language", "en"),
            "instruction": row_a.get("instruction", ""),
            "a": va[headline],
            "b": vb[headline],
            "diff": vb[headline] - va[headline],
            "metrics_a": va,
            "metrics_b": vb,
            "source": str(source) if source else None,
            "edit_a": str(edit_a) if edit_a else None,
            "edit_b": str(edit_b) if edit_b else None,
        })

    comparable = bool(results_a.get("comparable")) and bool(results_b.get("comparable"))
    notes = [n for n in (str(results_a.get("note") or "").strip(), str(results_b.get("note") or "").strip()) if n]
    return {
        "benchmark": benchmark,
        "metrics": list(metric_names),
        "headline": headline,
        "a": _side(folder_a, results_a),
        "b": _side(folder_b, results_b),
        "judge": results_a["judge"],
        "prompts": {"source": results_a["prompts"].get("source"), "sha256": results_a["prompts"].get("sha256")},
        "comparable": comparable,
        "note": " ".join(dict.fromkeys(notes)),
        "pairing": counts,
        "bootstrap": {"n_resamples": int(n_resamples), "seed": int(seed), "confidence": CONFIDENCE,
                      "min_paired": MIN_PAIRED},
        "groups": groups,
        "changed_most": changed_most,
    }


# ---------------------------------------------------------------------------------------------------
# Writing


def comparison_csv(comparison: Mapping[str, Any]) -> str:
    """The CSV text: one row per group, type (then "overall") and metric; low and high are empty where
    the entry has no interval."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for group in comparison["groups"]:
        for metric in comparison["metrics"]:
            data = group["metrics"][metric]
            entries = [(t, data["types"][t]) for t in group["types"]] + [("overall", data["overall"])]
            for name, e in entries:
                writer.writerow([comparison["benchmark"], group["language"], group["subset"], name, metric, e["n"],
                                 repr(e["mean_a"]), repr(e["mean_b"]), repr(e["diff"]), _csv_number(e["low"]),
                                 _csv_number(e["high"])])
    return buf.getvalue()


def _csv_number(value: float | None) -> str:
    """Exact digits; empty for no value (an entry without an interval)."""
    return "" if value is None else repr(value)


def changed_most_grid(comparison: Mapping[str, Any]):
    """A grid with one row per changed sample: source | A's edit | B's edit, captioned with the scores,
    titled with the key, type and instruction (a small text image when nothing changed)."""
    items = comparison.get("changed_most") or []
    if not items:
        return text_image(f"No paired sample's {comparison.get('headline')} differs between A and B.")
    names = comparison["metrics"]
    rows, captions, titles = [], [], []
    for item in items:
        cells, caps = [], []
        for path, label in ((item.get("source"), "source"), (item.get("edit_a"), "A"), (item.get("edit_b"), "B")):
            image, ok = display_image(Path(path) if path else None)
            cells.append(image)
            if not ok:
                caps.append(f"{label}: missing")
            elif label == "source":
                caps.append("source")
            else:
                caps.append(f"{label} {format_metrics(item['metrics_' + label.lower()], names)}")
        caps[2] += f" ({item['diff']:+.2f})"
        rows.append(cells)
        captions.append(caps)
        lang = language_tag(comparison["benchmark"], item["key"], item.get("language"))
        titles.append(f"{item['key']}{lang} ({type_label(comparison['benchmark'], item['task_type'])}): "
                      f"{item.get('instruction', '')}")
    return image_grid(rows, captions, scale=1, row_titles=titles)


def write_comparison(comparison: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``comparison.json``, ``comparison.csv`` and ``changed_most.png`` into `out_dir` (created).
    Returns {"json", "csv", "png"} -> path."""
    out = Path(out_dir).expanduser()
    refuse_foreign_entries(out, (COMPARISON_JSON, COMPARISON_CSV, CHANGED_PNG), "editr1 eval compare")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / COMPARISON_JSON, "csv": out / COMPARISON_CSV, "png": out / CHANGED_PNG}
    write_text_atomic(paths["json"], json.dumps(comparison, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    write_text_atomic(paths["csv"], comparison_csv(comparison))
    write_bytes_atomic(paths["png"], png_bytes(changed_most_grid(comparison)))
    return paths


# ---------------------------------------------------------------------------------------------------
# Table


def _metric_cells(entry: Mapping[str, Any] | None) -> str:
    if entry is None:
        return f"{'-':>6} {'-':>6} {'-':>8} {'':<18}  "
    means = f"{entry['mean_a']:6.2f} {entry['mean_b']:6.2f} {entry['diff']:+8.3f} "
    if entry["low"] is None:
        return means + f"{'(no interval)':<18}  "
    star = "*" if entry["significant"] else " "
    return means + f"[{entry['low']:+7.3f}, {entry['high']:+7.3f}]{star} "


def legend(boot: Mapping[str, Any]) -> str:
    """What the intervals are and when a difference gets one and a star: the rule of `_entry`."""
    return (f"{round(boot['confidence'] * 100)}% paired bootstrap intervals ({boot['n_resamples']} resamples, "
            f"seed {boot['seed']}); * = the interval excludes 0. An interval (and so a star) needs "
            f"{boot['min_paired']}+ paired samples in the type, and in every type for the overall: one sample "
            f"resampled is only itself")


def format_comparison_table(comparison: Mapping[str, Any]) -> str:
    """A plain-text table: per group (GEdit: each language and subset), one line per type with n, A's
    and B's means, B-A and its interval (``*`` when the interval excludes 0; see :func:`legend`), the
    overall line last. The header names each side's weights (:func:`weights_line`)."""
    benchmark = comparison["benchmark"]
    names = list(comparison["metrics"])
    pairing = comparison["pairing"]
    boot = comparison["bootstrap"]
    a, b = comparison["a"], comparison["b"]
    lines = [
        f"{'ImgEdit' if benchmark == 'imgedit' else 'GEdit'} comparison, B - A "
        f"(judge {comparison['judge'].get('model', '?')}, prompts {comparison['prompts'].get('source')})",
        f"A: {a['label']}  [{a['dir']}]",
        f"   {a['weights']}",
        f"B: {b['label']}  [{b['dir']}]",
        f"   {b['weights']}",
        f"paired {pairing['n_paired']} samples; dropped from A {pairing['dropped_a']} "
        f"(only in A {pairing['only_in_a']}, unscored in A {pairing['unscored_a']}), from B {pairing['dropped_b']} "
        f"(only in B {pairing['only_in_b']}, unscored in B {pairing['unscored_b']})",
        legend(boot),
    ]
    if comparison.get("note"):
        lines.append(f"note: {comparison['note']}")
    labels = {t: type_label(benchmark, t) for g in comparison["groups"] for t in g["types"]}
    width = max([len("type"), len("overall (99/99 types)"), *map(len, labels.values())])
    block = f"{'A':>6} {'B':>6} {'B-A':>8} {'[low, high]':<18}  "
    for group in comparison["groups"]:
        lines.append("")
        if benchmark == "gedit":
            lines.append(f"[{group['language']} / {group['subset']}]")
            lines.append(f"{'':<{width}} {'':>5}  " + "".join(f"{m:<43}" for m in names).rstrip())
        lines.append((f"{'type':<{width}} {'n':>5}  " + block * len(names)).rstrip())
        for t in group["types"]:
            n = group["metrics"][names[0]]["types"][t]["n"]
            cells = "".join(_metric_cells(group["metrics"][m]["types"][t]) for m in names)
            lines.append(f"{labels[t]:<{width}} {n:>5}  {cells}".rstrip())
        overall = group["metrics"][names[0]]["overall"]
        total = len(group["types"]) + len(group["types_missing"])
        label = "overall" if not group["types_missing"] else f"overall ({len(group['types'])}/{total} types)"
        cells = "".join(_metric_cells(group["metrics"][m]["overall"]) for m in names)
        lines.append(f"{label:<{width}} {overall['n']:>5}  {cells}".rstrip())
    return "\n".join(lines) + "\n"
