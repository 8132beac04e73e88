"""The contract between the trainer and a base editing model.

An adapter wraps one family's diffusers components (transformer, VAE, text encoder, scheduler) and
exposes only what the Edit-R1 loop needs. Tensors on the trainer side are *packed tokens*
`(B, S, C)`; pixels are `(B, 3, H, W)` floats in [0, 1]. Adding a model family is one file that
subclasses `EditModelAdapter`, used from a config by its dotted path or named in
`editr1.models.registry.FAMILIES` (docs/extending.md).
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Encoding
from torch import nn
from transformers import PreTrainedTokenizerBase

from editr1.errors import EditR1Error
from editr1.models.lora_io import LoraSpec, save_lora


class Conditions:
    """Everything a velocity call needs besides the noisy latents, batch-first.

    `tensors` are sliced per sample; `shared` holds per-batch metadata that is the same for every
    sample (e.g. token-grid shapes at a fixed resolution).

    `select` is lazy: it keeps a reference to the rows it was taken from and the index, and gathers
    the rows only when `tensors` is first read (then keeps them). A selection of a selection composes
    the indices, so repeating each group's conditions K times for a rollout and then taking the rows
    of one sampler chunk or micro-batch gathers only that chunk's rows, never the K-fold batch.
    """

    def __init__(self, tensors: dict[str, torch.Tensor | None], shared: dict | None = None):
        self._tensors: dict[str, torch.Tensor | None] | None = tensors
        self.shared = {} if shared is None else shared
        #: A selection: the tensors it selects from and the rows it takes (None for one that is no selection).
        self._base: dict[str, torch.Tensor | None] | None = None
        self._index: torch.Tensor | None = None

    @property
    def tensors(self) -> dict[str, torch.Tensor | None]:
        if self._tensors is None:
            index = self._index
            self._tensors = {k: None if t is None else t[index.to(t.device)] for k, t in self._base.items()}
        return self._tensors

    def select(self, index: torch.Tensor | list[int]) -> "Conditions":
        """The rows `index` (with repeats), e.g. each group's conditions repeated K times; gathered on
        first use of `tensors`."""
        index = torch.as_tensor(index, dtype=torch.long)
        selected = Conditions(None, self.shared)
        if self._index is not None:
            selected._base, selected._index = self._base, self._index[index.to(self._index.device)]
        else:
            selected._base, selected._index = self._tensors, index
        return selected

    def __repr__(self) -> str:
        rows = self._index.numel() if self._index is not None else None
        names = list((self._base if self._tensors is None else self._tensors).keys())
        return f"Conditions({names}, shared={self.shared!r}" + (f", {rows} selected rows)" if rows is not None else ")")


@dataclass(frozen=True)
class InferenceDefaults:
    """A family's stock-pipeline inference settings: what `editr1 edit` uses unless told otherwise,
    and how true CFG combines the two branches wherever it runs (rollouts and evaluation too)."""

    steps: int = 28
    #: True CFG scale (1: off); the negative prompt of its unconditional branch.
    cfg_scale: float = 1.0
    negative_prompt: str = " "
    #: Norm-preserving CFG (the Qwen-Image pipelines rescale the guided velocity; FLUX's does not).
    cfg_renorm: bool = True
    #: Distilled guidance of guidance-embedded transformers; None for those without a guidance input.
    guidance: float | None = None
    #: Source images a sample may have (1: the source only).
    max_references: int = 1


# ---- the released architecture, as the benchmarks build and count it (bench/real_width.py, gpu_iteration.py) ----
#: The LoRA rank of the published LoRA parameter counts (docs/real_scale.md's, at rank 32).
PUBLISHED_LORA_RANK = 32


@dataclass(frozen=True)
class DepthKnob:
    """A repeated part of a family's released architecture whose count `build_released` can cut: the
    transformer blocks of one kind, the layers of a text encoder."""

    #: Its name in `build_released`'s `depths` and in the benchmarks' tables ("double-stream block").
    name: str
    #: How many the released model has.
    full: int
    #: The fewest a build may have (FLUX.2's text encoders: up to the last layer the pipeline reads).
    minimum: int = 1
    #: The adapter attribute of the module it repeats in ("transformer", "text_encoder", ...).
    module: str = "transformer"
    #: What the published sources say of one of them: a text, `{}` in it where `published_params`
    #: (parameters per one) goes, formatted by the benchmark.
    published: str = ""
    published_params: float | None = None


@dataclass(frozen=True)
class ParameterPart:
    """Parameters of one of an adapter's modules that the benchmarks count apart (`parameter_parts`)."""

    #: The adapter attribute of the module ("transformer", "text_encoder", "codec.vae").
    module: str
    #: Which of its parameters, by name; None: all of them.
    keep: Callable[[str], bool] | None = None


