"""Comparing two benchmark results folders, and the figures of one (synthetic folders made here)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from editr1.errors import EditR1Error
from editr1.eval.benchmarks.compare import (
    MIN_PAIRED,
    compare_results,
    format_comparison_table,
    read_results,
    write_comparison,
)
from editr1.eval.benchmarks.figures import (
    gallery,
    imgedit_reasoning,
    judge_reasoning,
    type_bar_chart,
    type_label,
    type_spread,
    viescore_reasoning,
)
from editr1.eval.benchmarks.gedit import aggregate_gedit
from editr1.eval.benchmarks.imgedit import IMGEDIT_TYPES, aggregate_imgedit

JUDGE = {"kind": "openai", "model": "judge-72b", "endpoint": "http://localhost:8000/v1", "temperature": 0.0,
         "repeat_temperature": 0.7, "max_tokens": 512, "extra_body": None}
PROMPTS = {"source": "official", "path": "/data/ImgEdit/Basic/prompts.json", "sha256": "ab" * 32}
R = 1000  # bootstrap resamples in tests


def _png(path, size, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def make_folder(folder, benchmark, rows, *, judge=JUDGE, prompts=PROMPTS, model="model-a", lora=None,
                fingerprint=None, note="", aggregate=None, judge_spread=None, images=True):
    """A results folder: results.json, samples.jsonl and (with `images`) a PNG for every source and edit.

    Each row needs key, task_type, metrics; the rest gets defaults. Sources are written under
    `folder/src` and referenced by absolute path; edits under `folder/edits` by relative path. A
    `fingerprint` ({"model", "lora"}) is recorded with the model; without one, as older results.json."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, row in enumerate(rows):
        name = row["key"].replace("/", "_")
        full = {
            "key": row["key"], "task_type": row["task_type"], "language": row.get("language", "en"),
            "intersection": row.get("intersection", True), "instruction": row.get("instruction", f"edit {row['key']}"),
            "source": str(folder / "src" / f"{name}.png"), "edit": f"edits/{name}.png",
            "metrics": row["metrics"], "status": row.get("status", "scored"),
            "replies": row.get("replies", {}), "problems": {}, "repeats": [],
        }
        lines.append(json.dumps(full))
        if images:  # mixed sizes: sources square, edits wide or tall
            _png(folder / "src" / f"{name}.png", (32, 32), (200, 30 + i % 200, 40))
            _png(folder / "edits" / f"{name}.png", (48, 24) if i % 2 else (20, 40), (30, 40 + i % 200, 220))
    metrics = ["score"] if benchmark == "imgedit" else ["SC", "PQ", "O"]
    generation = {"model": model, "lora": lora}
    if fingerprint is not None:
        generation["fingerprint"] = fingerprint
    results = {
        "benchmark": benchmark, "metrics": metrics, "model": generation,
        "judge": judge, "prompts": prompts, "comparable": prompts.get("source") == "official", "note": note,
        "settings": {"limit": None}, "aggregate": aggregate or {}, "judge_spread": judge_spread,
    }
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "samples.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def imgedit_pair(tmp_path, n_per_type=60, seed=7, images=False):
    """ImgEdit-like A and B: B = A + 0.3375 + noise in eight types and A + noise in "action", so the true
    overall difference (the unweighted mean of the nine type differences) is exactly 0.3. The noise
    (sd 0.3) is centred within each type, so the samples' mean difference is the true one."""
    rng = np.random.default_rng(seed)
    rows_a, rows_b = [], []
    for t in IMGEDIT_TYPES:
        shift = 0.0 if t == "action" else 0.3375
        a = rng.uniform(2.0, 4.4, n_per_type)
        noise = rng.normal(0.0, 0.3, n_per_type)
        b = a + shift + (noise - noise.mean())
        for j in range(n_per_type):
            key = f"{t}{j}"
            rows_a.append({"key": key, "task_type": t, "metrics": {"score": float(a[j])}})
            rows_b.append({"key": key, "task_type": t, "metrics": {"score": float(b[j])}})
    a = make_folder(tmp_path / "a", "imgedit", rows_a, images=images)
    b = make_folder(tmp_path / "b", "imgedit", rows_b, model="model-b", images=images)
    return a, b


