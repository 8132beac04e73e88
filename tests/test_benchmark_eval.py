"""`editr1 eval imgedit` / `editr1 eval gedit` end to end on the fixtures, with each tiny family: a
scripted OpenAI-compatible judge (unparsable replies, timeouts, 5xx), the in-process tiny judge, the
caches (a second run generates and asks nothing), a run interrupted mid-way, the official-layout
export and `editr1 eval compare`."""

import json
import shutil

import pytest
import torch
import yaml

from benchmark_fixtures import write_gedit_fixture, write_imgedit_fixture
from scripted_judge_server import ScriptedJudgeServer, Status, Delay, imgedit_reply, viescore_reply
from tiny_runs import tiny_nft_overrides, tiny_presets
from editr1.cli.main import main
from editr1.eval.benchmarks import harness
from editr1.eval.benchmarks.harness import NOT_COMPARABLE, OTHER_JUDGE
from editr1.models.registry import build_tiny
from editr1.rewards.tiny_judge import build_tiny_judge, save_judge

FAMILIES = tiny_presets()
#: Instructions of the fixtures that the scripted judge treats specially.
UNPARSABLE, FLAKY, SLOW, BROKEN = "turtle", "balloon", "bicycle", "lamp post"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-models")
    saved = {}
    for preset in FAMILIES:
        folder = root / preset.split(":")[1]
        build_tiny(preset, ["add remove change make replace the a"], seed=0).save_pretrained(folder)
        saved[preset] = folder
    return saved


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-data")
    return {"imgedit": write_imgedit_fixture(root), "gedit": write_gedit_fixture(root), "root": root}


class Script:
    """Official-format replies, except: UNPARSABLE gets prose, FLAKY a 500 once, SLOW a timeout once,
    BROKEN a 503 every time (a judge error after the retries)."""

    def __init__(self, reply):
        self.reply, self.seen = reply, {}

    def __call__(self, request, call_number):
        text = request["messages"][0]["content"][0]["text"]
        self.seen[text] = self.seen.get(text, 0) + 1
        if BROKEN in text.lower():
            return Status(503, "scripted outage")
        if FLAKY in text and self.seen[text] == 1:
            return Status(500, "scripted flaky failure")
        if SLOW in text and self.seen[text] == 1:
            return Delay(2.0, self.reply(text))
        if UNPARSABLE in text:
            return "The edit looks fine to me, nice work overall."
        return self.reply(text)


def _judge_yaml(tmp_path, base_url):
    path = tmp_path / "judge.yaml"
    path.write_text(yaml.safe_dump({"kind": "openai", "base_url": base_url, "model": "scripted-judge",
                                    "timeout_s": 1.0, "retries": 2, "backoff_s": 0.01, "concurrency": 4}))
    return path


def _eval(benchmark, model, data, judge, out, *extra):
    return main(["eval", benchmark, "--model", str(model), "--data", str(data), "--judge", str(judge), "--out", str(out),
                 "--steps", "2", "--no-pipeline-sizing", "--batch-size", "3", *extra])


