"""A real-width check on the CPU: one NFT iteration of every family at its published widths, depth cut.

    .venv/bin/python bench/real_width.py                                   # every family, 1 block, 512^2, bf16
    .venv/bin/python bench/real_width.py --family qwen-image-edit --blocks 1 2   # per-block memory
    .venv/bin/python bench/real_width.py --family flux-kontext --size 128 --quick  # CI (tests/test_bench_real_width.py)
    .venv/bin/python bench/real_width.py --from-json runs.json                  # the report of an earlier --json
    .venv/bin/python bench/real_width.py --lora-dtype                           # activations: bf16 vs float32 LoRA
    .venv/bin/python bench/real_width.py --counts --family flux2-klein          # parameter counts only (seconds)
    .venv/bin/python bench/real_width.py --counts --family flux2-dev            # FLUX.2 [dev]: counts (a run needs > 39 GiB)

What is built. For each family, the full-size configurations its adapter module holds (`RELEASED_TRANSFORMER`,
`RELEASED_VAE`, `RELEASED_TEXT_ENCODER...` in editr1/models/qwen_image_edit.py, flux_kontext.py,
flux2_klein.py and flux2_dev.py) with their depth cut (random weights, nothing downloaded), in `--dtype` (bf16):
- Qwen-Image-Edit(-2509): `QwenImageTransformer2DModel` with `--blocks` of its 60 blocks; Qwen2.5-VL-7B
  (`Qwen2_5_VLForConditionalGeneration`) with `--blocks` of its 28 decoder layers, the real 152064-token
  embedding and LM head, and `--blocks` + 1 of its 32 vision blocks (the last one full attention, the
  others windowed, as in the release: blocks 7, 15, 23, 31 are the full-attention ones); the real
  `AutoencoderKLQwenImage`.
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
The tokenizers are editr1's offline tiny ones (`editr1.processing.tiny_tokenizer`,
`editr1.models.tiny_flux_kontext`, `editr1.models.tiny_flux2_klein`, `editr1.models.tiny_flux2_dev`): their
ids are below the real vocabularies, so every embedding has its real size; token counts are exact where
they are fixed (Qwen2.5-VL's image tokens, T5's, Qwen3's and Mistral's 512 padded positions, CLIP's 77) and
approximate for the instruction and the chat template (Qwen-Image-Edit).

What runs. The components are wrapped in editr1's adapter classes exactly as the tiny presets do it
(`adapter_class(family)(transformer, codec, ...)`), saved with `adapter.save_pretrained(folder)` (one
process), then a second process trains: `editr1.trainer.nft.NFTTrainer(config).run()` — what `run_nft`
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
- Parameters per component, exactly: `numel` and `numel * element_size` of the loaded modules. Per block:
  exact counts of the block modules (the same configurations built on PyTorch's meta device), and the
  full-depth extrapolation (non-block parameters + N x per block) beside docs/real_scale.md's totals
  (`--counts`: these tables alone, in seconds, nothing run).
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
  `PolicySet`): peft casts each LoRA input to the adapter's dtype, and each projection keeps its copy.
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
from pathlib import Path
from typing import Any

import torch

from editr1.models.base import constructing
from editr1.rewards.base import Reward, RewardBatch, check_batch

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ("qwen-image-edit", "qwen-image-edit-plus", "qwen-image-edit-2511", "flux-kontext", "flux2-klein",
            "flux2-dev")
GIB, MIB = 2**30, 2**20
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}

#: docs/real_scale.md, "Parameter memory (bf16, 2 bytes per parameter)" and the LoRA paragraph: the page's
#: numbers, in billions of parameters (LoRA: millions at rank 32 on the eight attention projections).
PAGE = {
    "qwen_transformer": 20.43, "qwen25_vl_7b": 8.29, "qwen25_vl_vision": 0.68, "qwen25_vl_lm_head": 0.55,
    "qwen_vae": 0.13, "flux_transformer": 11.90, "t5_xxl": 4.76, "clip_l": 0.12, "flux_vae": 0.08,
    "qwen_lora_m": 94.4, "flux_lora_m": 52.3,
    # "FLUX.2 [klein] 4B on one GPU": the 4B's transformer and Qwen3-4B text encoder (B), its LoRA at rank 32
    # on the adapter's targets (M); the 9B's transformer (B) and LoRA (M). (The VAE: "about 0.2 GiB", no count.)
    "klein_transformer": 3.88, "qwen3_4b": 4.0, "klein_lora_m": 37.4,
    "klein_9b_transformer": 9.08, "klein_9b_lora_m": 64,
    # FLUX.2 [dev]: not on the page. The transformer: the FLUX.2 [dev] model card's "32 billion parameter"; the
    # text encoder: Mistral Small 3.1 / 3.2's "24B" (its model cards). Whole billions, both.
    "dev_transformer": 32, "mistral_small_24b": 24,
    # Peaks beyond the weights of one NFT micro-step at B = 2 (GiB), checkpointing on / off, and its tokens
    # ("Activations: from the baseline peaks").
    "qwen_nft_on_gib": 3.0, "qwen_nft_off_gib": 29.0, "qwen_nft_tokens": 2248,
    "flux_nft_on_gib": 2.3, "flux_nft_off_gib": 19.0, "flux_nft_tokens": 2176,
}
PROMPTS = ("Make the square blue.", "Remove the circle.", "Turn the background red.", "Add a yellow star.")


# ---- published configurations (in the adapter modules) ---------------------------------------------
def released(family: str):
    """The module of `family`'s adapter: it holds the family's published configurations (`RELEASED_TRANSFORMER`,
    `RELEASED_VAE`, `RELEASED_TEXT_ENCODER`, ...), the constructor arguments of the full-size components."""
    import importlib

    from editr1.models.registry import adapter_class

    return importlib.import_module(adapter_class(family).__module__)


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
def tokenizers_for(family: str) -> dict:
    """editr1's offline tiny tokenizers, trained on the prompts and templates used here."""
    if family == "flux-kontext":
        from editr1.models.tiny_flux_kontext import BASE_CORPUS, build_tiny_clip_tokenizer, build_tiny_t5_tokenizer

        corpus = [*BASE_CORPUS, *PROMPTS]
        return {"clip": build_tiny_clip_tokenizer(corpus), "t5": build_tiny_t5_tokenizer(corpus)}
    if family == "flux2-klein":
        from editr1.models.tiny_flux2_klein import build_tiny_qwen3_tokenizer

        return {"qwen": build_tiny_qwen3_tokenizer(PROMPTS)}
    if family == "flux2-dev":  # a tokenizer, as the tiny preset's (the release's is a PixtralProcessor around one)
        from editr1.models.tiny_flux2_dev import build_tiny_mistral_tokenizer

        return {"mistral": build_tiny_mistral_tokenizer(PROMPTS)}
    from editr1.models.qwen_image_edit import PROMPT_TEMPLATE
    from editr1.models.qwen_image_edit_plus import MAX_REFERENCES, chat_text
    from editr1.processing.tiny_tokenizer import build_tiny_qwen_tokenizer

    return {"qwen": build_tiny_qwen_tokenizer([PROMPT_TEMPLATE, chat_text("", MAX_REFERENCES), *PROMPTS])}