def test_known_difference_is_found_with_honest_intervals(tmp_path):
    a, b = imgedit_pair(tmp_path)
    comp = compare_results(a, b, n_resamples=R, seed=0)
    assert comp["benchmark"] == "imgedit" and comp["headline"] == "score"
    assert comp["pairing"]["n_paired"] == 540 and comp["pairing"]["dropped_a"] == comp["pairing"]["dropped_b"] == 0
    [group] = comp["groups"]
    assert (group["language"], group["subset"], group["n"], group["types_missing"]) == ("en", "fullset", 540, [])
    assert group["types"] == list(IMGEDIT_TYPES)
    score = group["metrics"]["score"]
    overall = score["overall"]
    assert overall["n_types"] == 9 and overall["n"] == 540
    assert overall["low"] < 0.3 < overall["high"] and overall["low"] > 0 and overall["significant"]
    assert overall["diff"] == pytest.approx(overall["mean_b"] - overall["mean_a"])
    action = score["types"]["action"]
    assert action["low"] < 0 < action["high"] and not action["significant"]
    add = score["types"]["add"]
    assert add["low"] > 0 and add["significant"] and add["n"] == 60
    # The type means are the plain means of A and B over the paired samples.
    rows_a = {r["key"]: r for r in read_results(a)[1]}
    add_a = [r["metrics"]["score"] for r in rows_a.values() if r["task_type"] == "add"]
    assert add["mean_a"] == pytest.approx(sum(add_a) / 60)
    # Deterministic for a seed.
    again = compare_results(a, b, n_resamples=R, seed=0)
    assert again["groups"] == comp["groups"]
    table = format_comparison_table(comp)
    lines = table.splitlines()
    assert lines[-1].startswith("overall") and lines[-1].endswith("*")
    action_line = next(line for line in lines if line.startswith("Action"))
    assert not action_line.endswith("*")
    assert any(line.startswith("Hybrid") for line in lines)  # display names


def _gedit_rows(values, pq=7.0):
    """values: (key, type, language, intersection, O) -> rows with SC = O and a fixed PQ."""
    return [{"key": f"{lang}/{key}", "task_type": t, "language": lang, "intersection": inter,
             "metrics": {"SC": o, "PQ": pq, "O": o}} for key, t, lang, inter, o in values]