@dataclass(frozen=True)
class PublishedTotal:
    """A row of the benchmarks' full-depth parameter table: parts of `parameter_parts` added up, beside the
    count published for them (docs/real_scale.md's or a model card's; None where none is)."""

    label: str
    parts: tuple[str, ...]
    published: float | None = None


@dataclass(frozen=True)
class PublishedActivations:
    """A measured peak beyond the weights of one NFT micro-step at B = 2 on the GPU (the naive path;
    docs/real_scale.md, "Activations"), with gradient checkpointing on and off, and the tokens per sample
    and transformer blocks of the model it was measured on: the benchmarks scale it to one block."""

    checkpointing_on_gib: float
    checkpointing_off_gib: float
    tokens: int
    blocks: int


def pad_rows(rows: list[torch.Tensor]) -> torch.Tensor:
    """One-row tensors `(1, L_i, ...)` right-padded with zeros to the longest `L_i` and stacked into
    `(B, max L_i, ...)`: how the families pad prompt embeddings, their masks and reference latents."""
    length = max(row.shape[1] for row in rows)
    batch = rows[0].new_zeros(len(rows), length, *rows[0].shape[2:])
    for i, row in enumerate(rows):
        batch[i, : row.shape[1]] = row[0]
    return batch


# ---- multi-reference families: one transformer call per reference layout -------------------------------
Layout = tuple[tuple[int, int], ...]