def text_layers(family: str, blocks: int) -> int:
    """FLUX.2's text-encoder layers at `blocks`: those up to the last one the pipeline reads, plus one per block
    (it an inner one): [klein]'s Qwen3 28 (layer 27), [dev]'s Mistral 31 (layer 30), at one block."""
    from editr1.models.registry import adapter_class

    return max(adapter_class(family).text_encoder_out_layers) + blocks


def component_configs(family: str, blocks: int, tokenizers: dict, single_blocks: int | None = None) -> dict:
    """Constructors of every component at full width, depth cut to `blocks` (see the module docstring)."""
    from diffusers import (
        AutoencoderKL,
        AutoencoderKLFlux2,
        AutoencoderKLQwenImage,
        Flux2Transformer2DModel,
        FluxTransformer2DModel,
        QwenImageTransformer2DModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        Mistral3Config,
        Mistral3ForConditionalGeneration,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen3Config,
        Qwen3ForCausalLM,
        T5Config,
        T5EncoderModel,
    )

    configs = released(family)
    singles = blocks if single_blocks is None else single_blocks
    if family == "flux-kontext":
        clip, t5 = tokenizers["clip"], tokenizers["t5"]
        transformer = {**configs.RELEASED_TRANSFORMER, "num_layers": blocks, "num_single_layers": singles}
        clip_config = CLIPTextConfig(**{**configs.RELEASED_TEXT_ENCODER, "num_hidden_layers": blocks},
                                     bos_token_id=clip.bos_token_id, eos_token_id=clip.eos_token_id,
                                     pad_token_id=clip.pad_token_id)
        t5_config = T5Config(**{**configs.RELEASED_TEXT_ENCODER_2, "num_layers": blocks}, pad_token_id=t5.pad_token_id,
                             eos_token_id=t5.eos_token_id, decoder_start_token_id=0)
        return {
            "transformer": lambda: FluxTransformer2DModel(**transformer),
            "text_encoder": lambda: CLIPTextModel(clip_config),
            "text_encoder_2": lambda: T5EncoderModel(t5_config),
            "vae": lambda: AutoencoderKL(**configs.RELEASED_VAE),
        }
    if family == "flux2-dev":
        ids = tokenizers["mistral"].convert_tokens_to_ids
        transformer = {**configs.RELEASED_TRANSFORMER, "num_layers": blocks, "num_single_layers": singles}
        text = {**configs.RELEASED_TEXT_ENCODER, "num_hidden_layers": text_layers(family, blocks),
                "bos_token_id": ids("<s>"), "eos_token_id": ids("</s>"), "pad_token_id": ids("<pad>")}
        vision = {**configs.RELEASED_VISION_ENCODER, "num_hidden_layers": blocks}
        mistral = Mistral3Config(**{**configs.RELEASED_TEXT_ENCODER_CONFIG, "text_config": text,
                                    "vision_config": vision, "image_token_index": ids("[IMG]")})
        return {
            "transformer": lambda: Flux2Transformer2DModel(**transformer),
            "text_encoder": lambda: Mistral3ForConditionalGeneration(mistral),
            "vae": lambda: AutoencoderKLFlux2(**configs.RELEASED_VAE),
        }
    ids = tokenizers["qwen"].convert_tokens_to_ids
    if family == "flux2-klein":
        transformer = {**configs.RELEASED_TRANSFORMER, "num_layers": blocks, "num_single_layers": singles}
        qwen3 = Qwen3Config(**{**configs.RELEASED_TEXT_ENCODER, "num_hidden_layers": text_layers(family, blocks)},
                            bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
                            pad_token_id=ids("<|endoftext|>"))
        return {
            "transformer": lambda: Flux2Transformer2DModel(**transformer),
            "text_encoder": lambda: Qwen3ForCausalLM(qwen3),
            "vae": lambda: AutoencoderKLFlux2(**configs.RELEASED_VAE),
        }
    special = dict(bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"))
    vision_depth = blocks + 1
    config = Qwen2_5_VLConfig(
        text_config={**configs.RELEASED_TEXT_ENCODER, "num_hidden_layers": blocks, **special},
        vision_config={**configs.RELEASED_TEXT_ENCODER_VISION, "depth": vision_depth,
                       "fullatt_block_indexes": [vision_depth - 1]},
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"), **special,
    )
    transformer = {**configs.RELEASED_TRANSFORMER, "num_layers": blocks}
    return {
        "transformer": lambda: QwenImageTransformer2DModel(**transformer),
        "text_encoder": lambda: Qwen2_5_VLForConditionalGeneration(config),
        "vae": lambda: AutoencoderKLQwenImage(**configs.RELEASED_VAE),
    }


def build_adapter(family: str, blocks: int, dtype: torch.dtype, device: str = "cpu", single_blocks: int | None = None):
    """The adapter over full-width components with random weights, assembled as the tiny presets do
    (`device` "meta": no weights, for what the adapter says about its components)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from editr1.models.codecs import Flux2VaeCodec, ScaledVaeCodec, VaeCodec
    from editr1.models.registry import adapter_class

    torch.manual_seed(0)
    tokenizers = tokenizers_for(family)
    builders = component_configs(family, blocks, tokenizers, single_blocks)
    with constructing(device, dtype):
        built = {name: build().eval() for name, build in builders.items()}
    cls = adapter_class(family)
    if family == "flux-kontext":
        from editr1.models.tiny_flux_kontext import SCHEDULER_CONFIG

        return cls(built["transformer"], ScaledVaeCodec(built["vae"]), built["text_encoder"], tokenizers["clip"],
                   built["text_encoder_2"], tokenizers["t5"], FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG))
    if family == "flux2-klein":
        from editr1.models.tiny_flux2_klein import SCHEDULER_CONFIG

        return cls(built["transformer"], Flux2VaeCodec(built["vae"]), built["text_encoder"], tokenizers["qwen"],
                   FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG))
    if family == "flux2-dev":
        from editr1.models.tiny_flux2_dev import SCHEDULER_CONFIG

        return cls(built["transformer"], Flux2VaeCodec(built["vae"]), built["text_encoder"], tokenizers["mistral"],
                   FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG))
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from editr1.models.tiny_qwen_image_edit import SCHEDULER_CONFIG
    from editr1.processing.qwen2vl_image_only import ImageOnlyQwen2VLProcessor

    processor = ImageOnlyQwen2VLProcessor(image_processor=Qwen2VLImageProcessorPil(), tokenizer=tokenizers["qwen"])
    return cls(built["transformer"], VaeCodec(built["vae"]), built["text_encoder"], processor,
               FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG))


def lora_targets(family: str, single_blocks: int | None = None) -> tuple[str, ...]:
    """The adapter's default LoRA targets. FLUX.2's ([klein]'s, inherited by [dev]) name each single-stream
    block's output projection (an instance property): read from an adapter with `single_blocks` of them,
    built on the meta device."""
    from editr1.models.registry import adapter_class

    if family not in ("flux2-klein", "flux2-dev"):
        return tuple(adapter_class(family).lora_target_modules)
    return build_adapter(family, 1, torch.bfloat16, "meta", single_blocks).lora_target_modules


# ---- parameter accounting ----------------------------------------------------------------------------
#: Per component: (module attribute of the adapter, parameter-name filter); the filters split the text
#: encoders into their per-layer part and the rest.
def _parts(family: str) -> dict[str, tuple[str, Any]]:
    if family == "flux-kontext":
        return {
            "transformer": ("transformer", None),
            "CLIP-L (layers)": ("text_encoder", lambda n: "encoder.layers." in n),
            "CLIP-L (embeddings, final norm)": ("text_encoder", lambda n: "encoder.layers." not in n),
            "T5-XXL (layers)": ("text_encoder_2", lambda n: n.startswith("encoder.block.")),
            "T5-XXL (embedding, final norm)": ("text_encoder_2", lambda n: not n.startswith("encoder.block.")),
            "VAE": ("vae", None),
        }
    if family == "flux2-klein":
        return {
            "transformer": ("transformer", None),
            "Qwen3 layers": ("text_encoder", lambda n: ".layers." in n),
            "Qwen3 embedding (tied LM head), final norm": ("text_encoder", lambda n: ".layers." not in n),
            "VAE": ("vae", None),
        }
    if family == "flux2-dev":
        return {
            "transformer": ("transformer", None),
            "Mistral decoder layers": ("text_encoder", lambda n: ".language_model.layers." in n),
            "Mistral embedding, final norm": ("text_encoder", lambda n: ".language_model." in n and ".layers." not in n),
            "Mistral LM head": ("text_encoder", lambda n: n.startswith("lm_head")),
            "Pixtral vision tower, projector": ("text_encoder",
                                                lambda n: ".vision_tower." in n or ".multi_modal_projector." in n),
            "VAE": ("vae", None),
        }
    return {
        "transformer": ("transformer", None),
        "Qwen2.5-VL decoder layers": ("text_encoder", lambda n: ".language_model.layers." in n),
        "Qwen2.5-VL embedding, final norm": ("text_encoder", lambda n: ".language_model." in n and ".layers." not in n),
        "Qwen2.5-VL LM head": ("text_encoder", lambda n: n.startswith("lm_head")),
        "Qwen2.5-VL vision tower": ("text_encoder", lambda n: ".visual." in n),
        "VAE": ("vae", None),
    }


def component_sizes(modules: dict[str, torch.nn.Module], family: str) -> dict[str, dict[str, int]]:
    """`{part: {"params": numel, "bytes": numel * element_size}}` of the given modules (exact)."""
    sizes = {}
    for part, (attribute, keep) in _parts(family).items():
        # Not the LoRA layers peft added to the transformer: they are counted apart.
        params = [p for n, p in modules[attribute].named_parameters() if "lora_" not in n and (keep is None or keep(n))]
        sizes[part] = {"params": sum(p.numel() for p in params), "bytes": sum(p.numel() * p.element_size() for p in params),
                       "dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in params})}
    return sizes


def page_in(modules: dict[str, torch.nn.Module]) -> None:
    """Read every parameter and buffer once. The loaders map the saved safetensors files into memory, so a
    weight enters the resident set only when first read; after this the RSS holds all of them."""
    for module in modules.values():
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.detach().reshape(-1)[:: max(1, 4096 // max(1, tensor.element_size()))].sum()


def adapter_modules(adapter) -> dict[str, torch.nn.Module]:
    modules = {"transformer": adapter.transformer, "text_encoder": adapter.text_encoder, "vae": adapter.codec.vae}
    if hasattr(adapter, "text_encoder_2"):
        modules["text_encoder_2"] = adapter.text_encoder_2
    return modules


def meta_counts(family: str, blocks: int, single_blocks: int | None = None) -> dict[str, int]:
    """Parameter counts per part of the configuration at `blocks` (FLUX: `single_blocks` single-stream
    ones, default `blocks`), built on the meta device: exact and free."""
    tokenizers = tokenizers_for(family)
    with constructing("meta", torch.bfloat16):
        built = {name: build() for name, build in component_configs(family, blocks, tokenizers, single_blocks).items()}
    return {part: size["params"] for part, size in component_sizes(built, family).items()}


def lora_params_per_module(module: torch.nn.Module, targets: tuple[str, ...], rank: int) -> int:
    """LoRA parameters at `rank` on every `nn.Linear` of `module` that peft's `target_modules` matching
    (the name, or a dotted suffix of it) selects."""
    total = 0
    for name, sub in module.named_modules():
        if isinstance(sub, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            total += rank * (sub.in_features + sub.out_features)
    return total


def per_block(family: str) -> dict[str, dict[str, float]]:
    """Exact per-block parameter counts and the full-depth extrapolation, from meta-device builds. The
    extrapolated rows are (count, the page's count or None where it gives none)."""
    configs = released(family)
    full = configs.RELEASED_TRANSFORMER
    one_block = {**full, "num_layers": 1}
    one = meta_counts(family, 1)
    two = meta_counts(family, 2)
    delta = {part: two[part] - one[part] for part in one}
    rows: dict[str, dict[str, float]] = {}
    if family == "flux2-klein":
        from diffusers import Flux2Transformer2DModel
        from transformers import Qwen3Config, Qwen3ForCausalLM

        singles = meta_counts(family, 1, single_blocks=2)
        single = singles["transformer"] - one["transformer"]
        double = delta["transformer"] - single
        layers = configs.RELEASED_TEXT_ENCODER["num_hidden_layers"]
        rows["double-stream block"] = {"params": double, "full_count": full["num_layers"]}
        rows["single-stream block"] = {"params": single, "full_count": full["num_single_layers"]}
        rows["Qwen3 layer"] = {"params": delta["Qwen3 layers"], "full_count": layers}
        transformer_full = (one["transformer"] + (full["num_layers"] - 1) * double
                            + (full["num_single_layers"] - 1) * single)
        text_full = (one["Qwen3 layers"] + (layers - text_layers(family, 1)) * delta["Qwen3 layers"]
                     + one["Qwen3 embedding (tied LM head), final norm"])
        # The LoRA and the 9B: counted at full depth (meta device); [klein]'s targets name single blocks.
        nine = configs.RELEASED_TRANSFORMER_9B
        with constructing("meta", torch.bfloat16):
            lora = {name: lora_params_per_module(Flux2Transformer2DModel(**config),
                                                 lora_targets(family, config["num_single_layers"]), 32)
                    for name, config in (("4B", full), ("9B", nine))}
            nine_params = sum(p.numel() for p in Flux2Transformer2DModel(**nine).parameters())
            qwen3_8b = Qwen3ForCausalLM(Qwen3Config(**configs.RELEASED_TEXT_ENCODER_9B))
            qwen3_8b = sum(p.numel() for p in qwen3_8b.parameters())
        extrapolated = {
            f"FLUX.2 [klein] 4B transformer ({full['num_layers']} double + {full['num_single_layers']} single)":
                (transformer_full, PAGE["klein_transformer"] * 1e9),
            f"Qwen3-4B text encoder ({layers} layers, tied embedding)": (text_full, PAGE["qwen3_4b"] * 1e9),
            "FLUX.2 VAE (built at full size)": (one["VAE"], None),
            "LoRA rank 32, default targets": (lora["4B"], PAGE["klein_lora_m"] * 1e6),
            f"9B transformer ({nine['num_layers']} double + {nine['num_single_layers']} single, built at full depth)":
                (nine_params, PAGE["klein_9b_transformer"] * 1e9),
            "9B: Qwen3-8B text encoder (built at full depth)": (qwen3_8b, None),
            "9B: LoRA rank 32, default targets": (lora["9B"], PAGE["klein_9b_lora_m"] * 1e6),
        }
        return {"blocks": rows, "extrapolated": extrapolated, "one": one, "delta": delta}
    if family == "flux2-dev":
        from diffusers import Flux2Transformer2DModel

        singles = meta_counts(family, 1, single_blocks=2)
        single = singles["transformer"] - one["transformer"]
        double = delta["transformer"] - single
        layers = configs.RELEASED_TEXT_ENCODER["num_hidden_layers"]
        vision_layers = configs.RELEASED_VISION_ENCODER["num_hidden_layers"]
        rows["double-stream block"] = {"params": double, "full_count": full["num_layers"]}
        rows["single-stream block"] = {"params": single, "full_count": full["num_single_layers"]}
        rows["Mistral decoder layer"] = {"params": delta["Mistral decoder layers"], "full_count": layers}
        rows["Pixtral vision layer"] = {"params": delta["Pixtral vision tower, projector"], "full_count": vision_layers}
        transformer_full = (one["transformer"] + (full["num_layers"] - 1) * double
                            + (full["num_single_layers"] - 1) * single)
        vision_full = one["Pixtral vision tower, projector"] + (vision_layers - 1) * delta["Pixtral vision tower, projector"]
        text_full = (one["Mistral decoder layers"] + (layers - text_layers(family, 1)) * delta["Mistral decoder layers"]
                     + one["Mistral embedding, final norm"] + one["Mistral LM head"] + vision_full)
        # The LoRA: counted at full depth (meta device); the targets name the 48 single blocks.
        with constructing("meta", torch.bfloat16):
            lora = lora_params_per_module(Flux2Transformer2DModel(**full), lora_targets(family, full["num_single_layers"]), 32)
        extrapolated = {
            f"FLUX.2 [dev] transformer ({full['num_layers']} double + {full['num_single_layers']} single)":
                (transformer_full, PAGE["dev_transformer"] * 1e9),
            f"Mistral Small 3.x 24B ({layers} layers, {vision_layers} vision layers, LM head)":
                (text_full, PAGE["mistral_small_24b"] * 1e9),
            "  of which Pixtral vision tower and projector": (vision_full, None),
            "  of which LM head (untied)": (one["Mistral LM head"], None),
            "FLUX.2 VAE (built at full size)": (one["VAE"], None),
            "LoRA rank 32, default targets": (lora, None),
        }
        return {"blocks": rows, "extrapolated": extrapolated, "one": one, "delta": delta}
    targets = lora_targets(family)
    if family == "flux-kontext":
        singles = meta_counts(family, 1, single_blocks=2)
        single = singles["transformer"] - one["transformer"]
        double = delta["transformer"] - single
        rows["double-stream block"] = {"params": double, "full_count": 19}
        rows["single-stream block"] = {"params": single, "full_count": 38}
        rows["T5-XXL layer"] = {"params": delta["T5-XXL (layers)"], "full_count": 24}
        rows["CLIP-L layer"] = {"params": delta["CLIP-L (layers)"], "full_count": 12}
        transformer_full = one["transformer"] + 18 * double + 37 * single
        t5_full = one["T5-XXL (layers)"] + 23 * delta["T5-XXL (layers)"] + one["T5-XXL (embedding, final norm)"]
        clip_full = one["CLIP-L (layers)"] + 11 * delta["CLIP-L (layers)"] + one["CLIP-L (embeddings, final norm)"]
        with constructing("meta", torch.bfloat16):
            from diffusers import FluxTransformer2DModel

            double_block = FluxTransformer2DModel(**{**one_block, "num_single_layers": 1})
        lora_double = lora_params_per_module(double_block.transformer_blocks[0], targets, 32)
        lora_single = lora_params_per_module(double_block.single_transformer_blocks[0], targets, 32)
        extrapolated = {
            "FLUX.1 transformer (19 double + 38 single)": (transformer_full, PAGE["flux_transformer"] * 1e9),
            "T5-XXL encoder (24 layers)": (t5_full, PAGE["t5_xxl"] * 1e9),
            "CLIP-L text encoder (12 layers)": (clip_full, PAGE["clip_l"] * 1e9),
            "FLUX VAE (built at full size)": (one["VAE"], PAGE["flux_vae"] * 1e9),
            "LoRA rank 32, default targets": (19 * lora_double + 38 * lora_single, PAGE["flux_lora_m"] * 1e6),
        }
    else:
        rows["transformer block"] = {"params": delta["transformer"], "full_count": 60}
        rows["Qwen2.5-VL decoder layer"] = {"params": delta["Qwen2.5-VL decoder layers"], "full_count": 28}
        rows["Qwen2.5-VL vision block"] = {"params": delta["Qwen2.5-VL vision tower"], "full_count": 32}
        transformer_full = one["transformer"] + 59 * delta["transformer"]
        vision_full = one["Qwen2.5-VL vision tower"] + (32 - 2) * delta["Qwen2.5-VL vision tower"]  # 2 built at blocks 1
        text_full = (one["Qwen2.5-VL decoder layers"] + 27 * delta["Qwen2.5-VL decoder layers"]
                     + one["Qwen2.5-VL embedding, final norm"] + one["Qwen2.5-VL LM head"] + vision_full)
        with constructing("meta", torch.bfloat16):
            from diffusers import QwenImageTransformer2DModel

            block = QwenImageTransformer2DModel(**one_block).transformer_blocks[0]
        extrapolated = {
            "Qwen-Image transformer (60 blocks)": (transformer_full, PAGE["qwen_transformer"] * 1e9),
            "Qwen2.5-VL-7B (28 layers, 32 vision blocks, LM head)": (text_full, PAGE["qwen25_vl_7b"] * 1e9),
            "  of which vision tower": (vision_full, PAGE["qwen25_vl_vision"] * 1e9),
            "  of which LM head": (one["Qwen2.5-VL LM head"], PAGE["qwen25_vl_lm_head"] * 1e9),
            "Qwen-Image VAE (built at full size)": (one["VAE"], PAGE["qwen_vae"] * 1e9),
            "LoRA rank 32, default targets": (60 * lora_params_per_module(block, targets, 32), PAGE["qwen_lora_m"] * 1e6),
        }
    return {"blocks": rows, "extrapolated": extrapolated, "one": one, "delta": delta}


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
    weights = sum(meta_counts(family, blocks).values()) * DTYPES[dtype].itemsize
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
            "sizes": component_sizes(adapter_modules(adapter), args.family)}


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
  tensorboard: false
  progress: false
"""


def expected_shapes(family: str, size: int) -> dict[str, Any]:
    tokens = (size // 16) ** 2  # 8x VAE downsampling, 2x2 patches
    if family == "flux-kontext":
        return {"latents": (2, tokens, 64), "image_tokens": (1, tokens, 64), "prompt_embeds": (1, 512, 4096),
                "pooled_prompt_embeds": (1, 768)}
    if family == "flux2-klein":  # 32 latent channels x 2x2 patches; Qwen3's 512 positions, layers 9, 18, 27 stacked
        return {"latents": (2, tokens, 128), "image_tokens": (1, tokens, 128), "prompt_embeds": (1, 512, 3 * 2560)}
    if family == "flux2-dev":  # the same latents; Mistral's 512 positions, layers 10, 20, 30 stacked
        return {"latents": (2, tokens, 128), "image_tokens": (1, tokens, 128), "prompt_embeds": (1, 512, 3 * 5120)}
    # Qwen2.5-VL's image tokens: the processor's 28-px grid (smart_resize), merged 2x2.
    vl_tokens = (round(size / 28)) ** 2
    return {"latents": (2, tokens, 64), "image_tokens": (1, tokens, 64), "prompt_embeds_width": 3584,
            "prompt_embeds_min_length": vl_tokens}


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
    naive baseline), and in float32, as editr1's `PolicySet` keeps it. The transformer alone, at this run's
    token counts (Qwen: the 2 x 1024 image tokens at 512^2 and a 336-token text; FLUX: 2 x 1024 + 512 T5;
    FLUX.2 [klein] / [dev]: 2 x 1024 + 512 Qwen3 / Mistral)."""
    from diffusers import Flux2Transformer2DModel, FluxTransformer2DModel, QwenImageTransformer2DModel
    from peft import LoraConfig

    targets = list(lora_targets(family, 2))
    one_block = {**released(family).RELEASED_TRANSFORMER, "num_layers": 1}
    grid = size // 16
    generator = torch.Generator().manual_seed(0)

    def measure(model, call) -> dict[str, int]:
        model.requires_grad_(False)
        model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=targets))
        result = {}
        for dtype in (torch.bfloat16, torch.float32):
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.data = p.data.to(dtype)
                    p.requires_grad_(True)
            saved = SavedForBackward(list(model.parameters()))
            with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
                call(model)
            result[str(dtype).removeprefix("torch.")] = sum(saved.current.values())
        return result

    bf16 = dict(dtype=torch.bfloat16)
    if family in ("flux-kontext", "flux2-klein", "flux2-dev"):
        tokens, text = 2 * grid * grid, 512
        if family == "flux-kontext":
            cls = FluxTransformer2DModel

            def call(model):
                model(hidden_states=torch.randn(1, tokens, 64, generator=generator).to(**bf16),
                      timestep=torch.tensor([0.5], **bf16), guidance=torch.tensor([2.5]),
                      pooled_projections=torch.randn(1, 768, generator=generator).to(**bf16),
                      encoder_hidden_states=torch.randn(1, text, 4096, generator=generator).to(**bf16),
                      txt_ids=torch.zeros(text, 3), img_ids=torch.zeros(tokens, 3), return_dict=False)
        else:
            cls = Flux2Transformer2DModel
            # [dev]'s guidance embedding takes its default 4.0; [klein] has none.
            guidance = torch.tensor([4.0]) if one_block.get("guidance_embeds") else None

            def call(model):  # 4-D position ids, no pooled text
                model(hidden_states=torch.randn(1, tokens, one_block["in_channels"], generator=generator).to(**bf16),
                      timestep=torch.tensor([0.5], **bf16), guidance=guidance,
                      encoder_hidden_states=torch.randn(1, text, one_block["joint_attention_dim"],
                                                        generator=generator).to(**bf16),
                      txt_ids=torch.zeros(1, text, 4), img_ids=torch.zeros(1, tokens, 4), return_dict=False)

        measured = {}
        for singles in (1, 2):
            with constructing("cpu", torch.bfloat16):
                model = cls(**{**one_block, "num_single_layers": singles})
            measured[singles] = measure(model, call)
            del model
        single = {k: measured[2][k] - measured[1][k] for k in measured[1]}
        return {"double-stream block (+ non-block)": {k: measured[1][k] - single[k] for k in single},
                "single-stream block": single}
    text = round(size / 28) ** 2 + 12

    def call(model):
        model(hidden_states=torch.randn(1, 2 * grid * grid, 64, generator=generator).to(**bf16),
              timestep=torch.tensor([0.5], **bf16),
              encoder_hidden_states=torch.randn(1, text, 3584, generator=generator).to(**bf16),
              img_shapes=[[(1, grid, grid), (1, grid, grid)]], return_dict=False)

    with constructing("cpu", torch.bfloat16):
        model = QwenImageTransformer2DModel(**one_block)
    return {"transformer block (+ non-block)": measure(model, call)}


