"""`editr1 eval reward-alignment` with several rewards: accuracies, bootstrap intervals, paired differences,
on editr1's pairs JSONL and on GenAI-Bench's image_edition layout.

The pairs are flat grey images. A reward preferring the brighter edit (`Brightness(target=1)`) orders 7 of
the 9 decided pairs as the votes do, one preferring the darker 2 of 9, a constant reward ties them all."""

import json

import pytest
import torch
from PIL import Image

from editr1.cli.main import main
from editr1.data.preference_pairs import read_pairs
from editr1.errors import DataError
from editr1.eval.reward_alignment import (
    NO_COMMON_PAIRS,
    NO_DECIDED_PAIRS,
    PairScores,
    agreement_by_pair,
    alignment_result,
    bootstrap_interval,
    compare_rewards,
    paired_difference,
    reward_labels,
    score_pairs,
)
from editr1.rewards.base import Reward, RewardBatch
from editr1.rewards.checked import CheckedReward
from editr1.rewards.combined import build_combined

datasets = pytest.importorskip("datasets")

#: (left grey level, right grey level, vote); the brighter side wins rows 0-4, 7 and 11, loses rows 5 and 6.
ROWS = [(200, 50, "leftvote"), (50, 200, "rightvote"), (220, 60, "leftvote"), (40, 180, "rightvote"),
        (210, 90, "leftvote"), (30, 230, "leftvote"), (190, 70, "rightvote"), (120, 240, "rightvote"),
        (100, 150, "tievote"), (128, 128, "tievote"), (60, 80, "bothbad_vote"), (250, 20, "leftvote")]
#: The ties' mean |left - right| brightness, which both Brightness rewards give as their score difference.
TIE_GAP = (50 + 0 + 20) / 255 / 3
REWARDS = {"bright": "name: toy_plugin:Brightness\noptions: {target: 1.0}\n",
           "dark": "name: toy_plugin:Brightness\noptions: {target: 0.0}\n",
           "constant": "name: toy_plugin:Constant\n"}


def _grey(level: int) -> Image.Image:
    return Image.new("RGB", (8, 8), (level, level, level))


def _columns(rows=ROWS) -> dict:
    return {"source_prompt": ["a grey square"] * len(rows), "target_prompt": ["another grey square"] * len(rows),
            "instruct_prompt": [f"change the grey, {i}" for i in range(len(rows))],
            "source_image": [_grey(128) for _ in rows], "left_output_image": [_grey(left) for left, _, _ in rows],
            "right_output_image": [_grey(right) for _, right, _ in rows], "vote_type": [vote for _, _, vote in rows]}


def _save(columns: dict, folder):
    features = datasets.Features({name: datasets.Image() if name.endswith("_image") else datasets.Value("string")
                                  for name in columns})
    datasets.Dataset.from_dict(columns, features=features).save_to_disk(str(folder))
    return folder


@pytest.fixture(scope="module")
def genai_bench(tmp_path_factory):
    return _save(_columns(), tmp_path_factory.mktemp("genai_bench") / "image_edition")


@pytest.fixture(scope="module")
def pairs_jsonl(tmp_path_factory):
    """The same votes as editr1 pairs: PNG files and a JSONL."""
    folder = tmp_path_factory.mktemp("pairs")
    _grey(128).save(folder / "source.png")
    lines = []
    for i, (left, right, vote) in enumerate(ROWS):
        _grey(left).save(folder / f"{i}a.png")
        _grey(right).save(folder / f"{i}b.png")
        preferred = {"leftvote": "a", "rightvote": "b"}.get(vote, "tie")
        lines.append(json.dumps({"id": str(i), "source": "source.png", "prompt": f"change the grey, {i}",
                                 "image_a": f"{i}a.png", "image_b": f"{i}b.png", "preferred": preferred}))
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "pairs.jsonl"


@pytest.fixture(scope="module")
def reward_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rewards")
    for label, text in REWARDS.items():
        (folder / f"{label}.yaml").write_text(text)
    return [folder / f"{label}.yaml" for label in REWARDS]


def _built(text: str, tmp_path):
    from editr1.config import RewardConfig, load_config

    path = tmp_path / "reward.yaml"
    path.write_text(text)
    return build_combined(load_config(RewardConfig, path), "reward")


# ---- the statistics, by hand ------------------------------------------------------------------------------


