"""Every config shipped under configs/ validates."""

from pathlib import Path

import pytest

from editr1.config import RewardConfig, SFTConfig, load_config
from editr1.serve.config import ServeConfig
from editr1.tasks.shapes.config import JudgeDistillConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("path", sorted((CONFIGS / "rewards").glob("*.yaml")), ids=lambda p: p.name)
def test_reward_configs_load(path):
    assert load_config(RewardConfig, path).name in ("mllm", "mllm_remote", "shapes_verifier")


def test_other_configs_load():
    assert load_config(ServeConfig, CONFIGS / "serve_shapes_judge.yaml").served_model_name == "shapes-judge"
    assert load_config(JudgeDistillConfig, CONFIGS / "shapes_judge.yaml").steps > 0
    assert load_config(SFTConfig, CONFIGS / "shapes_sft.yaml").steps > 0
