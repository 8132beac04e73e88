"""The `tiny` FLUX.1 Kontext preset: the real architecture at toy scale, built offline from configs.

Every component is the class the released model uses (FluxTransformer2DModel with the guidance
embedding, AutoencoderKL with FLUX's shift/scale, CLIPTextModel + CLIPTokenizer, T5EncoderModel +
T5TokenizerFast, the flow-match scheduler with FLUX.1's settings); only the sizes shrink. The two
tokenizers are learned here from a corpus (byte-level BPE merges for CLIP, a Unigram trained with the
`tokenizers` library for T5), deterministically: a corpus and a seed always give the same model, which
a conditions cache keyed by them relies on. They are wrapped in the transformers classes, so they save
and reload like the real ones.
`codec="pixel"` swaps the VAE for the exact pixel-unshuffle codec of the CPU demo.
"""

from __future__ import annotations

import json
import string
from collections import Counter
from collections.abc import Iterable

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxTransformer2DModel,
)
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from editr1.models.codecs import PixelUnshuffleCodec, ScaledVaeCodec
from editr1.models.flux_kontext import FluxKontextAdapter

TEXT_HIDDEN = 32
# Always in the tokenizer corpus, so an empty corpus still trains (and common words stay whole).
BASE_CORPUS = ("Change the color of the object. Remove the small square, add a red circle, make it blue.",)

# FLUX.1's released scheduler settings.
SCHEDULER_CONFIG = dict(
    base_image_seq_len=256,
    base_shift=0.5,
    max_image_seq_len=4096,
    max_shift=1.15,
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
)


def _learn_merges(words: Counter, count: int) -> list[tuple[str, str]]:
    """`count` BPE merges of `words` (symbol tuples -> frequency): each time the most frequent adjacent
    pair, ties to the smallest pair, so that a corpus always gives the same merges (the `tokenizers`
    trainer breaks ties in hash-map order)."""
    merges = []
    for _ in range(count):
        pairs = Counter()
        for word, frequency in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += frequency
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        merged = Counter()
        for word, frequency in words.items():
            symbols, i = [], 0
            while i < len(word):
                if word[i : i + 2] == best:
                    symbols.append(best[0] + best[1])
                    i += 2
                else:
                    symbols.append(word[i])
                    i += 1
            merged[tuple(symbols)] += frequency
        words = merged
    return merges


def build_tiny_clip_tokenizer(corpus: Iterable[str], vocab_size: int = 320) -> CLIPTokenizer:
    """A byte-level BPE with CLIP's `</w>` word ends, learned from `corpus` (deterministic): its vocabulary
    is the special tokens, every byte alone and as a word end, and `vocab_size` less the special tokens,
    the bytes and the word ends seen merges."""
    # CLIPTokenizer installs its own normalizer (lowercase) and pre-tokenizer when built from a
    # vocabulary; words split exactly so are what it will merge.
    template = CLIPTokenizer().backend_tokenizer
    words = Counter()
    for text in corpus:
        for word, _ in template.pre_tokenizer.pre_tokenize_str(template.normalizer.normalize_str(text)):
            words[(*word[:-1], word[-1] + "</w>")] += 1
    specials = ["<|startoftext|>", "<|endoftext|>"]  # ids 0, 1: bos, eos (= pad)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    word_ends = {word[-1] for word in words}
    merges = _learn_merges(words, max(vocab_size - len(specials) - len(alphabet) - len(word_ends), 0))
    # Every byte alone and as a word end, as in CLIP's vocabulary: unseen text never maps to unk,
    # which is CLIP's eos and would move the pooled position.
    tokens = [*specials, *alphabet, *(char + "</w>" for char in alphabet), *(a + b for a, b in merges)]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def build_tiny_t5_tokenizer(corpus: Iterable[str], vocab_size: int = 256) -> T5TokenizerFast:
    """A sentencepiece-style Unigram with T5's special tokens (pad 0, eos 1, unk 2), trained on `corpus`
    (deterministic)."""
    template = T5TokenizerFast().backend_tokenizer  # T5's whitespace + metaspace pre-tokenizer
    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = template.pre_tokenizer
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation),
        show_progress=False,
    )
    texts = list(corpus)
    unigram.train_from_iterator(texts, trainer)
    vocab = [(piece, round(score, 8)) for piece, score in json.loads(unigram.to_str())["model"]["vocab"]]
    # The trainer sums scores, and gives the characters it must keep but did not learn their scores,
    # in hash-map order, which differs from build to build. Scores rounded past the summation order,
    # the single characters' scores handed out again from the highest to the characters the corpus
    # uses most (ties in sorted order), the same tokenizer comes from a corpus every time.
    frequency = Counter("".join(texts).replace(" ", "▁"))
    singles = [i for i, (piece, _) in enumerate(vocab) if i >= 3 and len(piece) == 1]
    scores = sorted((vocab[i][1] for i in singles), reverse=True)
    chars = sorted((vocab[i][0] for i in singles), key=lambda char: (-frequency[char], char))
    for i, char, score in zip(sorted(singles), chars, scores):
        vocab[i] = (char, score)
    vocab = vocab[:3] + sorted(vocab[3:], key=lambda item: (-item[1], item[0]))
    # No sentinel <extra_id_*> tokens: they only matter for T5's span-corruption pre-training.
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)