def test_gedit_groups_per_language_and_subset(tmp_path):
    bg, co = "background_change", "color_alter"
    a = [("bg1", bg, "en", True, 4.0), ("bg2", bg, "en", False, 5.0), ("co1", co, "en", True, 6.0),
         ("co2", co, "en", True, 2.0), ("bg1", bg, "cn", True, 4.0), ("co1", co, "cn", False, 1.0)]
    b_o = [6.0, 5.0, 3.0, 6.0, 4.0, 8.0]
    b = [(*row[:4], o) for row, o in zip(a, b_o)]
    comp = compare_results(make_folder(tmp_path / "a", "gedit", _gedit_rows(a)),
                           make_folder(tmp_path / "b", "gedit", _gedit_rows(b)), n_resamples=R)
    assert comp["headline"] == "O" and comp["metrics"] == ["SC", "PQ", "O"]
    groups = {(g["language"], g["subset"]): g for g in comp["groups"]}
    assert list(groups) == [("en", "fullset"), ("en", "intersection"), ("cn", "fullset"), ("cn", "intersection")]
    # en full set by hand: background (+2 + 0) / 2 = 1, color (-3 + 4) / 2 = 0.5, overall 0.75;
    # A's means 4.5 and 4.0 -> 4.25, B's 5.5 and 4.5 -> 5.0.
    en = groups[("en", "fullset")]["metrics"]["O"]
    assert en["types"][bg]["diff"] == pytest.approx(1.0) and en["types"][co]["diff"] == pytest.approx(0.5)
    assert (en["overall"]["mean_a"], en["overall"]["mean_b"], en["overall"]["diff"]) == pytest.approx((4.25, 5.0, 0.75))
    assert en["overall"]["n"] == 4 and en["overall"]["n_types"] == 2
    # en intersection: bg2 is left out -> background +2, color +0.5, overall 1.25.
    en_i = groups[("en", "intersection")]
    assert en_i["n"] == 3 and en_i["metrics"]["O"]["overall"]["diff"] == pytest.approx(1.25)
    # One sample gives no interval (resampling it gives it back): not called significant.
    one = en_i["metrics"]["O"]["types"][bg]
    assert (one["n"], one["low"], one["high"], one["significant"]) == (1, None, None, False)
    # cn: full set (0 + 7) / 2; the intersection holds only the background sample.
    assert groups[("cn", "fullset")]["metrics"]["O"]["overall"]["diff"] == pytest.approx(3.5)
    cn_i = groups[("cn", "intersection")]
    assert cn_i["types"] == [bg] and co in cn_i["types_missing"] and cn_i["metrics"]["O"]["overall"]["diff"] == 0.0
    # SC equals O here; PQ did not move at all (a zero-width interval).
    assert groups[("en", "fullset")]["metrics"]["SC"]["overall"]["diff"] == pytest.approx(0.75)
    pq = groups[("en", "fullset")]["metrics"]["PQ"]["overall"]
    assert (pq["diff"], pq["low"], pq["high"], pq["significant"]) == (0.0, 0.0, 0.0, False)
    # The largest |B - A| first, both directions; unchanged samples are not listed.
    assert [(c["key"], c["diff"]) for c in comp["changed_most"]] == [
        ("cn/co1", 7.0), ("en/co2", 4.0), ("en/co1", -3.0), ("en/bg1", 2.0)]
    table = format_comparison_table(comp)
    for block in ("[en / fullset]", "[en / intersection]", "[cn / fullset]", "[cn / intersection]"):
        assert block in table
    blocks = table.split("\n\n")[1:]
    assert all(b.strip().splitlines()[-1].startswith("overall") for b in blocks)
    assert "overall (1/11 types)" in blocks[-1]


@pytest.mark.parametrize("change, field", [
    (lambda r: r["judge"].update(model="judge-7b"), "judge.model"),
    (lambda r: r["judge"].update(temperature=0.7), "judge.temperature"),
    (lambda r: r["prompts"].update(sha256="cd" * 32), "prompts.sha256"),
    (lambda r: r["prompts"].update(source="editr1"), "prompts.source"),
])
def test_refuses_a_different_judge_or_prompts(tmp_path, change, field):
    rows = [{"key": "1", "task_type": "add", "metrics": {"score": 3.0}}]
    a = make_folder(tmp_path / "a", "imgedit", rows, images=False)
    b = make_folder(tmp_path / "b", "imgedit", rows, images=False)
    results = json.loads((b / "results.json").read_text())
    before = json.dumps(results)
    change(results)
    (b / "results.json").write_text(json.dumps(results))
    with pytest.raises(EditR1Error, match="refusing to compare") as info:
        compare_results(a, b, n_resamples=R)
    message = str(info.value)
    assert field in message and before != json.dumps(results)
    assert "A " in message and " vs B " in message


def test_refuses_a_different_benchmark_and_ignores_the_prompt_path(tmp_path):
    rows = [{"key": "1", "task_type": "add", "metrics": {"score": 3.0}}]
    a = make_folder(tmp_path / "a", "imgedit", rows, images=False)
    g = make_folder(tmp_path / "g", "gedit", _gedit_rows([("k", "color_alter", "en", True, 5.0)]), images=False)
    with pytest.raises(EditR1Error, match="benchmark: A 'imgedit' vs B 'gedit'"):
        compare_results(a, g, n_resamples=R)
    moved = make_folder(tmp_path / "m", "imgedit", rows, prompts={**PROMPTS, "path": "/elsewhere/prompts.json"},
                        images=False)
    assert compare_results(a, moved, n_resamples=R)["pairing"]["n_paired"] == 1


