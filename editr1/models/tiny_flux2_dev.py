"""The `tiny` FLUX.2 [dev] preset: the real architecture at toy scale, built offline from configs.

Every component is the class the released model uses (Flux2Transformer2DModel with its guidance embedding,
Mistral3ForConditionalGeneration, the FLUX.2 VAE or the exact pixel codec, the
flow-match scheduler); only the sizes shrink. The language model keeps the 31 layers that the pipeline's
layers 10, 20 and 30 need, at a width of 32; the vision tower (never run by the pipeline's text encoding)
has one layer. The tokenizer (the released model's is a PixtralProcessor: see `build_tiny_mistral_tokenizer`) is a byte-level BPE learned from a corpus with Mistral's special tokens and a
chat template that renders the pipeline's two-turn chat as Mistral Small's does, deterministically: a corpus
and a seed always give the same model.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    MistralConfig,
    PixtralVisionConfig,
    PreTrainedTokenizerFast,
)

from editr1.models.codecs import Flux2VaeCodec, PixelUnshuffleCodec
from editr1.models.flux2_dev import Flux2DevAdapter
from editr1.models.tiny_flux2_klein import make_codec, tiny_transformer
from editr1.processing.tiny_tokenizer import QWEN2_SPLIT_PATTERN

TEXT_HIDDEN = 32

#: Mistral's control tokens that the chat and the processor use (the released vocabulary has many more).
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
                  "[IMG]", "[IMG_BREAK]", "[IMG_END]")

#: The part of Mistral Small's chat template that `Flux2Pipeline` uses: the beginning-of-sequence token, a
#: system turn in [SYSTEM_PROMPT] ... [/SYSTEM_PROMPT], user turns in [INST] ... [/INST], each turn's content
#: a list of text blocks (the pipeline's `format_input`). A sketch of the released template's shape (that
#: file was not read): tokens and order as Mistral's tekken tokenizer renders a system prompt and a turn.
MISTRAL_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set text = message['content'] %}"
    "{%- else %}{%- set text = message['content'] | selectattr('type', 'equalto', 'text') "
    "| map(attribute='text') | join('') %}{%- endif %}"
    "{%- if message['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' + text + '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{- '[INST]' + text + '[/INST]' }}"
    "{%- else %}{{- text + eos_token }}{%- endif %}"
    "{%- endfor %}"
)

#: The pipeline passes its own `mu` (`compute_empirical_mu`), so of the scheduler's settings only
#: `use_dynamic_shifting` (on) acts. diffusers' conversion script takes FLUX.1-dev's scheduler config, whose
#: values these are (from memory: that config.json was not read).
SCHEDULER_CONFIG = dict(use_dynamic_shifting=True, shift=3.0, base_shift=0.5, max_shift=1.15,
                        base_image_seq_len=256, max_image_seq_len=4096)


def build_tiny_mistral_tokenizer(corpus: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE learned from `corpus` and the pipeline's system message, with Mistral's control tokens
    and the chat template. The released model's `tokenizer` is a PixtralProcessor around such a tokenizer;
    the pipeline's text encoding calls only its `apply_chat_template`, which a tokenizer has too, and
    transformers' PixtralProcessor cannot be built without torchvision (not installed here)."""
    bpe = Tokenizer(models.BPE())
    # Mistral's tekken is a byte-level BPE too; the split pattern is Qwen2's (a stand-in).
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator([SYSTEM_MESSAGE, *corpus], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                        pad_token="<pad>", additional_special_tokens=list(SPECIAL_TOKENS[4:]))
    tokenizer.chat_template = MISTRAL_CHAT_TEMPLATE
    return tokenizer


def tiny_text_encoder(tokenizer: PreTrainedTokenizerFast) -> Mistral3ForConditionalGeneration:
    ids = tokenizer.convert_tokens_to_ids
    text = MistralConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, intermediate_size=64,
        # The pipeline reads layers 10, 20 and 30: one more, so that 30 is an inner layer, as in the released 40.
        num_hidden_layers=max(Flux2DevAdapter.text_encoder_out_layers) + 1,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        max_position_embeddings=Flux2DevAdapter.max_sequence_length,
        rope_parameters={"rope_type": "default", "rope_theta": 1e9}, tie_word_embeddings=False,
        bos_token_id=ids("<s>"), eos_token_id=ids("</s>"), pad_token_id=ids("<pad>"),
    )
    vision = PixtralVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 head_dim=8, patch_size=14, image_size=56)
    config = Mistral3Config(text_config=text, vision_config=vision, image_token_index=ids("[IMG]"),
                            spatial_merge_size=2, tie_word_embeddings=False)
    return Mistral3ForConditionalGeneration(config).eval()


def assemble(adapter: type[Flux2DevAdapter], transformer: Flux2Transformer2DModel,
             codec: Flux2VaeCodec | PixelUnshuffleCodec, text_encoder: Mistral3ForConditionalGeneration | None,
             tokenizer: PreTrainedTokenizerFast) -> Flux2DevAdapter:
    """The adapter over built components, as this preset and the full-size `build_released` assemble them:
    with [dev]'s scheduler."""
    return adapter(transformer, codec, text_encoder, tokenizer, FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG))


def build_tiny_flux2_dev(
    corpus: Iterable[str] = (),
    seed: int = 0,
    codec: str = "pixel",
    num_layers: int = 1,
    num_single_layers: int = 2,
    num_heads: int = 2,
    head_dim: int = 16,
    adapter: type[Flux2DevAdapter] = Flux2DevAdapter,
) -> Flux2DevAdapter:
    """A randomly initialised tiny FLUX.2 [dev]; `corpus` shapes the tokenizer's vocabulary. `codec`: "pixel"
    (the exact pixel-unshuffle codec of the CPU demo) or "vae" (a tiny `AutoencoderKLFlux2`)."""
    torch.manual_seed(seed)
    tokenizer = build_tiny_mistral_tokenizer(corpus)
    latent_codec = make_codec(codec)
    transformer = tiny_transformer(latent_codec, num_layers, num_single_layers, num_heads, head_dim,
                                   len(Flux2DevAdapter.text_encoder_out_layers) * TEXT_HIDDEN, guidance_embeds=True)
    return assemble(adapter, transformer, latent_codec, tiny_text_encoder(tokenizer), tokenizer)
