"""FLUX.2 [dev]: the [klein] machinery over diffusers' `Flux2Pipeline` (32B transformer, Mistral Small 3.x encoder).

What differs from [klein] (`flux2_klein`), as `Flux2Pipeline` differs from `Flux2KleinPipeline`:
- the text encoder is `Mistral3ForConditionalGeneration` behind a Pixtral processor: each instruction is put in
  a two-turn chat (the pipeline's fixed `SYSTEM_MESSAGE`, then the instruction; no generation prompt), padded
  to 512 tokens, and the hidden states of layers 10, 20 and 30 are stacked per token;
- the transformer is guidance-distilled: the guidance value is an input of every call (`guidance_embeds`),
  4.0 by default, and there is no true CFG (one transformer call per step);
- no step-distilled variant (`is_distilled`) exists.
The rest (VAE and its latent packing, reference sizing, 4-D position ids, the `compute_empirical_mu` schedule,
per-row references run one call per reference layout, the LoRA targets) is [klein]'s, inherited.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from diffusers import AutoencoderKLFlux2, Flux2Pipeline, Flux2Transformer2DModel
from diffusers.pipelines.flux2.pipeline_flux2 import format_input
from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE
from transformers import AutoProcessor, Mistral3Config, Mistral3ForConditionalGeneration, PreTrainedTokenizerBase

from editr1.models.base import DepthKnob, InferenceDefaults, ParameterPart, PublishedTotal, constructing
from editr1.models.codecs import Flux2VaeCodec, PixelUnshuffleCodec
from editr1.models.flux2_klein import RELEASED_VAE, Flux2KleinAdapter

__all__ = ["Flux2DevAdapter", "INFERENCE", "MAX_REFERENCES", "RELEASED_TRANSFORMER", "RELEASED_VAE",
           "RELEASED_TEXT_ENCODER", "RELEASED_VISION_ENCODER", "RELEASED_TEXT_ENCODER_CONFIG"]

#: Reference images a sample may have. diffusers' `Flux2Pipeline` and BFL's inference code take any number;
#: BFL's editing guide recommends at most 6 for [dev] (docs.bfl.ai/guides/prompting_editing_overview,
#: "Reference Images per Model"; help.bfl.ai "FLUX.2 Technical Specifications": multi-reference "Yes (6)").
MAX_REFERENCES = 6

# ---- the released architecture (FLUX.2 [dev]) --------------------------------------------------------------
# Constructor arguments of the full-size components, which `build_released` builds with random weights (bench/):
# `Flux2Transformer2DModel(**RELEASED_TRANSFORMER)`, `AutoencoderKLFlux2(**RELEASED_VAE)` (the VAE every
# FLUX.2 shares: imported from `flux2_klein`), `Mistral3ForConditionalGeneration(Mistral3Config(
# **RELEASED_TEXT_ENCODER_CONFIG))`. The Hub's config.json files of
# black-forest-labs/FLUX.2-dev were not read; the sources are said per value.
#: black-forest-labs/FLUX.2-dev transformer/config.json: the "flux2-dev" config of diffusers'
#: scripts/convert_flux2_to_diffusers.py: 8 double-stream and 48 single-stream blocks of 48 heads of 128
#: (hidden 6144), `in_channels` 128 (2x2 patches of 32 latent channels), `joint_attention_dim` 15360 (3 stacked
#: Mistral layers of 5120), MLP ratio 3, RoPE axes 4 x 32 with theta 2000, eps 1e-6, 256 timestep channels. That
#: config does not set `guidance_embeds`, so the model takes the constructor's default, True: the guidance
#: embedding of a guidance-distilled model (BFL's README calls [dev] guidance-distilled). Every value is also
#: `Flux2Transformer2DModel`'s default in the installed diffusers. 32B parameters, as BFL says
#: (tests/test_parity_flux2_dev.py counts them).
RELEASED_TRANSFORMER = dict(
    patch_size=1, in_channels=128, out_channels=None, num_layers=8, num_single_layers=48, attention_head_dim=128,
    num_attention_heads=48, joint_attention_dim=15360, timestep_guidance_channels=256, mlp_ratio=3.0,
    axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, eps=1e-6, guidance_embeds=True,
)
#: The text model of black-forest-labs/FLUX.2-dev text_encoder/config.json. diffusers' conversion script
#: builds the pipeline's text encoder from mistralai/Mistral-Small-3.2-24B-Instruct-2506 (and its processor
#: from Mistral-Small-3.1-24B-Instruct-2503), which share the Mistral Small 3.1 architecture; these are
#: transformers' `Mistral3Config` text defaults, documented as that model's: 40 layers (the pipeline reads
#: 10, 20 and 30) of 5120, MLP 32768, 32 query and 8 key-value heads of 128, vocabulary 131072, RoPE theta
#: 1e9, 131072 positions, RMS eps 1e-5, untied embeddings. The token ids are the tokenizer's.
RELEASED_TEXT_ENCODER = dict(
    model_type="mistral", vocab_size=131072, hidden_size=5120, intermediate_size=32768, num_hidden_layers=40,
    num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
    rms_norm_eps=1e-5, hidden_act="silu", rope_parameters={"rope_type": "default", "rope_theta": 1e9},
    tie_word_embeddings=False,
)
#: Its Pixtral vision tower (part of the checkpoint, never run by the pipeline's text encoding): transformers'
#: `Mistral3Config` vision defaults, Mistral Small 3.1's: 24 layers of 1024, 16 heads of 64, MLP 4096,
#: 14-pixel patches, 1540-pixel images.
RELEASED_VISION_ENCODER = dict(
    model_type="pixtral", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
    head_dim=64, patch_size=14, image_size=1540,
)
#: The whole `Mistral3Config`: the two above, and transformers' top-level defaults (Mistral Small 3.1's: image
#: token 10, 2x2 spatial merge, GELU projector without bias) except the embeddings: untied, as the text
#: config says (the installed transformers' top-level default, tied, would drop the 0.67B lm_head).
#: 24.0B parameters, Mistral's "24B".
RELEASED_TEXT_ENCODER_CONFIG = dict(
    text_config=RELEASED_TEXT_ENCODER, vision_config=RELEASED_VISION_ENCODER, image_token_index=10,
    spatial_merge_size=2, projector_hidden_act="gelu", multimodal_projector_bias=False, tie_word_embeddings=False,
)

#: `Flux2Pipeline.__call__`'s defaults: 50 steps and distilled guidance 4.0 (its `guidance_scale`, given to the
#: transformer's guidance embedding; the model card's example uses the same 50 steps and 4); no true CFG. BFL's
#: code agrees (src/flux2/util.py `FLUX2_MODEL_INFO` for flux.2-dev as read in a copy: 50 steps, guidance 4;
#: not checked here: unverified). The guidance also fills in where a caller gives none (`rollout.guidance: null`).
INFERENCE = InferenceDefaults(steps=50, cfg_scale=1.0, negative_prompt="", cfg_renorm=False, guidance=4.0,
                              max_references=MAX_REFERENCES)


class Flux2DevAdapter(Flux2KleinAdapter):
    family = "flux2-dev"
    pipeline_class = "Flux2Pipeline"
    lora_pipeline = Flux2Pipeline
    inference = INFERENCE
    model_name = "FLUX.2 [dev]"
    #: Mistral tokens per instruction chat: `Flux2Pipeline`'s `max_sequence_length` default (512).
    max_sequence_length = 512
    #: The Mistral layers whose hidden states make the text stream: the pipeline's `text_encoder_out_layers`.
    text_encoder_out_layers = (10, 20, 30)
    text_encoder_class = Mistral3ForConditionalGeneration
    #: The pipeline's `tokenizer`: the released model's is a PixtralProcessor (AutoProcessor loads it; a folder
    #: with a tokenizer alone, as the tiny preset's, loads as that tokenizer).
    tokenizer_class = AutoProcessor
    #: The pipeline's system turn, before every instruction.
    system_message = SYSTEM_MESSAGE

    @classmethod
    def saved_inference(cls, folder: Path) -> InferenceDefaults:
        return cls.inference  # one variant

    # `is_distilled`: always False ([klein]'s loader reads it from model_index.json, where [dev] has none).

    @classmethod
    def build_tiny(cls, corpus: list[str], seed: int = 0) -> "Flux2DevAdapter":
        from editr1.models.tiny_flux2_dev import build_tiny_flux2_dev  # it imports this module

        return build_tiny_flux2_dev(corpus, seed=seed, adapter=cls)

    def _model_index(self) -> dict:
        return {
            "_class_name": self.pipeline_class,
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
            "text_encoder": ["transformers", "Mistral3ForConditionalGeneration"],
            "tokenizer": ["transformers", type(self.tokenizer).__name__],
            "transformer": ["diffusers", "Flux2Transformer2DModel"],
            "vae": ["diffusers", "AutoencoderKLFlux2"] if isinstance(self.codec, Flux2VaeCodec)
            else ["editr1", PixelUnshuffleCodec.class_name],
        }

    def conditioning_settings(self) -> dict:
        return {**super().conditioning_settings(), "system_message": self.system_message}

    # ---- conditioning --------------------------------------------------------------------------
    @property
    def prompt_tokenizer(self) -> PreTrainedTokenizerBase:
        # The processor's tokenizer (or the tokenizer itself, the tiny preset's); special tokens split the chat before the BPE runs, so the instruction
        # between [INST] and [/INST] is tokenized as it is alone.
        return getattr(self.tokenizer, "tokenizer", self.tokenizer)

    def chat_text(self, prompt: str) -> str:
        """The text Mistral sees for one instruction, as `Flux2Pipeline._get_mistral_3_small_prompt_embeds`
        builds it (before padding)."""
        (messages,) = format_input([prompt], self.system_message)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

    def _prompt_embeds(self, prompts: list[str], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        # The inner language model: the hidden states the pipeline reads from the whole model (text only, no
        # image), without the vocabulary projection of all 512 positions that it computes and drops.
        return Flux2Pipeline._get_mistral_3_small_prompt_embeds(
            self.text_encoder.model.language_model, self.tokenizer, prompts, dtype=dtype, device=device,
            max_sequence_length=self.max_sequence_length, system_message=self.system_message,
            hidden_states_layers=self.text_encoder_out_layers,
        )

    # ---- denoising -----------------------------------------------------------------------------
    def _guidance_input(self, guidance: float | None, tokens: torch.Tensor) -> torch.Tensor:
        """The distilled guidance of every row, float32 as the pipeline gives it; the family's default (4.0)
        when the caller gives none."""
        value = self.inference.guidance if guidance is None else guidance
        return torch.full((tokens.shape[0],), float(value), device=tokens.device, dtype=torch.float32)

    # ---- the released architecture, for the benchmarks --------------------------------------------
    # Not on docs/real_scale.md: the published counts are the model cards' whole billions (the transformer:
    # FLUX.2 [dev]'s "32 billion parameter"; the text encoder: Mistral Small 3.1 / 3.2's "24B").
    depth_knobs = (
        DepthKnob("double-stream block", RELEASED_TRANSFORMER["num_layers"],
                  published="model card: 32 B in all, no split by block type"),
        DepthKnob("single-stream block", RELEASED_TRANSFORMER["num_single_layers"],
                  published="model card: 32 B in all, no split by block type"),
        # No fewer than the layers up to the last one the pipeline reads, that one an inner layer as released.
        DepthKnob("Mistral decoder layer", RELEASED_TEXT_ENCODER["num_hidden_layers"],
                  minimum=max(text_encoder_out_layers) + 1, module="text_encoder",
                  published="24 B / 40 = {} (incl. embeddings, LM head, vision tower)", published_params=24e9 / 40),
        # Part of the checkpoint, never run by the pipeline's text encoding.
        DepthKnob("Pixtral vision layer", RELEASED_VISION_ENCODER["num_hidden_layers"], module="text_encoder",
                  published="24 B in all, no split"),
    )
    parameter_parts = {
        "transformer": ParameterPart("transformer"),
        "Mistral decoder layers": ParameterPart("text_encoder", lambda name: ".language_model.layers." in name),
        "Mistral embedding, final norm": ParameterPart(
            "text_encoder", lambda name: ".language_model." in name and ".layers." not in name),
        "Mistral LM head": ParameterPart("text_encoder", lambda name: name.startswith("lm_head")),
        "Pixtral vision tower, projector": ParameterPart(
            "text_encoder", lambda name: ".vision_tower." in name or ".multi_modal_projector." in name),
        "VAE": ParameterPart("codec.vae"),
    }
    published_totals = (
        PublishedTotal("FLUX.2 [dev] transformer (8 double + 48 single)", ("transformer",), 32e9),
        PublishedTotal("Mistral Small 3.x 24B (40 layers, 24 vision layers, LM head)",
                       ("Mistral decoder layers", "Mistral embedding, final norm", "Mistral LM head",
                        "Pixtral vision tower, projector"), 24e9),
        PublishedTotal("  of which Pixtral vision tower and projector", ("Pixtral vision tower, projector",)),
        PublishedTotal("  of which LM head (untied)", ("Mistral LM head",)),
        PublishedTotal("FLUX.2 VAE (built at full size)", ("VAE",)),
    )
    published_lora_params = None
    #: None: the page measured none at [dev]'s 6144 width.
    published_activations = None

    @classmethod
    def build_released(cls, depths: Mapping[str, int] | None = None, corpus: Iterable[str] = (),
                       device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16,
                       text_encoders: bool = True) -> "Flux2DevAdapter":
        """[dev]'s transformer (6144 wide, with the guidance embedding), Mistral Small 3.x 24B with its real
        131072-token embedding and untied LM head, and the [klein] VAE."""
        from editr1.models.tiny_flux2_dev import assemble, build_tiny_mistral_tokenizer  # it imports this module

        depth = cls._released_depths(depths)
        tokenizer = build_tiny_mistral_tokenizer(corpus)  # a tokenizer, as the tiny preset's: see there
        ids = tokenizer.convert_tokens_to_ids
        text = {**RELEASED_TEXT_ENCODER, "num_hidden_layers": depth["Mistral decoder layer"],
                "bos_token_id": ids("<s>"), "eos_token_id": ids("</s>"), "pad_token_id": ids("<pad>")}
        vision = {**RELEASED_VISION_ENCODER, "num_hidden_layers": depth["Pixtral vision layer"]}
        config = Mistral3Config(**{**RELEASED_TEXT_ENCODER_CONFIG, "text_config": text, "vision_config": vision,
                                   "image_token_index": ids("[IMG]")})
        with constructing(device, dtype):
            transformer = Flux2Transformer2DModel(**{**RELEASED_TRANSFORMER, "num_layers": depth["double-stream block"],
                                                     "num_single_layers": depth["single-stream block"]}).eval()
            text_encoder = Mistral3ForConditionalGeneration(config).eval() if text_encoders else None
            vae = AutoencoderKLFlux2(**RELEASED_VAE).eval()
        return assemble(cls, transformer, Flux2VaeCodec(vae), text_encoder, tokenizer)

    @classmethod
    def other_released_totals(cls) -> dict[str, tuple[int, float | None]]:
        return {}  # one size