def _rows(out):
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("family", FAMILIES)
def test_imgedit_end_to_end_counts_failures_and_a_second_run_does_no_work(models, benchmarks, tmp_path, family, capsys):
    with ScriptedJudgeServer(Script(imgedit_reply)) as server:
        judge = _judge_yaml(tmp_path, server.base_url)
        out = tmp_path / "eval"
        assert _eval("imgedit", models[family], benchmarks["imgedit"], judge, out) == 0
        first_calls = server.calls
        printed = capsys.readouterr().out
        results = json.loads((out / "results.json").read_text())
        rows = {row["instruction"]: row for row in _rows(out)}
        assert len(rows) == 12 and len(list((out / "edits").glob("*.png"))) == 12
        turtle = next(row for text, row in rows.items() if UNPARSABLE in text)
        broken = next(row for text, row in rows.items() if BROKEN in text)
        assert turtle["status"] == "unparsable" and turtle["metrics"]["score"] is None
        assert broken["status"] == "judge_error" and "503" in broken["problems"]["imgedit"]
        for text, row in rows.items():
            if UNPARSABLE not in text and BROKEN not in text:
                assert row["status"] == "scored", (text, row)  # flaky and slow ones recovered by the retries
        assert results["counts"] == {"samples": 12, "scored": 10, "unparsable": 1, "judge_error": 1}
        assert results["unscored_by_type"] == {"adjust": {"unparsable": 1, "judge_error": 0},
                                               "remove": {"unparsable": 0, "judge_error": 1}}
        aggregate = results["aggregate"]
        assert aggregate["types"]["adjust"]["mean"] is None and aggregate["types"]["adjust"]["n_unscored"] == 1
        assert aggregate["overall"] is None and aggregate["types_missing"] == ["adjust"]
        remove = [row["metrics"]["score"] for row in rows.values() if row["task_type"] == "remove" and row["metrics"]["score"] is not None]
        assert aggregate["types"]["remove"]["mean"] == pytest.approx(sum(remove) / len(remove))
        # Without the official prompts, every output says the numbers are not comparable.
        assert not results["comparable"] and NOT_COMPARABLE in results["note"]
        assert NOT_COMPARABLE in (out / "samples.csv").read_text().splitlines()[0] and NOT_COMPARABLE in printed
        assert all(not row["comparable"] and NOT_COMPARABLE in row["note"] for row in rows.values())
        assert (out / "types.png").is_file() and list((out / "gallery").glob("*.png"))

        edits_before = {p: p.read_bytes() for p in (out / "edits").glob("*.png")}
        assert _eval("imgedit", models[family], benchmarks["imgedit"], judge, out) == 0
        # Only the failed sample is asked again (errors are not cached); nothing is generated again.
        assert server.calls - first_calls == 3  # the broken sample, its two retries
        assert {p: p.read_bytes() for p in (out / "edits").glob("*.png")} == edits_before
        assert json.loads((out / "results.json").read_text())["aggregate"] == aggregate


@pytest.mark.parametrize("family", FAMILIES)
def test_gedit_end_to_end_with_official_prompts_and_export(models, benchmarks, tmp_path, family):
    official = benchmarks["root"] / "gedit" / "Step1X-Edit"
    with ScriptedJudgeServer(Script(viescore_reply)) as server:
        judge = _judge_yaml(tmp_path, server.base_url)
        out, export = tmp_path / "eval", tmp_path / "official"
        assert _eval("gedit", models[family], benchmarks["gedit"], judge, out, "--official-prompts", str(official),
                     "--export-official", str(export), "--model-name", "tiny") == 0
        calls = server.calls
        results = json.loads((out / "results.json").read_text())
        rows = _rows(out)
        assert len(rows) == 16 and results["prompts"]["source"] == "official" and NOT_COMPARABLE not in results["note"]
        # Official prompts, but not the published judge: still not comparable with published numbers.
        assert not results["comparable"] and OTHER_JUDGE in results["note"]
        broken = [row for row in rows if BROKEN in row["instruction"].lower()]
        assert broken and all(row["status"] == "judge_error" for row in broken)
        for row in rows:
            if row["status"] == "scored":
                m = row["metrics"]
                assert m["O"] == pytest.approx((m["SC"] * m["PQ"]) ** 0.5)
        en = results["aggregate"]["en"]
        assert set(en) == {"fullset", "intersection"} and "cn" in results["aggregate"]
        assert en["fullset"]["n"] == 8 and en["intersection"]["n"] == sum(r["intersection"] for r in rows if r["language"] == "en")
        # The official scorers' layout: edit and source side by side.
        edited = sorted(export.glob("tiny/fullset/*/*/*.png"))
        assert len([p for p in edited if not p.name.endswith("_SRCIMG.png")]) == 16
        assert len([p for p in edited if p.name.endswith("_SRCIMG.png")]) == 16

        assert _eval("gedit", models[family], benchmarks["gedit"], judge, out, "--official-prompts", str(official)) == 0
        assert server.calls - calls == 3 * len(broken)  # SC of each broken sample (its PQ prompt holds no instruction)


