"""FLUX.1 Kontext: diffusers' `FluxTransformer2DModel`, the FLUX `AutoencoderKL`, CLIP-L and T5-XXL encoders.

The transformer sees the noisy target tokens followed by the reference-image tokens on one
sequence; the two are told apart by their position ids (the reference's first id channel is 1), and
only the target part of the output is the velocity. The instruction is encoded twice, as
`FluxKontextPipeline` does: CLIP's pooled embedding conditions the modulation, T5's padded
sequence is the text stream. The dev model is guidance-distilled: the guidance value is an input of
the transformer (one forward per step), not classifier-free guidance.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxKontextPipeline,
    FluxTransformer2DModel,
)
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.flux import pipeline_flux_kontext
from PIL import Image
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

from editr1.errors import EditR1Error
from editr1.hub import resolve_model_path
from editr1.models.base import (
    Conditions,
    DepthKnob,
    EditModelAdapter,
    InferenceDefaults,
    ParameterPart,
    PublishedActivations,
    PublishedTotal,
    awaiting_weights,
    constructing,
    without_weights,
)
from editr1.models.codecs import PixelUnshuffleCodec, ScaledVaeCodec, load_codec

#: `FluxKontextPipeline`'s preferred resolutions all have this area.
PREFERRED_AREA = 1024 * 1024

# ---- the released architecture (FLUX.1 Kontext [dev]) -----------------------------------------------
# Constructor arguments of the full-size components, which `build_released` builds with random weights (bench/):
# `FluxTransformer2DModel(**RELEASED_TRANSFORMER)`, `AutoencoderKL(**RELEASED_VAE)`,
# `CLIPTextModel(CLIPTextConfig(**RELEASED_TEXT_ENCODER))`, `T5EncoderModel(T5Config(**RELEASED_TEXT_ENCODER_2))`.
#: black-forest-labs/FLUX.1-Kontext-dev transformer/config.json (FLUX.1-dev's); `FluxTransformer2DModel`'s
#: defaults except `guidance_embeds` (False there).
RELEASED_TRANSFORMER = dict(
    patch_size=1, in_channels=64, out_channels=None, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
#: black-forest-labs/FLUX.1-Kontext-dev vae/config.json (FLUX.1-dev's): 4 blocks (scale factor 8), 16 latent
#: channels, shift 0.1159 / scale 0.3611, no quant convs.
RELEASED_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, act_fn="silu", latent_channels=16, norm_num_groups=32,
    sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159, latents_mean=None, latents_std=None,
    force_upcast=True, use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True,
)
#: black-forest-labs/FLUX.1-Kontext-dev text_encoder/config.json: openai/clip-vit-large-patch14's text model.
#: The token ids (bos/eos/pad) are the tokenizer's, not given here.
RELEASED_TEXT_ENCODER = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)
#: black-forest-labs/FLUX.1-Kontext-dev text_encoder_2/config.json: google/t5-v1_1-xxl's encoder (dropout
#: acts only in training mode; the encoder is used in eval mode). The token ids are the tokenizer's.
RELEASED_TEXT_ENCODER_2 = dict(
    vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.1,
)
#: docs/real_scale.md's activation peaks of FLUX.1 (19 + 38 blocks, 3072 wide), which the page also scales
#: to FLUX.2 [klein] (the same width).
FLUX1_ACTIVATIONS = PublishedActivations(
    checkpointing_on_gib=2.3, checkpointing_off_gib=19.0, tokens=2176,
    blocks=RELEASED_TRANSFORMER["num_layers"] + RELEASED_TRANSFORMER["num_single_layers"])


class FluxKontextAdapter(EditModelAdapter):
    family = "flux-kontext"
    pipeline_class = "FluxKontextPipeline"
    lora_pipeline = FluxKontextPipeline
    # Attention projections of the double-stream blocks; `to_q/k/v` also match the single-stream
    # blocks' attention (which has no output projection of its own).
    lora_target_modules = (
        "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
    )
    #: Guidance value when the caller gives none (`rollout.guidance: null`, SFT): 2.5, what BFL's and
    #: diffusers' Kontext-dev examples use (the pipeline's own default, 3.5, is FLUX.1-dev's).
    default_guidance = 2.5
    #: T5 sequence length; `FluxKontextPipeline`'s default `max_sequence_length`.
    max_sequence_length = 512
    #: T5 tokens of the instruction: the 512 positions less T5's end-of-sequence token. The pipeline
    #: (and `encode_conditions`) cuts T5 there and refuses `max_sequence_length` > 512; CLIP's 77 are
    #: cut too, by design: its pooled embedding reads only the start of a long instruction.
    max_prompt_tokens = max_sequence_length - 1
    #: `FluxKontextPipeline`'s usual inference: distilled guidance 3.5, no true CFG (and, when asked
    #: for, a true CFG that does not rescale the guided velocity).
    inference = InferenceDefaults(steps=28, cfg_scale=1.0, negative_prompt=" ", cfg_renorm=False, guidance=3.5,
                                  max_references=1)

    def __init__(
        self,
        transformer: FluxTransformer2DModel,
        codec: ScaledVaeCodec | PixelUnshuffleCodec,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        text_encoder_2: T5EncoderModel,
        tokenizer_2: T5TokenizerFast,
        scheduler: FlowMatchEulerDiscreteScheduler,
    ):
        self.transformer = transformer
        self.codec = codec
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.text_encoder_2 = text_encoder_2
        self.tokenizer_2 = tokenizer_2
        self.scheduler = scheduler
        self.image_processor = VaeImageProcessor(vae_scale_factor=codec.scale_factor * 2)
        #: Pixel area the reference image is resized to. None: the target size. 1024 * 1024: the
        #: pipeline's auto-resize (the preferred Kontext resolution nearest in aspect ratio).
        self.condition_area: int | None = None

    def use_pipeline_sizing(self) -> "FluxKontextAdapter":
        self.condition_area = round(PREFERRED_AREA * self.codec.area_scale)
        return self

    # ---- loading and saving -------------------------------------------------------------------
    @classmethod
    def build_tiny(cls, corpus: list[str], seed: int = 0) -> "FluxKontextAdapter":
        from editr1.models.tiny_flux_kontext import build_tiny_flux_kontext  # it imports this module

        return build_tiny_flux_kontext(corpus, seed=seed, adapter=cls)

    @classmethod
    def from_pretrained(cls, path: str | Path, torch_dtype: torch.dtype = torch.float32,
                        text_encoders: bool = True, transformer_weights: bool = True) -> "FluxKontextAdapter":
        """`text_encoders` False: CLIP and T5 without their weights (see `without_weights`);
        `transformer_weights` False: the transformer's parameters without theirs (see `awaiting_weights`)."""
        folder = resolve_model_path(path)
        for sub in ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler"):
            if not (folder / sub).is_dir():
                raise EditR1Error(f"{folder}: missing subfolder '{sub}/' of a FLUX.1 Kontext model")
        if transformer_weights:
            transformer = FluxTransformer2DModel.from_pretrained(folder / "transformer", torch_dtype=torch_dtype)
        else:
            transformer = awaiting_weights(FluxTransformer2DModel, folder / "transformer", torch_dtype)
        if text_encoders:
            text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch_dtype)
            text_encoder_2 = T5EncoderModel.from_pretrained(folder / "text_encoder_2", dtype=torch_dtype)
        else:
            text_encoder = without_weights(CLIPTextModel, folder / "text_encoder", torch_dtype)
            text_encoder_2 = without_weights(T5EncoderModel, folder / "text_encoder_2", torch_dtype)
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        tokenizer_2 = T5TokenizerFast.from_pretrained(folder / "tokenizer_2")
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler")
        codec = load_codec(folder / "vae", torch_dtype)
        adapter = cls(
            transformer.eval(), codec, text_encoder.eval(), tokenizer, text_encoder_2.eval(), tokenizer_2, scheduler
        )
        adapter.text_encoders_loaded = text_encoders
        return adapter

    def save_pretrained(self, path: str | Path) -> None:
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self.transformer.save_pretrained(folder / "transformer")
        self.codec.save_pretrained(folder / "vae")
        self.text_encoder.save_pretrained(folder / "text_encoder")
        self.tokenizer.save_pretrained(folder / "tokenizer")
        self.text_encoder_2.save_pretrained(folder / "text_encoder_2")
        self.tokenizer_2.save_pretrained(folder / "tokenizer_2")
        self.scheduler.save_pretrained(folder / "scheduler")
        index = {
            "_class_name": self.pipeline_class,
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "T5EncoderModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "tokenizer_2": ["transformers", "T5TokenizerFast"],
            "transformer": ["diffusers", "FluxTransformer2DModel"],
            "vae": ["diffusers", "AutoencoderKL"] if isinstance(self.codec, ScaledVaeCodec)
            else ["editr1", PixelUnshuffleCodec.class_name],
            # Optional IP-adapter components, absent as in the released model.
            "image_encoder": [None, None],
            "feature_extractor": [None, None],
        }
        (folder / "model_index.json").write_text(json.dumps(index, indent=2))

    def to(self, device: torch.device | str) -> "FluxKontextAdapter":
        self.transformer.to(device)  # CLIP and T5: placed by the base class (they may be offloaded)
        self.codec.to(device)
        return self

    def text_encoders(self) -> list[nn.Module]:
        return [m for m in (self.text_encoder, self.text_encoder_2) if m is not None]

    def conditioning_settings(self) -> dict:
        # Every batch pads T5 to `max_sequence_length` and CLIP to its 77: the base class's join fits.
        return {**super().conditioning_settings(), "max_sequence_length": self.max_sequence_length,
                "clip_max_length": self.tokenizer.model_max_length}

    # ---- geometry ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        latents = self.codec.encode(pixels)
        b, c, h, w = latents.shape
        return FluxKontextPipeline._pack_latents(latents, b, c, h, w)

    @torch.no_grad()
    def decode_latents(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        self._latent_hw(height, width)  # checks the size
        return self.codec.decode(FluxKontextPipeline._unpack_latents(tokens, height, width, self.codec.scale_factor))

    # ---- conditioning --------------------------------------------------------------------------
    @property
    def prompt_tokenizer(self) -> T5TokenizerFast:
        return self.tokenizer_2

    @torch.no_grad()
    def encode_conditions(
        self, sources: list[list[Image.Image]], prompts: list[str], height: int, width: int
    ) -> Conditions:
        if any(len(images) != 1 for images in sources):
            raise EditR1Error("FLUX.1 Kontext takes exactly one source image per sample")
        sizes = {self._condition_size(images[0], height, width) for images in sources}
        if len(sizes) > 1:
            raise EditR1Error(f"source images of one batch resize to different condition sizes {sorted(sizes)}; "
                              "batch images of one aspect ratio together")
        cond_width, cond_height = sizes.pop()
        resized = [self.image_processor.resize(images[0], cond_height, cond_width) for images in sources]
        pixels = self.image_processor.preprocess(resized, cond_height, cond_width)  # [-1, 1]
        device, dtype = self.device, self.transformer.dtype
        image_tokens = self.encode_images(((pixels + 1) / 2).to(device, dtype))
        # As FluxPipeline._get_clip_prompt_embeds: CLIP's pooled output over 77 padded tokens.
        clip_ids = self.tokenizer(
            prompts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids
        pooled = self.text_encoder(clip_ids.to(device), output_hidden_states=False).pooler_output
        # As FluxPipeline._get_t5_prompt_embeds: T5's last hidden states, padded, with no attention mask.
        t5_ids = self.tokenizer_2(
            prompts, padding="max_length", max_length=self.max_sequence_length, truncation=True, return_tensors="pt"
        ).input_ids
        embeds = self.text_encoder_2(t5_ids.to(device), output_hidden_states=False)[0]
        h, w = self._latent_hw(height, width)
        ch, cw = self._latent_hw(cond_height, cond_width)
        return Conditions(
            {"prompt_embeds": embeds.to(dtype), "pooled_prompt_embeds": pooled.to(dtype), "image_tokens": image_tokens},
            {"token_grids": ((h // 2, w // 2), (ch // 2, cw // 2))},
        )

    def _condition_size(self, image: Image.Image, height: int, width: int) -> tuple[int, int]:
        if self.condition_area is None:
            return width, height
        # The pipeline's `_auto_resize`: the preferred Kontext resolution nearest in aspect ratio, here
        # scaled from its 1024^2 area to `condition_area` (exactly the pipeline's choice at 1024^2).
        ratio = image.width / image.height
        _, w, h = min((abs(ratio - w / h), w, h) for w, h in pipeline_flux_kontext.PREFERRED_KONTEXT_RESOLUTIONS)
        scale = (self.condition_area / PREFERRED_AREA) ** 0.5
        multiple = self.codec.scale_factor * 2
        return round(w * scale) // multiple * multiple, round(h * scale) // multiple * multiple

    # ---- denoising -----------------------------------------------------------------------------
    def velocity(
        self,
        tokens: torch.Tensor,
        sigma: torch.Tensor,
        conditions: Conditions,
        guidance: float | None = None,
        transformer: nn.Module | None = None,
    ) -> torch.Tensor:
        model = self.transformer if transformer is None else transformer  # may be a DDP wrapper
        c = conditions.tensors
        batch, device, dtype = tokens.shape[0], tokens.device, self.transformer.dtype
        guidance_tensor = None
        if self.transformer.config.guidance_embeds:
            value = self.default_guidance if guidance is None else guidance
            guidance_tensor = torch.full((batch,), float(value), device=device, dtype=torch.float32)
        # Position ids as the pipeline builds them: (0, row, col) for the target, (1, row, col) for the
        # reference, zeros for the text.
        (th, tw), (rh, rw) = conditions.shared["token_grids"]
        target_ids = FluxKontextPipeline._prepare_latent_image_ids(batch, th, tw, device, dtype)
        reference_ids = FluxKontextPipeline._prepare_latent_image_ids(batch, rh, rw, device, dtype)
        reference_ids[..., 0] = 1
        text_ids = torch.zeros(c["prompt_embeds"].shape[1], 3, device=device, dtype=dtype)
        out = model(
            hidden_states=torch.cat([tokens.to(dtype), c["image_tokens"].to(dtype)], dim=1),
            timestep=sigma.to(dtype).expand(batch),  # the transformer multiplies by 1000 itself
            guidance=guidance_tensor,
            pooled_projections=c["pooled_prompt_embeds"].to(dtype),
            encoder_hidden_states=c["prompt_embeds"].to(dtype),
            txt_ids=text_ids,
            img_ids=torch.cat([target_ids, reference_ids], dim=0),
            return_dict=False,
        )[0]
        return out[:, : tokens.shape[1]].to(tokens.dtype)  # as every adapter: the dtype of the latents given

    # ---- the released architecture, for the benchmarks --------------------------------------------
    # The published counts are docs/real_scale.md's ("the page": its parameter table and LoRA paragraph).
    depth_knobs = (
        DepthKnob("double-stream block", RELEASED_TRANSFORMER["num_layers"],
                  published="page: 11.90 B in all, no split by block type"),
        DepthKnob("single-stream block", RELEASED_TRANSFORMER["num_single_layers"],
                  published="page: 11.90 B in all, no split by block type"),
        DepthKnob("T5-XXL layer", RELEASED_TEXT_ENCODER_2["num_layers"], module="text_encoder_2",
                  published="4.76 B / 24 = {} (incl. embedding)", published_params=4.76e9 / 24),
        DepthKnob("CLIP-L layer", RELEASED_TEXT_ENCODER["num_hidden_layers"], module="text_encoder",
                  published="0.12 B / 12 = {} (incl. embeddings)", published_params=0.12e9 / 12),
    )
    parameter_parts = {
        "transformer": ParameterPart("transformer"),
        "CLIP-L (layers)": ParameterPart("text_encoder", lambda name: "encoder.layers." in name),
        "CLIP-L (embeddings, final norm)": ParameterPart("text_encoder", lambda name: "encoder.layers." not in name),
        "T5-XXL (layers)": ParameterPart("text_encoder_2", lambda name: name.startswith("encoder.block.")),
        "T5-XXL (embedding, final norm)": ParameterPart(
            "text_encoder_2", lambda name: not name.startswith("encoder.block.")),
        "VAE": ParameterPart("codec.vae"),
    }
    published_totals = (
        PublishedTotal("FLUX.1 transformer (19 double + 38 single)", ("transformer",), 11.90e9),
        PublishedTotal("T5-XXL encoder (24 layers)", ("T5-XXL (layers)", "T5-XXL (embedding, final norm)"), 4.76e9),
        PublishedTotal("CLIP-L text encoder (12 layers)", ("CLIP-L (layers)", "CLIP-L (embeddings, final norm)"),
                       0.12e9),
        PublishedTotal("FLUX VAE (built at full size)", ("VAE",), 0.08e9),
    )
    published_lora_params = 52.3e6
    published_activations = FLUX1_ACTIVATIONS

    @classmethod
    def build_released(cls, depths: Mapping[str, int] | None = None, corpus: Iterable[str] = (),
                       device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16,
                       text_encoders: bool = True) -> "FluxKontextAdapter":
        """FLUX.1's transformer, CLIP-L's text model and T5-XXL's encoder (their real vocabularies), and
        FLUX's 16-channel VAE."""
        from editr1.models.tiny_flux_kontext import (  # it imports this module
            BASE_CORPUS,
            assemble,
            build_tiny_clip_tokenizer,
            build_tiny_t5_tokenizer,
        )

        depth = cls._released_depths(depths)
        texts = [*BASE_CORPUS, *corpus]
        tokenizer, tokenizer_2 = build_tiny_clip_tokenizer(texts), build_tiny_t5_tokenizer(texts)
        clip = CLIPTextConfig(**{**RELEASED_TEXT_ENCODER, "num_hidden_layers": depth["CLIP-L layer"]},
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id)
        t5 = T5Config(**{**RELEASED_TEXT_ENCODER_2, "num_layers": depth["T5-XXL layer"]},
                      pad_token_id=tokenizer_2.pad_token_id, eos_token_id=tokenizer_2.eos_token_id,
                      decoder_start_token_id=0)
        with constructing(device, dtype):
            transformer = FluxTransformer2DModel(**{**RELEASED_TRANSFORMER, "num_layers": depth["double-stream block"],
                                                    "num_single_layers": depth["single-stream block"]}).eval()
            text_encoder = CLIPTextModel(clip).eval() if text_encoders else None
            text_encoder_2 = T5EncoderModel(t5).eval() if text_encoders else None
            vae = AutoencoderKL(**RELEASED_VAE).eval()
        return assemble(cls, transformer, ScaledVaeCodec(vae), text_encoder, tokenizer, text_encoder_2, tokenizer_2)

    @classmethod
    def released_text_tokens(cls, size: int, instruction_tokens: int) -> int:
        """T5's: every instruction padded to `max_sequence_length`."""
        return cls.max_sequence_length

    def random_text_conditions(self, batch: int, size: int, instruction_tokens: int,
                               generator: torch.Generator) -> Conditions:
        h, w = self._latent_hw(size, size)
        grid = (h // 2, w // 2)
        config = self.transformer.config
        tensors = {
            "prompt_embeds": torch.randn(batch, self.released_text_tokens(size, instruction_tokens),
                                         config.joint_attention_dim, generator=generator),
            "pooled_prompt_embeds": torch.randn(batch, config.pooled_projection_dim, generator=generator),
        }
        return Conditions({name: t.to(self.device, self.transformer.dtype) for name, t in tensors.items()},
                          {"token_grids": (grid, grid)})