def velocity_by_layout(
    tokens: torch.Tensor, sigma: torch.Tensor, tensors: dict[str, torch.Tensor],
    run: Callable[[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], Layout], torch.Tensor],
) -> torch.Tensor:
    """`run(tokens, sigma, tensors, layout)` once per reference layout in the batch (the count and token grid
    of each reference, from `tensors["reference_grids"]` `(B, N, 2)`, zero rows past a sample's last), with
    the results put back in row order. The transformers take one row's positions for a whole call, so rows of
    other layouts may not share it."""
    layouts: dict[Layout, list[int]] = {}
    for row, grids in enumerate(tensors["reference_grids"].tolist()):
        layouts.setdefault(tuple((rows, cols) for rows, cols in grids if rows > 0), []).append(row)
    if len(layouts) == 1:
        (layout,) = layouts
        return run(tokens, sigma, tensors, layout)
    outputs, order = [], []
    for layout, rows in layouts.items():
        index = torch.tensor(rows, device=tokens.device)
        part = {name: t[index.to(t.device)] for name, t in tensors.items()}
        outputs.append(run(tokens[index], sigma[index], part, layout))
        order += rows
    inverse = torch.empty(tokens.shape[0], dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(tokens.shape[0])
    return torch.cat(outputs)[inverse.to(tokens.device)]


def without_reference_padding(rows: list["Conditions"]) -> list["Conditions"]:
    """Rows split from a batch (`split_conditions`), each cut to its own references' grids and latent tokens."""
    for row in rows:
        grids = row.tensors["reference_grids"]
        count = int((grids[0, :, 0] > 0).sum())
        tokens = int((grids[0, :count, 0] * grids[0, :count, 1]).sum())
        row.tensors["reference_grids"] = grids[:, :count]
        row.tensors["image_tokens"] = row.tensors["image_tokens"][:, :tokens]
    return rows


def uneven_layout_calls(condition_area: int | None, reference_counts: list[int]) -> str | None:
    """Why a batch of a multi-reference family makes several transformer calls (`velocity_by_layout`)."""
    if condition_area is not None:
        return ("model.condition_area is set, so each reference's latent grid follows its image's size, "
                "and a batch makes one transformer call per reference layout")
    counts = sorted(set(reference_counts))
    if len(counts) > 1:
        return (f"the samples have {' or '.join(map(str, counts))} reference images, and a batch makes one "
                "transformer call per reference count")
    return None


def _encoding_on_device(encode):
    """`encode_conditions` with the text encoders on the adapter's device while it runs (when offloaded)."""

    @functools.wraps(encode)
    def encode_conditions(self, *args, **kwargs):
        if not self.text_encoders_loaded:
            raise EditR1Error(f"{type(self).__name__}: its text encoders were loaded without weights (a run that reads "
                              "a conditions cache never encodes), so it cannot encode")
        with self.text_encoders_on_device():
            self._bring_text_encoders()
            return encode(self, *args, **kwargs)

    return encode_conditions


def _placing_text_encoders(move):
    """`to` followed by the placement of the text encoders: on the device, or on `offload_device`."""

    @functools.wraps(move)
    def to(self, device, *args, **kwargs):
        result = move(self, device, *args, **kwargs)
        self._place_text_encoders(device)
        return result

    return to


@contextmanager
def constructing(device: torch.device | str, dtype: torch.dtype) -> Iterator[None]:
    """Modules built inside get their parameters on `device` (e.g. "meta": no memory), in `dtype` (no
    float32 copy first): how the benchmarks build the released architectures with random weights."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def awaiting_weights(model_class: type, folder: str | Path, dtype: torch.dtype) -> nn.Module:
    """A diffusers model built from `folder`'s config as its `from_pretrained` builds it before reading the
    weights (in `dtype`): its parameters on the meta device, nothing read or allocated; its buffers and
    other tensors computed as usual. For the processes of a sharded run, which receive their slices of the
    weights from the main process (`trainer.sharding.load_from_main`)."""
    from accelerate import init_empty_weights

    config = model_class.load_config(folder)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with init_empty_weights():  # parameters only: buffers stay real, as from_pretrained builds them
            model = model_class.from_config(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def without_weights(model_class: type, folder: str | Path, dtype: torch.dtype) -> nn.Module:
    """A transformers model built from `folder`'s config on the meta device: its structure and dtypes,
    no weights read or allocated. For text encoders a run never runs (`text_encoders_loaded` False)."""
    config = model_class.config_class.from_pretrained(folder)
    with torch.device("meta"):
        return model_class._from_config(config, dtype=dtype).eval()


class EditModelAdapter(ABC):
    """One base-model family behind a small, uniform interface.

    Text-encoder offload (`model.offload_text_encoder`) is the base class's, for every family: a
    subclass names its text encoders in `text_encoders()`, and the base class wraps the subclass's
    own `to` and `encode_conditions` (`__init_subclass__`). With `offload_text_encoder` set, `to(device)`
    leaves the text encoders on `offload_device` (the CPU), and each `encode_conditions` call moves them
    to the adapter's device while it runs and back when it returns (its outputs stay on the device).
    Inside `text_encoders_on_device()` they go back only when that context ends: a caller that encodes
    many batches at once moves them once.
    """

    #: The family's name in messages (and in `editr1.models.registry.FAMILIES` for a built-in one).
    family: str
    #: The diffusers pipeline class `save_pretrained` names in `model_index.json`; a saved model's family
    #: is detected by it (`recognizes`).
    pipeline_class: str
    inference: InferenceDefaults
    transformer: nn.Module
    #: The flow-match scheduler whose config gives the sigma schedule (`sigmas`).
    scheduler: object
    #: Pixels <-> latents (`encode`, `decode`, `scale_factor`, `latent_channels`).
    codec: object
    #: Module names LoRA attaches to (peft `target_modules`).
    lora_target_modules: tuple[str, ...]
    #: Pixel area the source image is resized to for conditioning; None: the target size.
    condition_area: int | None = None
    #: Keep the text encoders (`text_encoders()`) on `offload_device` except while `encode_conditions` runs.
    offload_text_encoder: bool = False
    #: Where offloaded text encoders wait: the CPU.
    offload_device: torch.device = torch.device("cpu")
    _encoding_depth: int = 0
    _text_encoders_on_device: bool = False
    #: Inside `encoding_on`: the device encoding runs on, which `device` then reports.
    _encoding_device: torch.device | None = None
    #: False: the text encoders are their modules without weights (`without_weights`), and encoding is an
    #: error: what a run that reads every condition from a cache loads.
    text_encoders_loaded: bool = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "to" in cls.__dict__:
            cls.to = _placing_text_encoders(cls.__dict__["to"])
        if "encode_conditions" in cls.__dict__:
            cls.encode_conditions = _encoding_on_device(cls.__dict__["encode_conditions"])

    @classmethod
    def saved_inference(cls, folder: Path) -> InferenceDefaults:
        """The inference defaults of the model saved in `folder`, read without loading it: the family's,
        unless a variant's config says otherwise (the CLIs size and check their work by these first)."""
        return cls.inference

    @classmethod
    def recognizes(cls, pipeline: str, transformer_config: dict) -> bool:
        """Whether a saved model, by its `model_index.json` pipeline class and its transformer's config, is of
        this family. Families that share a pipeline class tell themselves apart by the transformer config."""
        return pipeline == cls.pipeline_class

    def text_encoders(self) -> list[nn.Module]:
        """The modules that encode instructions and run only inside `encode_conditions` (Qwen2.5-VL; CLIP
        and T5), which `offload_text_encoder` keeps on the CPU. A family whose `to` does not move them
        leaves that to the base class, which puts them on the device or the CPU after `to`. Default:
        none (and then the trainer refuses `model.offload_text_encoder`)."""
        return []

    def _place_text_encoders(self, device: torch.device | str) -> None:
        if not self.text_encoders_loaded:
            return  # nothing to move: no weights
        target = self.offload_device if self.offload_text_encoder else torch.device(device)
        for module in self.text_encoders():
            module.to(target)

    @contextmanager
    def text_encoders_on_device(self) -> Iterator[None]:
        """While it lasts, offloaded text encoders that an `encode_conditions` call inside it brought to the
        adapter's device (`device`) stay there; they go back to `offload_device` when it ends. So a caller
        that encodes many batches moves them once, and one that encodes nothing moves nothing. Without
        offload it does nothing."""
        self._encoding_depth += 1
        try:
            yield
        finally:
            self._encoding_depth -= 1
            if not self._encoding_depth and self._text_encoders_on_device:
                for module in self.text_encoders():
                    module.to(self.offload_device)
                self._text_encoders_on_device = False

    def _bring_text_encoders(self) -> None:
        if self.offload_text_encoder and not self._text_encoders_on_device:
            for module in self.text_encoders():
                module.to(self.device)
            self._text_encoders_on_device = True

    @contextmanager
    def encoding_on(self, device: torch.device | str) -> Iterator[None]:
        """While it lasts, `encode_conditions` runs on `device` with only what it uses there: the codec (the
        source images' latents) and, from the first encode, the text encoders (moved as offloaded ones
        are); `device` reports `device`. The transformer stays where it is, so it need not fit beside them
        (Qwen-Image's is 20B parameters). When it ends the codec and the text encoders go back to
        `offload_device` (the CPU). For an adapter on the CPU that only encodes: `editr1 precompute`."""
        previous = self._encoding_device, self.offload_text_encoder
        self._encoding_device, self.offload_text_encoder = torch.device(device), True
        self.codec.to(device)
        try:
            with self.text_encoders_on_device():
                yield
        finally:
            self.codec.to(self.offload_device)
            self._encoding_device, self.offload_text_encoder = previous

    @abstractmethod
    def use_pipeline_sizing(self) -> "EditModelAdapter":
        """Size the source images for conditioning as the family's diffusers pipeline does (instead of at
        the output size), its pixel areas times `codec.area_scale` (1 but for the tiny presets' pixel
        codec, whose areas give the released models' token grid); returns the adapter."""

    @classmethod
    @abstractmethod
    def from_pretrained(cls, path: str | Path, torch_dtype: torch.dtype = torch.float32) -> "EditModelAdapter":
        """Load from a local diffusers-format folder or a hub id. A family may also take (`load_adapter`
        passes them only where they are taken):
        - `text_encoders` (default True): False builds them with `without_weights` and sets
          `text_encoders_loaded` False, for runs that read every condition from a cache;
        - `transformer_weights` (default True): False builds the transformer with `awaiting_weights`, for
          the processes of a sharded run other than the main one, which alone reads the weights."""

    @classmethod
    def build_tiny(cls, corpus: list[str], seed: int = 0) -> "EditModelAdapter":
        """A randomly initialised toy-size model of the family (`model.path: tiny:<family>`), its
        tokenizers' vocabularies learned from `corpus`. Optional: a family without one raises this."""
        raise NotImplementedError

    @abstractmethod
    def save_pretrained(self, path: str | Path) -> None:
        """Write every component in diffusers format."""

    @abstractmethod
    def to(self, device: torch.device | str) -> "EditModelAdapter":
        """Move every component to `device`; the text encoders (`text_encoders()`) may be left out: the
        base class places them afterwards (on `device`, or on `offload_device` when offloaded)."""

    #: The diffusers pipeline class whose `load_lora_weights` reads this family's exported LoRAs.
    lora_pipeline: type

    def save_lora(self, state_dict: dict[str, torch.Tensor], folder: str | Path, spec: LoraSpec) -> Path:
        """Write peft LoRA weights of the transformer (`get_peft_model_state_dict`: no adapter name in
        the keys) in the layout the family's diffusers pipeline loads with `load_lora_weights`, with
        `spec` (rank, alpha, targets) as metadata so that the LoRA loads at its trained scale.
        Returns the file written (`folder/pytorch_lora_weights.safetensors`)."""
        return save_lora(self.lora_pipeline, state_dict, folder, spec)

    #: Longest instruction the released model takes, in the tokens `count_prompt_tokens` counts (each
    #: adapter cites where its value comes from). `data.max_prompt_tokens` may lower it, not raise it.
    max_prompt_tokens: int

    @property
    @abstractmethod
    def prompt_tokenizer(self) -> PreTrainedTokenizerBase:
        """The (`tokenizers`-backed) tokenizer whose tokens `max_prompt_tokens` limits."""

    def _prompt_encoding(self, prompt: str) -> Encoding:
        # Truncation and padding off explicitly: a tokenizer keeps the settings of its last call (the
        # FLUX encode pads and truncates T5 to 512), which would otherwise cap the count.
        return self.prompt_tokenizer(
            prompt, add_special_tokens=False, truncation=False, padding=False, verbose=False
        ).encodings[0]

    def count_prompt_tokens(self, prompt: str) -> int:
        """The instruction's own tokens in the sequence the limiting text encoder sees; the special
        tokens around it (chat template, image tokens, end of sequence) are not counted."""
        return len(self._prompt_encoding(prompt).ids)

    def prompt_token_bound(self, prompt: str) -> int:
        """An upper bound on `count_prompt_tokens(prompt)` without tokenizing: the UTF-8 bytes of the
        text after the tokenizer's normalizer, plus one. It holds for the families' tokenizers: a
        byte-level BPE token (Qwen2) or a special token covers at least one byte, a Unigram token
        (T5's sentencepiece) at least one character, and T5's pre-tokenizer adds one "▁" per word
        but drops at least one space between words. Normalizing first matters: NFKC (T5's) can turn
        one character into many."""
        normalizer = self.prompt_tokenizer.backend_tokenizer.normalizer
        text = prompt if normalizer is None else normalizer.normalize_str(prompt)
        # surrogatepass: JSON allows lone surrogates, which plain UTF-8 encoding refuses.
        return len(text.encode("utf-8", "surrogatepass")) + 1

    def truncate_prompt(self, prompt: str, max_tokens: int) -> str:
        """The longest prefix of `prompt` ending where one of its first `max_tokens` tokens ends that
        still counts at most `max_tokens` tokens: exactly `max_tokens` unless a character is split
        across tokens at the cut. Cut at the tokens' offsets in `prompt` rather than decoding them,
        so the kept text is the user's own (decoding would rewrite it: normalization, T5's "<unk>")."""
        offsets = self._prompt_encoding(prompt).offsets
        if len(offsets) <= max_tokens:
            return prompt
        # Re-tokenizing a prefix can differ at its end (a character split across tokens comes back
        # whole), so each candidate cut is counted again, longest first.
        for end in sorted({stop for _, stop in offsets[:max_tokens]}, reverse=True):
            if self.count_prompt_tokens(prompt[:end]) <= max_tokens:
                return prompt[:end]
        return ""

    @abstractmethod
    def encode_conditions(self, sources: list[list[Image.Image]], prompts: list[str], height: int, width: int) -> Conditions:
        """Encode the instruction and the source image(s) of each sample, once per group. With
        `offload_text_encoder`, the base class runs it with the text encoders on the device."""

    def encode_each(self, sources: list[list[Image.Image]], prompts: list[str], height: int, width: int) -> Conditions:
        """`encode_conditions` of each sample alone, joined into one batch by `join_conditions`.

        A sample's conditions then do not depend on the other samples of its batch: VAE convolutions and
        the text encoders are not bitwise batch-invariant (last bits of a float), so this is what makes
        a cached encoding (`editr1 precompute`) exactly the one computed during training, and a run
        independent of how groups fall into batches and processes. The text encoders move once."""
        with self.text_encoders_on_device():
            rows = [self.encode_conditions([images], [prompt], height, width) for images, prompt in zip(sources, prompts)]
        return self.join_conditions(rows)

    def split_conditions(self, conditions: Conditions) -> list[Conditions]:
        """One `Conditions` per row of a batch from `encode_conditions`, without the batch's padding:
        the shapes encoding that sample alone gives. `join_conditions` is its inverse. Default: every
        row as it is (a family that pads a batch overrides this and `join_conditions`)."""
        tensors = conditions.tensors
        rows = next((t.shape[0] for t in tensors.values() if t is not None), 0)
        return [Conditions({k: None if t is None else t[i : i + 1] for k, t in tensors.items()}, conditions.shared)
                for i in range(rows)]

    def join_conditions(self, rows: list[Conditions], device: torch.device | str | None = None) -> Conditions:
        """The batch `encode_conditions` returns for these samples, from their one-sample conditions
        (`split_conditions`, or `encode_conditions` of one sample): padded as it pads, each tensor on
        `device` (default: the adapter's) unless the family keeps it elsewhere. Default: rows of equal
        shapes concatenated; per-batch `shared` metadata must be the same for every row."""
        return Conditions(self._join_tensors(rows, device), self._joined_shared(rows))

    def _join_tensors(self, rows: list[Conditions], device: torch.device | str | None, padded: tuple[str, ...] = (),
                      on_cpu: tuple[str, ...] = ()) -> dict[str, torch.Tensor | None]:
        """Concatenate each tensor of `rows`; those named in `padded` are right-padded with zeros along
        dimension 1; those in `on_cpu` stay on the CPU, the others go to `device`."""
        device = self.device if device is None else torch.device(device)
        joined = {}
        for name in rows[0].tensors:
            parts = [row.tensors[name] for row in rows]
            if any(part is None for part in parts):
                if not all(part is None for part in parts):
                    raise EditR1Error(f"conditions '{name}': present for some samples of a batch and not for others")
                joined[name] = None
                continue
            if name in padded:
                value = pad_rows(parts)
            else:
                if len({part.shape[1:] for part in parts}) > 1:
                    raise EditR1Error(f"conditions '{name}': samples of one batch have different shapes "
                                      f"{sorted({tuple(p.shape[1:]) for p in parts})}; batch samples of one size together")
                value = torch.cat(parts)
            joined[name] = value if name in on_cpu else value.to(device)
        return joined

    @staticmethod
    def _joined_shared(rows: list[Conditions]) -> dict:
        shared = rows[0].shared
        for row in rows[1:]:
            if row.shared != shared:
                raise EditR1Error(f"conditions of one batch differ in their per-batch settings ({shared} vs {row.shared}); "
                                  "batch samples of one size together")
        return shared

    def conditioning_settings(self) -> dict:
        """Everything besides a sample's images and instruction (and the target size) that
        `encode_conditions` depends on, as JSON values: a conditions cache (`editr1 precompute`) built
        under other settings is refused. Families add their prompt templates and text lengths."""
        return {
            "adapter": f"{type(self).__module__}:{type(self).__qualname__}",
            "condition_area": self.condition_area,
            "dtype": str(self.transformer.dtype),
            "text_encoder_dtypes": [str(next(m.parameters()).dtype) for m in self.text_encoders()],
        }

    @abstractmethod
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels `(B, 3, H, W)` in [0, 1] -> packed clean latents `(B, S, C)`."""

    @abstractmethod
    def decode_latents(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Packed latents `(B, S, C)` -> pixels `(B, 3, H, W)` in [0, 1]."""

    def _latent_hw(self, height: int, width: int) -> tuple[int, int]:
        """The codec's latent grid for an image size; the size must allow 2x2 latent patches."""
        multiple = self.codec.scale_factor * 2
        if height % multiple or width % multiple:
            raise EditR1Error(f"image size {width}x{height} must be a multiple of {multiple} for this model")
        return height // self.codec.scale_factor, width // self.codec.scale_factor

    def latent_token_shape(self, height: int, width: int) -> tuple[int, int]:
        """`(S, C)` of the packed latents for an image of this size: 2x2 patches of the codec's latents."""
        h, w = self._latent_hw(height, width)
        return (h // 2) * (w // 2), self.codec.latent_channels * 4

    def uneven_transformer_calls(self, reference_counts: list[int]) -> str | None:
        """Why `velocity` could make more transformer calls for one batch of samples than for another,
        given each sample's number of reference images; None when it makes one call per batch (this
        default). A sharded transformer needs the same number of calls on every process."""
        return None

    @abstractmethod
    def velocity(
        self,
        tokens: torch.Tensor,
        sigma: torch.Tensor,
        conditions: Conditions,
        guidance: float | None = None,
        transformer: nn.Module | None = None,
    ) -> torch.Tensor:
        """Predicted velocity (eps - x0) for the target tokens at noise level `sigma` `(B,)`.

        `transformer` overrides the adapter's own module (full fine-tuning keeps separate copies of
        the old and reference policies); with LoRA the caller switches adapters instead.
        """

    def sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor:
        """The family's shifted sigma schedule for `num_steps` steps, ending with 0 (length N+1): the
        pipelines' `linspace(1, 1/N, N)` shifted by `calculate_shift` of the target's token count."""
        from diffusers import FlowMatchEulerDiscreteScheduler
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler.config)
        config = scheduler.config
        mu = calculate_shift(
            self.latent_token_shape(height, width)[0],
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        with np.errstate(invalid="ignore", divide="ignore"):  # a schedule stretched to a terminal sigma: see below
            scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu)
        sigmas = scheduler.sigmas.to(torch.float32).cpu()
        if not torch.isfinite(sigmas).all():
            # A scheduler with `shift_terminal` (Qwen-Image) stretches the schedule between its first and last
            # sigma, which coincide for a single step.
            raise EditR1Error(f"{num_steps} sampler step(s): this model's schedule needs at least 2 steps")
        return sigmas

    @property
    def device(self) -> torch.device:
        """Where the adapter computes: the transformer's device, or inside `encoding_on` the one it encodes on."""
        if self._encoding_device is not None:
            return self._encoding_device
        return next(self.transformer.parameters()).device

    # ---- the released architecture, for the benchmarks (bench/real_width.py, bench/gpu_iteration.py) ----
    # Optional, as `build_tiny`: what a family's published model is, which the benchmarks build at full width
    # with random weights (nothing downloaded) and count against the published numbers, naming no family.

    #: The repeated parts `build_released` can cut, the transformer's first (its kinds of blocks in order).
    depth_knobs: tuple[DepthKnob, ...]
    #: The parts the benchmarks count parameters of, by name, in their tables' order; together every
    #: parameter of the transformer, the text encoders and the VAE.
    parameter_parts: dict[str, ParameterPart]
    #: The full-depth parameter table: the released components, each beside its published count.
    published_totals: tuple[PublishedTotal, ...]
    #: Parameters of a `PUBLISHED_LORA_RANK` LoRA on `lora_target_modules` as published; None: not published.
    published_lora_params: float | None = None
    #: The published activation peak the benchmarks scale per block; None: none at this family's width.
    published_activations: PublishedActivations | None = None

    @classmethod
    def build_released(cls, depths: Mapping[str, int] | None = None, corpus: Iterable[str] = (),
                       device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16,
                       text_encoders: bool = True) -> "EditModelAdapter":
        """The released architecture at full width with random weights: each depth knob cut to
        `depths[knob.name]` (the released count where not given), built on `device` in `dtype`
        (`constructing`; "meta": nothing allocated), over editr1's offline tiny tokenizers learned from
        `corpus` (their ids are below the released vocabularies, so every embedding has its real size), and
        assembled as the tiny preset assembles its components. `text_encoders` False: none is built (None in
        their place), for runs that give the transformer random text embeddings (`random_text_conditions`).
        Optional: a family without one raises this."""
        raise NotImplementedError

    @classmethod
    def _released_depths(cls, depths: Mapping[str, int] | None) -> dict[str, int]:
        """Every depth knob's count for `build_released`: the given one, else the released one."""
        knobs = {knob.name: knob for knob in cls.depth_knobs}
        depths = dict(depths or {})
        for name, count in depths.items():
            if name not in knobs:
                raise EditR1Error(f"{cls.__name__}: no depth knob {name!r}; its knobs: {list(knobs)}")
            if count < knobs[name].minimum:
                raise EditR1Error(f"{cls.__name__}: {name} {count}: at least {knobs[name].minimum}")
        return {name: depths.get(name, knob.full) for name, knob in knobs.items()}

    @classmethod
    def released_text_tokens(cls, size: int, instruction_tokens: int) -> int:
        """Tokens per sample of the text stream (`prompt_embeds`) that the released text encoder gives for one
        source image of `size`^2 and an instruction of `instruction_tokens` tokens."""
        raise NotImplementedError

    def random_text_conditions(self, batch: int, size: int, instruction_tokens: int,
                               generator: torch.Generator) -> Conditions:
        """`encode_conditions`'s result for `batch` samples of one `size`^2 source each, without the sources'
        latents (`image_tokens`: the caller's) and with random text embeddings (from `generator`, of the
        length `released_text_tokens` gives and the transformer's text width) in place of the text encoders':
        for benchmarks that run the transformer without building the text encoders."""
        raise NotImplementedError

    def pipeline_velocity(self, tokens: torch.Tensor, sigma: torch.Tensor, conditions: Conditions,
                          guidance: float | None = None, transformer: nn.Module | None = None) -> torch.Tensor:
        """`velocity` as the family's diffusers pipeline computes it: one transformer call for the whole batch
        with the inputs the pipeline builds, where `velocity` builds them otherwise (drops an all-ones text
        mask, runs each reference layout apart). The benchmarks' naive path. Default: `velocity`, for a
        family whose `velocity` is that call."""
        return self.velocity(tokens, sigma, conditions, guidance, transformer)

    @classmethod
    def other_released_totals(cls) -> dict[str, tuple[int, float | None]]:
        """Full-depth parameter counts of the family's other released sizes, which the benchmarks count but
        do not build: label -> (count, the published count or None). Default: none."""
        return {}
