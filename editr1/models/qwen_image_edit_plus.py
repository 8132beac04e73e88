"""Qwen-Image-Edit-2509 ("Plus"): Qwen-Image-Edit's components with one to three reference images.

Each sample's references are encoded twice, as `QwenImageEditPlusPipeline` does: a copy for the
Qwen2.5-VL encoder, shown in the chat as "Picture 1: <image>Picture 2: <image>..." before the
instruction, and a copy for the VAE, whose packed latents follow the noisy target tokens on the
transformer's sequence, one reference after another. `img_shapes` lists the target grid, then each
reference's.

Batches are per sample throughout. The stock pipeline (diffusers 0.42) refuses more than one prompt;
earlier versions treated the image list as the references of every prompt (one `img_shapes` and
one set of reference latents repeated over the batch), the batch > 1 failure of the public Edit-R1
code. Here every row carries its own references' text tokens, latents and token grids in
`Conditions.tensors`, so `Conditions.select` keeps them aligned with the row. The transformer's
RoPE takes the grids of the first row of a call for the whole call (diffusers' `QwenEmbedRope`), so
`velocity` runs rows of one reference layout (count and grid of every reference) together and puts
the results back in row order: batches may mix samples with different numbers or sizes of references.

Sizing: the stock pipeline resizes every reference to a ~384^2 area (`CONDITION_IMAGE_SIZE`) for the
VL encoder and to a ~1024^2 area (`VAE_IMAGE_SIZE`) for the VAE, aspect ratio kept, sides multiples
of 32 (`calculate_dimensions`), each from the original image; the target defaults to ~1024^2 at the
last reference's aspect ratio (here the target size is always the caller's). `use_pipeline_sizing()`
sizes references exactly as the pipeline does; by default (both areas None) every reference is used
at the target size by both encoders, which suits training at a fixed resolution.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    QwenImageEditPlusPipeline,
    QwenImageTransformer2DModel,
)
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus
from PIL import Image
from torch import nn
from transformers import Qwen2_5_VLForConditionalGeneration

from editr1.errors import EditR1Error
from editr1.models.base import (
    Conditions,
    InferenceDefaults,
    uneven_layout_calls,
    velocity_by_layout,
    without_reference_padding,
)
from editr1.models.codecs import PixelUnshuffleCodec, VaeCodec
from editr1.models.qwen_image_edit import QwenImageEditAdapter
from editr1.processing.qwen2vl_image_only import ImageOnlyQwen2VLProcessor

# The chat template of QwenImageEditPlusPipeline: `{}` is the "Picture N" segments, then the instruction.
PROMPT_TEMPLATE = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image. Generate a new "
    "image that meets the user's requirements while maintaining consistency with the original input where "
    "appropriate.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
PICTURE_TEMPLATE = "Picture {}: <|vision_start|><|image_pad|><|vision_end|>"
#: Qwen-Image-Edit-2509 is trained for one to three reference images.
MAX_REFERENCES = 3


def chat_text(prompt: str, num_references: int) -> str:
    """The text the pipeline gives the VL encoder for one prompt and its references."""
    pictures = "".join(PICTURE_TEMPLATE.format(i + 1) for i in range(num_references))
    return PROMPT_TEMPLATE.format(pictures + prompt)


class QwenImageEditPlusAdapter(QwenImageEditAdapter):
    family = "qwen-image-edit-plus"
    pipeline_class = "QwenImageEditPlusPipeline"
    lora_pipeline = QwenImageEditPlusPipeline
    #: As Qwen-Image-Edit's, with up to 3 reference images ("Picture 1".."Picture 3").
    inference = InferenceDefaults(steps=28, cfg_scale=4.0, negative_prompt=" ", cfg_renorm=True, max_references=3)
    #: As Qwen-Image-Edit's, and "Picture 1: " (about 4 tokens) before the instruction.
    chat_tokens = 11

    @classmethod
    def recognizes(cls, pipeline: str, transformer_config: dict) -> bool:
        return pipeline == cls.pipeline_class and bool(transformer_config.get("zero_cond_t", False)) == cls.zero_cond_t

    def __init__(
        self,
        transformer: QwenImageTransformer2DModel,
        codec: VaeCodec | PixelUnshuffleCodec,
        text_encoder: Qwen2_5_VLForConditionalGeneration,
        processor: ImageOnlyQwen2VLProcessor,
        scheduler: FlowMatchEulerDiscreteScheduler,
    ):
        super().__init__(transformer, codec, text_encoder, processor, scheduler)
        #: Pixel area of each reference's VAE copy (the latents the transformer sees). None: the target
        #: size. The pipeline uses `VAE_IMAGE_SIZE` = 1024 * 1024.
        self.condition_area: int | None = None
        #: Pixel area of each reference's copy for the VL text encoder. None: the VAE copy's size. The
        #: pipeline uses `CONDITION_IMAGE_SIZE` = 384 * 384.
        self.text_condition_area: int | None = None
        # The pipeline drops the system prompt by a fixed token count (64 with the released tokenizer).
        prefix = PROMPT_TEMPLATE.split("{}")[0]
        self.prompt_drop_index = len(processor.tokenizer(prefix)["input_ids"])

    def use_pipeline_sizing(self) -> "QwenImageEditPlusAdapter":
        """Size references as `QwenImageEditPlusPipeline` does (~1024^2 for the VAE, ~384^2 for the VL encoder)."""
        self.condition_area = round(pipeline_qwenimage_edit_plus.VAE_IMAGE_SIZE * self.codec.area_scale)
        self.text_condition_area = pipeline_qwenimage_edit_plus.CONDITION_IMAGE_SIZE
        return self

    def uneven_transformer_calls(self, reference_counts: list[int]) -> str | None:
        return uneven_layout_calls(self.condition_area, reference_counts)

    @classmethod
    def build_tiny(cls, corpus: list[str], seed: int = 0) -> "QwenImageEditPlusAdapter":
        from editr1.models.tiny_qwen_image_edit_plus import build_tiny_qwen_image_edit_plus  # it imports this module

        return build_tiny_qwen_image_edit_plus(corpus, seed=seed, adapter=cls)

    # ---- conditioning --------------------------------------------------------------------------
    def _reference_size(self, image: Image.Image, area: int | None, default: tuple[int, int]) -> tuple[int, int]:
        """(width, height) of a copy of `image` at `area` pixels, as the pipeline computes it; `default` if None."""
        if area is None:
            return default
        # Looked up at call time: the parity test scales the pipeline's sizes down by patching it.
        width, height = pipeline_qwenimage_edit_plus.calculate_dimensions(area, image.width / image.height)
        return int(width), int(height)

    @torch.no_grad()
    def encode_conditions(
        self, sources: list[list[Image.Image]], prompts: list[str], height: int, width: int
    ) -> Conditions:
        """Per sample: its chat (with one "Picture N" per reference), its references' packed latents
        (concatenated, zero-padded to the batch's longest), and its references' token grids.

        `tensors`: `prompt_embeds (B, L, D)`, `prompt_mask (B, L)`, `image_tokens (B, T, C)`,
        `reference_grids (B, N, 2)` (rows and columns of packed tokens per reference, zeros past
        the sample's last; kept on the CPU: `velocity` reads it to group rows). `shared`: the
        target's token grid.
        """
        if len(sources) != len(prompts):
            raise EditR1Error(f"{len(sources)} source lists for {len(prompts)} prompts")
        self._refuse_long_prompts(prompts)
        for i, images in enumerate(sources):
            if not 1 <= len(images) <= MAX_REFERENCES:
                raise EditR1Error(
                    f"sample {i} of the batch has {len(images)} reference images; Qwen-Image-Edit-2509 takes 1 to "
                    f"{MAX_REFERENCES}"
                )
        h, w = self._latent_hw(height, width)
        device, dtype = self.device, self.transformer.dtype
        # Two copies of every reference, each resized from the original image as the pipeline does.
        flat = [image for images in sources for image in images]
        vae_sizes = [self._reference_size(image, self.condition_area, (width, height)) for image in flat]
        vl_images = []
        for image, vae_size in zip(flat, vae_sizes):
            vl_width, vl_height = self._reference_size(image, self.text_condition_area, vae_size)
            vl_images.append(self.image_processor.resize(image, vl_height, vl_width))
        # VAE latents, references of one size encoded together.
        latents: list[torch.Tensor | None] = [None] * len(flat)
        by_size = defaultdict(list)
        for j, size in enumerate(vae_sizes):
            by_size[size].append(j)
        for (ref_width, ref_height), members in by_size.items():
            self._latent_hw(ref_height, ref_width)  # checks the size
            pixels = self.image_processor.preprocess([flat[j] for j in members], ref_height, ref_width)  # [-1, 1]
            packed = self.encode_images(((pixels + 1) / 2).to(device, dtype))
            for j, tokens in zip(members, packed):
                latents[j] = tokens
        # Per sample: its references' tokens one after another, and their grids.
        batch, most = len(sources), max(len(images) for images in sources)
        grids = torch.zeros(batch, most, 2, dtype=torch.long)
        per_sample, start = [], 0
        for i, images in enumerate(sources):
            for r in range(len(images)):
                ref_width, ref_height = vae_sizes[start + r]
                rh, rw = self._latent_hw(ref_height, ref_width)
                grids[i, r] = torch.tensor([rh // 2, rw // 2])
            per_sample.append(torch.cat(latents[start : start + len(images)]))
            start += len(images)
        length = max(t.shape[0] for t in per_sample)
        image_tokens = per_sample[0].new_zeros(batch, length, per_sample[0].shape[-1])
        for i, t in enumerate(per_sample):
            image_tokens[i, : t.shape[0]] = t
        texts = [chat_text(prompt, len(images)) for prompt, images in zip(prompts, sources)]
        embeds, mask = self._encode_prompts(texts, vl_images)
        return Conditions(
            {"prompt_embeds": embeds, "prompt_mask": mask, "image_tokens": image_tokens, "reference_grids": grids},
            {"target_grid": (h // 2, w // 2)},
        )

    def split_conditions(self, conditions: Conditions) -> list[Conditions]:
        """Each row without the batch's padding: its own prompt length, references and their latents."""
        return without_reference_padding(super().split_conditions(conditions))

    def join_conditions(self, rows: list[Conditions], device: torch.device | str | None = None) -> Conditions:
        """Text, reference latents and grids right-padded with zeros as `encode_conditions` pads them;
        the grids stay on the CPU."""
        padded = ("prompt_embeds", "prompt_mask", "image_tokens", "reference_grids")
        return Conditions(self._join_tensors(rows, device, padded, on_cpu=("reference_grids",)), self._joined_shared(rows))

    def conditioning_settings(self) -> dict:
        return {**super().conditioning_settings(), "prompt_template": PROMPT_TEMPLATE, "picture_template": PICTURE_TEMPLATE,
                "text_condition_area": self.text_condition_area}

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
        sigma = sigma.to(self.transformer.dtype).expand(tokens.shape[0])
        return velocity_by_layout(tokens, sigma, conditions.tensors, lambda t, s, c, layout: self._velocity_of_layout(
            model, t, s, c, layout, conditions.shared, guidance))

    def _velocity_of_layout(
        self,
        model: nn.Module,
        tokens: torch.Tensor,
        sigma: torch.Tensor,
        c: dict[str, torch.Tensor],
        layout: tuple[tuple[int, int], ...],
        shared: dict,
        guidance: float | None,
    ) -> torch.Tensor:
        """One transformer call for rows whose references have the same count and grids."""
        batch, dtype = tokens.shape[0], self.transformer.dtype
        # Text padding past every row's end is cut, so a row alone runs exactly as the pipeline runs it.
        mask = c["prompt_mask"]
        length = int(mask.sum(dim=1).max())
        embeds, mask = c["prompt_embeds"][:, :length], mask[:, :length]
        if bool(mask.all()):
            mask = None  # as the pipeline: an all-ones mask only knocks attention off the fast kernel
        guidance_tensor = None
        if self.transformer.config.guidance_embeds:
            if guidance is None:
                raise EditR1Error("this Qwen-Image transformer is guidance-distilled: set a guidance value")
            guidance_tensor = torch.full((batch,), float(guidance), device=tokens.device, dtype=torch.float32)
        reference_tokens = sum(rows * cols for rows, cols in layout)
        img_shapes = [(1, *shared["target_grid"]), *((1, rows, cols) for rows, cols in layout)]
        out = model(
            hidden_states=torch.cat([tokens.to(dtype), c["image_tokens"][:, :reference_tokens].to(dtype)], dim=1),
            timestep=sigma,
            guidance=guidance_tensor,
            encoder_hidden_states=embeds,
            encoder_hidden_states_mask=mask,
            img_shapes=[img_shapes] * batch,
            return_dict=False,
        )[0]
        return out[:, : tokens.shape[1]].to(tokens.dtype)

    # ---- the released architecture, for the benchmarks: Qwen-Image-Edit's, one reference per sample ----
    def random_text_conditions(self, batch: int, size: int, instruction_tokens: int,
                               generator: torch.Generator) -> Conditions:
        conditions = super().random_text_conditions(batch, size, instruction_tokens, generator)
        grid = conditions.shared["img_shapes"][0][1:]
        # One reference (the source) of the target's grid; the grids stay on the CPU, as `encode_conditions`
        # keeps them.
        return Conditions({**conditions.tensors, "reference_grids": torch.tensor([[list(grid)]] * batch)},
                          {"target_grid": grid})

    def _pipeline_img_shapes(self, conditions: Conditions) -> list[tuple[int, int, int]]:
        grids = conditions.tensors["reference_grids"][0].tolist()
        return [(1, *conditions.shared["target_grid"]), *((1, rows, cols) for rows, cols in grids if rows > 0)]
