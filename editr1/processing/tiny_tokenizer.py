"""Build a small byte-level BPE tokenizer with Qwen2's special tokens, offline.

Real Qwen checkpoints ship a 151k-token vocabulary that cannot be downloaded here. Tiny models use
this one instead: same `Qwen2Tokenizer` class, same special tokens, a vocabulary learned from a
corpus the caller supplies, so words of that domain become single tokens.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Qwen2TokenizerFast

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def build_tiny_qwen_tokenizer(corpus: Iterable[str], vocab_size: int = 512) -> Qwen2TokenizerFast:
    """Train a byte-level BPE on `corpus` and wrap it as a Qwen2 tokenizer (deterministic)."""
    bpe = Tokenizer(models.BPE())
    # Qwen2's own pre-tokenization (one token per digit): what `Qwen2Tokenizer` installs on load, so a
    # tokenizer built here and the same one saved and reloaded split text identically.
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(list(corpus), trainer)
    return Qwen2TokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None
    )
