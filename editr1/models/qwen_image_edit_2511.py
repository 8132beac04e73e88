"""Qwen-Image-Edit-2511: the 2509 pipeline (`QwenImageEditPlusPipeline`, one to three references, the
"Picture N" chat) over a transformer with `zero_cond_t` on.

With `zero_cond_t`, diffusers' `QwenImageTransformer2DModel` modulates the reference tokens with the
embedding of t = 0 and the noisy target tokens with the sample's t, reading from `img_shapes` which tokens
are the target's (the first grid) and which the references' (the rest). The Plus adapter already passes
every row's `img_shapes`, so its conditioning, batching and sampling serve 2511 unchanged; what differs is
the transformer config, which detection reads (`recognizes`), and the published inference settings.
"""

from __future__ import annotations

from editr1.models.base import InferenceDefaults
from editr1.models.qwen_image_edit_plus import QwenImageEditPlusAdapter


class QwenImageEdit2511Adapter(QwenImageEditPlusAdapter):
    family = "qwen-image-edit-2511"
    #: Qwen/Qwen-Image-Edit-2511 transformer/config.json: 2509's architecture with `zero_cond_t` on (and so
    #: its released build, `build_released`).
    zero_cond_t = True
    #: The model card's settings: 40 steps, true CFG 4.0 with a " " negative prompt, up to 3 references.
    inference = InferenceDefaults(steps=40, cfg_scale=4.0, negative_prompt=" ", cfg_renorm=True, max_references=3)

    @classmethod
    def build_tiny(cls, corpus: list[str], seed: int = 0) -> "QwenImageEdit2511Adapter":
        from editr1.models.tiny_qwen_image_edit_plus import build_tiny_qwen_image_edit_plus

        return build_tiny_qwen_image_edit_plus(corpus, seed=seed, adapter=cls, zero_cond_t=True)
