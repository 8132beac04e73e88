"""`edit_batch`: the one "edit these samples" primitive (rollouts, evaluation, judge distillation, edit)."""

import torch

from editr1.data.batching import source_images
from editr1.data.jsonl import read_edit_jsonl
from editr1.models.registry import build_tiny
from editr1.sampling.generate import edit_batch


def test_rows_follow_their_sample_and_chunking_changes_nothing(shapes_data):
    adapter = build_tiny("tiny:qwen-image-edit", ["remove the red circle"], 0)
    samples = read_edit_jsonl(shapes_data / "test.jsonl")[:2]
    sources, prompts = [source_images(s, 32) for s in samples], [s.prompt for s in samples]
    noise = torch.randn(1, *adapter.latent_token_shape(32, 32), generator=torch.Generator().manual_seed(0)).repeat(4, 1, 1)
    sigmas = adapter.sigmas(2, 32, 32)
    seen = []
    whole = edit_batch(adapter, sources, prompts, noise, sigmas, 32, 32, repeats=2, batch_size=4, cfg_scale=2.0,
                       on_batch=lambda rows, pixels: seen.append(rows.tolist()))
    chunked = edit_batch(adapter, sources, prompts, noise, sigmas, 32, 32, repeats=2, batch_size=1, cfg_scale=2.0)
    assert seen == [[0, 1, 2, 3]] and whole.pixels.shape == (4, 3, 32, 32)
    assert torch.allclose(whole.pixels, chunked.pixels, atol=1e-5)
    # Row i * repeats + j is sample i: the same noise gives the same edit within a sample, not across.
    assert torch.allclose(whole.pixels[0], whole.pixels[1], atol=1e-6)
    assert not torch.allclose(whole.pixels[1], whole.pixels[2], atol=1e-3)
    assert whole.conditions.select([0]).tensors.keys() == whole.conditions.tensors.keys()