def test_an_interrupted_run_resumes_to_the_results_of_a_straight_run(models, benchmarks, tmp_path, monkeypatch):
    model = models["tiny:qwen-image-edit"]
    with ScriptedJudgeServer(Script(imgedit_reply)) as server:
        judge = _judge_yaml(tmp_path, server.base_url)
        straight = tmp_path / "straight"
        assert _eval("imgedit", model, benchmarks["imgedit"], judge, straight) == 0

        resumed = tmp_path / "resumed"
        real_save, real_put = harness._save_png, harness.ReplyCache.put
        saved = []

        def save_then_die(image, path, text=None):
            real_save(image, path, text)
            saved.append(path)
            if len(saved) == 5:
                raise KeyboardInterrupt  # mid-generation

        monkeypatch.setattr(harness, "_save_png", save_then_die)
        assert _eval("imgedit", model, benchmarks["imgedit"], judge, resumed) == 130
        monkeypatch.setattr(harness, "_save_png", real_save)
        assert len(list((resumed / "edits").glob("*.png"))) == 5

        put = []

        def put_then_die(self, key, reply, extra=None):
            stored = real_put(self, key, reply, extra)
            put.append(key)
            if len(put) == 4:
                raise KeyboardInterrupt  # mid-judging
            return stored

        monkeypatch.setattr(harness.ReplyCache, "put", put_then_die)
        assert _eval("imgedit", model, benchmarks["imgedit"], judge, resumed) == 130
        monkeypatch.setattr(harness.ReplyCache, "put", real_put)
        assert _eval("imgedit", model, benchmarks["imgedit"], judge, resumed) == 0

    def comparable(out):
        results = json.loads((out / "results.json").read_text())
        return results["aggregate"], results["counts"], [
            {k: v for k, v in row.items() if k != "edit"} for row in _rows(out)]

    assert comparable(resumed) == comparable(straight)
    for path in (straight / "edits").glob("*.png"):
        assert (resumed / "edits" / path.name).read_bytes() == path.read_bytes()


def test_garbage_from_the_in_process_tiny_judge_is_counted_unparsable(models, benchmarks, tmp_path):
    judge_folder = tmp_path / "tiny-judge"
    save_judge(build_tiny_judge(["score edit image add remove"], image_size=32), judge_folder, torch.float32)
    judge = tmp_path / "judge.yaml"
    judge.write_text(yaml.safe_dump({"kind": "transformers", "path": "tiny-judge", "max_new_tokens": 8}))
    out = tmp_path / "eval"
    assert _eval("imgedit", models["tiny:qwen-image-edit"], benchmarks["imgedit"], judge, out, "--limit", "4") == 0
    results = json.loads((out / "results.json").read_text())
    assert results["counts"] == {"samples": 4, "scored": 0, "unparsable": 4, "judge_error": 0}
    assert results["judge"]["kind"] == "transformers"
    assert all(row["metrics"]["score"] is None and row["replies"]["imgedit"] is not None for row in _rows(out))


