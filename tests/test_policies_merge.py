"""Rollouts with the old LoRA merged into the base weights: the same velocities as the unmerged adapter,
and the base weights restored bit for bit afterwards (an unmerge would drift in bf16)."""

import pytest
import torch
from PIL import Image

from editr1.models.lora_io import LoraSpec
from editr1.models.registry import build_tiny
from editr1.trainer.policies import PolicySet

PROMPT = "Remove the red circle"


def _policies(dtype):
    adapter = build_tiny("tiny:qwen-image-edit", [PROMPT], seed=0)
    adapter.transformer.to(dtype)
    policies = PolicySet(adapter.transformer, LoraSpec(4, 8, tuple(adapter.lora_target_modules)))
    with torch.no_grad():  # an old adapter that changes the output
        for p in policies._old:
            p.normal_(0, 0.2, generator=torch.Generator().manual_seed(p.numel()))
    conditions = adapter.encode_conditions([[Image.new("RGB", (32, 32), "red")]], [PROMPT], 32, 32)
    x = torch.randn(2, *adapter.latent_token_shape(32, 32), generator=torch.Generator().manual_seed(0)).to(dtype)
    return adapter, policies, conditions.select([0, 0]), x


def _base_weights(transformer):
    return {n: p.detach().clone() for n, p in transformer.named_parameters() if "lora_" not in n}


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 0.1)])
def test_merged_old_matches_the_adapter_and_restores_the_base_exactly(dtype, tolerance):
    adapter, policies, conditions, x = _policies(dtype)
    base = _base_weights(adapter.transformer)
    t = torch.tensor([0.7, 0.3])
    with torch.no_grad():
        with policies.use("old") as old:
            unmerged = adapter.velocity(x, t, conditions, transformer=old)
        with policies.merged_old() as old:
            merged = adapter.velocity(x, t, conditions, transformer=old)
            assert any(not torch.equal(p, base[n]) for n, p in adapter.transformer.named_parameters() if n in base)
        with policies.use("trained") as trained:
            after = adapter.velocity(x, t, conditions, transformer=trained)
    assert torch.allclose(merged.float(), unmerged.float(), atol=tolerance, rtol=tolerance)
    for name, weight in _base_weights(adapter.transformer).items():
        assert torch.equal(weight, base[name]), name
    # Back on the trained adapter, unmerged, with gradients only for it.
    with torch.no_grad(), policies.use("trained") as trained:
        assert torch.equal(adapter.velocity(x, t, conditions, transformer=trained), after)
    assert all(p.requires_grad for p in policies.trainable_parameters())
    assert not any(p.requires_grad for p in policies._old)


def test_an_unmerge_would_drift_in_bfloat16():
    """Why the base is restored from a copy: peft's merge then unmerge does not give the bf16 weights back."""
    adapter, policies, _, _ = _policies(torch.bfloat16)
    base = _base_weights(adapter.transformer)
    from peft.tuners.lora import LoraLayer

    adapter.transformer.set_adapter("old")
    layers = [m for m in adapter.transformer.modules() if isinstance(m, LoraLayer)]
    for layer in layers:
        layer.merge(adapter_names=["old"])
        layer.unmerge()
    assert any(not torch.equal(w, base[n]) for n, w in _base_weights(adapter.transformer).items())


def test_a_run_with_merged_rollouts_trains_like_one_without(shapes_data, tmp_path):
    from safetensors.torch import load_file
    from tiny_runs import tiny_nft_overrides

    from editr1.config import TrainConfig, load_config
    from editr1.trainer.rl_trainer import run_rl

    weights = {}
    for merged in (False, True):
        out = tmp_path / f"merged_{merged}"
        overrides = tiny_nft_overrides(shapes_data, out, iterations=2) + [
            "eval.every=0", "data.heldout=null", f"rollout.merge_old_adapter={str(merged).lower()}"]
        run_rl(load_config(TrainConfig, None, overrides))
        weights[merged] = load_file(out / "checkpoints" / "step_000002" / "trained.safetensors")
    for name, value in weights[False].items():  # float32: merged and unmerged rollouts agree to rounding
        assert torch.allclose(weights[True][name], value, atol=1e-5), name
