"""A family's facts live in its adapter: inference defaults, pipeline sizing, and the true-CFG
combination that rollouts, evaluation and `editr1 edit` all use."""

import pytest
import torch

import editr1.sampling.generate as generate_module
from editr1.data.jsonl import read_edit_jsonl
from editr1.eval.heldout import HeldoutSet, evaluate
from editr1.models.base import InferenceDefaults
from editr1.models.registry import FAMILIES, adapter_class, build_tiny
from editr1.rewards.base import Reward, RewardBatch


class Brightness(Reward):
    name = "brightness"

    def score(self, sources, edited, prompts, requirements):
        return RewardBatch(torch.stack([e.mean() for e in edited]).float(), torch.ones(len(edited), dtype=torch.bool))


def test_every_family_states_its_inference_defaults():
    for family in FAMILIES:
        defaults = adapter_class(family).inference
        assert isinstance(defaults, InferenceDefaults), family
        assert defaults.max_references >= 1 and defaults.steps >= 1
    flux, qwen = adapter_class("flux-kontext").inference, adapter_class("qwen-image-edit").inference
    assert flux.guidance == 3.5 and not flux.cfg_renorm
    assert qwen.cfg_scale == 4.0 and qwen.cfg_renorm
    assert adapter_class("qwen-image-edit-plus").inference.max_references == 3


@pytest.mark.parametrize("preset", ["tiny:flux-kontext", "tiny:qwen-image-edit"])
def test_evaluation_guides_as_the_family_does(preset, shapes_data, monkeypatch):
    adapter = build_tiny(preset, ["remove the red circle"], 0)
    seen = []
    original = generate_module.generate

    def spying(*args, **kwargs):
        seen.append(kwargs["cfg_renorm"])
        return original(*args, **kwargs)

    monkeypatch.setattr(generate_module, "generate", spying)
    samples = read_edit_jsonl(shapes_data / "test.jsonl")[:2]
    heldout = HeldoutSet.build(samples, 2, 32, adapter.latent_token_shape(32, 32), 0)
    evaluate(adapter, heldout, Brightness(), 2, "euler", cfg_scale=2.0, guidance=adapter.inference.guidance)
    assert seen == [adapter.inference.cfg_renorm]
    assert adapter.use_pipeline_sizing() is adapter and adapter.condition_area is not None