def test_compare_two_evaluations_and_refuse_another_judge(models, benchmarks, tmp_path, capsys):
    data = benchmarks["imgedit"]
    with ScriptedJudgeServer(Script(imgedit_reply)) as server:
        judge = _judge_yaml(tmp_path, server.base_url)
        a, b = tmp_path / "a", tmp_path / "b"
        assert _eval("imgedit", models["tiny:qwen-image-edit"], data, judge, a) == 0
        assert _eval("imgedit", models["tiny:flux-kontext"], data, judge, b) == 0
        assert main(["eval", "compare", str(a), str(b), "--out", str(tmp_path / "cmp"), "--resamples", "200"]) == 0
        assert (tmp_path / "cmp" / "comparison.json").is_file() and (tmp_path / "cmp" / "changed_most.png").is_file()
        other = tmp_path / "other-judge.yaml"
        other.write_text(yaml.safe_dump({"kind": "openai", "base_url": server.base_url, "model": "scripted-judge",
                                         "temperature": 0.2, "timeout_s": 1.0, "retries": 2, "backoff_s": 0.01}))
        c = tmp_path / "c"
        shutil.copytree(b / "edits", c / "edits")
        shutil.copy(b / "generation.json", c / "generation.json")
        assert _eval("imgedit", models["tiny:flux-kontext"], data, other, c) == 0
    capsys.readouterr()
    assert main(["eval", "compare", str(a), str(c), "--out", str(tmp_path / "cmp2")]) == 2
    assert "judge" in capsys.readouterr().err


