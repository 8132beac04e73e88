"""A device move that a CPU-only machine can see: the meta device plays the CPU, and the CPU plays the GPU.

On this machine the training device is the CPU, so an encoder moved "to the CPU" cannot be told from one
that stayed resident. The tests set `EditModelAdapter.offload_device` to the meta device and give each
text encoder a `to` under which moving to meta really moves every parameter and buffer there (torch's
own `to("meta")`): meta tensors hold no data, so `next(encoder.parameters()).device` reads "meta" while
offloaded, and any computation with an offloaded encoder would fail. The CPU tensors are kept aside and
put back, the same objects, when the encoder is moved to a real device, so a run with offload can be
compared bit for bit with one without."""

from __future__ import annotations

import torch
from torch import nn


def fake_offload(module: nn.Module, log: list | None = None) -> nn.Module:
    """Give `module` the meta-as-CPU `to` (each move is appended to `log` as its device type)."""
    real_to = module.to
    kept: list[tuple[dict, str, torch.Tensor]] = []

    def to(device, *args, **kwargs):
        device = torch.device(device)
        if log is not None:
            log.append(device.type)
        if device.type == "meta":
            if not kept:  # the real parameters and buffers, put back as they were (tied weights stay tied)
                for sub in module.modules():
                    kept.extend((sub._parameters, key, t) for key, t in sub._parameters.items())
                    kept.extend((sub._buffers, key, t) for key, t in sub._buffers.items())
                real_to("meta")
            return module
        for store, key, tensor in kept:
            store[key] = tensor
        kept.clear()
        return real_to(device, *args, **kwargs)

    module.to = to
    return module


def encoder_devices(adapter) -> list[str]:
    return [next(module.parameters()).device.type for module in adapter.text_encoders()]
