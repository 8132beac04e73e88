"""`Conditions.select` is lazy: repeating each group's conditions K times for a rollout gathers nothing;
the rows of one sampler chunk or micro-batch are gathered when a velocity call reads them. And each
family's `split_conditions` / `join_conditions` undo and redo a batch's padding exactly."""

import pytest
import torch
from tiny_runs import tiny_presets

from editr1.data.batching import source_images
from editr1.data.jsonl import read_edit_jsonl
from editr1.models.base import Conditions
from editr1.models.registry import build_tiny


def _reachable_tensors(value, seen=None):
    """Every tensor held by `value` (an object's attributes, dicts, lists, tuples), recursively."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return []
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        children = list(value.values())
    elif isinstance(value, (list, tuple)):
        children = list(value)
    elif hasattr(value, "__dict__"):
        children = list(vars(value).values())
    else:
        return []
    return [t for child in children for t in _reachable_tensors(child, seen)]


def test_selecting_k_copies_allocates_no_k_fold_tensor():
    """K=12 copies of 2 rows: the selection holds the 2-row tensors themselves (same storage) and a
    24-entry index, and no tensor of 24 rows; a chunk of it gathers only its own rows."""
    k, rows = 12, 2
    base = Conditions({"prompt_embeds": torch.randn(rows, 7, 16), "mask": torch.ones(rows, 7, dtype=torch.long),
                       "absent": None}, {"grid": (2, 2)})
    pointers = {t.data_ptr() for t in base.tensors.values() if t is not None}
    repeated = base.select(torch.arange(rows).repeat_interleave(k))
    held = _reachable_tensors(repeated)
    for tensor in held:
        if tensor.is_floating_point() or tensor.dim() > 1:
            assert tensor.data_ptr() in pointers, "select copied a conditions tensor"
        else:
            assert tensor.numel() == rows * k  # the index
    assert sum(t.numel() * t.element_size() for t in held if t.data_ptr() not in pointers) == rows * k * 8
    assert repeated.shared is base.shared

    # A sampler chunk of 5 rows (a selection of the selection): 5 rows gathered, the right ones.
    chunk = repeated.select(torch.arange(10, 15))
    assert chunk.tensors["prompt_embeds"].shape == (5, 7, 16)
    assert torch.equal(chunk.tensors["prompt_embeds"], base.tensors["prompt_embeds"][[0, 0, 1, 1, 1]])
    assert chunk.tensors["absent"] is None
    assert chunk.tensors is chunk.tensors  # gathered once, then kept
    assert all(t.shape[0] == 5 for t in _reachable_tensors(chunk) if t.data_ptr() not in pointers and t.dim() > 1)


def test_selection_behaves_as_an_eager_gather():
    base = Conditions({"a": torch.arange(12.0).view(3, 4), "b": torch.tensor([[1], [2], [3]])})
    eager = {name: t[[2, 0, 0, 1]][[3, 1]] for name, t in base.tensors.items()}
    lazy = base.select([2, 0, 0, 1]).select(torch.tensor([3, 1]))
    assert lazy.tensors.keys() == eager.keys()
    for name in eager:
        assert torch.equal(lazy.tensors[name], eager[name])
    # Selecting from a selection whose rows were already gathered composes the same way.
    first = base.select([2, 0, 0, 1])
    first.tensors
    assert torch.equal(first.select([3, 1]).tensors["a"], eager["a"])


@pytest.mark.parametrize("preset", tiny_presets())
def test_split_and_join_undo_and_redo_a_batch_exactly(preset, shapes_data):
    samples = read_edit_jsonl(shapes_data / "train.jsonl")[:4]
    adapter = build_tiny(preset, [s.prompt for s in samples], 0)
    sources = [source_images(s, 32) for s in samples]
    if preset.endswith("plus"):
        sources[1], sources[3] = sources[1] + sources[2], sources[3] * 3  # 1, 2, 1 and 3 references
    prompts = [s.prompt for s in samples]
    prompts[0] = "make it blue"  # prompt lengths differ: the batch pads
    batch = adapter.encode_conditions(sources, prompts, 32, 32)
    rows = adapter.split_conditions(batch)
    joined = adapter.join_conditions(rows)
    assert joined.shared == batch.shared and joined.tensors.keys() == batch.tensors.keys()
    for name, tensor in batch.tensors.items():
        assert torch.equal(joined.tensors[name], tensor), name
        assert joined.tensors[name].device == tensor.device, name
    # Each row is shaped as that sample encoded alone (no padding); encoding each alone and joining
    # gives the batch's shapes.
    for i, row in enumerate(rows):
        alone = adapter.encode_conditions([sources[i]], [prompts[i]], 32, 32)
        assert {n: t.shape for n, t in row.tensors.items()} == {n: t.shape for n, t in alone.tensors.items()}
    each = adapter.encode_each(sources, prompts, 32, 32)
    assert {n: t.shape for n, t in each.tensors.items()} == {n: t.shape for n, t in batch.tensors.items()}
    for name, tensor in batch.tensors.items():
        assert torch.allclose(each.tensors[name].float(), tensor.float(), atol=1e-4), name
