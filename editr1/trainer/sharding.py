"""Sharded states (FSDP2, where each rank holds a slice of every parameter as a DTensor) in and out of
the checkpoint format of an unsharded run.

Checkpoints keep one format whatever the launch: the slices are gathered into whole tensors for writing
and sliced again when read. So a sharded run writes the same files as a single-process run, a LoRA
exports the same way, and a checkpoint resumes under any world size. Gathering is a collective: every
rank calls these functions with the same tensors in the same order. Plain tensors pass through, so an
unsharded run takes the same code path.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, distribute_tensor


def gather_full(state: Mapping[str, Any], keep: bool = True) -> dict[str, Any]:
    """Whole tensors of `state`: DTensors gathered from every rank onto the CPU, one at a time; plain
    tensors as they are (the writer copies them). `keep` False (the ranks that do not write) takes part
    in the gathers and returns {}. Values that are not tensors pass through."""
    full = {}
    for name, value in state.items():
        if isinstance(value, DTensor):
            value = value.full_tensor()
            value = value.cpu() if keep else None
        if keep:
            full[name] = value.detach() if torch.is_tensor(value) else value
    return full


def shard_like(state: Mapping[str, Any], like: Mapping[str, Any]) -> dict[str, Any]:
    """`state`'s whole tensors, each sliced as the DTensor of the same name in `like` is sliced (this
    rank's slice, cut locally: every rank read the same file). Names without a DTensor in `like` pass
    through unchanged."""
    sliced = {}
    for name, value in state.items():
        target = like.get(name)
        if isinstance(target, DTensor) and torch.is_tensor(value):
            value = distribute_tensor(value.to(target.device), target.device_mesh, target.placements, src_data_rank=None)
        sliced[name] = value
    return sliced


def full_optimizer_state(optimizer: torch.optim.Optimizer, keep: bool = True) -> dict:
    """`optimizer.state_dict()` with whole tensors (collective; see `gather_full`)."""
    state_dict = optimizer.state_dict()
    state = {index: gather_full(entry, keep) for index, entry in state_dict["state"].items()}
    return {"state": state, "param_groups": state_dict["param_groups"]} if keep else {}


def shard_optimizer_state(state_dict: dict, optimizer: torch.optim.Optimizer) -> dict:
    """A whole optimizer state sliced like `optimizer`'s parameters (per-parameter tensors of the
    parameter's shape: Adam's moments; scalars such as `step` stay whole)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for index, entry in state_dict["state"].items():
        param = params[index] if 0 <= index < len(params) else None
        like = {} if param is None else {key: param for key, value in entry.items()
                                         if torch.is_tensor(value) and value.shape == param.shape}
        state[index] = shard_like(entry, like)
    return {"state": state, "param_groups": state_dict["param_groups"]}


def is_sharded(module: torch.nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in module.parameters())


@contextmanager
def unsharded_transformer(adapter: Any, weights: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """`adapter.transformer`, when sharded, swapped for a whole copy that holds `weights` (gathered by
    the caller) while the body runs, so that the family's `save_pretrained` writes the usual files. A
    transformer that is not sharded is left as it is."""
    sharded = adapter.transformer
    if not is_sharded(sharded):
        yield
        return
    # fully_shard made the module an instance of a subclass of its own class; build the class it was.
    whole_class = next(c for c in type(sharded).__mro__ if not issubclass(c, FSDPModule))
    with torch.device("meta"):  # no second allocation of the weights: they are the gathered tensors
        whole = whole_class.from_config(sharded.config)
    whole.load_state_dict(weights, assign=True)  # strict: a missing weight is an error, never left unset
    adapter.transformer = whole
    try:
        yield
    finally:
        adapter.transformer = sharded


def drop_gathered(module: torch.nn.Module) -> None:
    """Free the whole parameters FSDP keeps after a forward without a backward (the root module keeps
    its own): call it after changing the sharded parameters in place, or the next forward would reuse
    the stale whole ones."""
    for submodule in module.modules():
        if isinstance(submodule, FSDPModule):
            submodule.reshard()