def test_agreement_and_alignment_by_hand():
    scores = PairScores(a=torch.tensor([0.9, 0.2, 0.5, 0.4, 0.7, float("nan")], dtype=torch.float64),
                        b=torch.tensor([0.1, 0.3, 0.5, 0.1, 0.6, 0.2], dtype=torch.float64),
                        valid=torch.tensor([True, True, True, True, True, False]))
    preferred = ["a", "a", "b", "tie", "tie", "a"]
    agreement, counted = agreement_by_pair(scores, preferred)
    assert counted.tolist() == [True, True, True, False, False, False]
    assert agreement[counted].tolist() == [1.0, 0.0, 0.5]
    result = alignment_result(scores, preferred)
    assert result.accuracy == pytest.approx(1.5 / 3) and result.decided_pairs == 3 and result.reason is None
    assert result.tie_pairs == 2 and result.tie_mean_abs_difference == pytest.approx((0.3 + 0.1) / 2)
    assert result.unscored_pairs == 1


def test_no_decided_pairs_give_no_accuracy_with_a_reason():
    scores = PairScores(torch.tensor([0.5, float("nan")]), torch.tensor([0.5, 0.1]), torch.tensor([True, False]))
    result = alignment_result(scores, ["tie", "a"])
    assert result.accuracy is None and result.reason == NO_DECIDED_PAIRS and result.decided_pairs == 0
    assert result.tie_pairs == 1 and result.tie_mean_abs_difference == 0.0 and result.unscored_pairs == 1
    no_ties = alignment_result(PairScores(torch.tensor([0.9]), torch.tensor([0.1]), torch.tensor([True])), ["a"])
    assert no_ties.tie_mean_abs_difference is None and no_ties.accuracy == 1.0


def test_bootstrap_interval_is_deterministic_and_bounded():
    values = torch.tensor([1.0, 1.0, 0.0, 0.5, 1.0, 0.0, 1.0], dtype=torch.float64)
    low, high = bootstrap_interval(values, 2000, seed=0)
    assert 0.0 <= low < float(values.mean()) < high <= 1.0
    assert bootstrap_interval(values, 2000, seed=0) == (low, high)
    spread = torch.linspace(0, 1, 23, dtype=torch.float64)  # many distinct means: another seed moves the ends
    assert bootstrap_interval(spread, 2000, seed=1) != bootstrap_interval(spread, 2000, seed=0)
    assert bootstrap_interval(torch.full((5,), 0.5, dtype=torch.float64), 100, seed=3) == (0.5, 0.5)
    assert bootstrap_interval(torch.tensor([1.0]), 10, seed=0) == (1.0, 1.0)
    for bad in (dict(values=torch.tensor([]), resamples=10), dict(values=values, resamples=0)):
        with pytest.raises(ValueError):
            bootstrap_interval(seed=0, **bad)


def test_paired_difference_by_hand():
    a, b = torch.tensor([1.0, 1.0, 0.0, 0.5, 1.0], dtype=torch.float64), torch.tensor([0.0, 1.0, 0.0, 0.5, 0.0], dtype=torch.float64)
    counted_a, counted_b = torch.tensor([True, True, True, True, False]), torch.tensor([True, True, True, True, True])
    result = paired_difference(a, counted_a, b, counted_b, 500, seed=0)
    assert result["difference"] == pytest.approx((1 + 0 + 0 + 0) / 4) and result["pairs"] == 4 and result["reason"] is None
    low, high = result["interval"]
    assert 0.0 <= low <= 0.25 <= high <= 1.0  # the differences are 1, 0, 0, 0
    same = paired_difference(a, counted_a, a, counted_a, 500, seed=0)
    assert same["difference"] == 0.0 and same["interval"] == [0.0, 0.0]
    apart = paired_difference(a, torch.tensor([True] * 2 + [False] * 3), b, torch.tensor([False] * 2 + [True] * 3), 500, 0)
    assert apart == {"difference": None, "interval": None, "pairs": 0, "reason": NO_COMMON_PAIRS}


def test_reward_labels_are_the_stems_made_unique(tmp_path):
    paths = [tmp_path / "x" / "judge.yaml", tmp_path / "y" / "judge.yaml", tmp_path / "judge_2.yml", tmp_path / "v.yaml"]
    assert reward_labels(paths) == ["judge", "judge_2", "judge_2_2", "v"]


# ---- the layouts and the comparison -----------------------------------------------------------------------


def test_genai_bench_layout_is_read_with_left_as_a(genai_bench):
    layout, pairs = read_pairs(genai_bench)
    assert layout == "genai-bench" and len(pairs) == len(ROWS)
    assert [p.preferred for p in pairs[:2]] == ["a", "b"] and [p.vote for p in pairs[8:11]] == ["tievote", "tievote", "bothbad_vote"]
    assert [p.preferred for p in pairs[8:11]] == ["tie"] * 3
    first = pairs[0]
    assert first.prompt == "change the grey, 0" and first.requirement is None and first.id == "row 0" and first.line == 0
    from editr1.data.preference_pairs import load_pair_image

    assert load_pair_image(first.image_a).getpixel((0, 0)) == (200, 200, 200)
    assert load_pair_image(first.image_b).getpixel((0, 0)) == (50, 50, 50)


