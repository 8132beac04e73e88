"""A real-width check on the CPU: one NFT iteration of every family at its published widths, depth cut.

    .venv/bin/python bench/real_width.py                                   # every family, 1 block, 512^2, bf16
    .venv/bin/python bench/real_width.py --family qwen-image-edit --blocks 1 2   # per-block memory
    .venv/bin/python bench/real_width.py --family flux-kontext --size 128 --quick  # CI (tests/test_bench_real_width.py)
    .venv/bin/python bench/real_width.py --from-json runs.json                  # the report of an earlier --json
    .venv/bin/python bench/real_width.py --lora-dtype                           # activations: bf16 vs float32 LoRA
    .venv/bin/python bench/real_width.py --counts --family flux2-klein          # parameter counts only (seconds)
    .venv/bin/python bench/real_width.py --counts --family flux2-dev            # FLUX.2 [dev]: counts (a run needs > 39 GiB)

What is built. For each family of `editr1.models.registry.FAMILIES`, what its adapter class's `build_released`
builds (editr1/models/base.py declares it; each adapter module, e.g. editr1/models/qwen_image_edit.py,
flux_kontext.py, flux2_klein.py, flux2_dev.py, holds the full-size configurations, `RELEASED_TRANSFORMER`,
`RELEASED_VAE`, `RELEASED_TEXT_ENCODER...`): random weights, nothing downloaded, in `--dtype` (bf16), each of
the adapter's `depth_knobs` cut to its fewest + `--blocks` - 1, so that every added block adds one of each:
- Qwen-Image-Edit(-2509): `QwenImageTransformer2DModel` with `--blocks` of its 60 blocks; Qwen2.5-VL-7B
  (`Qwen2_5_VLForConditionalGeneration`) with `--blocks` of its 28 decoder layers, the real 152064-token
  embedding and LM head, and `--blocks` + 1 of its 32 vision blocks (the last one full attention, as are
  those of the release's 7, 15, 23 below it, the others windowed: in the release blocks 7, 15, 23, 31 are the
  full-attention ones); the real `AutoencoderKLQwenImage`.
- FLUX.1 Kontext: `FluxTransformer2DModel` with `--blocks` of its 19 double-stream and `--blocks` of its 38
  single-stream blocks; CLIP-L's text model and T5-XXL's encoder with `--blocks` layers each (real widths,
  heads and vocabularies); FLUX's 16-channel `AutoencoderKL`.
- FLUX.2 [klein] (4B): `Flux2Transformer2DModel` with `--blocks` of its 5 double-stream and `--blocks` of
  its 20 single-stream blocks; Qwen3-4B (`Qwen3ForCausalLM`, the real 151936-token tied embedding) with 27
  + `--blocks` of its 36 layers: the pipeline stacks the hidden states of layers 9, 18 and 27, so the
  encoder cannot be cut below 28 (27 an inner layer, as in the release), and each added block adds one
  layer here too; FLUX.2's 32-channel `AutoencoderKLFlux2` in editr1's `Flux2VaeCodec`. The published
  counts of the 9B (`RELEASED_TRANSFORMER_9B`, `RELEASED_TEXT_ENCODER_9B`) are counted too, not run.
- FLUX.2 [dev] (32B): `Flux2Transformer2DModel` (6144 wide, guidance embedding) with `--blocks` of its 8
  double-stream and `--blocks` of its 48 single-stream blocks; Mistral Small 3.x 24B
  (`Mistral3ForConditionalGeneration`, the real 131072-token embedding and untied LM head) with 30 +
  `--blocks` of its 40 layers (the pipeline stacks layers 10, 20 and 30: as [klein], 30 an inner layer)
  and `--blocks` of its 24 Pixtral vision layers; the [klein] VAE in `Flux2VaeCodec`. At one block that is
  21.0 B parameters, 39.1 GiB in bf16 (31 Mistral layers of 0.56 B): on a machine with less memory a run
  is refused (`check_fits`; skipped when no `--family` is named); `--counts` runs anywhere.
The tokenizers are editr1's offline tiny ones (those of the families' tiny presets, `editr1.models.tiny_*`): their
ids are below the real vocabularies, so every embedding has its real size; token counts are exact where
they are fixed (Qwen2.5-VL's image tokens, T5's, Qwen3's and Mistral's 512 padded positions, CLIP's 77) and
approximate for the instruction and the chat template (Qwen-Image-Edit).

What runs. `build_released` wraps the components in the family's adapter class exactly as its tiny preset
does (the preset module's `assemble`), saved with `adapter.save_pretrained(folder)` (one process), then a
second process trains: `editr1.trainer.rl_trainer.RLTrainer(config).run()` — what `run_rl`
and `editr1 train` call — with `model.path` pointing at the folder and `model.dtype: bfloat16`, on 4
synthetic images written as a JSONL dataset, for ONE iteration: 1 group of 2 edits, 2 DPM-Solver++
rollout steps, LoRA rank 4 on the adapter's default targets, micro-batch 1, no evaluation, and
`MeanBrightness` below as the reward (`reward.name: bench.real_width:MeanBrightness`). The group
filter is off (`rl.filter_rule: none`) so that the update always runs. The trainer is subclassed only to
read memory around its `_rollout` and `_train` phases.

What it checks: that the run completes, i.e. every shape, module name and LoRA target works at the real
widths and token counts; the conditioning and latent shapes (asserted below); and that the exported LoRA
(`final/pytorch_lora_weights.safetensors`) has a `lora_A` and a `lora_B` of the right real-width shapes
for every module the targets match, and that every target matches at least one module.

What it measures:
- Parameters per component (the adapter's `parameter_parts`), exactly: `numel` and `numel * element_size`
  of the loaded modules. Per block: exact counts (the same configurations built on PyTorch's meta device,
  every depth knob at its fewest, then each raised by one alone), and the full-depth extrapolation (the
  fewest + the missing blocks x per block) beside the published totals the adapters hold
  (`published_totals`: docs/real_scale.md's, the model cards'; `--counts`: these tables alone, in seconds,
  nothing run).
- Memory, as the process's resident set (RSS, Linux): the RSS once the trainer has loaded the model and
  every weight has been read once (the loaders map the safetensors files, so an unread weight is not yet
  resident): the loaded-model baseline; then the peak RSS of the trainer's rollout and NFT-update phases
  (the kernel's high-water mark `VmHWM`, reset through `/proc/self/clear_refs` when each phase starts),
  and of one more VAE decode of the rollout's latents alone. `ru_maxrss` (the lifetime peak of each
  process, loading included) is reported too. RSS counts what the allocator holds, freed or not.
- The activations of one NFT micro-step exactly: the bytes of the distinct storages autograd saves for the
  backward of each forward with grad (`torch.autograd.graph.saved_tensors_hooks`, parameters excluded).
- With `--blocks 1 2`, the difference between the two depths gives each of these per added block.
- `--lora-dtype` (alone, no iteration): the bytes one transformer block saves for backward with the LoRA in
  bf16 (diffusers' `add_adapter` on a bf16 model, the page's naive baseline) and in float32 (editr1's
  `PolicySet`): peft casts each LoRA input to the adapter's dtype, and each projection keeps its copy. The
  transformer alone, called by `adapter.velocity` with random text embeddings (`random_text_conditions`).
- Wall time of each process and phase.

Where each published configuration comes from is noted beside it in the adapter module. They were checked
against the signatures of the installed diffusers 0.42.1 (`QwenImageTransformer2DModel.__init__`,
`FluxTransformer2DModel.__init__` and `AutoencoderKLQwenImage.__init__` default to exactly these values) and
transformers 5.x; for FLUX.2 [klein]'s and [dev]'s, their modules name the source of each value.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from operator import attrgetter
from pathlib import Path
from typing import Any

import torch

from editr1.models.base import PUBLISHED_LORA_RANK, Conditions, DepthKnob, EditModelAdapter
from editr1.models.lora_io import lora_parameter_count
from editr1.models.registry import FAMILIES, adapter_class
from editr1.rewards.base import Reward, RewardBatch, check_batch

ROOT = Path(__file__).resolve().parent.parent
GIB, MIB = 2**30, 2**20
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}
PROMPTS = ("Make the square blue.", "Remove the circle.", "Turn the background red.", "Add a yellow star.")
#: Tokens of an instruction of PROMPTS with a released tokenizer ("Make the square blue.": 5), for the text
#: stream's length where it grows with the instruction (`released_text_tokens`).
INSTRUCTION_TOKENS = 5


class BenchError(Exception):
    """A request the script refuses (printed as one line, exit status 1)."""


class MeanBrightness(Reward):
    """A reward that needs no model: the edit's mean brightness in [0, 1]."""

    name = "mean_brightness"

    def score(self, sources, edited, prompts, requirements):
        check_batch(sources, edited, prompts, requirements)
        scores = torch.stack([image.float().mean() for image in edited]).clamp(0, 1)
        return RewardBatch(scores, torch.ones(len(edited), dtype=torch.bool))


