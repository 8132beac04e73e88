"""Sharded states (FSDP2, where each rank holds a slice of every parameter as a DTensor) in and out of
the checkpoint format of an unsharded run, and the sharded model's weights from the main process.

Checkpoints keep one format whatever the launch: the slices are gathered into whole tensors for writing,
and on reading each rank reads only its own rows of every file. So a sharded run writes the same files
as a single-process run, a LoRA exports the same way, and a checkpoint resumes under any world size.
Gathering is a collective: every rank calls these functions with the same tensors in the same order.
Plain tensors pass through, so an unsharded run takes the same code path.

Loading: only the main process reads the model's weights. The others build the transformer without them
(parameters on the meta device) and, once it is sharded, receive their slices (`load_from_main`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from editr1.errors import EditR1Error


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


def local_index(tensor: DTensor) -> tuple[slice, ...]:
    """Where this rank's block of `tensor` lies in the whole tensor, one slice per dimension (torch's
    own layout: uneven last blocks, and empty ones where a dimension has fewer rows than ranks)."""
    shape, offset = compute_local_shape_and_global_offset(tensor.shape, tensor.device_mesh, tensor.placements)
    return tuple(slice(start, start + size) for start, size in zip(offset, shape))


def read_like(source: Any, name: str, like: Any) -> Any:
    """The tensor `name` of `source` (a `checkpoint.TensorFile`: anything with its `read(name, index)`),
    read as `like` holds it: for a DTensor only this rank's block, made a DTensor sliced as `like`;
    otherwise whole."""
    if not isinstance(like, DTensor):
        return source.read(name)
    block = source.read(name, local_index(like))
    return DTensor.from_local(block.to(like.device).contiguous(), like.device_mesh, like.placements, run_check=False,
                              shape=like.shape, stride=like.stride())


def shard_like(state: Any, like: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Every tensor of `state` (a `checkpoint.TensorFile`), read as the tensor of the same name in `like`
    holds it (`read_like`): whole, or this rank's rows only."""
    return {name: read_like(state, name, like.get(name)) for name in state}


def _named_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def whole_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`module`'s parameters and buffers by name, detached: taken before sharding, they keep the whole
    tensors alive for `load_from_main` (sharding replaces the module's own)."""
    return {name: tensor.detach() for name, tensor in _named_tensors(module).items()}


def load_from_main(module: torch.nn.Module, whole: dict[str, torch.Tensor] | None, device: torch.device) -> None:
    """Give every process the main process's weights (collective). `module` was just sharded; on the main
    process (rank 0) `whole` holds its whole tensors (`whole_tensors`, taken before sharding; emptied here,
    so each is freed once sent); on the others it is None, and the parameters may be on the meta device
    (built without weights). The main process broadcasts one tensor at a time, and each other process keeps its
    block: no process but the main one ever holds more than one whole tensor. Buffers are sent too, so
    every process computes with the main process's."""
    main = dist.get_rank() == 0
    tensors = _named_tensors(module)
    layouts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(layouts, [(name, tuple(t.shape), str(t.dtype)) for name, t in tensors.items()])
    differing = [rank for rank, layout in enumerate(layouts) if layout != layouts[0]]
    if differing:  # raised on every rank alike, so none is left waiting in a collective
        raise EditR1Error(f"processes {differing} built the transformer with other parameter names, shapes or dtypes "
                          "than the main process: a family's loader without weights (`from_pretrained(..., "
                          "transformer_weights=False)`) must build what it loads")
    if not main:
        module.to_empty(device=device)  # storage for the blocks; keeps the parameter objects the optimizer holds
        tensors = _named_tensors(module)  # buffers are new tensors
    with torch.no_grad():
        for name, tensor in tensors.items():
            if main:
                full = whole.pop(name).to(device).contiguous()
            else:
                full = torch.empty(tensor.shape, dtype=tensor.dtype, device=device)
            dist.broadcast(full, src=0)
            if not main:
                if isinstance(tensor, DTensor):
                    tensor.to_local().copy_(full[local_index(tensor)])
                else:
                    tensor.copy_(full)


def copy_from(target: torch.nn.Module, source: torch.nn.Module) -> None:
    """Every parameter and buffer of `source` into `target`, a copy of it sharded the same way: each
    rank copies its own blocks (no communication)."""
    sources = _named_tensors(source)
    with torch.no_grad():
        for name, tensor in _named_tensors(target).items():
            value = sources[name]
            if isinstance(tensor, DTensor):
                tensor.to_local().copy_(value.to_local())
            else:
                tensor.copy_(value)


def full_optimizer_state(optimizer: torch.optim.Optimizer, keep: bool = True) -> dict:
    """`optimizer.state_dict()` with whole tensors (collective; see `gather_full`)."""
    state_dict = optimizer.state_dict()
    state = {index: gather_full(entry, keep) for index, entry in state_dict["state"].items()}
    return {"state": state, "param_groups": state_dict["param_groups"]} if keep else {}


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
