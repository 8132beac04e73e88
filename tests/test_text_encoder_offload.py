"""`model.offload_text_encoder`: the adapter keeps its text encoders on the CPU and moves them to the device
only while it encodes. The moves are made visible with the meta device standing in for the CPU
(`offload_fakes`); the training run's check is in test_conditions_cache.py, beside its baseline run."""

import pytest
import torch
from offload_fakes import encoder_devices, fake_offload
from PIL import Image
from tiny_runs import tiny_presets

from editr1.config import ModelConfig
from editr1.data.batching import source_images
from editr1.data.jsonl import read_edit_jsonl
from editr1.errors import EditR1Error
from editr1.models.base import EditModelAdapter
from editr1.models.qwen_image_edit import QwenImageEditAdapter
from editr1.models.registry import build_tiny
from editr1.trainer.model_loading import build_model

PRESETS = tiny_presets()


class NoTextEncoders(QwenImageEditAdapter):
    """A fork that names no text encoders: there is nothing offload could move."""

    def text_encoders(self):
        return []


@pytest.mark.parametrize("preset", PRESETS)
def test_offloaded_encoders_wait_off_the_device_and_encode_on_it(preset, shapes_data, monkeypatch):
    monkeypatch.setattr(EditModelAdapter, "offload_device", torch.device("meta"))
    samples = read_edit_jsonl(shapes_data / "train.jsonl")[:3]
    corpus = [s.prompt for s in samples]
    adapter, reference = build_tiny(preset, corpus, 0), build_tiny(preset, corpus, 0)
    moves = []
    for module in adapter.text_encoders():
        fake_offload(module, moves)
    encoding_on = []
    for module in adapter.text_encoders():
        module.get_input_embeddings().register_forward_pre_hook(lambda m, args: encoding_on.append(next(m.parameters()).device.type))
    adapter.offload_text_encoder = True
    assert adapter.to("cpu") is adapter
    assert encoder_devices(adapter) == ["meta"] * len(adapter.text_encoders())
    assert next(adapter.transformer.parameters()).device.type == "cpu"

    sources, prompts = [source_images(s, 32) for s in samples], [s.prompt for s in samples]
    moves.clear()
    conditions = adapter.encode_conditions(sources, prompts, 32, 32)
    assert encoding_on and set(encoding_on) == {"cpu"}  # ran on the "device"
    assert encoder_devices(adapter) == ["meta"] * len(adapter.text_encoders())  # and went back
    expected = reference.encode_conditions(sources, prompts, 32, 32)
    for name, tensor in expected.tensors.items():
        assert torch.equal(conditions.tensors[name], tensor), name
        assert conditions.tensors[name].device.type == "cpu", name

    # Encoding each sample alone moves each encoder once there and once back, not once per sample.
    moves.clear()
    each = adapter.encode_each(sources, prompts, 32, 32)
    assert moves == ["cpu"] * len(adapter.text_encoders()) + ["meta"] * len(adapter.text_encoders())
    expected = reference.encode_each(sources, prompts, 32, 32)
    for name, tensor in expected.tensors.items():
        assert torch.equal(each.tensors[name], tensor), name
    # A context in which nothing is encoded moves nothing.
    moves.clear()
    with adapter.text_encoders_on_device():
        pass
    assert moves == [] and encoder_devices(adapter) == ["meta"] * len(adapter.text_encoders())


def test_without_offload_the_encoders_move_with_the_rest(monkeypatch):
    monkeypatch.setattr(EditModelAdapter, "offload_device", torch.device("meta"))
    adapter = build_tiny("tiny:flux-kontext", ["make it blue"], 0)
    moves = []
    for module in adapter.text_encoders():
        fake_offload(module, moves)
    adapter.to("cpu")
    assert moves == ["cpu", "cpu"] and encoder_devices(adapter) == ["cpu", "cpu"]
    moves.clear()
    adapter.encode_conditions([[Image.new("RGB", (32, 32))]], ["make it blue"], 32, 32)
    assert moves == []


def test_model_config_sets_offload_and_refuses_an_adapter_without_text_encoders():
    adapter = build_model(ModelConfig(path="tiny:flux-kontext", offload_text_encoder=True))
    assert adapter.offload_text_encoder
    with pytest.raises(EditR1Error, match=r"^model\.offload_text_encoder: the NoTextEncoders adapter names no text encoders"):
        build_model(ModelConfig(path="tiny:test_text_encoder_offload:NoTextEncoders", offload_text_encoder=True))