# ---- building ----------------------------------------------------------------------------------------
def depths_at(cls: type[EditModelAdapter], blocks: int) -> dict[str, int]:
    """`--blocks`: every depth knob at its fewest plus `blocks` - 1, so that each added block adds one of each
    (a transformer block of each kind, a layer of each text encoder)."""
    return {knob.name: knob.minimum + blocks - 1 for knob in cls.depth_knobs}


def build_adapter(family: str, blocks: int, dtype: torch.dtype, device: str = "cpu") -> EditModelAdapter:
    """The family's released architecture at `blocks` (`depths_at`) with random weights, built and assembled by
    its adapter class (`build_released`; `device` "meta": no weights, for what the adapter says about them)."""
    torch.manual_seed(0)
    cls = adapter_class(family)
    return cls.build_released(depths_at(cls, blocks), PROMPTS, device, dtype)


# ---- parameter accounting ----------------------------------------------------------------------------
def adapter_modules(adapter: EditModelAdapter) -> dict[str, torch.nn.Module]:
    """The modules whose parameters the adapter's `parameter_parts` count, by attribute ("codec.vae")."""
    names = dict.fromkeys(part.module for part in adapter.parameter_parts.values())
    return {name: attrgetter(name)(adapter) for name in names}


def component_sizes(adapter: EditModelAdapter) -> dict[str, dict[str, Any]]:
    """`{part: {"params": numel, "bytes": numel * element_size, "dtypes": [...]}}` of the adapter's
    `parameter_parts` (exact)."""
    modules = adapter_modules(adapter)
    sizes = {}
    for name, part in adapter.parameter_parts.items():
        # Not the LoRA layers peft added to the transformer: they are counted apart.
        params = [p for n, p in modules[part.module].named_parameters()
                  if "lora_" not in n and (part.keep is None or part.keep(n))]
        sizes[name] = {"params": sum(p.numel() for p in params),
                       "bytes": sum(p.numel() * p.element_size() for p in params),
                       "dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in params})}
    return sizes


def page_in(modules: dict[str, torch.nn.Module]) -> None:
    """Read every parameter and buffer once. The loaders map the saved safetensors files into memory, so a
    weight enters the resident set only when first read; after this the RSS holds all of them."""
    for module in modules.values():
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.detach().reshape(-1)[:: max(1, 4096 // max(1, tensor.element_size()))].sum()


def meta_counts(cls: type[EditModelAdapter], depths: dict[str, int]) -> tuple[dict[str, int], int]:
    """Parameters per part of the configuration at `depths`, and of a LoRA of the published rank on its default
    targets, built on the meta device: exact and free."""
    adapter = cls.build_released(depths, PROMPTS, "meta")
    parts = {part: size["params"] for part, size in component_sizes(adapter).items()}
    return parts, lora_parameter_count(adapter.transformer, tuple(adapter.lora_target_modules), PUBLISHED_LORA_RANK)


def published_per_block(knob: DepthKnob) -> str:
    """What the published sources say of one of `knob`'s blocks, divided down where they give enough."""
    return knob.published if knob.published_params is None else knob.published.format(count(knob.published_params))


def per_block(family: str) -> dict[str, Any]:
    """Exact parameter counts per block of each depth knob, from meta-device builds: the configuration with every
    knob at its fewest, and with one knob raised by one. The full-depth extrapolation: per part (and for the
    LoRA of the published rank), its count at the fewest plus, per knob, the blocks it lacks times what one adds.
    The extrapolated rows are (count, the published count or None where none is published)."""
    cls = adapter_class(family)
    fewest = {knob.name: knob.minimum for knob in cls.depth_knobs}
    parts, lora = meta_counts(cls, fewest)
    full_parts, full_lora, blocks = dict(parts), lora, {}
    for knob in cls.depth_knobs:
        more_parts, more_lora = meta_counts(cls, {**fewest, knob.name: knob.minimum + 1})
        added = {part: more_parts[part] - parts[part] for part in parts}
        blocks[knob.name] = {"params": sum(added.values()), "full_count": knob.full,
                             "published": published_per_block(knob)}
        lacking = knob.full - knob.minimum
        full_parts = {part: full_parts[part] + lacking * added[part] for part in parts}
        full_lora += lacking * (more_lora - lora)
    extrapolated = {total.label: (sum(full_parts[part] for part in total.parts), total.published)
                    for total in cls.published_totals}
    extrapolated[f"LoRA rank {PUBLISHED_LORA_RANK}, default targets"] = (full_lora, cls.published_lora_params)
    extrapolated.update(cls.other_released_totals())
    return {"blocks": blocks, "extrapolated": extrapolated,
            "one_more_of_each": sum(row["params"] for row in blocks.values())}


# ---- memory ------------------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise BenchError(f"/proc/self/status has no {field}: this check needs Linux")


def rss() -> int:
    """The process's resident set now, in bytes."""
    return _status_kib("VmRSS") * 1024


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (`VmHWM`) to the current RSS; False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    return _status_kib("VmHWM") * 1024


def max_rss() -> int:
    """`ru_maxrss`: the process's lifetime peak RSS (KiB on Linux), in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def check_fits(family: str, blocks: int, dtype: str) -> None:
    """Refuse a run whose weights alone (counted on the meta device) exceed the machine's memory (`MemTotal`):
    the build stage holds them all (FLUX.2 [dev] at one block: ~39 GiB in bf16)."""
    try:
        with open("/proc/meminfo") as meminfo:
            total = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemTotal:"))
    except (OSError, StopIteration):
        return
    cls = adapter_class(family)
    weights = sum(meta_counts(cls, depths_at(cls, blocks))[0].values()) * DTYPES[dtype].itemsize
    if weights > total:
        raise BenchError(f"{family} --blocks {blocks}: its weights alone are {gib(weights)} in {dtype}, more than "
                         f"this machine's {gib(total)} of memory (see --counts for the parts)")


# ---- the two worker stages ---------------------------------------------------------------------------
def stage_build(args) -> dict:
    start = time.monotonic()
    adapter = build_adapter(args.family, args.blocks, DTYPES[args.dtype])
    built = time.monotonic()
    adapter.save_pretrained(args.model_dir)
    return {"seconds_build": built - start, "seconds_save": time.monotonic() - built, "max_rss": max_rss(),
            "sizes": component_sizes(adapter)}


def write_dataset(folder: Path, size: int) -> Path:
    """4 synthetic `size`^2 images (a coloured square on a gradient) and their JSONL (docs/data.md)."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, prompt in enumerate(PROMPTS):
        ramp = torch.linspace(0, 255, size).to(torch.uint8)
        pixels = torch.stack([ramp.expand(size, size), ramp.expand(size, size).T, torch.full((size, size), 60 * i, dtype=torch.uint8)], -1)
        image = Image.fromarray(pixels.numpy())
        ImageDraw.Draw(image).rectangle([size // 4, size // 4, size // 2 + 16 * i, size // 2], fill=(200, 30 * i, 40))
        image.save(folder / f"{i}.png")
        lines.append(json.dumps({"id": i, "image": f"{i}.png", "prompt": prompt}))
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "train.jsonl"


def nft_config_yaml(args, train: Path, output_dir: Path) -> str:
    return f"""\
seed: 0
output_dir: {output_dir}
iterations: 1
model:
  path: {args.model_dir}
  resolution: {args.size}
  dtype: {args.dtype}
  train_mode: lora
  lora: {{rank: 4, alpha: 4}}
  gradient_checkpointing: {str(args.gradient_checkpointing).lower()}
data:
  train: {train}
  heldout: null
reward:
  name: bench.real_width:MeanBrightness
  overlap: true
rollout:
  groups_per_iteration: 1
  group_size: 2
  steps: 2
  sampler: dpmpp_2m
  batch_size: 2
rl:
  filter_rule: none
optim:
  micro_batch: 1
eval:
  every: 0
logging:
  grid_every: 1
  checkpoint_every: 1
  trackers: []
  progress: false
"""


def check_conditions(adapter: EditModelAdapter, shapes: dict[str, tuple[int, ...]], size: int) -> None:
    """The rollout's latents and conditions have the released models' shapes: the target's and the source's 2x2
    latent patches, and the text tensors of the adapter's `random_text_conditions`; a text length that grows
    with the instruction (Qwen's chat) is at least the empty instruction's."""
    tokens, channels = adapter.latent_token_shape(size, size)
    for name, expected in {"latents": (2, tokens, channels), "image_tokens": (1, tokens, channels)}.items():
        if shapes.get(name) != expected:
            raise AssertionError(f"{name}: expected shape {expected}, got {shapes.get(name)}")
    generator = torch.Generator()
    empty, longer = (adapter.random_text_conditions(1, size, words, generator).tensors for words in (0, 1))
    for name, tensor in empty.items():
        expected, got = tuple(tensor.shape), shapes.get(name)
        grows = tensor.shape != longer[name].shape  # its length (dimension 1) grows with the instruction
        if grows:
            matches = got is not None and got[1] >= expected[1] and got[:1] + got[2:] == expected[:1] + expected[2:]
        else:
            matches = got == expected
        if not matches:
            raise AssertionError(f"{name}: expected shape {expected}{' or longer' if grows else ''}, got {got}")


def check_lora(final: Path, transformer: torch.nn.Module, targets: tuple[str, ...]) -> dict:
    """Every module the targets match has lora_A / lora_B of real-width shapes in the exported file."""
    from peft.tuners.lora import LoraLayer
    from safetensors import safe_open

    path = final / "pytorch_lora_weights.safetensors"
    with safe_open(str(path), "pt") as handle:
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    layers = {name: module for name, module in transformer.named_modules() if isinstance(module, LoraLayer)}
    per_target = {t: 0 for t in targets}
    for name, layer in layers.items():
        matched = [t for t in targets if name == t or name.endswith("." + t)]
        if not matched:
            raise AssertionError(f"LoRA layer {name} matches none of the targets {targets}")
        per_target[matched[0]] += 1
        base = layer.get_base_layer()
        a, b = f"transformer.{name}.lora_A.weight", f"transformer.{name}.lora_B.weight"
        if shapes.get(a) != (layer.r["default"], base.in_features) or shapes.get(b) != (base.out_features, layer.r["default"]):
            raise AssertionError(f"{path}: {name}: expected {a} {(layer.r['default'], base.in_features)} and "
                                 f"{b} {(base.out_features, layer.r['default'])}, got {shapes.get(a)}, {shapes.get(b)}")
    unmatched = [t for t, n in per_target.items() if n == 0]
    if unmatched:
        raise AssertionError(f"LoRA targets {unmatched} matched no module of the transformer")
    if len(shapes) != 2 * len(layers):
        raise AssertionError(f"{path}: {len(shapes)} keys for {len(layers)} LoRA layers")
    widths = sorted({(layers[n].get_base_layer().in_features, layers[n].get_base_layer().out_features) for n in layers})
    return {"modules": len(layers), "keys": len(shapes), "per_target": per_target, "in_out": widths}


class SavedForBackward:
    """`saved_tensors_hooks` that add up, per forward with grad, the bytes of the distinct storages autograd
    keeps for the backward (parameters excluded): the activation memory of one micro-step, exactly, with
    no allocator in the way. A forward ends where its backward first unpacks a saved tensor."""

    def __init__(self, parameters: list[torch.nn.Parameter]):
        self.skip = {p.untyped_storage().data_ptr() for p in parameters}
        self.current: dict[int, int] = {}
        self.forwards: list[int] = []
        self.in_backward = True

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.in_backward:
            self.current, self.in_backward = {}, False
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.skip:
            self.current[storage.data_ptr()] = storage.nbytes()
        return tensor

    def unpack(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.in_backward:
            self.forwards.append(sum(self.current.values()))
            self.current, self.in_backward = {}, True
        return tensor


def saved_by_lora_dtype(family: str, size: int) -> dict[str, dict[str, int]]:
    """Bytes saved for backward per block and sample by one transformer forward with grad, with the LoRA
    (rank 4, default targets) in bf16, as diffusers' `add_adapter` leaves it on a bf16 model (the page's
    naive baseline), and in float32, as editr1's `PolicySet` keeps it. The transformer alone (built without
    text encoders), called as `adapter.velocity` calls it, at this run's token counts: the target's and the
    source's (size / 16)^2 each, and random text embeddings of the released text stream's length for PROMPTS'
    instructions (`random_text_conditions`: Qwen-Image-Edit's 336 tokens at 512^2, 2509's 340, T5's, Qwen3's
    and Mistral's 512). A transformer with several kinds of block is built with one of each, then with one more
    of each kind but the first; the first kind's row includes the non-block part."""
    from peft import LoraConfig

    cls = adapter_class(family)
    kinds = [knob for knob in cls.depth_knobs if knob.module == "transformer"]
    fewest = {knob.name: knob.minimum for knob in kinds}
    generator = torch.Generator().manual_seed(0)

    def measure(depths: dict[str, int]) -> dict[str, int]:
        adapter = cls.build_released(depths, PROMPTS, "cpu", torch.bfloat16, text_encoders=False)
        model = adapter.transformer
        model.requires_grad_(False)
        model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=list(adapter.lora_target_modules)))
        tokens, channels = adapter.latent_token_shape(size, size)
        text = adapter.random_text_conditions(1, size, INSTRUCTION_TOKENS, generator)
        source = torch.randn(1, tokens, channels, generator=generator).to(torch.bfloat16)
        conditions = Conditions({**text.tensors, "image_tokens": source}, text.shared)
        target = torch.randn(1, tokens, channels, generator=generator).to(torch.bfloat16)
        result = {}
        for dtype in (torch.bfloat16, torch.float32):
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.data = p.data.to(dtype)
                    p.requires_grad_(True)
            saved = SavedForBackward(list(model.parameters()))
            with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
                adapter.velocity(target, torch.tensor([0.5]), conditions)
            result[str(dtype).removeprefix("torch.")] = sum(saved.current.values())
        return result

    first = measure(fewest)
    added = {}
    for knob in kinds[1:]:
        more = measure({**fewest, knob.name: knob.minimum + 1})
        added[knob.name] = {dtype: more[dtype] - first[dtype] for dtype in first}
    first_kind = {dtype: first[dtype] - sum(kind[dtype] for kind in added.values()) for dtype in first}
    return {f"{kinds[0].name} (+ non-block)": first_kind, **added}


def stage_train(args) -> dict:
    sys.path.insert(0, str(ROOT))  # the reward's dotted path `bench.real_width:MeanBrightness`
    from editr1.config import TrainConfig, load_config
    from editr1.trainer.rl_trainer import RLTrainer

    work = Path(args.work_dir)
    train = write_dataset(work / "data", args.size)
    config_path = work / "nft.yaml"
    config_path.write_text(nft_config_yaml(args, train, work / "run"))
    config = load_config(TrainConfig, config_path)
    phases: dict[str, dict] = {}
    shapes: dict[str, Any] = {}
    latents: list[torch.Tensor] = []
    can_reset = reset_peak()

    class MeasuredTrainer(RLTrainer):
        """The trainer, unchanged, with the RSS peak and wall time of its rollout and update phases read."""

        def _measured(self, name, call):
            reset_peak()
            tick = time.monotonic()
            result = call()
            phases[name] = {"peak_rss": peak_rss() if can_reset else None, "seconds": time.monotonic() - tick}
            return result

        def _rollout(self, *a, **k):
            rollout = self._measured("rollout", lambda: super(MeasuredTrainer, self)._rollout(*a, **k))
            shapes["latents"] = tuple(rollout.latents.shape)
            latents.append(rollout.latents)
            shapes.update({name: tuple(t.shape) for name, t in rollout.conditions.tensors.items() if t is not None})
            return rollout

        def _train(self, *a, **k):
            saved = SavedForBackward(list(self.adapter.transformer.parameters()))
            with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
                result = self._measured("train", lambda: super(MeasuredTrainer, self)._train(*a, **k))
            phases["train"]["saved_for_backward"] = saved.forwards
            return result

    start = time.monotonic()
    trainer = MeasuredTrainer(config)
    adapter = trainer.adapter
    page_in(adapter_modules(adapter))
    loaded = time.monotonic()
    baseline, baseline_file = rss(), _status_kib("RssFile") * 1024
    sizes = component_sizes(adapter)
    lora = trainer.policies.trainable_parameters()
    sizes["LoRA trained + old (float32)"] = {
        "params": 2 * sum(p.numel() for p in lora), "bytes": 2 * sum(p.numel() * p.element_size() for p in lora),
        "dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in lora})}
    for method in ("_rollout", "_train"):
        if not callable(getattr(RLTrainer, method, None)):
            raise AssertionError(f"RLTrainer has no {method} any more: update the phase measurements of bench/real_width.py")
    summary = trainer.run()
    done = time.monotonic()
    if set(phases) != {"rollout", "train"}:
        raise AssertionError(f"measured phases {sorted(phases)}: the trainer's iteration no longer calls _rollout and _train")
    metrics = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    iteration = next(m for m in metrics if "seconds_total" in m)
    if iteration.get("skipped_update"):
        raise AssertionError("the NFT update was skipped (every group filtered)")
    check_conditions(adapter, shapes, args.size)
    lora_check = check_lora(work / "run" / "final", adapter.transformer, adapter.lora_target_modules)
    # The rollout's decode again, alone: how much of the rollout's peak is the VAE's (it does not grow with depth).
    reset_peak()
    before, tick = rss(), time.monotonic()
    with torch.no_grad():
        adapter.decode_latents(latents[0].to(adapter.device), args.size, args.size)
    phases["vae_decode"] = {"peak_rss": peak_rss() if can_reset else None, "rss_before": before,
                            "seconds": time.monotonic() - tick}
    return {
        "seconds_load": loaded - start, "seconds_run": done - loaded, "baseline_rss": baseline,
        "baseline_rss_file": baseline_file, "max_rss": max_rss(),
        "phases": phases, "shapes": shapes, "sizes": sizes, "lora": lora_check,
        "loss": iteration.get("loss"), "grad_norm": iteration.get("grad_norm"), "reward_mean": iteration.get("reward_mean"),
        "summary": summary,
    }


# ---- the driver --------------------------------------------------------------------------------------
def run_worker(stage: str, family: str, blocks: int, args, model_dir: Path, work_dir: Path) -> dict:
    result = work_dir / f"{stage}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--stage", stage, "--family", family, "--blocks", str(blocks),
               "--size", str(args.size), "--dtype", args.dtype, "--model-dir", str(model_dir), "--work-dir", str(work_dir),
               "--result", str(result)]
    if args.gradient_checkpointing:
        command.append("--gradient-checkpointing")
    tick = time.monotonic()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        raise BenchError(f"{family} --blocks {blocks}: the {stage} stage failed (exit {proc.returncode}):\n{tail}")
    data = json.loads(result.read_text())
    data["seconds_process"] = time.monotonic() - tick
    return data


def one_run(family: str, blocks: int, args) -> dict:
    where = str(Path(args.tmp).resolve()) if args.tmp else None  # the workers run in the repository root
    if where is not None:
        Path(where).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"real_width_{family}_{blocks}_", dir=where) as tmp:
        tmp = Path(tmp)
        model_dir, work_dir = tmp / "model", tmp / "work"
        work_dir.mkdir()
        build = run_worker("build", family, blocks, args, model_dir, work_dir)
        disk = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file())
        train = run_worker("train", family, blocks, args, model_dir, work_dir)
    return {"family": family, "blocks": blocks, "size": args.size, "dtype": args.dtype,
            "gradient_checkpointing": args.gradient_checkpointing, "build": build, "train": train, "saved_bytes": disk}


def gib(n: float | None, sign: bool = False) -> str:
    return "n/a" if n is None else (f"{n / GIB:+.2f} GiB" if sign else f"{n / GIB:.2f} GiB")


def mib(n: float | None, sign: bool = False) -> str:
    return "n/a" if n is None else (f"{n / MIB:+,.0f} MiB" if sign else f"{n / MIB:,.0f} MiB")


def count(n: float) -> str:
    return f"{n / 1e9:.3f} B" if abs(n) >= 1e9 else f"{n / 1e6:.2f} M"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def page_weights_per_block(family: str) -> str:
    """The published weights of one more of each block, where the published sources split them by block."""
    knobs = adapter_class(family).depth_knobs
    if any(knob.published_params is None for knob in knobs):
        return "page: no per-block split"
    return "≈ " + mib(2 * sum(knob.published_params for knob in knobs))


def activation_estimate(family: str, size: int, checkpointing: bool) -> str:
    """The published NFT micro-step peak beyond the weights (B = 2; checkpointing on or off as in this run),
    divided by its model's blocks and samples and scaled to this run's token count, for the transformer blocks
    one more `--blocks` adds (one of each kind): an extrapolation from GPU measurements of the naive path."""
    cls = adapter_class(family)
    peaks = cls.published_activations
    if peaks is None:
        return "page: none at this width"
    tokens = 2 * (size // 16) ** 2 + cls.released_text_tokens(size, INSTRUCTION_TOKENS)
    total = peaks.checkpointing_on_gib if checkpointing else peaks.checkpointing_off_gib
    per = total / peaks.blocks / 2 * tokens / peaks.tokens
    kinds = sum(knob.module == "transformer" for knob in cls.depth_knobs)
    blocks = "" if kinds == 1 else f" for the {'two' if kinds == 2 else kinds} blocks"
    return f"~{kinds * per * 1024:,.0f} MiB{blocks} ({total:g} GiB / {peaks.blocks} blocks / B=2, at {tokens} tokens)"


def _phase(run: dict, name: str, key: str = "peak_rss"):
    return run["train"]["phases"].get(name, {}).get(key)


def _above(run: dict, name: str) -> float | None:
    peak = _phase(run, name)
    return None if peak is None else peak - run["train"]["baseline_rss"]


def _saved(run: dict) -> float | None:
    saved = _phase(run, "train", "saved_for_backward")
    return max(saved) if saved else None


def report(runs: list[dict]) -> str:
    out = []
    for family in dict.fromkeys(r["family"] for r in runs):
        mine = sorted((r for r in runs if r["family"] == family), key=lambda r: r["blocks"])
        first = mine[0]
        size = first["size"]
        out.append(f"\n## {family}: {size}x{size}, {first['dtype']}, gradient checkpointing "
                   f"{'on' if first.get('gradient_checkpointing') else 'off'}\n")
        out.append("Loaded parameters (numel x element_size, exact):\n")
        out.append(table(["blocks", *first["train"]["sizes"].keys()],
                         [[str(r["blocks"]), *(f"{count(v['params'])}, {mib(v['bytes'])}" for v in r["train"]["sizes"].values())]
                          for r in mine]))
        out.append("\nMemory (RSS; peaks are above the loaded-model RSS) and time:\n")
        rows = []
        for r in mine:
            t = r["train"]
            decode = _phase(r, "vae_decode")
            rows.append([
                str(r["blocks"]), gib(sum(v["bytes"] for v in t["sizes"].values())), gib(t["baseline_rss"]),
                gib(_above(r, "rollout"), sign=True), gib(_above(r, "train"), sign=True), gib(_saved(r)),
                gib(None if decode is None else decode - _phase(r, "vae_decode", "rss_before"), sign=True),
                gib(t["max_rss"]), gib(r["build"]["max_rss"]),
                f"{r['build']['seconds_build']:.0f} + {r['build']['seconds_save']:.0f} s", f"{t['seconds_load']:.0f} s",
                f"{_phase(r, 'rollout', 'seconds'):.0f} s", f"{_phase(r, 'train', 'seconds'):.0f} s",
                f"{r['build']['seconds_process'] + t['seconds_process']:.0f} s",
            ])
        out.append(table(["blocks", "weights + LoRA", "RSS loaded", "rollout peak", "NFT update peak",
                          "saved for backward (one micro-step)", "VAE decode alone (B=2)", "ru_maxrss train",
                          "ru_maxrss build", "build + save", "load", "rollout", "NFT update", "wall, both processes"], rows))
        t = mine[-1]["train"]
        out.append(f"\nChecked (blocks {mine[-1]['blocks']}): shapes {t['shapes']}; dtypes "
                   f"{ {k: v['dtypes'] for k, v in t['sizes'].items()} }; "
                   f"loss {t['loss']:.4g}, grad norm {t['grad_norm']:.3g}; LoRA: {t['lora']['modules']} modules, "
                   f"{t['lora']['keys']} keys, per target {t['lora']['per_target']}, (in, out) {t['lora']['in_out']}")

        exact = per_block(family)
        out.append("\nPer block:\n")
        rows = [[family, name, count(v["params"]), mib(v["params"] * 2), "—", v["published"]]
                for name, v in exact["blocks"].items()]
        total_delta = exact["one_more_of_each"]
        page_weights = page_weights_per_block(family)
        pairs = [(a, b) for a, b in zip(mine, mine[1:]) if b["blocks"] > a["blocks"]]
        if not pairs:
            rows.append([family, "all weights, one more of each", count(total_delta), mib(total_delta * 2),
                         "n/a (run --blocks 1 2)", page_weights])
        for a, b in pairs:
            steps = b["blocks"] - a["blocks"]

            def per(value) -> float | None:
                va, vb = value(a), value(b)
                return None if va is None or vb is None else (vb - va) / steps

            weights = per(lambda r: sum(v["bytes"] for v in r["train"]["sizes"].values()))
            span = f"{a['blocks']}→{b['blocks']}"
            rows += [
                [family, f"all weights, one more of each ({span}): RSS loaded", count(total_delta), mib(weights),
                 mib(per(lambda r: r["train"]["baseline_rss"]), sign=True), page_weights],
                [family, f"rollout peak (B=2, no grad), {span}", "—", "—", mib(per(lambda r: _above(r, "rollout")), sign=True), "—"],
                [family, f"NFT update peak (micro-batch 1), {span}", "—", "—",
                 mib(per(lambda r: _above(r, "train")), sign=True), activation_estimate(family, size, bool(first.get("gradient_checkpointing")))],
                [family, f"saved for backward, one micro-step, {span}", "—", "—",
                 mib(per(_saved), sign=True), activation_estimate(family, size, bool(first.get("gradient_checkpointing")))],
            ]
        out.append(table(["family", "component", "params per block", "bytes per block (bf16)",
                          "measured RSS delta per block", "docs estimate"], rows))
        out.append(full_depth_table(exact))
    return "\n".join(out)


def full_depth_table(exact: dict) -> str:
    """`per_block`'s full-depth counts beside the page's (none: "—")."""
    rows = [[name, count(mine), "—" if page is None else count(page), "—" if page is None else f"{mine / page:.3f}"]
            for name, (mine, page) in exact["extrapolated"].items()]
    return ("\nFull depth, extrapolated from the exact per-block counts, against the page:\n\n"
            + table(["component", "extrapolated", "page", "ratio"], rows))


def counts_report(family: str) -> str:
    """`--counts`: the exact per-block counts and the full-depth totals alone (meta device, nothing run)."""
    exact = per_block(family)
    rows = [[family, name, count(v["params"]), mib(v["params"] * 2), str(v["full_count"]), v["published"]]
            for name, v in exact["blocks"].items()]
    return "\n".join([f"\n## {family}: parameters (meta device, exact)\n",
                      table(["family", "component", "params per block", "bytes per block (bf16)", "in the release",
                             "docs estimate"], rows),
                      full_depth_table(exact)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=FAMILIES, action="append",
                        help="a family to run (repeatable); default: all of them")
    parser.add_argument("--blocks", type=int, nargs="+", default=[1],
                        help="depth(s) to build (default 1); two or more give the per-block memory by difference")
    parser.add_argument("--size", type=int, default=512, help="edit resolution (default 512; a multiple of 16)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="model.gradient_checkpointing: true (as the presets; default off)")
    parser.add_argument("--quick", action="store_true", help="skip the per-block tables' meta-device counts (CI)")
    parser.add_argument("--counts", action="store_true",
                        help="only print the per-block tables' exact parameter counts and the full-depth totals against "
                             "the page (meta device, seconds; no iteration)")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--tmp", help="where the saved models go (default: the system's temporary folder)")
    parser.add_argument("--from-json", type=Path, help="print the report of an earlier run's --json file, run nothing")
    parser.add_argument("--lora-dtype", action="store_true",
                        help="only count the bytes one transformer block saves for backward with a bf16 and a float32 "
                             "LoRA (the transformer alone, in this process; no iteration)")
    # The worker stages (run by the driver in fresh processes).
    parser.add_argument("--stage", choices=("build", "train"), help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.size % 16 or args.size < 64:
        parser.error("--size must be a multiple of 16, at least 64")
    if any(b < 1 for b in args.blocks):
        parser.error("--blocks must be positive")
    if args.stage:
        args.family, args.blocks = args.family[0], args.blocks[0]
        result = stage_build(args) if args.stage == "build" else stage_train(args)
        Path(args.result).write_text(json.dumps(result, default=str))
        return
    if args.from_json:
        print(report(json.loads(args.from_json.read_text())))
        return
    families = args.family or list(FAMILIES)
    if args.counts:
        print("\n".join(counts_report(family) for family in families))
        return
    if args.lora_dtype:
        print("Saved for backward, one forward with grad, per block and sample (transformer alone):\n")
        rows = []
        for family in families:
            for block, by in saved_by_lora_dtype(family, args.size).items():
                rows.append([family, block, mib(by["bfloat16"]), mib(by["float32"]),
                             f"{mib(by['float32'] - by['bfloat16'], sign=True)} ({by['float32'] / by['bfloat16'] - 1:+.0%})"])
        print(table(["family", "block", "bf16 LoRA (diffusers add_adapter)", "float32 LoRA (editr1)", "difference"], rows))
        return
    runs = []
    try:
        for family in families:
            for blocks in sorted(set(args.blocks)):
                tick = time.monotonic()
                print(f"{family} --blocks {blocks} --size {args.size} ...", flush=True)
                try:
                    check_fits(family, blocks, args.dtype)
                except BenchError as error:
                    if args.family:  # named: an error; among every family by default: skipped
                        raise
                    print(f"  skipped: {error}", flush=True)
                    continue
                run = one_run(family, blocks, args)
                t = run["train"]
                print(f"  done in {time.monotonic() - tick:.0f} s: loaded RSS {gib(t['baseline_rss'])}, update peak "
                      f"{gib(t['phases']['train'].get('peak_rss'))}, LoRA {t['lora']['modules']} modules", flush=True)
                runs.append(run)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2, default=str))
    if args.quick:
        for run in runs:
            t = run["train"]
            print(f"{run['family']} blocks {run['blocks']}: OK; shapes {t['shapes']}; LoRA {t['lora']['modules']} modules "
                  f"{t['lora']['per_target']}; loaded RSS {gib(t['baseline_rss'])}; update peak "
                  f"{gib(t['phases']['train'].get('peak_rss'))}; saved for backward {gib(_saved(run))}; "
                  f"max RSS {gib(t['max_rss'])}")
        return
    print(report(runs))


if __name__ == "__main__":
    main()