def test_bad_input_is_a_one_line_error(models, benchmarks, tmp_path, capsys):
    judge = tmp_path / "judge.yaml"
    judge.write_text(yaml.safe_dump({"kind": "opnai", "base_url": "http://127.0.0.1:9/v1", "model": "x"}))
    model, data = models["tiny:qwen-image-edit"], benchmarks["imgedit"]
    assert _eval("imgedit", model, data, judge, tmp_path / "o") == 2
    assert "did you mean 'openai'" in capsys.readouterr().err
    judge.write_text(yaml.safe_dump({"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "x"}))
    assert _eval("imgedit", model, data, judge, tmp_path / "o", "--types", "add,colour") == 2
    assert "colour" in capsys.readouterr().err
    assert _eval("imgedit", model, tmp_path / "missing", judge, tmp_path / "o") == 2
    assert "missing" in capsys.readouterr().err
    # Edits of another model are never mixed into a folder.
    out = tmp_path / "mixed"
    (out / "edits").mkdir(parents=True)
    (out / "generation.json").write_text(json.dumps({"model": "another"}))
    (out / "edits" / "5.png").write_bytes(b"another model's edit")
    assert _eval("imgedit", model, data, judge, out) == 2
    assert "other settings" in capsys.readouterr().err
    # A folder whose run stopped before its first edit binds nothing: its settings are replaced.
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    (stopped / "generation.json").write_text(json.dumps({"model": "another", "steps": 1}))
    with ScriptedJudgeServer(Script(imgedit_reply)) as server:
        assert _eval("imgedit", model, data, _judge_yaml(tmp_path, server.base_url), stopped, "--types", "style") == 0
    assert json.loads((stopped / "generation.json").read_text())["steps"] == 2
    # An --out that is a file, an unreadable source, one sampler step: one line each, nothing generated.
    (tmp_path / "file").write_text("x")
    assert _eval("imgedit", model, data, judge, tmp_path / "file") == 2
    assert "is a file" in capsys.readouterr().err
    broken = tmp_path / "broken-data"
    shutil.copytree(data, broken)
    (broken / "singleturn" / "style" / "000000107.jpg").write_text("not an image")
    assert _eval("imgedit", model, broken, judge, tmp_path / "o2") == 2
    assert "000000107.jpg" in capsys.readouterr().err and not (tmp_path / "o2" / "edits").exists()


def test_a_training_run_judges_a_benchmark_subset_with_the_viescore_reward(benchmarks, shapes_data, tmp_path):
    from editr1.config import TrainConfig, load_config
    from editr1.trainer.metrics_log import read_metrics
    from editr1.trainer.rl_trainer import run_rl

    subset = tmp_path / "subset"
    assert main(["data", "benchmark", "gedit", "--data", str(benchmarks["gedit"]), "--out", str(subset), "--limit", "8"]) == 0
    with ScriptedJudgeServer(Script(viescore_reply)) as server:
        judge = {"kind": "openai", "base_url": server.base_url, "model": "scripted-judge", "timeout_s": 1.0,
                 "retries": 1, "backoff_s": 0.01}
        config = load_config(TrainConfig, overrides=[
            *tiny_nft_overrides(shapes_data, tmp_path / "run", iterations=2), f"data.heldout={subset / 'samples.jsonl'}",
            "eval.every=1", "eval.reward.name=viescore", f"eval.reward.options={json.dumps({'judge': judge})}",
        ])
        run_rl(config)
    evaluated = {row["step"]: row for row in read_metrics(tmp_path / "run") if "heldout_reward" in row}
    assert sorted(evaluated) == [0, 1, 2]
    for row in evaluated.values():
        assert 0 <= row["heldout_reward"] <= 1
    # The broken sample (a 503 every time) is left out, never scored.
    assert any(BROKEN in json.loads(line)["prompt"].lower() for line in (subset / "samples.jsonl").read_text().splitlines())
    # The reward is GEdit's O / 10 of the scripted judge's scores, over the scored samples.
    from editr1.eval.benchmarks.gedit import EDITR1_GEDIT_PROMPTS, render_sc
    from scripted_judge_server import viescore_scores

    prompts = [json.loads(line)["prompt"] for line in (subset / "samples.jsonl").read_text().splitlines()]
    pq = min(viescore_scores(EDITR1_GEDIT_PROMPTS.pq))
    expected = [(min(viescore_scores(render_sc(EDITR1_GEDIT_PROMPTS.sc, p))) * pq) ** 0.5 / 10
                for p in prompts if BROKEN not in p.lower()]
    assert evaluated[0]["heldout_reward"] == pytest.approx(sum(expected) / len(expected))
    assert (tmp_path / "run" / "reward_curve.png").is_file()


def test_judge_repeats_ask_each_sample_again_and_report_the_spread(models, benchmarks, tmp_path):
    with ScriptedJudgeServer(Script(imgedit_reply)) as server:
        judge = _judge_yaml(tmp_path, server.base_url)
        out = tmp_path / "eval"
        assert _eval("imgedit", models["tiny:qwen-image-edit"], benchmarks["imgedit"], judge, out, "--limit", "3",
                     "--judge-repeats", "3", "--types", "extract,style") == 0
        sent = sorted((r["temperature"], r["seed"]) for r in server.requests)
    assert sent == [(0.0, 0)] * 3 + [(0.7, 1)] * 3 + [(0.7, 2)] * 3
    results = json.loads((out / "results.json").read_text())
    assert results["judge_spread"]["repeats"] == 3
    # The scripted judge answers a text the same way at any temperature: no spread.
    assert results["judge_spread"]["per_sample_std"] == 0.0
    assert all(len(row["repeats"]) == 2 for row in _rows(out))


def test_a_finished_evaluation_is_aggregated_again_with_the_judge_down(models, benchmarks, tmp_path, capsys):
    with ScriptedJudgeServer(Script(imgedit_reply)) as server:
        judge = _judge_yaml(tmp_path, server.base_url)
        out = tmp_path / "eval"
        assert _eval("imgedit", models["tiny:qwen-image-edit"], benchmarks["imgedit"], judge, out,
                     "--types", "extract,style") == 0
    first = json.loads((out / "results.json").read_text())
    capsys.readouterr()
    assert _eval("imgedit", models["tiny:qwen-image-edit"], benchmarks["imgedit"], judge, out, "--types", "extract,style") == 0
    assert '"generated": 0' in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["aggregate"] == first["aggregate"]


def test_a_folder_and_an_export_never_mix_two_models(models, benchmarks, tmp_path, monkeypatch, capsys):
    data = benchmarks["imgedit"]
    with ScriptedJudgeServer(Script(imgedit_reply)) as server:
        judge = _judge_yaml(tmp_path, server.base_url)
        out, export = tmp_path / "eval", tmp_path / "export"
        # The model is recorded by its absolute folder, however it was named.
        monkeypatch.chdir(models["tiny:qwen-image-edit"].parent)
        assert _eval("imgedit", "qwen-image-edit", data, judge, out, "--types", "style", "--export-official", str(export)) == 0
        assert json.loads((out / "generation.json").read_text())["model"] == str(models["tiny:qwen-image-edit"])
        assert _eval("imgedit", models["tiny:qwen-image-edit"], data, judge, out, "--types", "style",
                     "--export-official", str(export)) == 0  # the same export again: nothing to refuse
        capsys.readouterr()
        assert _eval("imgedit", models["tiny:flux-kontext"], data, judge, tmp_path / "other", "--types", "style",
                     "--export-official", str(export)) == 2
    # Refused before any work: nothing generated or asked.
    assert f"--export-official: {export} holds the export of other edits ({models['tiny:qwen-image-edit']};" \
        in capsys.readouterr().err
    assert not (tmp_path / "other" / "edits").exists()


def test_a_run_killed_with_sigkill_resumes_to_the_results_of_a_straight_run(models, benchmarks, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    model, data = models["tiny:qwen-image-edit"], benchmarks["imgedit"]

    def slow(reply):
        return lambda text: Delay(0.2, reply(text))

    def command(judge, out):
        return [sys.executable, "-m", "editr1.cli.main", "eval", "imgedit", "--model", str(model), "--data", str(data),
                "--judge", str(judge), "--out", str(out), "--steps", "8", "--no-pipeline-sizing", "--batch-size", "2",
                "--limit", "6"]

    def kill_when(process, ready, timeout=240):
        deadline = time.monotonic() + timeout
        while not ready():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with ScriptedJudgeServer(Script(slow(imgedit_reply))) as server:
        judge = _judge_yaml(tmp_path, server.base_url)
        straight, killed = tmp_path / "straight", tmp_path / "killed"
        assert _eval("imgedit", model, data, judge, straight, "--steps", "8", "--batch-size", "2", "--limit", "6") == 0
        process = subprocess.Popen(command(judge, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kill_when(process, lambda: len(list((killed / "edits").glob("*.png"))) >= 2)  # mid-generation
        cache = killed / "judgments.jsonl"
        process = subprocess.Popen(command(judge, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kill_when(process, lambda: cache.is_file() and len(cache.read_text().splitlines()) >= 2)  # mid-judging
        finished = subprocess.run(command(judge, killed), env=env, capture_output=True, text=True, timeout=300)
        assert finished.returncode == 0, finished.stderr[-2000:]

    def outcome(out):
        results = json.loads((out / "results.json").read_text())
        return results["aggregate"], results["counts"], [{k: v for k, v in row.items() if k != "edit"} for row in _rows(out)]

    assert outcome(killed) == outcome(straight)
    for path in (straight / "edits").glob("*.png"):
        assert (killed / "edits" / path.name).read_bytes() == path.read_bytes()


def test_the_export_names_a_lora_s_edits_apart_from_its_base_model(models, tmp_path):
    """GEdit's layout has a folder per model: a LoRA's edits never take its base model's name, so exporting the
    base next to it works."""
    from editr1.cli.benchmark import default_model_name
    from editr1.cli.edit import choose_model

    base = models["tiny:qwen-image-edit"]
    lora = tmp_path / "runs" / "watercolor" / "final"
    lora.parent.mkdir(parents=True)
    assert default_model_name(None, choose_model(None, str(base), None)) == "qwen-image-edit"
    choice = choose_model(None, str(base), None)
    with_lora = type(choice)(choice.folder, lora, choice.family, None, "x")
    assert default_model_name(None, with_lora) == "qwen-image-edit+watercolor_final"
    assert default_model_name(tmp_path / "runs" / "watercolor", choice) == "watercolor"
