"""Qwen-Image-Edit: diffusers' `QwenImageTransformer2DModel`, a Qwen-Image VAE and a Qwen2.5-VL encoder.

The transformer sees the noisy target tokens followed by the source-image tokens on one sequence
and predicts velocities for both; only the target part is used. The instruction is encoded by the
VL model together with the source image, through the pipeline's own chat template, and the
system-prompt tokens are dropped as `QwenImageEditPipeline` does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImageEditPipeline,
    QwenImageTransformer2DModel,
)
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import (
    calculate_dimensions,
)
from PIL import Image
from torch import nn
from transformers import (
    AutoTokenizer,
    PreTrainedTokenizerBase,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
    Qwen2VLImageProcessorPil,
)

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
from editr1.models.codecs import PixelUnshuffleCodec, VaeCodec, load_codec
from editr1.processing.qwen2vl_image_only import ImageOnlyQwen2VLProcessor
from editr1.processing.tiny_tokenizer import build_tiny_qwen_tokenizer

# The chat template of QwenImageEditPipeline; the adapter must encode exactly as the pipeline does.
PROMPT_TEMPLATE = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image. Generate a new "
    "image that meets the user's requirements while maintaining consistency with the original input where "
    "appropriate.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n"
    "<|im_start|>assistant\n"
)

# ---- the released architecture (Qwen-Image's; Qwen-Image-Edit and -Edit-2509 share it) ----------------
# Constructor arguments of the full-size components, which `build_released` builds with random weights (bench/):
# `QwenImageTransformer2DModel(**RELEASED_TRANSFORMER)`, `AutoencoderKLQwenImage(**RELEASED_VAE)`,
# `Qwen2_5_VLConfig(text_config=RELEASED_TEXT_ENCODER, vision_config=RELEASED_TEXT_ENCODER_VISION)`.
#: Qwen/Qwen-Image-Edit transformer/config.json (Qwen-Image's and -Edit-2509's are the same); also the
#: defaults of diffusers' `QwenImageTransformer2DModel.__init__`.
RELEASED_TRANSFORMER = dict(
    patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=3584, guidance_embeds=False, axes_dims_rope=(16, 56, 56),
)
#: Qwen/Qwen-Image-Edit vae/config.json (also the defaults of diffusers' `AutoencoderKLQwenImage.__init__`).
RELEASED_VAE = dict(
    base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
    temperal_downsample=[False, True, True], dropout=0.0,
    latents_mean=[-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                  0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],
    latents_std=[2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                 3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.916],
)
#: Qwen/Qwen-Image-Edit text_encoder/config.json (= Qwen/Qwen2.5-VL-7B-Instruct's config.json): the text
#: part. transformers' `Qwen2_5_VLTextConfig` defaults are the 72B's, so every width is given.
RELEASED_TEXT_ENCODER = dict(
    vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
    num_key_value_heads=4, max_position_embeddings=128000, rms_norm_eps=1e-6, hidden_act="silu",
    rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6},
    tie_word_embeddings=False,
)
#: The same config.json's `vision_config` (`in_chans` there): 32 blocks of 1280 (transformers' default
#: `hidden_size` is 3584), 16 heads, 14-px patches, 2x2 merge, 112-px windows, full attention in blocks
#: 7, 15, 23, 31; `tokens_per_second` (transformers' default 4) only spaces video frames.
RELEASED_TEXT_ENCODER_VISION = dict(
    depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3, out_hidden_size=3584,
    patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112, tokens_per_second=2,
    fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu",
)


class QwenImageEditAdapter(EditModelAdapter):
    family = "qwen-image-edit"
    pipeline_class = "QwenImageEditPipeline"
    lora_pipeline = QwenImageEditPipeline
    lora_target_modules = (
        "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
    )
    #: Qwen2.5-VL tokens of the instruction: 1024, the text limit of diffusers' Qwen-Image pipelines
    #: (`tokenizer_max_length = 1024`, `encode_prompt(max_sequence_length=1024)`, `check_inputs`
    #: refuses more; `QwenImagePipeline`, same encoder and transformer, tokenizes at most 1024 tokens
    #: after its system prompt). The edit pipelines cut nothing (their text also holds the image
    #: tokens), so the limit applies to the instruction; the template and image tokens are overhead.
    max_prompt_tokens = 1024
    #: `QwenImageEditPipeline`'s usual settings: the transformer has no guidance input, so true CFG
    #: (4.0, norm-preserving, " " negative prompt) guides it.
    inference = InferenceDefaults(steps=28, cfg_scale=4.0, negative_prompt=" ", cfg_renorm=True, max_references=1)
    #: The pixel area the pipeline resizes the source to for conditioning.
    PIPELINE_CONDITION_AREA = 1024 * 1024
    #: The transformer's `zero_cond_t` (reference tokens modulated at t = 0): on in Qwen-Image-Edit-2511 only,
    #: which shares 2509's pipeline class; it tells the two apart in a saved model.
    zero_cond_t = False

    def __init__(
        self,
        transformer: QwenImageTransformer2DModel,
        codec: VaeCodec | PixelUnshuffleCodec,
        text_encoder: Qwen2_5_VLForConditionalGeneration,
        processor: ImageOnlyQwen2VLProcessor,
        scheduler: FlowMatchEulerDiscreteScheduler,
    ):
        self.transformer = transformer
        self.codec = codec
        self.text_encoder = text_encoder
        self.processor = processor
        self.scheduler = scheduler
        self.image_processor = VaeImageProcessor(vae_scale_factor=codec.scale_factor * 2)
        #: Pixel area the source image is resized to before encoding. None: the target size.
        #: `QwenImageEditPipeline` uses 1024 * 1024 (aspect ratio kept, sides multiples of 32).
        self.condition_area: int | None = None
        # The pipeline drops the system prompt by a fixed token count (64 for the released tokenizer);
        # count it with this tokenizer so that tiny vocabularies drop exactly the same text.
        prefix = PROMPT_TEMPLATE.split("<|vision_start|>")[0]
        self.prompt_drop_index = len(processor.tokenizer(prefix)["input_ids"])

    def use_pipeline_sizing(self) -> "QwenImageEditAdapter":
        self.condition_area = round(self.PIPELINE_CONDITION_AREA * self.codec.area_scale)
        return self

    # ---- loading and saving -------------------------------------------------------------------
    @classmethod
    def build_tiny(cls, corpus: list[str], seed: int = 0) -> "QwenImageEditAdapter":
        from editr1.models.tiny_qwen_image_edit import build_tiny_qwen_image_edit  # it imports this module

        return build_tiny_qwen_image_edit(corpus, seed=seed, adapter=cls)

    @classmethod
    def from_pretrained(cls, path: str | Path, torch_dtype: torch.dtype = torch.float32,
                        text_encoders: bool = True, transformer_weights: bool = True) -> "QwenImageEditAdapter":
        """`text_encoders` False: the text encoder without its weights (see `without_weights`);
        `transformer_weights` False: the transformer's parameters without theirs (see `awaiting_weights`)."""
        folder = resolve_model_path(path)
        for sub in ("transformer", "vae", "text_encoder", "processor", "scheduler"):
            if not (folder / sub).is_dir():
                raise EditR1Error(f"{folder}: missing subfolder '{sub}/' of a Qwen-Image-Edit model")
        if transformer_weights:
            transformer = QwenImageTransformer2DModel.from_pretrained(folder / "transformer", torch_dtype=torch_dtype)
        else:
            transformer = awaiting_weights(QwenImageTransformer2DModel, folder / "transformer", torch_dtype)
        if text_encoders:
            text_encoder = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder / "text_encoder", dtype=torch_dtype)
        else:
            text_encoder = without_weights(Qwen2_5_VLForConditionalGeneration, folder / "text_encoder", torch_dtype)
        tokenizer_folder = folder / "tokenizer" if (folder / "tokenizer").is_dir() else folder / "processor"
        processor = ImageOnlyQwen2VLProcessor(
            image_processor=Qwen2VLImageProcessorPil.from_pretrained(folder / "processor"),
            tokenizer=AutoTokenizer.from_pretrained(tokenizer_folder),
        )
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler")
        codec = load_codec(folder / "vae", torch_dtype)
        adapter = cls(transformer.eval(), codec, text_encoder.eval(), processor, scheduler)
        adapter.text_encoders_loaded = text_encoders
        return adapter

    def save_pretrained(self, path: str | Path) -> None:
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self.transformer.save_pretrained(folder / "transformer")
        self.codec.save_pretrained(folder / "vae")
        self.text_encoder.save_pretrained(folder / "text_encoder")
        self.processor.tokenizer.save_pretrained(folder / "tokenizer")
        self.processor.image_processor.save_pretrained(folder / "processor")
        self.processor.tokenizer.save_pretrained(folder / "processor")
        self.scheduler.save_pretrained(folder / "scheduler")
        index = {
            "_class_name": self.pipeline_class,
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
            "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
            "tokenizer": ["transformers", "Qwen2Tokenizer"],
            "processor": ["transformers", "Qwen2VLProcessor"],
            "transformer": ["diffusers", "QwenImageTransformer2DModel"],
            "vae": ["diffusers", "AutoencoderKLQwenImage"] if isinstance(self.codec, VaeCodec) else ["editr1", "PixelUnshuffleCodec"],
        }
        (folder / "model_index.json").write_text(json.dumps(index, indent=2))

    def to(self, device: torch.device | str) -> "QwenImageEditAdapter":
        self.transformer.to(device)  # the text encoder: placed by the base class (it may be offloaded)
        self.codec.to(device)
        return self

    def text_encoders(self) -> list[nn.Module]:
        return [self.text_encoder] if self.text_encoder is not None else []

    # ---- geometry ------------------------------------------------------------------------------
    @staticmethod
    def _pack(latents: torch.Tensor) -> torch.Tensor:
        b, c, h, w = latents.shape
        patches = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
        return patches.reshape(b, (h // 2) * (w // 2), c * 4)

    def _unpack(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        h, w = self._latent_hw(height, width)
        b, _, channels = tokens.shape
        patches = tokens.view(b, h // 2, w // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return patches.reshape(b, channels // 4, h, w)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._pack(self.codec.encode(pixels))

    @torch.no_grad()
    def decode_latents(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.codec.decode(self._unpack(tokens, height, width))

    # ---- conditioning --------------------------------------------------------------------------
    @property
    def prompt_tokenizer(self) -> PreTrainedTokenizerBase:
        # Special tokens split the chat before the BPE runs, so the instruction between
        # `<|vision_end|>` and `<|im_end|>` is tokenized exactly as it is alone.
        return self.processor.tokenizer

    def _refuse_long_prompts(self, prompts: list[str]) -> None:
        """Defence in depth behind the load-time check (`editr1.data.prompt_length`): the encoder
        would attend over the whole instruction, and a megabyte of text asks for hundreds of GB."""
        for i, prompt in enumerate(prompts):
            if self.prompt_token_bound(prompt) > self.max_prompt_tokens:
                count = self.count_prompt_tokens(prompt)
                if count > self.max_prompt_tokens:
                    raise EditR1Error(
                        f"instruction {i} of the batch has {count} tokens; {self.family} takes at most "
                        f"{self.max_prompt_tokens} (data.max_prompt_tokens, data.prompt_overflow)"
                    )

    @torch.no_grad()
    def encode_conditions(self, sources: list[list[Image.Image]], prompts: list[str], height: int, width: int) -> Conditions:
        self._refuse_long_prompts(prompts)
        if any(len(images) != 1 for images in sources):
            raise EditR1Error("Qwen-Image-Edit takes exactly one source image per sample")
        sizes = {self._condition_size(images[0], height, width) for images in sources}
        if len(sizes) > 1:
            raise EditR1Error(f"source images of one batch resize to different condition sizes {sorted(sizes)}; "
                              "batch images of one aspect ratio together")
        cond_width, cond_height = sizes.pop()
        resized = [self.image_processor.resize(images[0], cond_height, cond_width) for images in sources]
        pixels = self.image_processor.preprocess(resized, cond_height, cond_width)  # [-1, 1]
        device = self.device
        image_tokens = self.encode_images(((pixels + 1) / 2).to(device, self.transformer.dtype))
        embeds, mask = self._encode_prompts([PROMPT_TEMPLATE.format(p) for p in prompts], resized)
        h, w = self._latent_hw(height, width)
        ch, cw = self._latent_hw(cond_height, cond_width)
        return Conditions(
            {"prompt_embeds": embeds, "prompt_mask": mask, "image_tokens": image_tokens},
            {"img_shapes": [(1, h // 2, w // 2), (1, ch // 2, cw // 2)]},
        )

    def split_conditions(self, conditions: Conditions) -> list[Conditions]:
        """Each row without the batch's text padding (its own prompt length)."""
        rows = super().split_conditions(conditions)
        for row in rows:
            length = int(row.tensors["prompt_mask"].sum())
            row.tensors["prompt_embeds"] = row.tensors["prompt_embeds"][:, :length]
            row.tensors["prompt_mask"] = row.tensors["prompt_mask"][:, :length]
        return rows

    def join_conditions(self, rows: list[Conditions], device: torch.device | str | None = None) -> Conditions:
        """Prompt embeddings and masks right-padded with zeros to the longest, as `_encode_prompts` pads."""
        padded = ("prompt_embeds", "prompt_mask")
        return Conditions(self._join_tensors(rows, device, padded), self._joined_shared(rows))

    def conditioning_settings(self) -> dict:
        return {**super().conditioning_settings(), "prompt_template": PROMPT_TEMPLATE,
                "prompt_drop_index": self.prompt_drop_index}

    def _encode_prompts(self, texts: list[str], images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """The VL encoder's last hidden states of each chat `texts[i]` (its images, in order, are the next
        ones of `images`) without the system prompt, right-padded: `(B, L, D)` embeddings in the
        transformer's dtype and their `(B, L)` mask, as the pipelines' `_get_qwen_prompt_embeds`."""
        device = self.device
        inputs = self.processor(text=texts, images=images, padding=True, return_tensors="pt").to(device)
        hidden = self.text_encoder(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            pixel_values=inputs["pixel_values"].to(self.text_encoder.dtype),
            image_grid_thw=inputs["image_grid_thw"],
            output_hidden_states=True,
        ).hidden_states[-1]
        kept = [h[m.bool()][self.prompt_drop_index :] for h, m in zip(hidden, inputs["attention_mask"])]
        length = max(k.shape[0] for k in kept)
        embeds = hidden.new_zeros(len(kept), length, hidden.shape[-1])
        mask = torch.zeros(len(kept), length, dtype=torch.long, device=device)
        for i, k in enumerate(kept):
            embeds[i, : k.shape[0]] = k
            mask[i, : k.shape[0]] = 1
        return embeds.to(self.transformer.dtype), mask

    def _condition_size(self, image: Image.Image, height: int, width: int) -> tuple[int, int]:
        if self.condition_area is None:
            return width, height
        cond_width, cond_height, _ = calculate_dimensions(self.condition_area, image.width / image.height)
        return cond_width, cond_height

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
        mask = c["prompt_mask"]
        if bool(mask.all()):
            mask = None  # an all-ones mask only knocks attention off the fast kernel
        batch = tokens.shape[0]
        guidance_tensor = None
        if self.transformer.config.guidance_embeds:
            if guidance is None:
                raise EditR1Error("this Qwen-Image transformer is guidance-distilled: set a guidance value")
            guidance_tensor = torch.full((batch,), float(guidance), device=tokens.device, dtype=torch.float32)
        dtype = self.transformer.dtype
        out = model(
            hidden_states=torch.cat([tokens.to(dtype), c["image_tokens"].to(dtype)], dim=1),
            timestep=sigma.to(dtype).expand(batch),
            guidance=guidance_tensor,
            encoder_hidden_states=c["prompt_embeds"],
            encoder_hidden_states_mask=mask,
            img_shapes=[conditions.shared["img_shapes"]] * batch,
            return_dict=False,
        )[0]
        return out[:, : tokens.shape[1]].to(tokens.dtype)

    # ---- the released architecture, for the benchmarks --------------------------------------------
    # The published counts are docs/real_scale.md's ("the page": its parameter table, LoRA paragraph and
    # activation peaks), in billions of parameters.
    depth_knobs = (
        DepthKnob("transformer block", RELEASED_TRANSFORMER["num_layers"],
                  published="20.43 B / 60 = {} (incl. non-block)", published_params=20.43e9 / 60),
        DepthKnob("Qwen2.5-VL decoder layer", RELEASED_TEXT_ENCODER["num_hidden_layers"], module="text_encoder",
                  published="(8.29 − 0.68 − 2 × 0.55) B / 28 = {}",
                  published_params=(8.29 - 0.68 - 2 * 0.55) * 1e9 / 28),
        # At least one windowed and one full-attention block, as the release has them.
        DepthKnob("Qwen2.5-VL vision block", RELEASED_TEXT_ENCODER_VISION["depth"], minimum=2, module="text_encoder",
                  published="0.68 B / 32 = {} (incl. patch embed, merger)", published_params=0.68e9 / 32),
    )
    parameter_parts = {
        "transformer": ParameterPart("transformer"),
        "Qwen2.5-VL decoder layers": ParameterPart("text_encoder", lambda name: ".language_model.layers." in name),
        "Qwen2.5-VL embedding, final norm": ParameterPart(
            "text_encoder", lambda name: ".language_model." in name and ".layers." not in name),
        "Qwen2.5-VL LM head": ParameterPart("text_encoder", lambda name: name.startswith("lm_head")),
        "Qwen2.5-VL vision tower": ParameterPart("text_encoder", lambda name: ".visual." in name),
        "VAE": ParameterPart("codec.vae"),
    }
    published_totals = (
        PublishedTotal("Qwen-Image transformer (60 blocks)", ("transformer",), 20.43e9),
        PublishedTotal("Qwen2.5-VL-7B (28 layers, 32 vision blocks, LM head)",
                       ("Qwen2.5-VL decoder layers", "Qwen2.5-VL embedding, final norm", "Qwen2.5-VL LM head",
                        "Qwen2.5-VL vision tower"), 8.29e9),
        PublishedTotal("  of which vision tower", ("Qwen2.5-VL vision tower",), 0.68e9),
        PublishedTotal("  of which LM head", ("Qwen2.5-VL LM head",), 0.55e9),
        PublishedTotal("Qwen-Image VAE (built at full size)", ("VAE",), 0.13e9),
    )
    published_lora_params = 94.4e6
    published_activations = PublishedActivations(checkpointing_on_gib=3.0, checkpointing_off_gib=29.0, tokens=2248,
                                                 blocks=RELEASED_TRANSFORMER["num_layers"])
    #: Text-stream tokens past the dropped system prompt besides the source's image tokens and the
    #: instruction's: <|vision_start|>, <|vision_end|>, then <|im_end|> \n <|im_start|> assistant \n.
    chat_tokens = 7

    @classmethod
    def build_released(cls, depths: Mapping[str, int] | None = None, corpus: Iterable[str] = (),
                       device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16,
                       text_encoders: bool = True) -> "QwenImageEditAdapter":
        """Qwen-Image's transformer, Qwen2.5-VL-7B with its real 152064-token embedding and LM head (its cut
        vision tower ends in a full-attention block, as the release's 32 do), and the Qwen-Image VAE."""
        from editr1.models.qwen_image_edit_plus import MAX_REFERENCES, chat_text
        from editr1.models.tiny_qwen_image_edit import assemble  # it imports this module

        depth = cls._released_depths(depths)
        # Both pipelines' chats: one vocabulary for the Qwen families, as one tokenizer serves them all.
        tokenizer = build_tiny_qwen_tokenizer([PROMPT_TEMPLATE, chat_text("", MAX_REFERENCES), *corpus])
        ids = tokenizer.convert_tokens_to_ids
        special = dict(bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
                       pad_token_id=ids("<|endoftext|>"))
        vision = depth["Qwen2.5-VL vision block"]
        full_attention = [i for i in RELEASED_TEXT_ENCODER_VISION["fullatt_block_indexes"] if i < vision - 1]
        full_attention.append(vision - 1)
        config = Qwen2_5_VLConfig(
            text_config={**RELEASED_TEXT_ENCODER, "num_hidden_layers": depth["Qwen2.5-VL decoder layer"], **special},
            vision_config={**RELEASED_TEXT_ENCODER_VISION, "depth": vision, "fullatt_block_indexes": full_attention},
            image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"), **special,
        )
        with constructing(device, dtype):
            transformer = QwenImageTransformer2DModel(**{**RELEASED_TRANSFORMER, "zero_cond_t": cls.zero_cond_t,
                                                         "num_layers": depth["transformer block"]}).eval()
            text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval() if text_encoders else None
            vae = AutoencoderKLQwenImage(**RELEASED_VAE).eval()
        return assemble(cls, transformer, VaeCodec(vae), text_encoder, tokenizer)

    @classmethod
    def released_text_tokens(cls, size: int, instruction_tokens: int) -> int:
        """The chat's tokens past the dropped system prompt: the source's Qwen2.5-VL image tokens (the
        processor's 28-pixel grid, 2x2 merged), the instruction's and `chat_tokens`."""
        return round(size / 28) ** 2 + cls.chat_tokens + instruction_tokens

    def random_text_conditions(self, batch: int, size: int, instruction_tokens: int,
                               generator: torch.Generator) -> Conditions:
        h, w = self._latent_hw(size, size)
        grid = (h // 2, w // 2)
        text = self.released_text_tokens(size, instruction_tokens)
        embeds = torch.randn(batch, text, self.transformer.config.joint_attention_dim, generator=generator)
        return Conditions({"prompt_embeds": embeds.to(self.device, self.transformer.dtype),
                           "prompt_mask": torch.ones(batch, text, dtype=torch.long, device=self.device)},
                          {"img_shapes": [(1, *grid), (1, *grid)]})

    def pipeline_velocity(self, tokens: torch.Tensor, sigma: torch.Tensor, conditions: Conditions,
                          guidance: float | None = None, transformer: nn.Module | None = None) -> torch.Tensor:
        """With the text mask the pipeline passes, all ones or not, and one token layout for every row."""
        model = self.transformer if transformer is None else transformer
        c, batch, dtype = conditions.tensors, tokens.shape[0], self.transformer.dtype
        guidance_tensor = None
        if self.transformer.config.guidance_embeds:
            guidance_tensor = torch.full((batch,), float(guidance), device=tokens.device, dtype=torch.float32)
        out = model(
            hidden_states=torch.cat([tokens.to(dtype), c["image_tokens"].to(dtype)], dim=1),
            timestep=sigma.to(dtype).expand(batch),
            guidance=guidance_tensor,
            encoder_hidden_states=c["prompt_embeds"],
            encoder_hidden_states_mask=c["prompt_mask"],
            img_shapes=[self._pipeline_img_shapes(conditions)] * batch,
            return_dict=False,
        )[0]
        return out[:, : tokens.shape[1]].to(tokens.dtype)

    def _pipeline_img_shapes(self, conditions: Conditions) -> list[tuple[int, int, int]]:
        """The token grids of the target and the reference(s) that the pipeline passes for every row."""
        return conditions.shared["img_shapes"]
