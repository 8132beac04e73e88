"""One reference NFT iteration, phase by phase: editr1's path against the naive diffusers + peft path.

    # CPU, a few seconds per family (what CI runs): the tiny presets, MFU against a measured CPU matmul peak
    .venv/bin/python bench/gpu_iteration.py --tiny
    # GPU, full-size architecture with random bf16 weights (no download)
    .venv/bin/python bench/gpu_iteration.py --family flux-kontext --json flux.json
    .venv/bin/python bench/gpu_iteration.py --family qwen-image-edit --depth 4 --size 256   # quick check, small GPU

One iteration here is a scaled-down Edit-R1 iteration with the reference settings: `--groups` groups of
`--group-size` edits (rows), rolled out with `--steps` sampler steps (`--sampler`, DPM-Solver++ as in
the presets) in sampler calls of `--batch` rows under the old policy, decoded, then the NFT update over
floor(0.99 * steps) training timesteps per row in micro-batches of `--micro-batch` rows, then one
optimizer step. The reward (the judge) is not part of it. Both paths run it in this process, on the
same base transformer (editr1's first, then its adapters are deleted and the naive path adds its own),
with the same noise, rows, timesteps and advantages; each path runs one warm-up iteration (in which the
FLOPs are counted) and `--repeats` timed iterations, whose median is reported.

The editr1 path is what `editr1.trainer.rl_trainer.RLTrainer` calls, through editr1's own functions:
- LoRA: `PolicySet` (trained and old peft adapters on one transformer, float32 LoRA weights over the
  bf16 base, reference = adapters disabled).
- Rollout: `edit_batch(..., transformer=old, conditions=...)` inside `PolicySet.use("old")`, which calls
  `adapter.velocity` (the Qwen adapters drop the all-ones text mask) and decodes each chunk.
- Micro-step, in the trainer's order: old-adapter and reference forwards under `no_grad`
  (`PolicySet.use("old")`, `use("reference")`), then the forward with grad and the backward inside
  `use("trained")`; the loss is `editr1.rl.losses.nft`.
- Optimizer: gradient clipping, AdamW over `PolicySet.trainable_parameters()`, `PolicySet.update_old`.

The naive path is plain diffusers + peft, called directly:
- LoRA: `transformer.add_adapter(LoraConfig(...))` twice ("default", "old"; peft keeps them in the base
  dtype, bf16 at full size), switched with `set_adapter` / `disable_adapters` / `enable_adapters`.
- Every velocity is one `transformer(hidden_states=..., ...)` call with the inputs the stock pipeline builds
  from the adapter's `Conditions`, as the adapter's `pipeline_velocity` makes it (the same tensors editr1
  uses; FLUX's position ids from `FluxKontextPipeline._prepare_latent_image_ids`, FLUX.2 [klein]'s from
  `Flux2KleinPipeline`'s `_prepare_latent_ids`, `_prepare_image_ids` and `_prepare_text_ids`, FLUX.2 [dev]'s
  from `Flux2Pipeline`'s helpers of those names; the distilled guidance of FLUX.1 Kontext and FLUX.2 [dev] as
  the float32 `guidance` of every row, as their pipelines give it, none for [klein]), and for the Qwen
  families the all-ones text attention mask the Qwen pipelines pass (GPU-NOTES: +18-39% forward time).
- Rollout: the same solver (`editr1.sampling.solvers`) around those direct calls, under "old".
- Micro-step in the plain order the baseline measurements use: forward with grad ("default"), then the
  old-adapter and adapters-disabled forwards under `no_grad`, then "default" re-selected (needed for
  correct gradients under checkpointing) and the backward. The loss is the same `nft` function.
- Optimizer: clipping, AdamW over the parameters peft left trainable, a per-tensor soft update of "old".

Shared by both paths, timed for each: encoding the conditions (`adapter.encode_conditions`, once per
group) and decoding (`adapter.decode_latents`, per rollout chunk); their rows are there for the
iteration total, and their ratio shows the run-to-run noise. Gradient checkpointing (on by default, as
in the presets) applies to both. On CUDA cuDNN attention is disabled for both unless `--cudnn-sdp`
(GPU-NOTES: it crashed with checkpointing + LoRA).

Full size (`--family ...` without `--tiny`): what the family's adapter class's `build_released` builds (see
editr1/models/base.py): the diffusers transformer classes with the published configs their adapter modules
hold (`RELEASED_TRANSFORMER`, `RELEASED_VAE`, `RELEASED_TEXT_ENCODER...` in editr1/models/qwen_image_edit.py,
flux_kontext.py, flux2_klein.py and flux2_dev.py; Qwen-Image 20B: 60 blocks, 24 x 128 heads; FLUX.1 Kontext
12B: 19 double + 38 single blocks; FLUX.2 [klein] 4B: 5 double + 20 single blocks of 24 x 128 heads; FLUX.2
[dev] 32B: 8 double + 48 single blocks of 48 x 128 heads, 6144 wide), random weights built directly on the
device in `--dtype` (bf16), and the full-size VAE (Qwen-Image VAE / FLUX VAE / FLUX.2 VAE, random weights),
over editr1's tiny tokenizers, assembled as the tiny presets are. The text encoders (Qwen2.5-VL-7B; CLIP-L +
T5-XXL; Qwen3-4B; Mistral Small 3.x 24B) are replaced by random prompt embeddings of the right shapes (the
adapter's `random_text_conditions`; Qwen: the ~324 image tokens of a 512^2 source in the VL chat plus ~17
template and instruction tokens for a ten-token instruction (Plus: 21, "Picture 1: " too), 3584 wide; FLUX:
512 T5 tokens of 4096 and a pooled 768; [klein]: Qwen3's 512 padded tokens, 3 stacked layers of 2560; [dev]:
Mistral's 512 padded tokens, 3 stacked layers of 5120), so the "encode" row then times only the VAE
encoding of the sources. `--with-text-encoder` builds the full-size encoders with random weights instead
(tokenized by editr1's tiny tokenizers, so the instruction's token count is approximate; the image tokens
and T5's, Qwen3's and Mistral's padding are exact) and times `adapter.encode_conditions`.
`--depth N` cuts the adapter's `depth_knobs`: the transformer to N blocks (FLUX: N double + 2N single, the
released 1:2 ratio; [klein]: N double + 4N single, its 1:4; [dev]: N double + 6N single, its 1:6), and the
text encoders to N layers, none below a knob's fewest (the FLUX.2 encoders to no fewer than their pipelines
read: [klein]'s Qwen3 28, for hidden states 9, 18 and 27; [dev]'s Mistral 31, for hidden states 10, 20 and
30; its Pixtral vision tower, built but never run, to N; Qwen2.5-VL's vision tower to no fewer than 2
blocks, one windowed and a last one of full attention, as released). Before building, the script counts
the parameters on the meta device and refuses to build what does not fit in the device's free memory.

FLOPs and MFU (the usual counting; see docs/real_scale.md): forward hooks on every `nn.Linear` that runs
add 2 * in * out * tokens, times 3 when the call is part of an autograd graph (forward + backward,
the usual convention: it also counts weight gradients that frozen base weights do not need); every
`scaled_dot_product_attention` call adds 4 * S_q * S_kv * d per sample (d = heads x head dim), times 3
likewise. The forward's third goes to the phase that runs the forward, the backward's two thirds to the
"loss + backward" row. Convolutions (the VAE) add 2 * output elements * (in/groups * kernel). Recomputation during
the backward (gradient checkpointing) is not counted: MFU counts model FLOPs. MFU = FLOPs / (time x
peak); the peak is `--peak-tflops` (default 749, the measured H100 bf16 matmul ceiling) on CUDA, and on
the CPU a quick matmul benchmark in the run's dtype unless given. Peak memory per phase is
`torch.cuda.max_memory_allocated` during the phase (weights included); on the CPU it is "n/a" (the
process's peak RSS is printed once).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from editr1.models.base import Conditions, EditModelAdapter
from editr1.models.registry import FAMILIES, adapter_class

#: Table rows: key, label. The four indented rows are parts of "NFT micro-steps".
PHASES: tuple[tuple[str, str], ...] = (
    ("encode", "encode conditions"),
    ("rollout", "rollout sampling"),
    ("decode", "decode"),
    ("nft", "NFT micro-steps"),
    ("nft_grad", "  forward with grad"),
    ("nft_old", "  old-adapter forward"),
    ("nft_ref", "  reference forward (adapters off)"),
    ("nft_backward", "  loss + backward"),
    ("optimizer", "optimizer step"),
    ("total", "iteration"),
)
PATHS = ("editr1", "naive")
H100_BF16_PEAK_TFLOPS = 749.0
GIB = 2**30
PROMPT = "Change the color of the red square to blue."
#: Tokens of PROMPT, about (its ten words), for the text stream's length where it grows with the instruction
#: (`released_text_tokens`).
INSTRUCTION_TOKENS = 10


class BenchError(Exception):
    """A request the script refuses (printed as one line, exit status 1)."""


# ---- FLOP counting ---------------------------------------------------------------------------------
def linear_flops(in_features: int, out_features: int, tokens: int, grad: bool = False) -> int:
    """One `nn.Linear` call on `tokens` rows: 2 * in * out * tokens, x3 with its backward."""
    return 2 * in_features * out_features * tokens * (3 if grad else 1)


def attention_flops(batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, grad: bool = False) -> int:
    """One attention call: QK^T and AV, 2 * S_q * S_kv * head_dim each, per head and sample (4 * S^2 * d
    for self-attention, d = heads * head_dim), x3 with its backward."""
    return 4 * batch * heads * q_len * kv_len * head_dim * (3 if grad else 1)


def conv_flops(output_elements: int, weight_shape: tuple[int, ...], grad: bool = False) -> int:
    """One convolution: 2 multiply-adds' FLOPs per output element and input tap (in/groups x kernel)."""
    return 2 * output_elements * math.prod(weight_shape[1:]) * (3 if grad else 1)


