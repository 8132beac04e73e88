"""The demo's wiring, on a few iterations: shipped base, NFT, control, summary and report."""

import json

from editr1.cli.demo import run_demo
from editr1.models.registry import load_adapter
from editr1.tasks.shapes import SHIPPED_BASE


def test_shipped_base_loads():
    adapter = load_adapter(SHIPPED_BASE)
    assert adapter.family == "qwen-image-edit"
    assert adapter.latent_token_shape(32, 32) == (64, 48)


def test_demo_with_control_on_a_tiny_budget(tmp_path):
    out = tmp_path / "demo"
    summary = run_demo(out, control=True, overrides=[
        "iterations=2", "rollout.groups_per_iteration=2", "rollout.group_size=4", "eval.samples=8", "eval.steps=2",
        "logging.progress=false", "logging.trackers=[]",
    ])
    for key in ("base_heldout_reward", "final_heldout_reward", "heldout_n", "heldout_stderr", "control_heldout_reward",
                "rl_minus_control", "rl_minus_control_stderr"):
        assert key in summary, key
    assert summary["heldout_n"] == 8
    assert json.loads((out / "summary.json").read_text()) == summary
    report = (out / "report.md").read_text()
    assert "Control: equal-time SFT" in report and "nft/before_after.png" in report
    # The demo's base is trained, not a tiny preset: no note that its weights are random.
    assert "random weights" not in report and "random weights" not in (out / "nft" / "report.md").read_text()
    assert (out / "nft" / "before_after.png").is_file() and (out / "control" / "eval" / "final.safetensors").is_file()
    # The plain demo watches the verifier's gameable formula beside the exact one.
    assert set(summary["eval_rewards"]) == {"additive_verifier"} and "## Reward hacking alarm" in report


def test_the_demo_trains_flow_grpo_where_it_trains_nft(tmp_path):
    out = tmp_path / "demo"
    summary = run_demo(out, algorithm="grpo", overrides=[
        "iterations=2", "rollout.groups_per_iteration=2", "rollout.group_size=4", "eval.samples=8", "eval.steps=2",
        "logging.progress=false", "logging.trackers=[]",
    ])
    assert summary["algorithm"] == "grpo" and summary["iterations"] == 2
    report = (out / "report.md").read_text()
    assert report.startswith("# editr1 demo: Flow-GRPO on the shapes editing task") and "grpo/before_after.png" in report
    config = (out / "grpo" / "config.yaml").read_text()
    assert "algorithm: grpo" in config and "sampler: flow_grpo_sde" in config
    assert not (out / "nft").exists()


def test_the_hacking_demo_trains_on_the_gameable_formula_and_watches_the_exact_verifier(tmp_path):
    import pytest

    from editr1.errors import EditR1Error

    out = tmp_path / "demo"
    summary = run_demo(out, hacking=True, overrides=[
        "iterations=2", "rollout.groups_per_iteration=2", "rollout.group_size=4", "eval.samples=8", "eval.steps=2",
        "eval.every=1", "logging.progress=false", "logging.trackers=[]",
    ])
    from editr1.config import TrainConfig, load_config

    config = load_config(TrainConfig, out / "nft_hacking" / "config.yaml")
    assert config.reward.options == {"formula": "additive"} and config.eval.reward is None
    assert [(r.name, r.options, r.label) for r in config.eval.rewards] == [("shapes_verifier", {}, "exact_verifier")]
    assert set(summary["eval_rewards"]) == {"exact_verifier"} and "fired" in summary["hacking_alarm"]
    assert "## Reward hacking alarm" in (out / "report.md").read_text() and not (out / "nft").exists()
    assert config.rollout.sampler == "euler" and config.optim.lr == 2e-4
    with pytest.raises(EditR1Error, match="--hacking trains on the gameable verifier formula"):
        run_demo(out, hacking=True, reward="mllm")
    with pytest.raises(EditR1Error, match="it runs without --algorithm grpo"):
        run_demo(out, hacking=True, algorithm="grpo")


def test_a_mistaken_setting_is_refused_before_the_earlier_demo_is_touched(tmp_path):
    import pytest

    from editr1.errors import EditR1Error

    out = tmp_path / "demo"
    (out / "nft").mkdir(parents=True)
    (out / "nft" / "summary.json").write_text("{}")
    with pytest.raises(EditR1Error, match="eval.hacking_patience"):
        run_demo(out, overrides=["eval.hacking_patience=-1"])
    assert (out / "nft" / "summary.json").read_text() == "{}" and not (out / "data").exists()
