import json

import pytest
import torch

from editr1.cli.main import main
from editr1.data.jsonl import read_edit_jsonl
from editr1.data.preference_pairs import read_preference_jsonl
from editr1.errors import DataError
from editr1.eval.reward_alignment import evaluate_alignment, pair_agreement
from editr1.rewards.base import Reward, RewardBatch
from editr1.rewards.registry import build_reward


def _write_pairs(shapes_data, path, n=6):
    """Target vs unchanged source, alternating sides, plus one tie (the target twice)."""
    samples = read_edit_jsonl(shapes_data / "test.jsonl")[:n]
    rows = []
    for i, s in enumerate(samples):
        good, bad = str(s.target), str(s.images[0])
        a, b = (good, bad) if i % 2 == 0 else (bad, good)
        rows.append({"id": s.id, "source": str(s.images[0]), "prompt": s.prompt, "image_a": a, "image_b": b,
                     "preferred": "a" if i % 2 == 0 else "b"})
    rows.append({"source": str(samples[0].images[0]), "prompt": samples[0].prompt, "image_a": str(samples[0].target),
                 "image_b": str(samples[0].target), "preferred": "tie"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_pair_agreement_counts_equal_scores_as_half():
    a, b = torch.tensor([0.9, 0.2, 0.5, 0.1]), torch.tensor([0.1, 0.3, 0.5, 0.0])
    assert pair_agreement(a, b, ["a", "a", "b", "b"]).tolist() == [1.0, 0.0, 0.5, 0.0]


def test_the_verifier_agrees_with_itself_and_ties_are_apart(shapes_data, tmp_path):
    pairs = read_preference_jsonl(_write_pairs(shapes_data, tmp_path / "pairs.jsonl"))
    result = evaluate_alignment(build_reward("shapes_verifier"), pairs)
    assert result.accuracy == 1.0 and result.decided_pairs == 6
    assert result.tie_pairs == 1 and result.tie_mean_abs_difference == 0.0 and result.unscored_pairs == 0


def test_cli_reward_alignment(shapes_data, tmp_path, capsys):
    pairs = _write_pairs(shapes_data, tmp_path / "pairs.jsonl")
    reward = tmp_path / "reward.yaml"
    reward.write_text("name: shapes_verifier\n")
    assert main(["eval", "reward-alignment", "--pairs", str(pairs), "--reward", str(reward)]) == 0
    printed = json.loads(capsys.readouterr().out)
    result = printed["rewards"]["reward"]
    assert result["accuracy"] == 1.0 and result["tie_pairs"] == 1 and result["reward"]["name"] == "shapes_verifier"
    assert printed["layout"] == "editr1" and printed["differences"] == []


class RecordingReward(Reward):
    """The verifier, recording how many reference images each sample arrives with."""

    name = "recording"

    def __init__(self):
        self.inner, self.reference_counts = build_reward("shapes_verifier"), []

    def score(self, sources, edited, prompts, requirements) -> RewardBatch:
        self.reference_counts.extend(len(references) for references in sources)
        return self.inner.score(sources, edited, prompts, requirements)


def test_pairs_with_several_source_images_reach_the_reward(shapes_data, tmp_path):
    path = _write_pairs(shapes_data, tmp_path / "pairs.jsonl", n=3)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows[:2]:
        row["source"] = [row["source"], row["source"]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = read_preference_jsonl(path)
    assert [len(p.sources) for p in pairs] == [2, 2, 1, 1]
    reward = RecordingReward()
    result = evaluate_alignment(reward, pairs)
    assert reward.reference_counts == [2, 2, 1, 1] * 2  # both sides of every pair
    assert result.accuracy == 1.0 and result.decided_pairs == 3


@pytest.mark.parametrize("row, message", [
    ({"prompt": "x", "image_a": "a.png", "image_b": "b.png", "preferred": "a"}, "field 'source': missing"),
    ({"source": [], "prompt": "x", "image_a": "a.png", "image_b": "b.png", "preferred": "a"},
     "field 'source': the list of source images is empty"),
    ({"source": 3, "prompt": "x", "image_a": "a.png", "image_b": "b.png", "preferred": "a"},
     "field 'source': expected a path string or a list of them, got"),
    ({"source": ["s.png", "missing.png"], "prompt": "x", "image_a": "a.png", "image_b": "b.png", "preferred": "a"},
     r"field 'source\[1\]'"),
    ({"source": "s.png", "prompt": "x", "image_a": "a.png", "image_b": "b.png", "preferred": "both"}, "field 'preferred'"),
    ({"source": "s.png", "prompt": "x", "image_a": "missing.png", "image_b": "b.png", "preferred": "a"}, "field 'image_a'"),
])
def test_bad_pairs_name_file_line_and_field(shapes_data, tmp_path, row, message):
    good = _write_pairs(shapes_data, tmp_path / "good.jsonl", n=1).read_text().splitlines()[0]
    for name in ("s.png", "a.png", "b.png"):
        (tmp_path / name).write_bytes((shapes_data / read_edit_jsonl(shapes_data / "test.jsonl")[0].images[0]).read_bytes())
    path = tmp_path / "pairs.jsonl"
    path.write_text(good + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=f"pairs.jsonl:2: {message}"):
        read_preference_jsonl(path)