class Recording(Reward):
    """Brightness, recording the edited tensors it was given."""

    name = "recording"

    def __init__(self):
        self.seen = []

    def score(self, sources, edited, prompts, requirements):
        self.seen.extend(edited)
        return RewardBatch(torch.stack([e.mean() for e in edited]), torch.ones(len(edited), dtype=torch.bool))


def test_every_reward_scores_the_same_images_once(genai_bench):
    _, pairs = read_pairs(genai_bench)
    first, second = Recording(), Recording()
    scores = score_pairs([CheckedReward(first), CheckedReward(second)], pairs, genai_bench, batch_size=5)
    assert len(first.seen) == 2 * len(pairs) and all(x is y for x, y in zip(first.seen, second.seen))
    assert scores[0].a.tolist() == pytest.approx([left / 255 for left, _, _ in ROWS])
    assert scores[0].b.tolist() == pytest.approx([right / 255 for _, right, _ in ROWS])


def _compare(path, tmp_path, resamples=1000, seed=0):
    rewards = {label: _built(text, tmp_path) for label, text in REWARDS.items()}
    try:
        return compare_rewards(rewards, read_pairs(path)[1], path, resamples, seed)
    finally:
        for reward in rewards.values():
            reward.close()


def test_three_rewards_on_genai_bench(genai_bench, tmp_path):
    compared = _compare(genai_bench, tmp_path)
    rewards = compared["rewards"]
    for label, accuracy in (("bright", 7 / 9), ("dark", 2 / 9), ("constant", 0.5)):
        entry = rewards[label]
        assert entry["accuracy"] == pytest.approx(accuracy) and entry["decided_pairs"] == 9
        assert entry["tie_pairs"] == 3 and entry["unscored_pairs"] == 0 and entry["reason"] is None
        low, high = entry["interval"]
        assert low <= entry["accuracy"] <= high
    assert rewards["bright"]["tie_mean_abs_difference"] == pytest.approx(TIE_GAP, abs=1e-6)
    assert rewards["dark"]["tie_mean_abs_difference"] == pytest.approx(TIE_GAP, abs=1e-6)
    assert rewards["constant"]["tie_mean_abs_difference"] == 0.0
    assert rewards["constant"]["interval"] == [0.5, 0.5]  # every pair half a point: no spread to resample
    assert 0.3 < rewards["bright"]["interval"][0] < rewards["bright"]["interval"][1] == 1.0
    differences = {(d["a"], d["b"]): d for d in compared["differences"]}
    assert list(differences) == [("bright", "dark"), ("bright", "constant"), ("dark", "constant")]
    for pair, difference in (((("bright", "dark")), 5 / 9), (("bright", "constant"), 7 / 9 - 0.5),
                             (("dark", "constant"), 2 / 9 - 0.5)):
        d = differences[pair]
        assert d["difference"] == pytest.approx(difference) and d["pairs"] == 9
        assert d["interval"][0] <= d["difference"] <= d["interval"][1]
    assert _compare(genai_bench, tmp_path) == compared  # the same seed, the same intervals


def test_both_layouts_give_the_same_numbers(genai_bench, pairs_jsonl, tmp_path):
    assert read_pairs(pairs_jsonl)[0] == "editr1"
    assert _compare(pairs_jsonl, tmp_path) == _compare(genai_bench, tmp_path)


def test_pairs_a_reward_could_not_score_are_left_out_of_its_differences(genai_bench, tmp_path):
    rewards = {"skips": _built("name: toy_plugin:SkipsDark\noptions: {below: 0.15, target: 1.0}\n", tmp_path),
               "dark": _built(REWARDS["dark"], tmp_path)}
    compared = compare_rewards(rewards, read_pairs(genai_bench)[1], genai_bench, 500, 0)
    skips = compared["rewards"]["skips"]  # rows 5 and 11 hold an edit darker than 0.15
    assert skips["unscored_pairs"] == 2 and skips["decided_pairs"] == 7 and skips["accuracy"] == pytest.approx(6 / 7)
    [difference] = compared["differences"]
    assert difference["pairs"] == 7 and difference["difference"] == pytest.approx(6 / 7 - 1 / 7)


def test_a_file_of_weighted_rewards_is_one_reward(genai_bench, tmp_path):
    terms = ("terms:\n  - {name: toy_plugin:Brightness, options: {target: 1.0}, weight: 3}\n"
             "  - {name: toy_plugin:Brightness, options: {target: 0.0}}\n")
    combined = _built(terms, tmp_path)  # 0.75 v + 0.25 (1 - v): brighter is better, as for "bright"
    try:
        compared = compare_rewards({"combined": combined}, read_pairs(genai_bench)[1], genai_bench, 100, 0)
    finally:
        combined.close()
    assert compared["rewards"]["combined"]["accuracy"] == pytest.approx(7 / 9) and compared["differences"] == []