def tiny_clip_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length, projection_dim=TEXT_HIDDEN,
        # The pooled output is read at the first eos token: its id must be the tokenizer's.
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config).eval()


def tiny_t5_encoder(tokenizer: T5TokenizerFast) -> T5EncoderModel:
    config = T5Config(
        vocab_size=len(tokenizer), d_model=TEXT_HIDDEN, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu",  # T5 v1.1, as FLUX's T5-XXL
        relative_attention_num_buckets=8, relative_attention_max_distance=32, dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=0,
    )
    return T5EncoderModel(config).eval()


def assemble(adapter: type[FluxKontextAdapter], transformer: FluxTransformer2DModel,
             codec: ScaledVaeCodec | PixelUnshuffleCodec, text_encoder: CLIPTextModel | None, tokenizer: CLIPTokenizer,
             text_encoder_2: T5EncoderModel | None, tokenizer_2: T5TokenizerFast) -> FluxKontextAdapter:
    """The adapter over built components, as this preset and the full-size `build_released` assemble them:
    with FLUX.1's scheduler."""
    return adapter(transformer, codec, text_encoder, tokenizer, text_encoder_2, tokenizer_2,
                   FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG))


def build_tiny_flux_kontext(
    corpus: Iterable[str] = (),
    seed: int = 0,
    codec: str = "vae",
    num_layers: int = 1,
    num_single_layers: int = 1,
    num_heads: int = 2,
    head_dim: int = 16,
    adapter: type[FluxKontextAdapter] = FluxKontextAdapter,
) -> FluxKontextAdapter:
    """A randomly initialised tiny FLUX.1 Kontext; `corpus` shapes both tokenizers' vocabularies. `adapter`:
    the class that wraps the components (a subclass's `build_tiny` passes itself)."""
    torch.manual_seed(seed)
    texts = [*BASE_CORPUS, *corpus]
    tokenizer, tokenizer_2 = build_tiny_clip_tokenizer(texts), build_tiny_t5_tokenizer(texts)
    if codec == "vae":
        # FLUX's VAE at toy width: 16 latent channels, its shift/scale, no quant convs; three blocks
        # downsample by 4 (FLUX: four blocks, 8), so 32x32 images give 8x8 latents, 16 tokens.
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=16, norm_num_groups=8,
            sample_size=32, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
        )
        latent_codec = ScaledVaeCodec(vae.eval())
    elif codec == "pixel":
        latent_codec = PixelUnshuffleCodec(factor=2)
    else:
        raise ValueError(f"codec must be 'vae' or 'pixel', got {codec!r}")
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=latent_codec.latent_channels * 4,  # 2x2 latent patches packed into one token
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=head_dim,
        num_attention_heads=num_heads,
        joint_attention_dim=TEXT_HIDDEN,  # T5's width
        pooled_projection_dim=TEXT_HIDDEN,  # CLIP's width
        guidance_embeds=True,
        axes_dims_rope=(head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8),  # sums to head_dim
    ).eval()
    return assemble(adapter, transformer, latent_codec, tiny_clip_text_encoder(tokenizer), tokenizer,
                    tiny_t5_encoder(tokenizer_2), tokenizer_2)
