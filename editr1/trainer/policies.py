"""The three policies of DiffusionNFT on one transformer: trained, old (rollouts) and reference.

With LoRA (the reference setting) the trained and old policies are two peft adapters on the same
transformer and the reference is that transformer with adapters disabled: no extra model copy.
With full fine-tuning the old policy (and, when the KL term is on, the reference) are frozen copies;
sharded, they are built without weights and filled from the trained transformer's slices (`shard`), so
no process holds a whole copy of them.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from editr1.models.lora_io import LoraSpec
from editr1.rl.old_policy import soft_update_
from editr1.trainer.sharding import copy_from, drop_gathered, gather_full, shard_like

TRAINED, OLD = "default", "old"


def _without_weights(module: nn.Module) -> nn.Module:
    """A copy of `module` with its parameters on the meta device: no memory until it is sharded."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
            for p in module.parameters()}
    return copy.deepcopy(module, memo)


class PolicySet:
    def __init__(
        self,
        transformer: nn.Module,
        lora: LoraSpec | None,
        need_reference: bool = False,
        sharded: bool = False,
    ):
        """`lora`: train that LoRA (the trained and old policies are two adapters); None: full fine-tuning.
        `sharded`: the transformer is sharded next, and then `shard` builds the frozen copies' weights."""
        self.transformer = transformer
        self.mode = "full" if lora is None else "lora"
        transformer.requires_grad_(False)
        if lora is not None:
            config = lora.peft_config()
            base_device = next(transformer.parameters()).device
            transformer.add_adapter(config, adapter_name=TRAINED)
            with warnings.catch_warnings():
                # peft warns that a second adapter is being added: here that is the point.
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                transformer.add_adapter(copy.deepcopy(config), adapter_name=OLD)
            # Over a base on the meta device (a sharded run's processes other than the main one), peft leaves the
            # second adapter on the CPU: both go where the base is (elsewhere nothing moves).
            transformer.to(base_device)
            self._collect()
            # Adapters and their optimizer state stay float32 over a bf16/fp16 base (peft casts inputs).
            for p in self._trained + self._old:
                p.data = p.data.float()
            soft_update_(self._old, self._trained, 0.0)
            transformer.set_adapter(TRAINED)
        else:
            frozen_copy = _without_weights if sharded else copy.deepcopy
            self.old_module = frozen_copy(transformer)
            self.reference_module = frozen_copy(transformer) if need_reference else None
            self._collect()
        for p in self._trained:
            p.requires_grad_(True)

    def _collect(self) -> None:
        if self.mode == "lora":
            named = dict(self.transformer.named_parameters())
            self._trained = [p for n, p in named.items() if f".{TRAINED}." in n]
            # Pair old with trained by name, not by order.
            self._old = [named[n.replace(f".{TRAINED}.", f".{OLD}.")] for n, p in named.items() if f".{TRAINED}." in n]
        else:
            self._trained = list(self.transformer.parameters())
            self._old = list(self.old_module.parameters())

    def shard(self, shard_frozen: Callable[[nn.Module], nn.Module]) -> None:
        """After the trained transformer was sharded (which replaces its parameters) and holds its weights:
        shard the frozen copies of full fine-tuning with `shard_frozen` too, give them storage for their
        slices and copy the trained transformer's into them; take the new parameters."""
        if self.mode == "full":
            device = next(self.transformer.parameters()).device
            self.old_module = shard_frozen(self.old_module)
            if self.reference_module is not None:
                self.reference_module = shard_frozen(self.reference_module)
            for module in (self.old_module, self.reference_module):
                if module is not None:
                    module.to_empty(device=device)
                    copy_from(module, self.transformer)
        self._collect()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self._trained

    @contextmanager
    def use(self, which: str) -> Iterator[nn.Module]:
        """Activate a policy ("trained", "old", "reference") and yield the module to call.

        LoRA always switches back to the trained adapter on exit: gradient checkpointing recomputes
        under whichever adapter is active at backward time.
        """
        if which not in ("trained", "old", "reference"):
            raise ValueError(f"unknown policy {which!r}")
        if self.mode == "full":
            if which == "reference" and self.reference_module is None:
                raise RuntimeError("no reference copy: build the PolicySet with need_reference=True")
            yield {"trained": self.transformer, "old": self.old_module, "reference": self.reference_module}[which]
            return
        try:
            if which == "reference":
                self.transformer.disable_adapters()
            elif which == "old":
                self.transformer.set_adapter(OLD)
            yield self.transformer
        finally:
            if which == "reference":
                self.transformer.enable_adapters()
            self.transformer.set_adapter(TRAINED)
            for p in self._old:
                p.requires_grad_(False)

    @contextmanager
    def merged_old(self) -> Iterator[nn.Module]:
        """The old policy with its LoRA merged into the base weights, for rollouts without the adapter's
        extra matmuls. The base weights are restored on exit from a copy kept on the CPU, bit for bit:
        an unmerge (subtracting the LoRA again) drifts in bf16. Full fine-tuning: the old copy itself."""
        if self.mode == "full":
            yield self.old_module
            return
        from peft.tuners.lora import LoraLayer

        layers = [m for m in self.transformer.modules() if isinstance(m, LoraLayer) and OLD in m.lora_A]
        saved = [layer.get_base_layer().weight.detach().to("cpu", copy=True) for layer in layers]
        try:
            self.transformer.set_adapter(OLD)
            for layer in layers:
                layer.merge(adapter_names=[OLD])
            yield self.transformer
        finally:
            with torch.no_grad():
                for layer, weight in zip(layers, saved):
                    layer.get_base_layer().weight.copy_(weight)
                    layer.merged_adapters.clear()
            self.transformer.set_adapter(TRAINED)
            for p in self._old:
                p.requires_grad_(False)

    def update_old(self, decay: float) -> None:
        """theta_old <- decay * theta_old + (1 - decay) * theta."""
        soft_update_(self._old, self._trained, decay)
        drop_gathered(self.transformer if self.mode == "lora" else self.old_module)

    # ---- state for checkpoints ------------------------------------------------------------------
    # Whole tensors in and out, sharded or not (see `sharding`): with sharded parameters every rank calls
    # these, and only the ranks with `keep` get the tensors.
    def trained_state(self, keep: bool = True) -> dict[str, torch.Tensor]:
        if self.mode == "lora":
            return self._adapter_state(TRAINED, keep)
        return gather_full(self.transformer.state_dict(), keep)

    def old_state(self, keep: bool = True) -> dict[str, torch.Tensor]:
        if self.mode == "lora":
            return self._adapter_state(OLD, keep)
        return gather_full(self.old_module.state_dict(), keep)

    def _adapter_state(self, name: str, keep: bool) -> dict[str, torch.Tensor]:
        # peft picks and names the adapter's tensors (sharded ones stay slices until gathered).
        return gather_full(self._adapter_tensors(name), keep)

    def _adapter_tensors(self, name: str) -> dict[str, torch.Tensor]:
        """The adapter's tensors as they are in the module (DTensors when sharded), under the names peft
        saves them by."""
        return get_peft_model_state_dict(self.transformer, state_dict=self.transformer.state_dict(), adapter_name=name)

    def load_states(self, trained: dict[str, torch.Tensor], old: dict[str, torch.Tensor]) -> None:
        if self.mode == "lora":
            for state, name in ((trained, TRAINED), (old, OLD)):
                result = set_peft_model_state_dict(self.transformer, shard_like(state, self._adapter_tensors(name)),
                                                   adapter_name=name)
                if result.unexpected_keys:
                    raise ValueError(f"checkpoint has unexpected LoRA keys: {result.unexpected_keys[:3]}")
            self.transformer.set_adapter(TRAINED)
        else:
            self.transformer.load_state_dict(shard_like(trained, self.transformer.state_dict()))
            self.old_module.load_state_dict(shard_like(old, self.old_module.state_dict()))