def test_unscored_and_unpaired_samples_are_dropped_and_counted(tmp_path):
    def row(key, t, score, status="scored"):
        return {"key": key, "task_type": t, "metrics": {"score": score}, "status": status}

    rows_a = [row("1", "add", 3.0), row("2", "add", 4.0), row("3", "add", None, "unparsable"),
              row("4", "remove", 2.0), row("5", "remove", None, "judge_error"), row("6", "remove", 3.0),
              row("only_a", "add", 5.0)]
    rows_b = [row("1", "add", 4.0), row("2", "add", 4.5), row("3", "add", 4.0),
              row("4", "remove", None, "unparsable"), row("5", "remove", None, "judge_error"), row("6", "remove", 4.0),
              row("only_b", "style", 1.0), row("only_b2", "style", 2.0)]
    comp = compare_results(make_folder(tmp_path / "a", "imgedit", rows_a, images=False),
                           make_folder(tmp_path / "b", "imgedit", rows_b, images=False), n_resamples=R)
    assert comp["pairing"] == {"n_a": 7, "n_b": 8, "n_paired": 3, "only_in_a": 1, "only_in_b": 2, "unscored_a": 2,
                               "unscored_b": 2, "unscored_both": 1, "dropped_a": 4, "dropped_b": 5}
    [group] = comp["groups"]
    assert group["types"] == ["add", "remove"] and len(group["types_missing"]) == 7
    score = group["metrics"]["score"]
    assert score["types"]["add"]["n"] == 2 and score["types"]["add"]["diff"] == pytest.approx(0.75)
    assert score["types"]["remove"]["n"] == 1 and score["types"]["remove"]["diff"] == pytest.approx(1.0)
    assert score["overall"]["diff"] == pytest.approx(0.875)
    table = format_comparison_table(comp)
    assert "dropped from A 4 (only in A 1, unscored in A 2), from B 5 (only in B 2, unscored in B 2)" in table
    assert "overall (2/9 types)" in table
    # Nothing scored in both: a clear error, not an empty table.
    c = make_folder(tmp_path / "c", "imgedit", [row("9", "add", 3.0)], images=False)
    with pytest.raises(EditR1Error, match="no sample is scored in both"):
        compare_results(tmp_path / "a", c, n_resamples=R)


