"""The `tiny` FLUX.2 [klein] preset: the real architecture at toy scale, built offline from configs.

Every component is the class the released model uses (Flux2Transformer2DModel without a guidance input,
Qwen3ForCausalLM with a Qwen2 tokenizer and Qwen3's chat template, the flow-match scheduler); only the
sizes shrink. The text encoder keeps the 28 layers that the pipeline's layers 9, 18 and 27 need, at a width
of 32. The tokenizer is learned from a corpus (`build_tiny_qwen_tokenizer`) with Qwen3's `<think>` tokens
added, deterministically: a corpus and a seed always give the same model.
`codec="pixel"` (the default, as the tiny Qwen presets) is the exact pixel-unshuffle codec of the CPU demo;
`codec="vae"` builds a tiny `AutoencoderKLFlux2` (used by the pipeline parity test).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
from transformers import Qwen2TokenizerFast, Qwen3Config, Qwen3ForCausalLM

from editr1.models.codecs import Flux2VaeCodec, PixelUnshuffleCodec
from editr1.models.flux2_klein import Flux2KleinAdapter
from editr1.processing.tiny_tokenizer import build_tiny_qwen_tokenizer

TEXT_HIDDEN = 32

#: The part of Qwen3's chat template that `Flux2KleinPipeline` uses: user turns, the assistant's opening, and
#: the empty thinking block of `enable_thinking=False` (the released tokenizer ships the whole template).
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)
#: Qwen3's thinking delimiters, added (not special) tokens in its vocabulary.
THINKING_TOKENS = ("<think>", "</think>")

#: The released [klein] scheduler config: `shift` 3.0 with `use_dynamic_shifting` on, the rest
#: FlowMatchEulerDiscreteScheduler's defaults (exponential time shift, base/max shift 0.5/1.15 over 256/4096
#: tokens). Source: third-party copies of black-forest-labs/FLUX.2-klein-4B and -base-4B
#: scheduler/scheduler_config.json (e.g. verl-project/verl-omni's FLUX.2-klein Flow-GRPO tests); the Hub file
#: itself was not read.
#: The pipeline passes its own `mu` (`compute_empirical_mu`), so only `use_dynamic_shifting` and
#: `time_shift_type` act on the sigmas; `shift` is kept for fidelity.
SCHEDULER_CONFIG = dict(shift=3.0, use_dynamic_shifting=True)


def build_tiny_qwen3_tokenizer(corpus: Iterable[str]) -> Qwen2TokenizerFast:
    """A byte-level BPE learned from `corpus` and the chat around an instruction, with Qwen3's chat template."""
    # The chat's text as the pre-tokenizer sees it once the <think> tokens are split out (trained with them
    # in, "\n\n" would be learned only glued to their ">"): 12 tokens, as with the released vocabulary.
    chat = ["<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n", "\n\n"]
    tokenizer = build_tiny_qwen_tokenizer([*chat, *corpus])
    tokenizer.add_tokens(list(THINKING_TOKENS))
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return tokenizer


def tiny_text_encoder(tokenizer: Qwen2TokenizerFast) -> Qwen3ForCausalLM:
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, intermediate_size=64,
        # The pipeline reads layers 9, 18 and 27: one more, so that 27 is an inner layer, as in the released 36.
        num_hidden_layers=max(Flux2KleinAdapter.text_encoder_out_layers) + 1,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        max_position_embeddings=Flux2KleinAdapter.max_sequence_length,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6}, tie_word_embeddings=True,
        bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"),
    )
    return Qwen3ForCausalLM(config).eval()


def make_codec(codec: str) -> PixelUnshuffleCodec | Flux2VaeCodec:
    """The tiny presets' latent codec (shared by the FLUX.2 presets): "pixel" or a tiny FLUX.2 VAE ("vae")."""
    if codec == "pixel":
        return PixelUnshuffleCodec(factor=2)
    elif codec == "vae":
        # FLUX.2's VAE at toy width: its 32 latent channels; three blocks downsample by 4 (FLUX.2: four, 8).
        vae = AutoencoderKLFlux2(
            down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=32, norm_num_groups=8, sample_size=32,
        )
        with torch.no_grad():  # stand-ins for trained statistics: fresh ones (0, 1) would normalise nothing
            vae.bn.running_mean.normal_(0.0, 0.5)
            vae.bn.running_var.uniform_(0.5, 2.0)
        return Flux2VaeCodec(vae.eval())
    else:
        raise ValueError(f"codec must be 'pixel' or 'vae', got {codec!r}")


def tiny_transformer(latent_codec, num_layers: int, num_single_layers: int, num_heads: int, head_dim: int,
                     text_width: int, guidance_embeds: bool) -> Flux2Transformer2DModel:
    """A tiny `Flux2Transformer2DModel` over `latent_codec`'s latents and a text stream `text_width` wide (the
    stacked hidden states of the text encoder's chosen layers)."""
    return Flux2Transformer2DModel(
        patch_size=1,
        in_channels=latent_codec.latent_channels * 4,  # 2x2 latent patches packed into one token
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=head_dim,
        num_attention_heads=num_heads,
        joint_attention_dim=text_width,
        axes_dims_rope=(head_dim // 4,) * 4,  # (time, row, column, text position); sums to head_dim
        guidance_embeds=guidance_embeds,
    ).eval()


def assemble(adapter: type[Flux2KleinAdapter], transformer: Flux2Transformer2DModel,
             codec: Flux2VaeCodec | PixelUnshuffleCodec, text_encoder: Qwen3ForCausalLM | None,
             tokenizer: Qwen2TokenizerFast, **options: bool) -> Flux2KleinAdapter:
    """The adapter over built components, as this preset and the full-size `build_released` assemble them:
    with [klein]'s scheduler; `options`: the adapter's (`is_distilled`)."""
    return adapter(transformer, codec, text_encoder, tokenizer, FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
                   **options)


def build_tiny_flux2_klein(
    corpus: Iterable[str] = (),
    seed: int = 0,
    codec: str = "pixel",
    is_distilled: bool = False,
    num_layers: int = 1,
    num_single_layers: int = 2,
    num_heads: int = 2,
    head_dim: int = 16,
    adapter: type[Flux2KleinAdapter] = Flux2KleinAdapter,
) -> Flux2KleinAdapter:
    """A randomly initialised tiny FLUX.2 [klein] (Base, or the distilled variant's settings with
    `is_distilled`); `corpus` shapes the tokenizer's vocabulary. `adapter`: the class that wraps the
    components (a subclass's `build_tiny` passes itself)."""
    torch.manual_seed(seed)
    tokenizer = build_tiny_qwen3_tokenizer(corpus)
    latent_codec = make_codec(codec)
    transformer = tiny_transformer(latent_codec, num_layers, num_single_layers, num_heads, head_dim,
                                   len(Flux2KleinAdapter.text_encoder_out_layers) * TEXT_HIDDEN, guidance_embeds=False)
    return assemble(adapter, transformer, latent_codec, tiny_text_encoder(tokenizer), tokenizer,
                    is_distilled=is_distilled)