def _in_backward() -> bool:
    """True while autograd runs a backward (checkpointing recomputes forwards there: not counted)."""
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is not None and task() != -1


def _in_graph(output: Any) -> bool:
    return torch.is_grad_enabled() and isinstance(output, torch.Tensor) and output.requires_grad


class FlopCounter:
    """Counts the FLOPs of the `nn.Linear`, convolution and `scaled_dot_product_attention` calls made inside
    `with FlopCounter() as counter:` (every module, anywhere: a global forward hook).

    `total` has each call's forward FLOPs when it runs; a call that is part of an autograd graph also
    leaves twice its forward FLOPs `pending` for its backward, which `claim_backward()` (called after a
    backward) moves into `total`: a phase that times a backward gets the backward's FLOPs."""

    def __init__(self) -> None:
        self.total = 0
        self.pending = 0
        self._handle = None
        self._sdpa = None

    def _add(self, forward_flops: int, in_graph: bool) -> None:
        self.total += forward_flops
        if in_graph:
            self.pending += 2 * forward_flops

    def claim_backward(self) -> None:
        self.total += self.pending
        self.pending = 0

    def _module_hook(self, module: nn.Module, inputs: tuple, output: Any) -> None:
        if _in_backward() or not inputs or not isinstance(inputs[0], torch.Tensor):
            return
        if isinstance(module, nn.Linear):
            tokens = inputs[0].numel() // module.in_features
            self._add(linear_flops(module.in_features, module.out_features, tokens), _in_graph(output))
        elif isinstance(module, nn.modules.conv._ConvNd) and isinstance(output, torch.Tensor):
            self._add(conv_flops(output.numel(), tuple(module.weight.shape)), _in_graph(output))

    def __enter__(self) -> "FlopCounter":
        self.total = self.pending = 0
        self._handle = nn.modules.module.register_module_forward_hook(self._module_hook)
        original = self._sdpa = torch.nn.functional.scaled_dot_product_attention

        def counted(query, key, value, *args, **kwargs):
            out = original(query, key, value, *args, **kwargs)
            if not _in_backward():
                q_len, head_dim, kv_len = query.shape[-2], query.shape[-1], key.shape[-2]
                self._add(attention_flops(query.numel() // (q_len * head_dim), 1, q_len, kv_len, head_dim), _in_graph(out))
            return out

        # diffusers' and transformers' SDPA paths look the function up at call time.
        torch.nn.functional.scaled_dot_product_attention = counted
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()
        torch.nn.functional.scaled_dot_product_attention = self._sdpa


# ---- per-phase timing, FLOPs and memory ------------------------------------------------------------
class Recorder:
    """Seconds, counted FLOPs and peak memory per phase; phases may nest (a nested phase also counts in
    the phases around it)."""

    def __init__(self, device: torch.device, counter: FlopCounter | None = None):
        self.cuda = device.type == "cuda"
        self.counter = counter
        self.seconds: dict[str, float] = defaultdict(float)
        self.flops: dict[str, int] = defaultdict(int)
        self.peak: dict[str, int] = {}
        self._open: list[str] = []

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def _mark_peak(self) -> None:
        if not self.cuda:
            return
        reached = torch.cuda.max_memory_allocated()
        for name in self._open:
            self.peak[name] = max(self.peak.get(name, 0), reached)
        torch.cuda.reset_peak_memory_stats()

    @contextmanager
    def phase(self, name: str, backward: bool = False) -> Iterator[None]:
        """Time `name`; `backward=True`: the phase runs a backward, whose FLOPs it gets."""
        self._sync()
        self._mark_peak()
        flops = self.counter.total if self.counter else 0
        self._open.append(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] += time.perf_counter() - start
            self._mark_peak()
            self._open.pop()
            if self.counter:
                if backward:
                    self.counter.claim_backward()
                self.flops[name] += self.counter.total - flops

    def exclude(self, inner: str, outer: str) -> None:
        """Make `outer` exclusive of the nested `inner` (time and FLOPs; its peak stays inclusive)."""
        self.seconds[outer] -= self.seconds.get(inner, 0.0)
        self.flops[outer] -= self.flops.get(inner, 0)


# ---- the workload ----------------------------------------------------------------------------------
@dataclass
class Workload:
    """What both paths get: the samples, the rollout noise, and the NFT plan (rows, timesteps, noise)."""

    adapter: Any
    sources: list
    prompts: list[str]
    encode: Callable[[], Any]
    size: int
    group_size: int
    batch: int
    sampler: str
    guidance: float | None
    sigmas: torch.Tensor
    noise: torch.Tensor
    #: (rows, timestep indices, noise) per micro-step.
    plan: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    r: torch.Tensor
    group_of_row: torch.Tensor
    micro_batch: int
    beta: float
    adv_clip: float
    kl_coef: float
    lr: float
    grad_clip: float
    decay: float


def build_workload(adapter, encode: Callable[[], Any], sources: list, prompts: list[str], args) -> Workload:
    device = adapter.device
    generator = torch.Generator().manual_seed(args.seed)
    rows = args.groups * args.group_size
    shape = adapter.latent_token_shape(args.size, args.size)
    sigmas = adapter.sigmas(args.steps, args.size, args.size)
    per_sample = max(1, math.floor(args.timestep_fraction * args.steps))
    noise = torch.randn(rows, *shape, generator=generator).to(device)
    # As the trainer: each row trains on its own shuffled subset of the rollout's timesteps.
    order = [torch.randperm(args.steps, generator=generator)[:per_sample] for _ in range(rows)]
    plan = []
    for column in range(per_sample):
        for start in range(0, rows, args.micro_batch):
            index = torch.arange(start, min(start + args.micro_batch, rows))
            timesteps = torch.stack([order[i][column] for i in index.tolist()])
            plan.append((index, timesteps, torch.randn(len(index), *shape, generator=generator)))
    guidance = None
    if adapter.transformer.config.guidance_embeds:  # guidance-distilled: the family's editing default unless given
        guidance = args.guidance if args.guidance is not None else \
            getattr(adapter, "default_guidance", adapter.inference.guidance)
    return Workload(
        adapter=adapter, sources=sources, prompts=prompts, encode=encode, size=args.size,
        group_size=args.group_size, batch=args.batch, sampler=args.sampler, guidance=guidance, sigmas=sigmas,
        noise=noise, plan=plan, r=torch.rand(rows, generator=generator),
        group_of_row=torch.arange(args.groups).repeat_interleave(args.group_size), micro_batch=args.micro_batch,
        beta=args.beta, adv_clip=args.adv_clip, kl_coef=args.kl_coef, lr=args.lr, grad_clip=args.grad_clip,
        decay=0.5,
    )


def _noisy(latents: torch.Tensor, step: tuple, workload: Workload) -> tuple[torch.Tensor, ...]:
    rows, timesteps, eps = step
    x0 = latents[rows.to(latents.device)]
    t = workload.sigmas[timesteps].to(x0.device, x0.dtype)
    x_t = (1 - t[:, None, None]) * x0 + t[:, None, None] * eps.to(x0)
    return x0, t, x_t


def _share(rows: torch.Tensor, workload: Workload) -> float:
    return rows.numel() / sum(step[0].numel() for step in workload.plan)


class _DecodeTimed:
    """The adapter, with `decode_latents` timed as the "decode" phase (`edit_batch` decodes each chunk)."""

    def __init__(self, adapter, recorder: Recorder):
        self._adapter, self._recorder = adapter, recorder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._adapter, name)

    def decode_latents(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        with self._recorder.phase("decode"):
            return self._adapter.decode_latents(tokens, height, width)


def _delete_adapters(transformer: nn.Module) -> None:
    """Remove both LoRA adapters, so that the next path starts from the bare transformer."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
        transformer.delete_adapters(["default", "old"])


class Editr1Path:
    """The trainer's calls: `PolicySet`, `edit_batch`, `adapter.velocity`, `rl.losses.nft`."""

    name = "editr1"

    def __init__(self, workload: Workload, lora_spec) -> None:
        from editr1.trainer.policies import PolicySet

        self.w = workload
        self.adapter = workload.adapter
        self.policies = PolicySet(self.adapter.transformer, lora_spec, need_reference=workload.kl_coef > 0)
        self.optimizer = torch.optim.AdamW(self.policies.trainable_parameters(), lr=workload.lr, betas=(0.9, 0.999),
                                           weight_decay=1e-4)

    def rollout(self, recorder: Recorder, conditions) -> torch.Tensor:
        from editr1.sampling.generate import edit_batch

        w = self.w
        with self.policies.use("old") as old:
            edited = edit_batch(
                _DecodeTimed(self.adapter, recorder), w.sources, w.prompts, w.noise, w.sigmas, w.size, w.size,
                repeats=w.group_size, batch_size=w.batch, sampler=w.sampler, cfg_scale=1.0, guidance=w.guidance,
                transformer=old, conditions=conditions,
            )
        return edited.latents

    def nft(self, recorder: Recorder, conditions, latents: torch.Tensor) -> None:
        from editr1.rl.losses import nft

        w, adapter = self.w, self.adapter
        for step in w.plan:
            rows = step[0]
            x0, t, x_t = _noisy(latents, step, w)
            selected = conditions.select(w.group_of_row[rows])
            with recorder.phase("nft_old"), torch.no_grad(), self.policies.use("old") as old:
                v_old = adapter.velocity(x_t, t, selected, w.guidance, old)
            v_ref = None
            if w.kl_coef > 0:
                with recorder.phase("nft_ref"), torch.no_grad(), self.policies.use("reference") as reference:
                    v_ref = adapter.velocity(x_t, t, selected, w.guidance, reference)
            with self.policies.use("trained") as trained:
                with recorder.phase("nft_grad"):
                    v_theta = adapter.velocity(x_t, t, selected, w.guidance, trained)
                with recorder.phase("nft_backward", backward=True):
                    loss, _ = nft(v_theta=v_theta, v_old=v_old, v_ref=v_ref, x_t=x_t, x0=x0, t=t,
                                  r=w.r[rows].to(x0.device), beta=w.beta, adv_clip=w.adv_clip, kl_coef=w.kl_coef)
                    (loss * _share(rows, w)).backward()

    def optimizer_step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.policies.trainable_parameters(), self.w.grad_clip)
        self.optimizer.step()
        self.policies.update_old(self.w.decay)
        self.optimizer.zero_grad(set_to_none=True)

    def close(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        del self.optimizer
        _delete_adapters(self.adapter.transformer)


class NaivePath:
    """diffusers + peft called directly (see the module docstring)."""

    name = "naive"

    def __init__(self, workload: Workload, lora_spec) -> None:
        from peft import LoraConfig

        self.w = workload
        self.adapter = workload.adapter
        transformer = self.transformer = workload.adapter.transformer
        config = LoraConfig(r=lora_spec.rank, lora_alpha=lora_spec.alpha, target_modules=list(lora_spec.target_modules))
        transformer.add_adapter(config, adapter_name="default")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            transformer.add_adapter(copy.deepcopy(config), adapter_name="old")
        transformer.set_adapter("default")
        named = dict(transformer.named_parameters())
        self.params = [p for p in transformer.parameters() if p.requires_grad]
        self.pairs = [(named[n.replace(".default.", ".old.")], p) for n, p in named.items() if ".default." in n]
        with torch.no_grad():
            for old, new in self.pairs:
                old.copy_(new)
        self.optimizer = torch.optim.AdamW(self.params, lr=workload.lr, betas=(0.9, 0.999), weight_decay=1e-4)

    def _velocity(self, x: torch.Tensor, sigma: torch.Tensor, conditions) -> torch.Tensor:
        return self.adapter.pipeline_velocity(x, sigma, conditions, self.w.guidance, self.transformer)

    def rollout(self, recorder: Recorder, conditions) -> torch.Tensor:
        from editr1.sampling.solvers import get_sampler

        w = self.w
        solver = get_sampler(w.sampler)
        per_row = conditions.select(torch.arange(len(w.prompts)).repeat_interleave(w.group_size))
        chunks = []
        self.transformer.set_adapter("old")
        for start in range(0, w.noise.shape[0], w.batch):
            rows = torch.arange(start, min(start + w.batch, w.noise.shape[0]))
            chunk = per_row.select(rows)
            with torch.no_grad():
                latents = solver(lambda x, s: self._velocity(x, s, chunk), w.noise[rows.to(w.noise.device)],
                                 w.sigmas.to(w.noise.device))
            with recorder.phase("decode"):
                pixels = self.adapter.decode_latents(latents, w.size, w.size)
            pixels.float().cpu()
            chunks.append(latents)
        self.transformer.set_adapter("default")
        return torch.cat(chunks)

    def nft(self, recorder: Recorder, conditions, latents: torch.Tensor) -> None:
        from editr1.rl.losses import nft

        w, transformer = self.w, self.transformer
        for step in w.plan:
            rows = step[0]
            x0, t, x_t = _noisy(latents, step, w)
            selected = conditions.select(w.group_of_row[rows])
            with recorder.phase("nft_grad"):
                transformer.set_adapter("default")
                v_theta = self._velocity(x_t, t, selected)
            with recorder.phase("nft_old"), torch.no_grad():
                transformer.set_adapter("old")
                v_old = self._velocity(x_t, t, selected)
            v_ref = None
            if w.kl_coef > 0:
                with recorder.phase("nft_ref"), torch.no_grad():
                    transformer.disable_adapters()
                    v_ref = self._velocity(x_t, t, selected)
                    transformer.enable_adapters()
            with recorder.phase("nft_backward", backward=True):
                transformer.set_adapter("default")
                loss, _ = nft(v_theta=v_theta, v_old=v_old, v_ref=v_ref, x_t=x_t, x0=x0, t=t,
                              r=w.r[rows].to(x0.device), beta=w.beta, adv_clip=w.adv_clip, kl_coef=w.kl_coef)
                (loss * _share(rows, w)).backward()

    def optimizer_step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.params, self.w.grad_clip)
        self.optimizer.step()
        with torch.no_grad():
            for old, new in self.pairs:
                old.mul_(self.w.decay).add_(new, alpha=1 - self.w.decay)
        self.optimizer.zero_grad(set_to_none=True)

    def close(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        del self.optimizer
        _delete_adapters(self.transformer)


def run_iteration(path, workload: Workload, recorder: Recorder) -> None:
    with recorder.phase("total"):
        with recorder.phase("encode"):
            conditions = workload.encode()
        with recorder.phase("rollout"):
            latents = path.rollout(recorder, conditions)
        with recorder.phase("nft"):
            path.nft(recorder, conditions, latents)
        with recorder.phase("optimizer"):
            path.optimizer_step()
    recorder.exclude("decode", "rollout")


def measure_path(path_cls, workload: Workload, lora_spec, repeats: int, device: torch.device) -> dict:
    """Warm-up (FLOPs counted), then `repeats` timed iterations; per phase: median ms, FLOPs, peak bytes."""
    path = path_cls(workload, lora_spec)
    try:
        with FlopCounter() as counter:
            counted = Recorder(device, counter)
            run_iteration(path, workload, counted)
        runs = []
        for _ in range(repeats):
            recorder = Recorder(device)
            run_iteration(path, workload, recorder)
            runs.append(recorder)
    finally:
        path.close()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result = {}
    for key, _ in PHASES:
        if key not in counted.seconds:
            continue
        peaks = [r.peak[key] for r in runs if key in r.peak]
        result[key] = {
            "ms": 1000 * statistics.median(r.seconds[key] for r in runs),
            "flops": counted.flops[key],
            "peak_bytes": max(peaks) if peaks else None,
        }
    return result


# ---- models ----------------------------------------------------------------------------------------
def released_depths(cls: type[EditModelAdapter], depth: int | None) -> dict[str, int] | None:
    """`--depth N`: N of the transformer's first kind of block and the released ratio of each other kind (FLUX.1
    Kontext: N double + 2N single), N layers of each text encoder, none below a knob's fewest nor above the
    released count; None (no `--depth`): the released depths."""
    if depth is None:
        return None
    first = next(knob for knob in cls.depth_knobs if knob.module == "transformer")
    ratio = {knob.name: knob.full // first.full if knob.module == "transformer" else 1 for knob in cls.depth_knobs}
    return {knob.name: max(knob.minimum, min(knob.full, depth * ratio[knob.name])) for knob in cls.depth_knobs}


def free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def build_full(family: str, args, device: torch.device, dtype: torch.dtype) -> EditModelAdapter:
    """The full-size adapter, random weights on `device` (see the docstring), after counting its weights on the
    meta device against `device`'s free memory."""
    cls = adapter_class(family)
    depths = released_depths(cls, args.depth)

    def build(on: torch.device | str) -> EditModelAdapter:
        return cls.build_released(depths, [PROMPT], on, dtype, text_encoders=args.with_text_encoder)

    counted = build("meta")
    modules = [counted.transformer, counted.codec.vae, *counted.text_encoders()]
    needed = sum(p.numel() for module in modules for p in module.parameters()) * torch.finfo(dtype).bits // 8
    available = free_memory(device)
    if needed * 1.15 + 2 * GIB > available:
        raise BenchError(
            f"the {family} weights{' with text encoders' if args.with_text_encoder else ''} "
            f"({'full depth' if args.depth is None else f'--depth {args.depth}'}, {str(dtype).removeprefix('torch.')}) "
            f"need {needed / GIB:.1f} GiB and {device} has {available / GIB:.1f} GiB free: pass --depth N to cut the "
            "transformer, or run on a larger device"
        )
    return build(device)


def synthetic_encode(adapter: EditModelAdapter, sources: list, size: int, seed: int) -> Callable[[], Any]:
    """`encode_conditions` without a text encoder: the sources through the VAE (timed), random prompt
    embeddings of the released encoders' shapes (`random_text_conditions`, made here, untimed)."""
    device, dtype = adapter.device, adapter.transformer.dtype
    pixels = torch.stack([torch.frombuffer(bytearray(images[0].tobytes()), dtype=torch.uint8)
                          .view(size, size, 3).permute(2, 0, 1) for images in sources]).float() / 255
    text = adapter.random_text_conditions(len(sources), size, INSTRUCTION_TOKENS, torch.Generator().manual_seed(seed))

    def encode():
        image_tokens = adapter.encode_images(pixels.to(device, dtype))
        return Conditions({**text.tensors, "image_tokens": image_tokens}, text.shared)

    return encode


def source_images(groups: int, size: int, seed: int) -> list:
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    return [[Image.fromarray(torch.randint(0, 256, (size, size, 3), generator=generator, dtype=torch.uint8).numpy())]
            for _ in range(groups)]


# ---- the run ---------------------------------------------------------------------------------------
def cpu_peak_flops(dtype: torch.dtype, n: int = 1024, repeats: int = 12) -> float:
    """Best FLOP/s of an n^3 matmul in `dtype` on this CPU (all of torch's threads). `main` measures it
    before and after the run and keeps the better: a busy machine only ever makes it lower."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def run_family(family: str, args, device: torch.device, dtype: torch.dtype) -> dict:
    from editr1.models.lora_io import LoraSpec

    torch.manual_seed(args.seed)
    sources = source_images(args.groups, args.size, args.seed)
    prompts = [PROMPT] * args.groups
    if args.tiny:
        from editr1.models.registry import build_tiny

        adapter = build_tiny(f"tiny:{family}", prompts, seed=0)
        if adapter.transformer.dtype != dtype:
            adapter.transformer.to(dtype)  # as the trainer's `build_model` does for tiny presets
        adapter.to(device)
    else:
        adapter = build_full(family, args, device, dtype)
    if args.tiny or args.with_text_encoder:
        encode = lambda: adapter.encode_conditions(sources, prompts, args.size, args.size)  # noqa: E731
    else:
        encode = synthetic_encode(adapter, sources, args.size, args.seed)
    if args.gradient_checkpointing:
        adapter.transformer.enable_gradient_checkpointing()
    workload = build_workload(adapter, encode, sources, prompts, args)
    rank = args.lora_rank
    spec = LoraSpec(rank, args.lora_alpha if args.lora_alpha is not None else 2 * rank, tuple(adapter.lora_target_modules))
    with torch.no_grad():
        probe = encode()
    target = adapter.latent_token_shape(args.size, args.size)[0]
    tokens = {"target": target, "reference": int(probe.tensors["image_tokens"].shape[1]),
              "text": int(probe.tensors["prompt_embeds"].shape[1])}
    del probe
    results = {path.name: measure_path(path, workload, spec, args.repeats, device) for path in (Editr1Path, NaivePath)}
    blocks = sum(len(getattr(adapter.transformer, name, ())) for name in ("transformer_blocks", "single_transformer_blocks"))
    return {
        "tokens": tokens,
        "transformer_parameters": sum(p.numel() for p in adapter.transformer.parameters()),
        "transformer_blocks": blocks,
        "rollout_forwards": args.steps * math.ceil(args.groups * args.group_size / args.batch),
        "micro_steps": len(workload.plan),
        "guidance": workload.guidance,
        "paths": results,
    }


def phase_rows(result: dict, peak_flops: float) -> dict:
    rows = {}
    for key, label in PHASES:
        row = {"label": label.strip()}
        for path in PATHS:
            data = result["paths"][path].get(key)
            if data is None:
                row[path] = None
                continue
            seconds = data["ms"] / 1000
            mfu = data["flops"] / (seconds * peak_flops) if data["flops"] > 0 and seconds > 0 else None
            row[path] = {"ms": data["ms"], "mfu": mfu, "flops": data["flops"],
                         "peak_gib": None if data["peak_bytes"] is None else data["peak_bytes"] / GIB}
        both = row["editr1"] and row["naive"]
        row["ratio"] = row["editr1"]["ms"] / row["naive"]["ms"] if both and row["naive"]["ms"] > 0 else None
        rows[key] = row
    return rows


def _fmt(value: float | None, spec: str, scale: float = 1.0, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value * scale:{spec}}{suffix}"


def print_table(family: str, result: dict, rows: dict) -> None:
    t = result["tokens"]
    params = result["transformer_parameters"]
    params = f"{params / 1e9:.2f} B" if params >= 1e8 else f"{params / 1e6:.2f} M"
    print(f"\n== {family}: {params} transformer parameters, "
          f"{result['transformer_blocks']} blocks; tokens per row: {t['target']} target + {t['reference']} reference "
          f"+ {t['text']} text; {result['rollout_forwards']} rollout forwards, {result['micro_steps']} micro-steps; "
          f"guidance {result['guidance']}")
    header = (f"{'phase':<36}| {'editr1 ms':>10} | {'editr1 MFU':>10} | {'editr1 GiB':>10} | {'naive ms':>10} | "
              f"{'naive MFU':>10} | {'naive GiB':>10} | {'editr1/naive':>12}")
    print(header)
    print("-" * len(header))
    for key, label in PHASES:
        row = rows[key]
        cells = []
        for path in PATHS:
            data = row[path] or {}
            cells += [_fmt(data.get("ms"), "10.1f"), _fmt(data.get("mfu"), "9.1f", 100, "%"),
                      _fmt(data.get("peak_gib"), "10.2f")]
        cells.append(_fmt(row["ratio"], "12.3f"))
        print(f"{label:<36}| " + " | ".join(f"{c:>10}" for c in cells[:-1]) + f" | {cells[-1]:>12}")
    for path in PATHS:
        forward = rows["rollout"][path]["ms"] / result["rollout_forwards"]
        micro = rows["nft"][path]["ms"] / result["micro_steps"]
        print(f"  {path}: {forward:.1f} ms per rollout forward, {micro:.1f} ms per NFT micro-step")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", action="append", choices=FAMILIES,
                        help="model family (repeatable); required at full size; --tiny: every family unless given")
    parser.add_argument("--tiny", action="store_true", help="the families' tiny presets (CPU, seconds)")
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if available)")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                        help="transformer weights (default: bfloat16 at full size, float32 with --tiny)")
    parser.add_argument("--size", type=int, default=None, help="edit resolution (default 512; --tiny: 32)")
    parser.add_argument("--groups", type=int, default=1, help="groups (samples) per iteration")
    parser.add_argument("--group-size", type=int, default=2, help="edits per group (K)")
    parser.add_argument("--batch", type=int, default=2, help="rows per rollout sampler call")
    parser.add_argument("--steps", type=int, default=6, help="rollout sampler steps")
    parser.add_argument("--sampler", choices=("dpmpp_2m", "euler"), default="dpmpp_2m")
    parser.add_argument("--timestep-fraction", type=float, default=0.99, help="training timesteps per row / steps")
    parser.add_argument("--micro-batch", type=int, default=2, help="rows per NFT micro-step")
    parser.add_argument("--lora-rank", type=int, default=32)
    parser.add_argument("--lora-alpha", type=float, default=None, help="default: 2 x rank (the presets' 64 at 32)")
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--kl-coef", type=float, default=1e-4, help="0 drops the reference forward")
    parser.add_argument("--adv-clip", type=float, default=5.0)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--grad-clip", type=float, default=1.0)
    parser.add_argument("--guidance", type=float, default=None,
                        help="distilled guidance (FLUX.1 Kontext: default 2.5; FLUX.2 [dev]: 4.0)")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--cudnn-sdp", action="store_true", help="keep cuDNN attention enabled on CUDA")
    parser.add_argument("--depth", type=int, default=None, help="cut the full-size transformer to N blocks")
    parser.add_argument("--with-text-encoder", action="store_true",
                        help="full size: build and time the full-size text encoder(s) (random weights)")
    parser.add_argument("--repeats", type=int, default=3, help="timed iterations after one warm-up (median)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help=f"peak FLOP/s for MFU (default: {H100_BF16_PEAK_TFLOPS:g} on CUDA, measured on the CPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's); 1 keeps timings sane on a busy machine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> tuple[torch.device, torch.dtype, list[str]]:
    for name in ("groups", "group_size", "batch", "steps", "micro_batch", "lora_rank", "repeats"):
        if getattr(args, name) < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.threads is not None:
        if args.threads < 1:
            raise BenchError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.depth is not None and args.depth < 1:
        raise BenchError(f"--depth must be at least 1, got {args.depth}")
    if not 0 < args.timestep_fraction <= 1:
        raise BenchError(f"--timestep-fraction must be in (0, 1], got {args.timestep_fraction}")
    if args.tiny and (args.depth is not None or args.with_text_encoder):
        raise BenchError("--depth and --with-text-encoder apply to the full-size models, not to --tiny")
    families = list(dict.fromkeys(args.family or (FAMILIES if args.tiny else ())))
    if not families:
        raise BenchError(f"name a --family ({', '.join(FAMILIES)}), or pass --tiny")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        raise BenchError(f"--device {args.device!r}: {error}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BenchError(f"--device {args.device}: CUDA was requested, but torch {torch.__version__} sees no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BenchError(f"--device {args.device}: only {torch.cuda.device_count()} CUDA device(s)")
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise BenchError(f"--device {args.device}: only cuda and cpu are supported")
    dtype = getattr(torch, args.dtype or ("float32" if args.tiny else "bfloat16"))
    if args.size is None:
        args.size = 32 if args.tiny else 512
    multiple = 8 if args.tiny else 16
    if args.size < multiple or args.size % multiple:
        raise BenchError(f"--size must be a positive multiple of {multiple}, got {args.size}")
    return device, dtype, families


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        device, dtype, families = check_args(args)
    except BenchError as error:
        print(f"gpu_iteration: error: {error}", file=sys.stderr)
        return 1
    import diffusers
    import peft

    from editr1.errors import EditR1Error

    dtype_name = str(dtype).removeprefix("torch.")
    measure_peak = device.type == "cpu" and not args.peak_tflops
    if device.type == "cuda":
        if not args.cudnn_sdp:
            torch.backends.cuda.enable_cudnn_sdp(False)
        name = torch.cuda.get_device_name(device)
        peak = (args.peak_tflops or H100_BF16_PEAK_TFLOPS) * 1e12
        peak_note = f"{peak / 1e12:g} TFLOP/s ({'given' if args.peak_tflops else 'the measured H100 bf16 matmul ceiling'})"
    else:
        name = f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        if measure_peak:
            peak = cpu_peak_flops(dtype)
            peak_note = (f"this CPU's measured peak (best {dtype_name} 1024^3 matmul, measured before and after each "
                         f"family; {peak / 1e9:.1f} GFLOP/s now)")
        else:
            peak, peak_note = args.peak_tflops * 1e12, f"{args.peak_tflops:g} TFLOP/s (given)"
    scale = "tiny presets" if args.tiny else ("full size" if args.depth is None else f"full width, cut to --depth {args.depth}")
    print(f"gpu_iteration: {name}; {dtype_name} weights; torch {torch.__version__}, "
          f"diffusers {diffusers.__version__}, peft {peft.__version__}")
    print(f"  {scale}; {args.size}x{args.size}; {args.groups} group(s) x {args.group_size} edits; rollout batch "
          f"{args.batch}, {args.steps} {args.sampler} steps; micro-batch {args.micro_batch}; LoRA rank {args.lora_rank}; "
          f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}; median of {args.repeats} after 1 warm-up")
    print(f"  MFU against {peak_note}; FLOPs counted from the Linear/conv/attention calls that run (x3 with grad)")
    if not args.tiny:
        print("  encode: " + ("full-size text encoder(s), random weights, tiny tokenizers" if args.with_text_encoder
                              else "VAE only (text embeddings random: the text encoders are not built)"))
    report = {"device": name, "device_type": device.type, "dtype": dtype_name,
              "torch": torch.__version__, "diffusers": diffusers.__version__, "peft": peft.__version__,
              "peak_flops": peak, "peak_note": peak_note,
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "families": {}}
    try:
        for family in families:
            result = run_family(family, args, device, dtype)
            if measure_peak:  # a busy machine only ever lowers the measurement: keep the best
                peak = max(peak, cpu_peak_flops(dtype))
                print(f"\n(MFU of {family} against {peak / 1e9:.1f} GFLOP/s, the best CPU matmul measured so far)")
            rows = phase_rows(result, peak)
            print_table(family, result, rows)
            report["families"][family] = {**{k: v for k, v in result.items() if k != "paths"}, "peak_flops": peak,
                                          "phases": rows}
            if device.type == "cuda":
                torch.cuda.empty_cache()
    except (BenchError, EditR1Error) as error:
        print(f"gpu_iteration: error: {error}", file=sys.stderr)
        return 1
    report["peak_flops"] = peak
    if device.type == "cpu":
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        report["process_peak_rss_bytes"] = rss
        print(f"\nmemory: per-phase peaks need CUDA (n/a here); this process's peak RSS was {rss / GIB:.2f} GiB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
