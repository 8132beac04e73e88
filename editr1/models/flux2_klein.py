"""FLUX.2 [klein]: diffusers' `Flux2Transformer2DModel`, the FLUX.2 VAE (`AutoencoderKLFlux2`) and a Qwen3 encoder.

As `Flux2KleinPipeline` does: the instruction goes through Qwen3's chat template (thinking off), padded to 512
tokens, and the hidden states of layers 9, 18 and 27 are stacked per token into the text stream (no attention
mask: the transformer sees the padding too). The VAE latents are cut into 2x2 patches, each channel normalised
by the VAE's batch-norm statistics, and packed one token per patch. The noisy target tokens are followed on
the transformer's sequence by each reference image's tokens, told apart by the time coordinate of their 4-D
position ids: 0 for the target, 10, 20, ... for the references in order.

Batches are per sample: every row carries its own references' latents and token grids in
`Conditions.tensors`, so `Conditions.select` keeps them aligned with the row (the stock pipeline gives one
list of references to every prompt). The transformer takes the position ids of a call's first row for the
whole call, so `velocity` runs rows of one reference layout together, as the Qwen-Image-Edit-2509 adapter does.

Variants: [klein] Base is guided by true CFG (`guidance_scale` 4.0 over an empty negative prompt, 50 steps);
the step-distilled [klein] takes no CFG and 4 steps. The pipeline tells them apart by `is_distilled` in
`model_index.json`, and so does this adapter (`inference`).
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import diffusers
import torch
from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel
from diffusers.pipelines.flux2.image_processor import Flux2ImageProcessor
from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu
from PIL import Image
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase, Qwen3Config, Qwen3ForCausalLM

from editr1.errors import EditR1Error
from editr1.hub import resolve_model_path
from editr1.models.base import (
    PUBLISHED_LORA_RANK,
    Conditions,
    DepthKnob,
    EditModelAdapter,
    InferenceDefaults,
    ParameterPart,
    PublishedTotal,
    awaiting_weights,
    constructing,
    uneven_layout_calls,
    velocity_by_layout,
    without_reference_padding,
    without_weights,
)
from editr1.models.codecs import Flux2VaeCodec, PixelUnshuffleCodec, load_codec
from editr1.models.flux_kontext import FLUX1_ACTIVATIONS
from editr1.models.lora_io import lora_parameter_count

#: `Flux2KleinPipeline.__call__` shrinks a reference image above this many pixels to it (aspect kept); smaller
#: ones keep their size. Either way each side is then cut (centre crop) to a multiple of the token size.
PIPELINE_CONDITION_AREA = 1024 * 1024
#: Reference images a sample may have. Not a limit of diffusers' pipeline nor of BFL's inference code (both
#: take any number); BFL's editing guide lists up to 4 reference images for [klein] 4B and 9B
#: (docs.bfl.ai/guides/prompting_editing_overview, "Reference Images per Model").
MAX_REFERENCES = 4

# ---- the released architecture (FLUX.2 [klein] 4B) ------------------------------------------------------
# Constructor arguments of the full-size components, which `build_released` builds with random weights (bench/):
# `Flux2Transformer2DModel(**RELEASED_TRANSFORMER)`, `AutoencoderKLFlux2(**RELEASED_VAE)`,
# `Qwen3ForCausalLM(Qwen3Config(**RELEASED_TEXT_ENCODER))`. Where each value comes from is said per value
# (checked against public sources; the Hub's config.json files themselves were not read).
#: black-forest-labs/FLUX.2-klein-4B transformer/config.json. Every value (5 double-stream and 20
#: single-stream blocks of 24 heads of 128, `in_channels` 128, `joint_attention_dim` 7680 = 3 x Qwen3-4B's
#: 2560, MLP ratio 3, RoPE axes 4 x 32 with theta 2000, eps 1e-6, 256 timestep channels, no guidance
#: embedding) is the "klein-4b" config of diffusers' scripts/convert_flux2_to_diffusers.py, and agrees with
#: BFL's `Klein4BParams` (hidden 3072, depth 5 + 20, no guidance embed; black-forest-labs/flux2
#: src/flux2/model.py, as copied in kohya-ss/musubi-tuner src/musubi_tuner/flux_2/flux2_models.py).
#: 3.88B parameters, as the name says (tests/test_parity_flux2_klein.py counts them).
RELEASED_TRANSFORMER = dict(
    patch_size=1, in_channels=128, out_channels=None, num_layers=5, num_single_layers=20, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=7680, timestep_guidance_channels=256, mlp_ratio=3.0,
    axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, eps=1e-6, guidance_embeds=False,
)
#: The 9B's (black-forest-labs/FLUX.2-klein-9B): 8 double and 24 single blocks of 32 heads, over Qwen3-8B's
#: 4096-wide hidden states (9.08B parameters); the "klein-9b" config of diffusers'
#: scripts/convert_flux2_to_diffusers.py and BFL's `Klein9BParams` (hidden 4096, context 12288).
RELEASED_TRANSFORMER_9B = {**RELEASED_TRANSFORMER, "num_layers": 8, "num_single_layers": 24, "num_attention_heads": 32,
                           "joint_attention_dim": 12288}
#: FLUX.2's VAE (shared by the FLUX.2 models): `AutoencoderKLFlux2`'s defaults in the installed diffusers; 32
#: latent channels, 8x downsampling, batch-norm statistics over 2x2 patches. diffusers'
#: scripts/convert_flux2_to_diffusers.py converts BFL's autoencoder into a default-constructed
#: `AutoencoderKLFlux2()`, and BFL's `AutoEncoderParams` (128 channels x (1, 2, 4, 4), 2 res blocks, 32 latent
#: channels) agree; the Hub's vae/config.json itself was not read.
RELEASED_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, act_fn="silu", latent_channels=32, norm_num_groups=32,
    sample_size=1024, use_quant_conv=True, use_post_quant_conv=True, mid_block_add_attention=True,
    batch_norm_eps=1e-4, batch_norm_momentum=0.1, patch_size=(2, 2),
)
#: Qwen/Qwen3-4B's config.json (the [klein] 4B text encoder: BFL's src/flux2/text_encoder.py loads
#: "Qwen/Qwen3-4B" for the 4B and "Qwen/Qwen3-8B" for the 9B): 36 layers (the pipeline reads layers 9, 18,
#: 27) of 2560, MLP 9728, 32 query and 8 key-value heads of 128, vocabulary 151936, RoPE theta 1e6, 40960
#: positions, tied embeddings: 4.02B parameters (Qwen's card: 4.0B). Values as copied in kohya-ss/musubi-tuner
#: src/musubi_tuner/zimage/zimage_utils.py (Qwen3-4B / -8B config.json).
#: transformers' `Qwen3Config` defaults are none of the released sizes, so every width is given. The token
#: ids are the tokenizer's.
RELEASED_TEXT_ENCODER = dict(
    vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rms_norm_eps=1e-6, hidden_act="silu",
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=True,
)
#: Qwen/Qwen3-8B's (the 9B's text encoder), same source: 36 layers of 4096, MLP 12288, 32 / 8 heads of 128,
#: untied embeddings: 8.19B parameters (Qwen's card: 8.2B).
RELEASED_TEXT_ENCODER_9B = {**RELEASED_TEXT_ENCODER, "hidden_size": 4096, "intermediate_size": 12288,
                            "tie_word_embeddings": False}

#: [klein] Base: `Flux2KleinPipeline.__call__`'s defaults, 50 steps and true CFG `guidance_scale` 4.0 over
#: the pipeline's fixed "" negative prompt, combined without rescaling (`neg + s (pos - neg)`). BFL's own code
#: agrees: its README calls Base the 50-step variant, and src/flux2/sampling.py `denoise_cfg` guides the same
#: way from the encoding of "" (its CLI's defaults for the Base models, src/flux2/util.py `FLUX2_MODEL_INFO`
#: as read in a copy: 50 steps, guidance 4.0).
BASE_INFERENCE = InferenceDefaults(steps=50, cfg_scale=4.0, negative_prompt="", cfg_renorm=False, guidance=None,
                                   max_references=MAX_REFERENCES)
#: The step-distilled [klein]: no CFG (the pipeline ignores `guidance_scale` when `is_distilled`; BFL's CLI
#: fixes guidance 1.0 for it), and 4 steps (black-forest-labs/flux2 README: "Distilled (4-step)"; BFL's CLI
#: fixes 4 steps for the distilled models, same `FLUX2_MODEL_INFO`; not a diffusers default).
DISTILLED_INFERENCE = dataclasses.replace(BASE_INFERENCE, steps=4, cfg_scale=1.0)


def _saved_is_distilled(folder: Path) -> bool:
    """`is_distilled` of a saved model's `model_index.json`; the pipeline's own default (False) when absent."""
    return bool(json.loads((folder / "model_index.json").read_text()).get("is_distilled", False))


class Flux2KleinAdapter(EditModelAdapter):
    family = "flux2-klein"
    pipeline_class = "Flux2KleinPipeline"
    lora_pipeline = Flux2KleinPipeline
    #: Base's settings; an adapter of a distilled model (`is_distilled`) overrides them per instance with
    #: `DISTILLED_INFERENCE`, and `saved_inference` reads which a saved model takes before it is loaded.
    inference = BASE_INFERENCE
    #: Qwen3 tokens per instruction chat: `Flux2KleinPipeline`'s `max_sequence_length` (`tokenizer_max_length`).
    max_sequence_length = 512
    #: The Qwen3 layers whose hidden states make the text stream: the pipeline's `text_encoder_out_layers`.
    text_encoder_out_layers = (9, 18, 27)
    #: The model in messages, and the text encoder's and tokenizer's loaders (a FLUX.2 [dev] subclass has its own).
    model_name = "FLUX.2 [klein]"
    text_encoder_class = Qwen3ForCausalLM
    tokenizer_class = AutoTokenizer
    #: Attention projections of the double-stream blocks (BFL's `img_attn`/`txt_attn` `qkv` and `proj`) and the
    #: single-stream blocks' fused input projection (BFL's `linear1`: attention q/k/v and MLP in); their fused
    #: output projection (`linear2`) is named per block in `lora_target_modules`.
    ATTENTION_PROJECTIONS = (
        "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "to_qkv_mlp_proj",
    )

    @classmethod
    def saved_inference(cls, folder: Path) -> InferenceDefaults:
        return DISTILLED_INFERENCE if _saved_is_distilled(Path(folder)) else BASE_INFERENCE

    def __init__(
        self,
        transformer: Flux2Transformer2DModel,
        codec: Flux2VaeCodec | PixelUnshuffleCodec,
        text_encoder: Qwen3ForCausalLM,
        tokenizer: PreTrainedTokenizerBase,
        scheduler: FlowMatchEulerDiscreteScheduler,
        is_distilled: bool = False,
    ):
        self.transformer = transformer
        self.codec = codec
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        #: The step-distilled variant (`is_distilled` of the pipeline's config, in `model_index.json`).
        self.is_distilled = is_distilled
        if is_distilled:
            self.inference = DISTILLED_INFERENCE
        self.image_processor = Flux2ImageProcessor(vae_scale_factor=codec.scale_factor * 2)
        #: Pixel area above which a reference is shrunk (as the pipeline's 1024^2). None: every reference is
        #: resized to the target size.
        self.condition_area: int | None = None
        #: Tokens of the instruction: the 512 of the chat less the template's, counted with this tokenizer (12
        #: with the released Qwen3 vocabulary, whose <think> and </think> are single added tokens:
        #: <|im_start|> user \n ... <|im_end|> \n
        #: <|im_start|> assistant \n <think> \n\n </think> \n\n). The pipeline cuts the chat at 512, so a
        #: longer instruction would lose its end silently.
        self.max_prompt_tokens = self.max_sequence_length - self.count_prompt_tokens(self.chat_text(""))

    @property
    def lora_target_modules(self) -> tuple[str, ...]:
        return self._lora_targets(self.transformer.config.num_single_layers)

    @classmethod
    def _lora_targets(cls, single_blocks: int) -> tuple[str, ...]:
        # The single-stream blocks' `to_out` by its full name: the double-stream blocks' `to_out` is a
        # ModuleList, which peft cannot wrap, and a target matches any module whose name ends with it.
        singles = tuple(f"single_transformer_blocks.{i}.attn.to_out" for i in range(single_blocks))
        return cls.ATTENTION_PROJECTIONS + singles

    def use_pipeline_sizing(self) -> "Flux2KleinAdapter":
        self.condition_area = round(PIPELINE_CONDITION_AREA * self.codec.area_scale)
        return self

    def uneven_transformer_calls(self, reference_counts: list[int]) -> str | None:
        return uneven_layout_calls(self.condition_area, reference_counts)

    # ---- loading and saving -------------------------------------------------------------------
    @classmethod
    def build_tiny(cls, corpus: list[str], seed: int = 0) -> "Flux2KleinAdapter":
        from editr1.models.tiny_flux2_klein import build_tiny_flux2_klein  # it imports this module

        return build_tiny_flux2_klein(corpus, seed=seed, adapter=cls)

    @classmethod
    def from_pretrained(cls, path: str | Path, torch_dtype: torch.dtype = torch.float32,
                        text_encoders: bool = True, transformer_weights: bool = True) -> "Flux2KleinAdapter":
        """`text_encoders` False: Qwen3 without its weights (see `without_weights`); `transformer_weights`
        False: the transformer's parameters without theirs (see `awaiting_weights`)."""
        folder = resolve_model_path(path)
        for sub in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
            if not (folder / sub).is_dir():
                raise EditR1Error(f"{folder}: missing subfolder '{sub}/' of a {cls.model_name} model")
        if transformer_weights:
            transformer = Flux2Transformer2DModel.from_pretrained(folder / "transformer", torch_dtype=torch_dtype)
        else:
            transformer = awaiting_weights(Flux2Transformer2DModel, folder / "transformer", torch_dtype)
        if text_encoders:
            text_encoder = cls.text_encoder_class.from_pretrained(folder / "text_encoder", dtype=torch_dtype)
        else:
            text_encoder = without_weights(cls.text_encoder_class, folder / "text_encoder", torch_dtype)
        tokenizer = cls.tokenizer_class.from_pretrained(folder / "tokenizer")
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler")
        codec = load_codec(folder / "vae", torch_dtype)
        # The pipeline's own default when the index does not say.
        is_distilled = _saved_is_distilled(folder)
        adapter = cls(transformer.eval(), codec, text_encoder.eval(), tokenizer, scheduler, is_distilled=is_distilled)
        adapter.text_encoders_loaded = text_encoders
        return adapter

    def save_pretrained(self, path: str | Path) -> None:
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self.transformer.save_pretrained(folder / "transformer")
        self.codec.save_pretrained(folder / "vae")
        self.text_encoder.save_pretrained(folder / "text_encoder")
        self.tokenizer.save_pretrained(folder / "tokenizer")
        self.scheduler.save_pretrained(folder / "scheduler")
        (folder / "model_index.json").write_text(json.dumps(self._model_index(), indent=2))

    def _model_index(self) -> dict:
        return {
            "_class_name": self.pipeline_class,
            "is_distilled": self.is_distilled,
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
            "text_encoder": ["transformers", "Qwen3ForCausalLM"],
            "tokenizer": ["transformers", "Qwen2TokenizerFast"],
            "transformer": ["diffusers", "Flux2Transformer2DModel"],
            "vae": ["diffusers", "AutoencoderKLFlux2"] if isinstance(self.codec, Flux2VaeCodec)
            else ["editr1", PixelUnshuffleCodec.class_name],
        }

    def to(self, device: torch.device | str) -> "Flux2KleinAdapter":
        self.transformer.to(device)  # Qwen3: placed by the base class (it may be offloaded)
        self.codec.to(device)
        return self

    def text_encoders(self) -> list[nn.Module]:
        return [self.text_encoder] if self.text_encoder is not None else []

    def conditioning_settings(self) -> dict:
        # Every chat is padded to `max_sequence_length`: the base class's join fits the text.
        return {**super().conditioning_settings(), "max_sequence_length": self.max_sequence_length,
                "text_encoder_out_layers": list(self.text_encoder_out_layers),
                "chat_template": self.tokenizer.chat_template}

    # ---- geometry ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = Flux2KleinPipeline._patchify_latents(self.codec.encode(pixels))
        return Flux2KleinPipeline._pack_latents(patches)

    @torch.no_grad()
    def decode_latents(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        h, w = self._latent_hw(height, width)
        patches = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h // 2, w // 2)
        return self.codec.decode(Flux2KleinPipeline._unpatchify_latents(patches))

    def sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor:
        """The pipeline's schedule: `linspace(1, 1/N, N)` shifted by `compute_empirical_mu` of the target's
        token count and the step count (not FLUX.1's `calculate_shift`), ending with 0."""
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler.config)
        mu = compute_empirical_mu(self.latent_token_shape(height, width)[0], num_steps)
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu)
        return scheduler.sigmas.to(torch.float32).cpu()

    # ---- conditioning --------------------------------------------------------------------------
    @property
    def prompt_tokenizer(self) -> PreTrainedTokenizerBase:
        # Special tokens split the chat before the BPE runs, so the instruction between "user\n" and
        # `<|im_end|>` is tokenized as it is alone.
        return self.tokenizer

    def chat_text(self, prompt: str) -> str:
        """The text Qwen3 sees for one instruction, as `Flux2KleinPipeline._get_qwen3_prompt_embeds` builds it."""
        return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                  add_generation_prompt=True, enable_thinking=False)

    @torch.no_grad()
    def encode_conditions(
        self, sources: list[list[Image.Image]], prompts: list[str], height: int, width: int
    ) -> Conditions:
        """Per sample: its instruction's stacked Qwen3 hidden states, its references' packed latents
        (concatenated, zero-padded to the batch's longest), and its references' token grids.

        `tensors`: `prompt_embeds (B, 512, 3 D)`, `image_tokens (B, T, C)`, `reference_grids (B, N, 2)` (rows
        and columns of tokens per reference, zeros past the sample's last; kept on the CPU: `velocity` reads
        it to group rows). `shared`: the target's token grid.
        """
        if len(sources) != len(prompts):
            raise EditR1Error(f"{len(sources)} source lists for {len(prompts)} prompts")
        for i, images in enumerate(sources):
            if not 1 <= len(images) <= self.inference.max_references:
                raise EditR1Error(f"sample {i} of the batch has {len(images)} reference images; {self.model_name} "
                                  f"takes 1 to {self.inference.max_references}")
        h, w = self._latent_hw(height, width)
        device, dtype = self.device, self.transformer.dtype
        flat = [image for images in sources for image in images]
        pixels = [self._reference_pixels(image, height, width) for image in flat]  # each (1, 3, H_i, W_i) in [-1, 1]
        # References of one size encoded together.
        packed: list[torch.Tensor | None] = [None] * len(flat)
        by_size = defaultdict(list)
        for j, p in enumerate(pixels):
            by_size[tuple(p.shape[-2:])].append(j)
        for members in by_size.values():
            batch = torch.cat([pixels[j] for j in members])
            # The pixels reach the codec in float32 (it casts them to the VAE's dtype, as the pipeline does):
            # rounding them to a bf16 transformer's dtype first would lose up to half a grey level.
            for j, tokens in zip(members, self.encode_images(((batch + 1) / 2).to(device))):
                packed[j] = tokens.to(dtype)
        grids = torch.zeros(len(sources), max(len(images) for images in sources), 2, dtype=torch.long)
        per_sample, start = [], 0
        for i, images in enumerate(sources):
            for r in range(len(images)):
                rh, rw = self._latent_hw(*pixels[start + r].shape[-2:])
                grids[i, r] = torch.tensor([rh // 2, rw // 2])
            per_sample.append(torch.cat(packed[start : start + len(images)]))
            start += len(images)
        length = max(t.shape[0] for t in per_sample)
        image_tokens = per_sample[0].new_zeros(len(sources), length, per_sample[0].shape[-1])
        for i, t in enumerate(per_sample):
            image_tokens[i, : t.shape[0]] = t
        embeds = self._prompt_embeds(prompts, dtype, device)
        return Conditions({"prompt_embeds": embeds, "image_tokens": image_tokens, "reference_grids": grids},
                          {"target_grid": (h // 2, w // 2)})

    def _prompt_embeds(self, prompts: list[str], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The text stream of each instruction `(B, 512, 3 D)`, as the pipeline encodes it."""
        # The inner Qwen3Model: its hidden states are the causal LM's, without the vocabulary projection of
        # all 512 positions that the pipeline computes and drops.
        return Flux2KleinPipeline._get_qwen3_prompt_embeds(
            self.text_encoder.model, self.tokenizer, prompts, dtype=dtype, device=device,
            max_sequence_length=self.max_sequence_length, hidden_states_layers=self.text_encoder_out_layers,
        )

    def _reference_pixels(self, image: Image.Image, height: int, width: int) -> torch.Tensor:
        """`image` as the VAE gets it: at the target size, or (`condition_area` set) as the pipeline sizes it."""
        if self.condition_area is None:
            return self.image_processor.preprocess(image, height, width)
        if image.width * image.height > self.condition_area:
            image = Flux2ImageProcessor._resize_to_target_area(image, self.condition_area)
        multiple = self.codec.scale_factor * 2
        ref_width, ref_height = image.width // multiple * multiple, image.height // multiple * multiple
        if not ref_width or not ref_height:
            raise EditR1Error(f"reference image {image.width}x{image.height}: both sides must be at least {multiple} pixels")
        return self.image_processor.preprocess(image, height=ref_height, width=ref_width, resize_mode="crop")

    def split_conditions(self, conditions: Conditions) -> list[Conditions]:
        """Each row without the batch's padding: its own references and their latents."""
        return without_reference_padding(super().split_conditions(conditions))

    def join_conditions(self, rows: list[Conditions], device: torch.device | str | None = None) -> Conditions:
        """Reference latents and grids right-padded with zeros as `encode_conditions` pads them; the grids
        stay on the CPU."""
        padded = ("image_tokens", "reference_grids")
        return Conditions(self._join_tensors(rows, device, padded, on_cpu=("reference_grids",)), self._joined_shared(rows))

    # ---- denoising -----------------------------------------------------------------------------
    def velocity(
        self,
        tokens: torch.Tensor,
        sigma: torch.Tensor,
        conditions: Conditions,
        guidance: float | None = None,
        transformer: nn.Module | None = None,
    ) -> torch.Tensor:
        """`guidance` is unused: [klein] has no guidance input (Base is guided by true CFG, in the sampler)."""
        model = self.transformer if transformer is None else transformer  # may be a DDP wrapper
        sigma = sigma.to(self.transformer.dtype).expand(tokens.shape[0])
        target_grid = conditions.shared["target_grid"]
        return velocity_by_layout(tokens, sigma, conditions.tensors, lambda t, s, c, layout: self._velocity_of_layout(
            model, t, s, c, layout, target_grid, guidance))

    def _velocity_of_layout(
        self,
        model: nn.Module,
        tokens: torch.Tensor,
        sigma: torch.Tensor,
        c: dict[str, torch.Tensor],
        layout: tuple[tuple[int, int], ...],
        target_grid: tuple[int, int],
        guidance: float | None = None,
    ) -> torch.Tensor:
        """One transformer call for rows whose references have the same count and grids."""
        dtype = self.transformer.dtype
        embeds = c["prompt_embeds"].to(dtype)
        # Position ids by the pipeline's helpers, which read only shapes: (0, row, col, 0) for the target,
        # (10 (i + 1), row, col, 0) for reference i, (0, 0, 0, position) for the text.
        target_ids = Flux2KleinPipeline._prepare_latent_ids(torch.empty(1, 0, *target_grid, device="meta"))
        reference_ids = Flux2KleinPipeline._prepare_image_ids([torch.empty(1, 0, rows, cols, device="meta")
                                                               for rows, cols in layout])
        reference_tokens = sum(rows * cols for rows, cols in layout)
        out = model(
            hidden_states=torch.cat([tokens.to(dtype), c["image_tokens"][:, :reference_tokens].to(dtype)], dim=1),
            timestep=sigma,  # the transformer multiplies by 1000 itself
            guidance=self._guidance_input(guidance, tokens),
            encoder_hidden_states=embeds,
            txt_ids=Flux2KleinPipeline._prepare_text_ids(embeds[:1]).to(tokens.device),
            img_ids=torch.cat([target_ids, reference_ids], dim=1).to(tokens.device),
            return_dict=False,
        )[0]
        return out[:, : tokens.shape[1]].to(tokens.dtype)  # as every adapter: the dtype of the latents given

    def _guidance_input(self, guidance: float | None, tokens: torch.Tensor) -> torch.Tensor | None:
        """The transformer's `guidance` input: none for [klein] (no guidance embedding)."""
        return None

    # ---- the released architecture (the 4B), for the benchmarks -------------------------------------
    # The published counts are docs/real_scale.md's ("the page": "FLUX.2 [klein] 4B on one GPU").
    depth_knobs = (
        DepthKnob("double-stream block", RELEASED_TRANSFORMER["num_layers"],
                  published="page: 3.88 B in all, no split by block type"),
        DepthKnob("single-stream block", RELEASED_TRANSFORMER["num_single_layers"],
                  published="page: 3.88 B in all, no split by block type"),
        # No fewer than the layers up to the last one the pipeline reads, that one an inner layer as released.
        DepthKnob("Qwen3 layer", RELEASED_TEXT_ENCODER["num_hidden_layers"], minimum=max(text_encoder_out_layers) + 1,
                  module="text_encoder", published="4.0 B / 36 = {} (incl. embedding)", published_params=4.0e9 / 36),
    )
    parameter_parts = {
        "transformer": ParameterPart("transformer"),
        "Qwen3 layers": ParameterPart("text_encoder", lambda name: ".layers." in name),
        "Qwen3 embedding (tied LM head), final norm": ParameterPart(
            "text_encoder", lambda name: ".layers." not in name),
        "VAE": ParameterPart("codec.vae"),
    }
    published_totals = (
        PublishedTotal("FLUX.2 [klein] 4B transformer (5 double + 20 single)", ("transformer",), 3.88e9),
        PublishedTotal("Qwen3-4B text encoder (36 layers, tied embedding)",
                       ("Qwen3 layers", "Qwen3 embedding (tied LM head), final norm"), 4.0e9),
        PublishedTotal("FLUX.2 VAE (built at full size)", ("VAE",)),  # the page: "about 0.2 GiB", no count
    )
    published_lora_params = 37.4e6
    #: FLUX.1's, as the page scales them: the same width, Qwen3's 512 text tokens for T5's.
    published_activations = FLUX1_ACTIVATIONS

    @classmethod
    def build_released(cls, depths: Mapping[str, int] | None = None, corpus: Iterable[str] = (),
                       device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16,
                       text_encoders: bool = True) -> "Flux2KleinAdapter":
        """The 4B's transformer, Qwen3-4B with its real 151936-token tied embedding, and FLUX.2's 32-channel VAE."""
        from editr1.models.tiny_flux2_klein import assemble, build_tiny_qwen3_tokenizer  # it imports this module

        depth = cls._released_depths(depths)
        tokenizer = build_tiny_qwen3_tokenizer(corpus)
        ids = tokenizer.convert_tokens_to_ids
        config = Qwen3Config(**{**RELEASED_TEXT_ENCODER, "num_hidden_layers": depth["Qwen3 layer"]},
                             bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
                             pad_token_id=ids("<|endoftext|>"))
        with constructing(device, dtype):
            transformer = Flux2Transformer2DModel(**{**RELEASED_TRANSFORMER, "num_layers": depth["double-stream block"],
                                                     "num_single_layers": depth["single-stream block"]}).eval()
            text_encoder = Qwen3ForCausalLM(config).eval() if text_encoders else None
            vae = AutoencoderKLFlux2(**RELEASED_VAE).eval()
        return assemble(cls, transformer, Flux2VaeCodec(vae), text_encoder, tokenizer)

    @classmethod
    def other_released_totals(cls) -> dict[str, tuple[int, float | None]]:
        """The 9B, built at full depth on the meta device: its transformer and LoRA (the page: 9.08 B and 64 M)
        and its Qwen3-8B text encoder (no count on the page)."""
        with constructing("meta", torch.bfloat16):
            transformer = Flux2Transformer2DModel(**RELEASED_TRANSFORMER_9B)
            text_encoder = Qwen3ForCausalLM(Qwen3Config(**RELEASED_TEXT_ENCODER_9B))
        double, single = RELEASED_TRANSFORMER_9B["num_layers"], RELEASED_TRANSFORMER_9B["num_single_layers"]
        lora = lora_parameter_count(transformer, cls._lora_targets(single), PUBLISHED_LORA_RANK)
        return {
            f"9B transformer ({double} double + {single} single, built at full depth)":
                (sum(p.numel() for p in transformer.parameters()), 9.08e9),
            "9B: Qwen3-8B text encoder (built at full depth)":
                (sum(p.numel() for p in text_encoder.parameters()), None),
            f"9B: LoRA rank {PUBLISHED_LORA_RANK}, default targets": (lora, 64e6),
        }

    @classmethod
    def released_text_tokens(cls, size: int, instruction_tokens: int) -> int:
        """The chat's: every instruction's chat padded to `max_sequence_length`."""
        return cls.max_sequence_length

    def random_text_conditions(self, batch: int, size: int, instruction_tokens: int,
                               generator: torch.Generator) -> Conditions:
        h, w = self._latent_hw(size, size)
        grid = (h // 2, w // 2)
        embeds = torch.randn(batch, self.released_text_tokens(size, instruction_tokens),
                             self.transformer.config.joint_attention_dim, generator=generator)
        # One reference (the source) per sample, of the target's grid; the grids stay on the CPU, as
        # `encode_conditions` keeps them.
        return Conditions({"prompt_embeds": embeds.to(self.device, self.transformer.dtype),
                           "reference_grids": torch.tensor([[list(grid)]] * batch)}, {"target_grid": grid})

    def pipeline_velocity(self, tokens: torch.Tensor, sigma: torch.Tensor, conditions: Conditions,
                          guidance: float | None = None, transformer: nn.Module | None = None) -> torch.Tensor:
        """With the pipeline's own helpers' position ids for every row (the first row's references for all)."""
        model = self.transformer if transformer is None else transformer
        pipeline = getattr(diffusers, self.pipeline_class)  # [klein]'s or [dev]'s
        c, dtype, batch, device = conditions.tensors, self.transformer.dtype, tokens.shape[0], tokens.device
        references = [torch.empty(1, 0, rows, cols) for rows, cols in c["reference_grids"][0].tolist() if rows > 0]
        target_ids = pipeline._prepare_latent_ids(torch.empty(batch, 0, *conditions.shared["target_grid"]))
        reference_ids = pipeline._prepare_image_ids(references).expand(batch, -1, -1)
        out = model(
            hidden_states=torch.cat([tokens.to(dtype), c["image_tokens"].to(dtype)], dim=1),
            timestep=sigma.to(dtype).expand(batch),
            guidance=self._guidance_input(guidance, tokens),
            encoder_hidden_states=c["prompt_embeds"].to(dtype),
            txt_ids=pipeline._prepare_text_ids(c["prompt_embeds"]).to(device),
            img_ids=torch.cat([target_ids, reference_ids], dim=1).to(device),
            return_dict=False,
        )[0]
        return out[:, : tokens.shape[1]].to(tokens.dtype)
