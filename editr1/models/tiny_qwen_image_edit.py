"""The `tiny` Qwen-Image-Edit preset: the real architecture at toy scale, built offline from configs.

Every component is the class the full model uses (QwenImageTransformer2DModel, Qwen2.5-VL,
Qwen2 tokenizer, Qwen2-VL image processor, the flow-match scheduler with Qwen-Image's settings);
only the sizes shrink. `codec="pixel"` swaps the VAE for the exact pixel-unshuffle codec used by the
CPU demo; `codec="vae"` builds a tiny `AutoencoderKLQwenImage` (used by the pipeline parity test).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImageTransformer2DModel,
)
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2TokenizerFast
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
    Qwen2VLImageProcessorPil,
)

from editr1.models.codecs import PixelUnshuffleCodec, VaeCodec
from editr1.models.qwen_image_edit import PROMPT_TEMPLATE, QwenImageEditAdapter
from editr1.processing.qwen2vl_image_only import ImageOnlyQwen2VLProcessor
from editr1.processing.tiny_tokenizer import build_tiny_qwen_tokenizer

TEXT_HIDDEN = 64

# Qwen-Image's released scheduler settings.
SCHEDULER_CONFIG = dict(
    base_image_seq_len=256,
    base_shift=0.5,
    max_image_seq_len=8192,
    max_shift=0.9,
    num_train_timesteps=1000,
    shift=1.0,
    shift_terminal=0.02,
    time_shift_type="exponential",
    use_dynamic_shifting=True,
)


def tiny_text_encoder(tokenizer) -> Qwen2_5_VLForConditionalGeneration:
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_HIDDEN,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6},
            bos_token_id=ids("<|endoftext|>"),
            eos_token_id=ids("<|im_end|>"),
            pad_token_id=ids("<|endoftext|>"),
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=TEXT_HIDDEN,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1],
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|endoftext|>"),
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def assemble(adapter: type[QwenImageEditAdapter], transformer: QwenImageTransformer2DModel,
             codec: VaeCodec | PixelUnshuffleCodec, text_encoder: Qwen2_5_VLForConditionalGeneration | None,
             tokenizer: Qwen2TokenizerFast) -> QwenImageEditAdapter:
    """The adapter over built components, as this preset and the full-size `build_released` assemble them:
    the tokenizer in the image-only Qwen2-VL processor, Qwen-Image's scheduler."""
    processor = ImageOnlyQwen2VLProcessor(image_processor=Qwen2VLImageProcessorPil(), tokenizer=tokenizer)
    return adapter(transformer, codec, text_encoder, processor, FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG))


def build_tiny_qwen_image_edit(
    corpus: Iterable[str] = (),
    codec: str = "pixel",
    seed: int = 0,
    num_layers: int = 4,
    num_heads: int = 4,
    head_dim: int = 32,
    adapter: type[QwenImageEditAdapter] = QwenImageEditAdapter,
    zero_cond_t: bool = False,
) -> QwenImageEditAdapter:
    """A randomly initialised tiny Qwen-Image-Edit; `corpus` shapes the tokenizer's vocabulary. `adapter`:
    the class that wraps the components (a subclass's `build_tiny` passes itself); `zero_cond_t`: the
    transformer's option of that name (Qwen-Image-Edit-2511's)."""
    torch.manual_seed(seed)
    tokenizer = build_tiny_qwen_tokenizer([PROMPT_TEMPLATE, *corpus])
    if codec == "pixel":
        latent_codec = PixelUnshuffleCodec(factor=2)
    elif codec == "vae":
        vae = AutoencoderKLQwenImage(
            base_dim=8, z_dim=8, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[False, True],
            attn_scales=[], latents_mean=[0.1] * 8, latents_std=[1.5] * 8,
        )
        latent_codec = VaeCodec(vae.eval())
    else:
        raise ValueError(f"codec must be 'pixel' or 'vae', got {codec!r}")
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=latent_codec.latent_channels * 4,
        out_channels=latent_codec.latent_channels,
        num_layers=num_layers,
        attention_head_dim=head_dim,
        num_attention_heads=num_heads,
        joint_attention_dim=TEXT_HIDDEN,
        axes_dims_rope=(head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8),
        zero_cond_t=zero_cond_t,
    ).eval()
    return assemble(adapter, transformer, latent_codec, tiny_text_encoder(tokenizer), tokenizer)