def test_unreadable_folders_name_the_file_and_line(tmp_path):
    rows = [{"key": str(i), "task_type": "add", "metrics": {"score": 3.0}} for i in range(3)]
    a = make_folder(tmp_path / "a", "imgedit", rows, images=False)
    b = make_folder(tmp_path / "b", "imgedit", rows, images=False)
    with pytest.raises(EditR1Error, match="results folder .*nope does not exist"):
        compare_results(a, tmp_path / "nope")
    lines = (b / "samples.jsonl").read_text().splitlines()
    lines[1] = lines[1][:-5]
    (b / "samples.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(EditR1Error, match=r"samples\.jsonl line 2: not valid JSON"):
        compare_results(a, b)
    lines[1] = lines[0]
    (b / "samples.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(EditR1Error, match=r"samples\.jsonl line 2: key '0' already on line 1"):
        compare_results(a, b)
    (b / "samples.jsonl").unlink()
    with pytest.raises(EditR1Error, match=r"samples\.jsonl does not exist"):
        compare_results(a, b)
    (b / "results.json").write_text("{not json")
    with pytest.raises(EditR1Error, match=r"results\.json: not valid JSON"):
        compare_results(a, b)
    (b / "results.json").unlink()
    with pytest.raises(EditR1Error, match=r"results\.json does not exist"):
        compare_results(a, b)


def test_a_key_with_another_type_is_refused(tmp_path):
    a = make_folder(tmp_path / "a", "imgedit", [{"key": "1", "task_type": "add", "metrics": {"score": 3.0}}],
                    images=False)
    b = make_folder(tmp_path / "b", "imgedit", [{"key": "1", "task_type": "remove", "metrics": {"score": 3.0}}],
                    images=False)
    with pytest.raises(EditR1Error, match="sample '1' has task_type 'add' in .* but 'remove'"):
        compare_results(a, b, n_resamples=R)


def _table_line(table, label):
    return next(line for line in table.splitlines() if line.startswith(label))


def test_one_paired_sample_gets_no_interval_and_no_star_and_the_legend_says_why(tmp_path):
    # "add": one sample, B - A = +1.333 (issue 17's "+1.333 [+1.333, +1.333]" without a star). "remove":
    # three samples that all moved by +1.25, so the interval is [+1.25, +1.25]: zero width, yet it
    # excludes 0 and the difference is real.
    rows_a = [{"key": "add0", "task_type": "add", "metrics": {"score": 2.0}}]
    rows_b = [{"key": "add0", "task_type": "add", "metrics": {"score": 10 / 3}}]
    for j, score in enumerate((2.0, 2.5, 3.0)):
        rows_a.append({"key": f"remove{j}", "task_type": "remove", "metrics": {"score": score}})
        rows_b.append({"key": f"remove{j}", "task_type": "remove", "metrics": {"score": score + 1.25}})
    comp = compare_results(make_folder(tmp_path / "a", "imgedit", rows_a, images=False),
                           make_folder(tmp_path / "b", "imgedit", rows_b, images=False), n_resamples=R)
    score = comp["groups"][0]["metrics"]["score"]
    one, equal, overall = score["types"]["add"], score["types"]["remove"], score["overall"]
    assert (one["n"], one["low"], one["high"], one["significant"]) == (1, None, None, False)
    assert one["diff"] == pytest.approx(4 / 3)
    assert (equal["n"], equal["low"], equal["high"], equal["significant"]) == (3, 1.25, 1.25, True)
    # The overall resamples "add" too, so it has no interval either.
    assert (overall["low"], overall["high"], overall["significant"]) == (None, None, False)

    table = format_comparison_table(comp)
    add_line, remove_line = _table_line(table, "Add"), _table_line(table, "Remove")
    assert "+1.333" in add_line and "(no interval)" in add_line and "[" not in add_line and "*" not in add_line
    assert remove_line.endswith("[ +1.250,  +1.250]*")
    assert "(no interval)" in _table_line(table, "overall")
    legend = next(line for line in table.splitlines() if "* = " in line)
    assert "* = the interval excludes 0" in legend and f"needs {MIN_PAIRED}+ paired samples in the type" in legend

    paths = write_comparison(comp, tmp_path / "cmp")
    with paths["csv"].open() as f:
        rows = {row["type"]: row for row in csv.DictReader(f)}
    assert (rows["add"]["low"], rows["add"]["high"]) == ("", "")
    assert float(rows["remove"]["low"]) == float(rows["remove"]["high"]) == 1.25
    written = json.loads(paths["json"].read_text())
    assert written["bootstrap"]["min_paired"] == MIN_PAIRED
    assert written["groups"][0]["metrics"]["score"]["types"]["add"]["low"] is None


def test_the_legend_states_the_rule_every_entry_follows(tmp_path):
    a, b = imgedit_pair(tmp_path, n_per_type=3)
    rows_a = read_results(a)[1]
    # One type reduced to a single paired sample.
    drop = {row["key"] for row in rows_a if row["task_type"] == "add"} - {"add0"}
    kept_a = [r for r in rows_a if r["key"] not in drop]
    comp = compare_results(make_folder(tmp_path / "a1", "imgedit", kept_a, images=False), b, n_resamples=R)
    table = format_comparison_table(comp)
    group = comp["groups"][0]
    entries = [(t, group["metrics"]["score"]["types"][t], [t]) for t in group["types"]]
    entries.append(("overall", group["metrics"]["score"]["overall"], group["types"]))
    type_n = {t: group["metrics"]["score"]["types"][t]["n"] for t in group["types"]}
    assert type_n["add"] == 1 and any(e["significant"] for _, e, _ in entries)
    for name, entry, behind in entries:
        has_interval = all(type_n[t] >= MIN_PAIRED for t in behind)
        assert (entry["low"] is not None) == has_interval, name
        assert entry["significant"] == (has_interval and (entry["low"] > 0 or entry["high"] < 0)), name
        line = _table_line(table, "overall" if name == "overall" else type_label("imgedit", name))
        assert line.endswith("*") == entry["significant"], line
        assert ("(no interval)" in line) == (not has_interval), line


def test_each_side_shows_its_weights_and_their_fingerprints(tmp_path):
    rows = [{"key": str(j), "task_type": "add", "metrics": {"score": 2.0 + j}} for j in range(3)]
    before = {"model": "0123456789ab" + "0" * 52, "lora": "fedcba987654" + "1" * 52}
    after = {"model": before["model"], "lora": "a1b2c3d4e5f6" + "2" * 52}
    a = make_folder(tmp_path / "a", "imgedit", rows, model="/models/qwen", lora="runs/r/final", fingerprint=before,
                    images=False)
    b = make_folder(tmp_path / "b", "imgedit", rows, model="/models/qwen", lora="runs/r/final", fingerprint=after,
                    images=False)
    old = make_folder(tmp_path / "old", "imgedit", rows, model="/models/qwen", images=False)
    comp = compare_results(a, b, n_resamples=R)
    table = format_comparison_table(comp)
    assert ("   model /models/qwen (fingerprint 0123456789ab), LoRA runs/r/final (fingerprint fedcba987654)"
            in table.splitlines())
    assert ("   model /models/qwen (fingerprint 0123456789ab), LoRA runs/r/final (fingerprint a1b2c3d4e5f6)"
            in table.splitlines())
    written = json.loads(write_comparison(comp, tmp_path / "cmp")["json"].read_text())
    assert written["a"]["weights"] != written["b"]["weights"] and "fedcba987654" in written["a"]["weights"]
    # An older results.json recorded no fingerprint.
    older = compare_results(old, b, n_resamples=R)
    assert older["a"]["weights"] == "model /models/qwen (fingerprint not recorded), no LoRA"
    assert "   model /models/qwen (fingerprint not recorded), no LoRA" in format_comparison_table(older).splitlines()


def test_write_comparison_writes_json_csv_and_grid(tmp_path):
    a, b = imgedit_pair(tmp_path, n_per_type=6, images=True)
    comp = compare_results(a, b, n_resamples=R)
    assert len(comp["changed_most"]) == 8
    diffs = [c["diff"] for c in comp["changed_most"]]
    assert [abs(d) for d in diffs] == sorted((abs(d) for d in diffs), reverse=True)
    paths = write_comparison(comp, tmp_path / "cmp")
    assert json.loads(paths["json"].read_text())["groups"] == json.loads(json.dumps(comp["groups"]))
    with paths["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["benchmark", "language", "subset", "type", "metric", "n", "mean_a", "mean_b", "diff",
                             "low", "high"]
    assert len(rows) == 10 and rows[-1]["type"] == "overall" and rows[-1]["n"] == "54"
    assert float(rows[-1]["diff"]) == pytest.approx(comp["groups"][0]["metrics"]["score"]["overall"]["diff"])
    with Image.open(paths["png"]) as grid:
        grid.load()
        # Three cells of the display size side by side; eight rows, each at least one cell high.
        assert 3 * 256 <= grid.width <= 3 * 256 + 40 and grid.height >= 8 * 256
    # A missing edit becomes a grey cell, not a crash; nothing changed gives a small note image.
    (b / "edits" / f"{comp['changed_most'][0]['key']}.png").unlink()
    write_comparison(comp, tmp_path / "cmp2")
    same = compare_results(a, a, n_resamples=R)
    assert same["changed_most"] == []
    with Image.open(write_comparison(same, tmp_path / "cmp3")["png"]) as img:
        assert img.width > 100


def test_gedit_comparison_csv_has_every_group_and_metric(tmp_path):
    rows = [("k1", "color_alter", "en", True, 5.0), ("k2", "ps_human", "en", False, 6.0),
            ("k1", "color_alter", "cn", True, 4.0)]
    comp = compare_results(make_folder(tmp_path / "a", "gedit", _gedit_rows(rows)),
                           make_folder(tmp_path / "b", "gedit", _gedit_rows([(*r[:4], r[4] + 1) for r in rows])),
                           n_resamples=R)
    paths = write_comparison(comp, tmp_path / "out")
    with paths["csv"].open() as f:
        rows_csv = list(csv.DictReader(f))
    # en fullset: 2 types + overall; en intersection: 1 + overall; cn fullset and intersection: 1 + overall each;
    # times three metrics.
    assert len(rows_csv) == (3 + 2 + 2 + 2) * 3
    assert {(r["language"], r["subset"]) for r in rows_csv} == {("en", "fullset"), ("en", "intersection"),
                                                                 ("cn", "fullset"), ("cn", "intersection")}
    with Image.open(paths["png"]) as grid:
        assert grid.height > 3 * 256


# ---------------------------------------------------------------------------------------------------
# Figures


def _imgedit_results_and_rows(tmp_path):
    rows, agg_rows = [], []
    reply = ("Reasoning: The hat is there but its edge is blurry.\n**Prompt Compliance**: 4\n"
             "Visual Naturalness: 3/5\nDetail: 5")
    for t_index, t in enumerate(IMGEDIT_TYPES):
        for j in range(5):
            scored = not (t == "action") and not (t == "add" and j == 0) and not (t == "style" and j > 0)
            scores = [1 + (j + t_index) % 5, 1 + j % 5, 3] if scored else None
            agg_rows.append({"task_type": t, "scores": scores})
            rows.append({"key": f"{t}{j}", "task_type": t, "instruction": f"{t} something, number {j}",
                         "metrics": {"score": sum(scores) / 3 if scored else None},
                         "status": "scored" if scored else "unparsable", "replies": {"imgedit": reply}})
    aggregate = aggregate_imgedit(agg_rows)
    spread = {"types": {t: {"mean_std": 0.1, "per_sample_std": 0.4} for t in IMGEDIT_TYPES}}
    folder = make_folder(tmp_path / "res", "imgedit", rows, aggregate=aggregate, judge_spread=spread,
                         note="editr1's own prompts: not comparable with published ImgEdit numbers.")
    return json.loads((folder / "results.json").read_text()), read_results(folder)[1], folder


def test_type_bar_chart_imgedit_and_gedit(tmp_path):
    results, _, folder = _imgedit_results_and_rows(tmp_path)
    assert results["aggregate"]["types"]["action"]["mean"] is None
    out = type_bar_chart(results, folder / "types.png")
    with Image.open(out) as img:
        assert img.size[0] >= 600 and img.size[1] >= 300
    assert type_spread(results["judge_spread"], "add", "score") == 0.1

    gedit_rows = []
    for lang in ("en", "cn"):
        for i, t in enumerate(("color_alter", "ps_human", "text_change")):
            gedit_rows += [{"task_type": t, "language": lang, "intersection": True, "sc": [6 + i, 8], "pq": [7, 9]},
                           {"task_type": t, "language": lang, "intersection": False, "sc": None, "pq": [5]}]
    gresults = {"benchmark": "gedit", "model": {"model": "m"}, "aggregate": aggregate_gedit(gedit_rows),
                "note": "", "judge_spread": {"en": {"O": {"types": {"ps_human": 0.2}}}}}
    assert type_spread(gresults["judge_spread"], "ps_human", "O", "en") == 0.2
    assert type_spread(gresults["judge_spread"], "ps_human", "O", "cn") is None
    out = type_bar_chart(gresults, tmp_path / "g" / "types.png")
    with Image.open(out) as img:
        assert img.size[0] >= 800 and img.size[1] >= 500
    # An empty aggregate still gives a figure ("no data").
    with Image.open(type_bar_chart({"benchmark": "imgedit", "aggregate": {}}, tmp_path / "e.png")) as img:
        assert img.size[0] > 100


def test_gallery_best_and_worst_skips_unscored(tmp_path):
    _, rows, folder = _imgedit_results_and_rows(tmp_path)
    paths = gallery(rows, folder, folder, per_type=2)
    names = [p.name for p in paths]
    assert "action.png" not in names  # no scored sample
    assert names == [f"{t}.png" for t in IMGEDIT_TYPES if t != "action"]
    assert all(p.parent == folder / "gallery" for p in paths)
    sizes = {}
    for p in paths:
        with Image.open(p) as img:
            img.load()
            sizes[p.stem] = img.size
    # Four rows (2 best + 2 worst) for a full type, one row for "style" (one scored sample); the
    # unscored "add" sample is not shown, leaving four of its four scored samples.
    assert sizes["style"][1] < sizes["remove"][1] / 3
    assert sizes["add"][1] == sizes["remove"][1]
    assert 2 * 256 <= sizes["remove"][0] <= 2 * 256 + 40
    # An out_dir already named "gallery" is used as it is.
    again = gallery(rows, folder, tmp_path / "other" / "gallery", per_type=1)
    assert again[0].parent == tmp_path / "other" / "gallery"


def test_judge_reasoning_extraction():
    imgedit_reply = "Reasoning: The hat is on the cat.\n**Prompt Compliance**: 4\nVisual Naturalness: 3/5\nDetail: 5"
    assert imgedit_reasoning(imgedit_reply) == "The hat is on the cat."
    assert imgedit_reasoning("The cat got a hat\nbut it floats.\n1. Compliance: 3\n2. Nat: 2\n3. Detail: 4") == \
        "The cat got a hat but it floats."
    assert imgedit_reasoning("no scores at all here") == "no scores at all here"
    fenced = 'Sure.\n```json\n{"score": [8, 6], "reasoning": "The sky is red as asked."}\n```'
    assert viescore_reasoning(fenced) == "The sky is red as asked."
    assert viescore_reasoning("I cannot judge this image.") == "I cannot judge this image."
    row = {"replies": {"gedit_sc": fenced, "gedit_pq": '{"score": [9, 9], "reasoning": "' + "x" * 300 + '"}'}}
    text = judge_reasoning(row, "gedit")
    assert text.startswith("SC: The sky is red as asked. | PQ: xxx") and text.endswith("...")
    assert len(text) < 200
    assert judge_reasoning({"replies": {"imgedit": None}}, "imgedit") == ""


def test_gallery_gedit_tiny_mixed_images(tmp_path):
    values = [("k1", "color_alter", "en", True, 7.0), ("k2", "color_alter", "en", False, 3.0),
              ("k1", "color_alter", "cn", True, 5.0), ("k3", "text_change", "cn", True, 6.5)]
    rows_in = _gedit_rows(values)
    rows_in.append({"key": "en/k9", "task_type": "tone_transfer", "language": "en",
                    "metrics": {"SC": 5.0, "PQ": None, "O": None}, "status": "unparsable"})
    for r in rows_in:
        r["replies"] = {"gedit_sc": '{"score": [7, 8], "reasoning": "Mostly right."}', "gedit_pq": "garbled"}
    folder = make_folder(tmp_path / "g", "gedit", rows_in)
    paths = gallery(read_results(folder)[1], folder, folder / "figs")
    assert [p.name for p in paths] == ["color_alter.png", "text_change.png"]
    for p in paths:
        with Image.open(p) as img:
            assert img.width >= 2 * 256 and img.height > 256