def stage_train(args) -> dict:
    sys.path.insert(0, str(ROOT))  # the reward's dotted path `bench.real_width:MeanBrightness`
    from editr1.config import NFTConfig, load_config
    from editr1.trainer.nft import NFTTrainer

    work = Path(args.work_dir)
    train = write_dataset(work / "data", args.size)
    config_path = work / "nft.yaml"
    config_path.write_text(nft_config_yaml(args, train, work / "run"))
    config = load_config(NFTConfig, config_path)
    phases: dict[str, dict] = {}
    shapes: dict[str, Any] = {}
    latents: list[torch.Tensor] = []
    can_reset = reset_peak()

    class MeasuredNFTTrainer(NFTTrainer):
        """The trainer, unchanged, with the RSS peak and wall time of its rollout and update phases read."""

        def _measured(self, name, call):
            reset_peak()
            tick = time.monotonic()
            result = call()
            phases[name] = {"peak_rss": peak_rss() if can_reset else None, "seconds": time.monotonic() - tick}
            return result

        def _rollout(self, *a, **k):
            rollout = self._measured("rollout", lambda: super(MeasuredNFTTrainer, self)._rollout(*a, **k))
            shapes["latents"] = tuple(rollout.latents.shape)
            latents.append(rollout.latents)
            shapes.update({name: tuple(t.shape) for name, t in rollout.conditions.tensors.items() if t is not None})
            return rollout

        def _train(self, *a, **k):
            saved = SavedForBackward(list(self.adapter.transformer.parameters()))
            with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
                result = self._measured("train", lambda: super(MeasuredNFTTrainer, self)._train(*a, **k))
            phases["train"]["saved_for_backward"] = saved.forwards
            return result

    start = time.monotonic()
    trainer = MeasuredNFTTrainer(config)
    adapter = trainer.adapter
    page_in(adapter_modules(adapter))
    loaded = time.monotonic()
    baseline, baseline_file = rss(), _status_kib("RssFile") * 1024
    sizes = component_sizes(adapter_modules(adapter), args.family)
    lora = trainer.policies.trainable_parameters()
    sizes["LoRA trained + old (float32)"] = {
        "params": 2 * sum(p.numel() for p in lora), "bytes": 2 * sum(p.numel() * p.element_size() for p in lora),
        "dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in lora})}
    for method in ("_rollout", "_train"):
        if not callable(getattr(NFTTrainer, method, None)):
            raise AssertionError(f"NFTTrainer has no {method} any more: update the phase measurements of bench/real_width.py")
    summary = trainer.run()
    done = time.monotonic()
    if set(phases) != {"rollout", "train"}:
        raise AssertionError(f"measured phases {sorted(phases)}: the trainer's iteration no longer calls _rollout and _train")
    metrics = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    iteration = next(m for m in metrics if "seconds_total" in m)
    if iteration.get("skipped_update"):
        raise AssertionError("the NFT update was skipped (every group filtered)")
    expected = expected_shapes(args.family, args.size)
    for key in ("latents", "image_tokens", "prompt_embeds", "pooled_prompt_embeds"):
        if key in expected and shapes.get(key) != expected[key]:
            raise AssertionError(f"{key}: expected shape {expected[key]}, got {shapes.get(key)}")
    if "prompt_embeds_width" in expected:
        width, length = shapes["prompt_embeds"][-1], shapes["prompt_embeds"][1]
        if width != expected["prompt_embeds_width"] or length < expected["prompt_embeds_min_length"]:
            raise AssertionError(f"prompt_embeds {shapes['prompt_embeds']}: expected width 3584 and at least "
                                 f"{expected['prompt_embeds_min_length']} tokens (the source's image tokens)")
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


def page_block_estimate(family: str, row: str) -> str:
    """The page's numbers divided down to one block, where it gives enough to do so."""
    if family == "flux-kontext":
        return {
            "double-stream block": "page: 11.90 B in all, no split by block type",
            "single-stream block": "page: 11.90 B in all, no split by block type",
            "T5-XXL layer": f"4.76 B / 24 = {count(PAGE['t5_xxl'] * 1e9 / 24)} (incl. embedding)",
            "CLIP-L layer": f"0.12 B / 12 = {count(PAGE['clip_l'] * 1e9 / 12)} (incl. embeddings)",
        }[row]
    if family == "flux2-klein":
        return {
            "double-stream block": "page: 3.88 B in all, no split by block type",
            "single-stream block": "page: 3.88 B in all, no split by block type",
            "Qwen3 layer": f"4.0 B / 36 = {count(PAGE['qwen3_4b'] * 1e9 / 36)} (incl. embedding)",
        }[row]
    if family == "flux2-dev":  # the model cards' whole billions
        return {
            "double-stream block": "model card: 32 B in all, no split by block type",
            "single-stream block": "model card: 32 B in all, no split by block type",
            "Mistral decoder layer": f"24 B / 40 = {count(PAGE['mistral_small_24b'] * 1e9 / 40)} (incl. embeddings, "
                                     "LM head, vision tower)",
            "Pixtral vision layer": "24 B in all, no split",
        }[row]
    layers = (PAGE["qwen25_vl_7b"] - PAGE["qwen25_vl_vision"] - 2 * PAGE["qwen25_vl_lm_head"]) * 1e9 / 28
    return {
        "transformer block": f"20.43 B / 60 = {count(PAGE['qwen_transformer'] * 1e9 / 60)} (incl. non-block)",
        "Qwen2.5-VL decoder layer": f"(8.29 − 0.68 − 2 × 0.55) B / 28 = {count(layers)}",
        "Qwen2.5-VL vision block": f"0.68 B / 32 = {count(PAGE['qwen25_vl_vision'] * 1e9 / 32)} (incl. patch embed, merger)",
    }[row]


def activation_estimate(family: str, size: int, checkpointing: bool) -> str:
    """The page's NFT micro-step peak beyond the weights (B = 2; checkpointing on or off as in this run),
    divided by its blocks and samples and scaled to this run's token count: an extrapolation from GPU
    measurements of the naive path. FLUX.2 [klein] (the same width, Qwen3's 512 text tokens for T5's): FLUX.1's,
    as the page scales it."""
    tokens = 2 * (size // 16) ** 2
    mode = "on" if checkpointing else "off"
    if family == "flux2-dev":
        return "page: none at [dev]'s 6144 width"
    if family in ("flux-kontext", "flux2-klein"):
        tokens += 512
        total = PAGE[f"flux_nft_{mode}_gib"]
        per = total / 57 / 2 * tokens / PAGE["flux_nft_tokens"]
        return (f"~{2 * per * 1024:,.0f} MiB for the two blocks ({total:g} GiB / 57 blocks / B=2, "
                f"at {tokens} tokens)")
    tokens += round(size / 28) ** 2 + 17
    total = PAGE[f"qwen_nft_{mode}_gib"]
    per = total / 60 / 2 * tokens / PAGE["qwen_nft_tokens"]
    return f"~{per * 1024:,.0f} MiB ({total:g} GiB / 60 blocks / B=2, at {tokens} tokens)"


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
        rows = [[family, name, count(v["params"]), mib(v["params"] * 2), "—", page_block_estimate(family, name)]
                for name, v in exact["blocks"].items()]
        total_delta = sum(exact["delta"].values())
        page_weights = ("page: no per-block split" if family in ("flux-kontext", "flux2-klein", "flux2-dev") else
                        "≈ " + mib(2e9 * (PAGE["qwen_transformer"] / 60 + PAGE["qwen25_vl_vision"] / 32
                                          + (PAGE["qwen25_vl_7b"] - PAGE["qwen25_vl_vision"] - 2 * PAGE["qwen25_vl_lm_head"]) / 28)))
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
    rows = [[family, name, count(v["params"]), mib(v["params"] * 2), str(v["full_count"]),
             page_block_estimate(family, name)] for name, v in exact["blocks"].items()]
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