# ---- the command line --------------------------------------------------------------------------------------


def test_cli_compares_three_rewards(genai_bench, reward_files, tmp_path, capsys):
    out = tmp_path / "results.json"
    argv = ["eval", "reward-alignment", "--pairs", str(genai_bench), "--bootstrap", "500", "--seed", "3", "--out", str(out)]
    assert main([*argv, *[arg for path in reward_files for arg in ("--reward", str(path))]]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert json.loads(out.read_text()) == printed
    assert printed["layout"] == "genai-bench" and printed["n_pairs"] == 12
    assert printed["votes"] == {"leftvote": 5, "rightvote": 4, "tievote": 2, "bothbad_vote": 1}
    assert printed["bootstrap"] == {"resamples": 500, "seed": 3, "confidence": 0.95}
    assert list(printed["rewards"]) == ["bright", "dark", "constant"] and len(printed["differences"]) == 3
    bright = printed["rewards"]["bright"]
    assert bright["reward"]["name"] == "toy_plugin:Brightness" and bright["reward"]["terms"][0]["options"] == {"target": 1.0}
    assert bright["reward"]["config"] == str(reward_files[0])
    table = captured.err
    for label, accuracy in (("bright", 7 / 9), ("dark", 2 / 9), ("constant", 0.5)):
        low, high = printed["rewards"][label]["interval"]
        row = next(line for line in table.splitlines() if line.startswith(label + " "))
        assert f"{accuracy:.3f}" in row and f"[{low:.3f}, {high:.3f}]" in row
    assert "bright - dark: +0.556" in table and "tievote 2, bothbad_vote 1" in table


def test_cli_set_applies_to_every_reward_file(genai_bench, reward_files, capsys):
    argv = ["eval", "reward-alignment", "--pairs", str(genai_bench), "--bootstrap", "50", "--set", "options.target=0.0"]
    assert main([*argv, "--reward", str(reward_files[0]), "--reward", str(reward_files[1])]) == 0
    rewards = json.loads(capsys.readouterr().out)["rewards"]
    assert rewards["bright"]["accuracy"] == rewards["dark"]["accuracy"] == pytest.approx(2 / 9)


def test_cli_a_reward_file_that_cannot_be_built_is_named(genai_bench, tmp_path, capsys):
    bad = tmp_path / "typo.yaml"
    bad.write_text("name: toy_plugin:Brightness\noptions: {targt: 1.0}\n")
    assert main(["eval", "reward-alignment", "--pairs", str(genai_bench), "--reward", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"editr1: error: --reward {bad}: ") and "targt" in err and "\n" not in err


# ---- bad GenAI-Bench data ----------------------------------------------------------------------------------


def _without_votes(columns):
    del columns["vote_type"]


def _unknown_vote(columns):
    columns["vote_type"][3] = "middlevote"


def _missing_image(columns):
    columns["left_output_image"][4] = None


def _empty_instruction(columns):
    columns["instruct_prompt"][2] = " "


@pytest.mark.parametrize("spoil, message", [
    (_without_votes, r": no column 'vote_type' \(it has "),
    (_unknown_vote, r" row 3: column 'vote_type': expected one of leftvote, rightvote, tievote, bothbad_vote, got 'middlevote'"),
    (_missing_image, r" row 4: column 'left_output_image': missing \(null\)"),
    (_empty_instruction, r" row 2: column 'instruct_prompt': expected a non-empty instruction"),
])
def test_bad_genai_bench_data_names_row_and_column(tmp_path, spoil, message, capsys):
    columns = _columns()
    spoil(columns)
    folder = _save(columns, tmp_path / "spoiled")
    with pytest.raises(DataError, match=f"^GenAI-Bench {folder}{message}"):
        read_pairs(folder)
    reward = tmp_path / "constant.yaml"
    reward.write_text(REWARDS["constant"])
    capsys.readouterr()  # save_to_disk's progress bar
    assert main(["eval", "reward-alignment", "--pairs", str(folder), "--reward", str(reward)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"GenAI-Bench {folder}" in err


def test_pairs_that_are_neither_layout_are_refused(tmp_path):
    (tmp_path / "pairs.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="expected a .jsonl file of pairs, or a folder saved with datasets' save_to_disk"):
        read_pairs(tmp_path / "pairs.csv")
    with pytest.raises(DataError, match="not a dataset saved with datasets.save_to_disk"):
        read_pairs(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        read_pairs(tmp_path / "missing.jsonl")
