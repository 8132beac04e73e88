"""The `tiny` Qwen-Image-Edit-2509 preset: the tiny Qwen-Image-Edit components behind the Plus adapter.

The 2509 release has the same architecture as Qwen-Image-Edit; only the pipeline (several
references, the "Picture N" chat) differs. The tokenizer's corpus includes that chat, so its words
are single tokens as in the released vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable

from editr1.models.qwen_image_edit_plus import (
    MAX_REFERENCES,
    QwenImageEditPlusAdapter,
    chat_text,
)
from editr1.models.tiny_qwen_image_edit import build_tiny_qwen_image_edit


def build_tiny_qwen_image_edit_plus(
    corpus: Iterable[str] = (), codec: str = "pixel", seed: int = 0,
    adapter: type[QwenImageEditPlusAdapter] = QwenImageEditPlusAdapter, **options: int | bool,
) -> QwenImageEditPlusAdapter:
    """A randomly initialised tiny Qwen-Image-Edit-2509; `corpus` shapes the tokenizer's vocabulary. `adapter`:
    the class that wraps the components (a subclass's `build_tiny` passes itself); `options`: those of
    `build_tiny_qwen_image_edit` (sizes, `zero_cond_t` for 2511)."""
    return build_tiny_qwen_image_edit([chat_text("", MAX_REFERENCES), *corpus], codec=codec, seed=seed,
                                      adapter=adapter, **options)
