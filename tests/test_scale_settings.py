"""Memory and speed settings: the evaluation batch, cuDNN attention off under checkpointing, compile."""

import pytest
import torch
from tiny_runs import tiny_nft_overrides

from editr1.config import ModelConfig, TrainConfig, load_config
from editr1.trainer.metrics_log import read_metrics
from editr1.trainer.model_loading import build_model
from editr1.trainer.rl_trainer import run_rl


def test_checkpointing_turns_cudnn_attention_off_and_compile_is_in_place():
    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        adapter = build_model(ModelConfig(path="tiny:qwen-image-edit", gradient_checkpointing=True, compile=True), ["a b"])
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert adapter.transformer.is_gradient_checkpointing
        # Compiled in place: still the diffusers module (peft adapters and save_pretrained work on it).
        assert type(adapter.transformer).__name__ == "QwenImageTransformer2DModel"
        assert adapter.transformer._compiled_call_impl is not None
        build_model(ModelConfig(path="tiny:qwen-image-edit"), ["a b"])
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


def test_the_evaluation_batch_size_changes_how_many_edits_run_at_once_not_the_result(shapes_data, tmp_path):
    rewards = {}
    for batch in (64, 3):
        out = tmp_path / f"batch{batch}"
        run_rl(load_config(TrainConfig, None, tiny_nft_overrides(shapes_data, out, iterations=0) + [f"eval.batch_size={batch}"]))
        rewards[batch] = next(row["heldout_reward"] for row in read_metrics(out) if "heldout_reward" in row)
    assert rewards[3] == pytest.approx(rewards[64], abs=1e-5)
