"""The Qwen-Image-Edit-2509 adapter: saving and loading, the reference layouts it accepts, DDP over
a mixed batch, and one NFT iteration on a dataset whose samples have one or two source images."""

import json
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
from diffusers import QwenImageEditPlusPipeline
from PIL import Image
from safetensors.torch import load_file
from tiny_runs import tiny_nft_overrides
from torch.nn.parallel import DistributedDataParallel

from editr1.config import TrainConfig, load_config
from editr1.errors import EditR1Error
from editr1.models.qwen_image_edit_plus import QwenImageEditPlusAdapter, chat_text
from editr1.models.registry import load_adapter
from editr1.models.tiny_qwen_image_edit_plus import build_tiny_qwen_image_edit_plus
from editr1.rewards.base import Reward, RewardBatch
from editr1.trainer.metrics_log import read_metrics
from editr1.trainer.rl_trainer import run_rl

PROMPTS = ["Remove the red circle", "Put the blue square on the left"]


def _image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8))


def _inputs(adapter):
    conditions = adapter.encode_conditions([[_image(0)], [_image(1), _image(2)]], PROMPTS, 32, 32)
    tokens = torch.randn(2, *adapter.latent_token_shape(32, 32), generator=torch.Generator().manual_seed(0))
    return tokens, torch.tensor([0.3, 0.8]), conditions


def _velocity(adapter, **kwargs):
    with torch.no_grad():
        return adapter.velocity(*_inputs(adapter), **kwargs)


def test_save_and_load_round_trip(tmp_path):
    adapter = build_tiny_qwen_image_edit_plus(PROMPTS, codec="vae")
    adapter.save_pretrained(tmp_path / "model")
    index = json.loads((tmp_path / "model" / "model_index.json").read_text())
    assert index["_class_name"] == "QwenImageEditPlusPipeline"
    loaded = load_adapter(tmp_path / "model")  # family from model_index.json
    assert type(loaded) is QwenImageEditPlusAdapter and loaded.family == "qwen-image-edit-plus"
    assert loaded.prompt_drop_index == adapter.prompt_drop_index
    assert torch.allclose(_velocity(adapter), _velocity(loaded), atol=1e-6)
    assert torch.equal(loaded.sigmas(6, 32, 32), adapter.sigmas(6, 32, 32))
    # diffusers' own loader reads the folder. The processor is passed in only because transformers'
    # Qwen2VLProcessor needs torchvision (for its video half), which this environment lacks.
    pipe = QwenImageEditPlusPipeline.from_pretrained(tmp_path / "model", processor=loaded.processor)
    for name in ("transformer", "text_encoder"):
        theirs, ours = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours), name
    assert pipe.tokenizer(PROMPTS).input_ids == adapter.processor.tokenizer(PROMPTS).input_ids


def test_chat_layout_and_reference_counts():
    adapter = build_tiny_qwen_image_edit_plus(PROMPTS)  # pixel codec: a 32x32 image is 8x8 packed tokens
    # The dropped prefix is exactly the system turn, whatever the number of pictures.
    tokenizer = adapter.processor.tokenizer
    ids = tokenizer(chat_text(PROMPTS[0], 2))["input_ids"]
    assert tokenizer.decode(ids[: adapter.prompt_drop_index]).endswith("<|im_start|>user\n")
    assert tokenizer.decode(ids[adapter.prompt_drop_index :]).startswith("Picture 1: <|vision_start|>")
    conditions = _inputs(adapter)[2]
    assert conditions.tensors["reference_grids"].tolist() == [[[8, 8], [0, 0]], [[8, 8], [8, 8]]]
    assert conditions.tensors["image_tokens"].shape[:2] == (2, 128)
    assert conditions.tensors["image_tokens"][0, 64:].abs().sum() == 0  # the 1-reference row is padded
    with pytest.raises(EditR1Error, match="has 0 reference images"):
        adapter.encode_conditions([[]], PROMPTS[:1], 32, 32)
    with pytest.raises(EditR1Error, match="has 4 reference images"):
        adapter.encode_conditions([[_image(0)] * 4], PROMPTS[:1], 32, 32)


def test_ddp_gradients_over_a_mixed_batch(tmp_path):
    """Rows of different layouts take one transformer call each; under DDP (several forwards, one
    backward, as the trainer's wrapped module) the gradients are those of the bare module."""
    adapter = build_tiny_qwen_image_edit_plus(PROMPTS)
    tokens, sigma, conditions = _inputs(adapter)

    def gradients(transformer):
        adapter.transformer.zero_grad()
        adapter.velocity(tokens, sigma, conditions, transformer=transformer).pow(2).mean().backward()
        return {n: p.grad.clone() for n, p in adapter.transformer.named_parameters() if p.grad is not None}

    bare = gradients(None)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(adapter.transformer, find_unused_parameters=True)
        for _ in range(2):
            ddp = gradients(wrapped)
            assert ddp.keys() == bare.keys() and all(torch.allclose(ddp[k], bare[k], atol=1e-6) for k in bare)
    finally:
        dist.destroy_process_group()


class Brightness(Reward):
    """Mean brightness: the shapes verifier only reads 32x32 shapes scenes; this varies with any edit."""

    name = "test_plus_brightness"

    def score(self, sources, edited, prompts, requirements):
        return RewardBatch(torch.stack([e.mean() for e in edited]).float(), torch.ones(len(edited), dtype=torch.bool))


def test_one_nft_iteration_with_one_and_two_source_images(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    for seed in range(3):
        _image(seed).save(data / f"{seed}.png")
    rows = [
        {"id": "one", "image": "0.png", "prompt": PROMPTS[0]},
        {"id": "two", "image": ["1.png", "2.png"], "prompt": PROMPTS[1]},
    ]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    layouts_per_call = []
    velocity = QwenImageEditPlusAdapter.velocity

    def spy(self, tokens, sigma, conditions, *args, **kwargs):
        counts = (conditions.tensors["reference_grids"][:, :, 0] > 0).sum(1)
        layouts_per_call.append(len(set(counts.tolist())))
        return velocity(self, tokens, sigma, conditions, *args, **kwargs)

    monkeypatch.setattr(QwenImageEditPlusAdapter, "velocity", spy)
    out = tmp_path / "run"
    # 2 groups x 4 edits in chunks of 3 rows: rollout and training batches mix the two samples.
    overrides = tiny_nft_overrides(data, out, iterations=1) + [
        "model.path=tiny:qwen-image-edit-plus", "eval.every=0", "data.heldout=null",
        "reward.name=test_qwen_image_edit_plus_adapter:Brightness",
        "rollout.batch_size=3", "optim.micro_batch=3",
    ]
    summary = run_rl(load_config(TrainConfig, None, overrides))
    assert summary["iterations"] == 1
    assert max(layouts_per_call) == 2, "no batch mixed one- and two-reference samples"
    metrics = [r for r in read_metrics(out) if "reward_mean" in r]
    assert [r["step"] for r in metrics] == [1] and metrics[0]["reward_std"] > 0
    for key in ("loss", "policy_loss", "old_deviation", "grad_norm"):
        assert math.isfinite(metrics[0][key]), key
    assert metrics[0]["grad_norm"] > 0
    lora = load_file(out / "final" / "pytorch_lora_weights.safetensors")
    assert any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k), "training changed nothing"
