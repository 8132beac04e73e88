"""LoRA export and import (`editr1.models.lora_io`) on the three tiny families.

Export: diffusers' pipeline loads editr1's LoRA file with `load_lora_weights` and no key conversion,
and samples exactly what editr1's own sampler samples with that LoRA active, at its trained scale
(rank 4, alpha 8: loading it as alpha = rank would halve it). Import: the diffusers file and peft
folders (`base_model.model.` prefix, with or without `.default`) reproduce the trained velocity; a LoRA
of another family is refused whole.
"""

import json
import stat

import numpy as np
import pytest
import torch
from diffusers import (
    FluxKontextPipeline,
    QwenImageEditPipeline,
    QwenImageEditPlusPipeline,
)
from diffusers.pipelines.qwenimage import (
    pipeline_qwenimage_edit,
    pipeline_qwenimage_edit_plus,
)
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from editr1.errors import EditR1Error
from editr1.fileio import default_file_mode
from editr1.models.flux_kontext import FluxKontextAdapter
from editr1.models.lora_io import LoraSpec, load_lora, read_lora, save_lora
from editr1.models.registry import load_adapter
from editr1.models.tiny_flux_kontext import build_tiny_flux_kontext
from editr1.models.tiny_qwen_image_edit import build_tiny_qwen_image_edit
from editr1.models.qwen_image_edit_2511 import QwenImageEdit2511Adapter
from editr1.models.tiny_qwen_image_edit_plus import build_tiny_qwen_image_edit_plus
from editr1.sampling.generate import generate

SIZE = 32
STEPS = 3
PROMPTS = ["Change the red circle to blue", "Remove the square"]
RANK, ALPHA = 4, 8.0
BUILDERS = {
    "qwen-image-edit": lambda: build_tiny_qwen_image_edit(PROMPTS, codec="vae", seed=0),
    "qwen-image-edit-plus": lambda: build_tiny_qwen_image_edit_plus(PROMPTS, codec="vae", seed=0),
    "qwen-image-edit-2511": lambda: build_tiny_qwen_image_edit_plus(PROMPTS, codec="vae", seed=0,
                                                                    adapter=QwenImageEdit2511Adapter, zero_cond_t=True),
    "flux-kontext": lambda: build_tiny_flux_kontext(PROMPTS, seed=0),
}
GUIDANCE = {"qwen-image-edit": None, "qwen-image-edit-plus": None, "qwen-image-edit-2511": None, "flux-kontext": 2.5}
#: The families of `QwenImageEditPlusPipeline` (2509, and 2511 with `zero_cond_t`).
PLUS = ("qwen-image-edit-plus", "qwen-image-edit-2511")


def _image(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


def add_trained_lora(adapter, rank: int = RANK, alpha: float = ALPHA) -> LoraSpec:
    """A peft LoRA on the adapter's transformer with random lora_B: a LoRA that changes the output."""
    spec = LoraSpec(rank, alpha, tuple(adapter.lora_target_modules))
    adapter.transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(spec.target_modules)))
    with torch.no_grad():
        for name, p in adapter.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    return spec


def _velocity(adapter, family: str) -> torch.Tensor:
    conditions = adapter.encode_conditions([[_image(1)]], PROMPTS[:1], SIZE, SIZE)
    tokens = torch.randn(1, *adapter.latent_token_shape(SIZE, SIZE), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return adapter.velocity(tokens, torch.tensor([0.7]), conditions, GUIDANCE[family])


class Trained:
    """A tiny model saved without LoRA (`base`), the same model with a trained-looking LoRA
    (`adapter`), and that LoRA exported by editr1 (`lora`)."""

    def __init__(self, family, tmp_path_factory):
        self.family = family
        self.adapter = BUILDERS[family]()
        self.base = tmp_path_factory.mktemp(f"{family}-base")
        self.adapter.save_pretrained(self.base)
        self.base_velocity = _velocity(self.adapter, family)
        self.spec = add_trained_lora(self.adapter)
        self.velocity = _velocity(self.adapter, family)
        self.state = get_peft_model_state_dict(self.adapter.transformer)
        self.lora = tmp_path_factory.mktemp(f"{family}-lora")
        self.file = self.adapter.save_lora(self.state, self.lora, self.spec)


class Models(dict):
    """`Trained` per family, built on first use."""

    def __init__(self, tmp_path_factory):
        super().__init__()
        self.tmp_path_factory = tmp_path_factory

    def __missing__(self, family):
        self[family] = Trained(family, self.tmp_path_factory)
        return self[family]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return Models(tmp_path_factory)


@pytest.fixture(params=list(BUILDERS))
def trained(request, models):
    return models[request.param]


def _pipeline(loaded, family, monkeypatch):
    if family == "flux-kontext":
        pipe = FluxKontextPipeline(
            scheduler=loaded.scheduler, vae=loaded.codec.vae, text_encoder=loaded.text_encoder, tokenizer=loaded.tokenizer,
            text_encoder_2=loaded.text_encoder_2, tokenizer_2=loaded.tokenizer_2, transformer=loaded.transformer,
        )
    else:
        # The pipelines size the reference to ~1024^2: pin it to the target size, as the adapter uses it.
        module, cls = ((pipeline_qwenimage_edit, QwenImageEditPipeline) if family == "qwen-image-edit"
                       else (pipeline_qwenimage_edit_plus, QwenImageEditPlusPipeline))
        if family == "qwen-image-edit":
            monkeypatch.setattr(module, "calculate_dimensions", lambda area, ratio: (SIZE, SIZE, None))
        else:
            monkeypatch.setattr(module, "calculate_dimensions", lambda area, ratio: (SIZE, SIZE))
        pipe = cls(scheduler=loaded.scheduler, vae=loaded.codec.vae, text_encoder=loaded.text_encoder,
                   tokenizer=loaded.processor.tokenizer, processor=loaded.processor, transformer=loaded.transformer)
        pipe.prompt_template_encode_start_idx = loaded.prompt_drop_index
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run_pipeline(pipe, family, image, noise):
    common = dict(prompt=PROMPTS[0], height=SIZE, width=SIZE, num_inference_steps=STEPS, latents=noise.clone(),
                  output_type="latent")
    if family == "flux-kontext":
        return pipe(image=image, guidance_scale=GUIDANCE[family], max_area=SIZE * SIZE, _auto_resize=False,
                    max_sequence_length=FluxKontextAdapter.max_sequence_length, **common).images
    return pipe(image=[image] if family in PLUS else image, true_cfg_scale=1.0, **common).images


def test_export_writes_the_scale_as_metadata(trained):
    assert trained.file == trained.lora / "pytorch_lora_weights.safetensors" and trained.file.is_file()
    with safe_open(str(trained.file), framework="pt") as handle:
        metadata = json.loads(handle.metadata()["lora_adapter_metadata"])
        keys = list(handle.keys())
    assert metadata["transformer.r"] == RANK and metadata["transformer.lora_alpha"] == ALPHA
    assert sorted(metadata["transformer.target_modules"]) == sorted(trained.adapter.lora_target_modules)
    assert all(k.startswith("transformer.") and (".lora_A.weight" in k or ".lora_B.weight" in k) for k in keys)


def test_pipeline_loads_the_export_and_samples_what_editr1_samples(trained, monkeypatch):
    family = trained.family
    loaded = load_adapter(trained.base)
    pipe = _pipeline(loaded, family, monkeypatch)
    pipe.load_lora_weights(trained.lora)  # no key conversion: the file is in the pipeline's own layout
    image = _image(2)
    noise = torch.randn(1, *trained.adapter.latent_token_shape(SIZE, SIZE), generator=torch.Generator().manual_seed(7))
    expected = _run_pipeline(pipe, family, image, noise)

    adapter = trained.adapter
    conditions = adapter.encode_conditions([[image]], PROMPTS[:1], SIZE, SIZE)
    sigmas = adapter.sigmas(STEPS, SIZE, SIZE)
    ours = generate(adapter, conditions, noise, sigmas, "euler", guidance=GUIDANCE[family])
    assert torch.allclose(ours, expected, atol=1e-4, rtol=1e-4), (ours - expected).abs().max()
    # The LoRA matters: without it (or at half strength) the samples differ by far more than the tolerance.
    with _disabled(adapter):
        plain = generate(adapter, conditions, noise, sigmas, "euler", guidance=GUIDANCE[family])
    assert (plain - ours).abs().mean() > 1e-2


class _disabled:
    def __init__(self, adapter):
        self.transformer = adapter.transformer

    def __enter__(self):
        self.transformer.disable_adapters()

    def __exit__(self, *exc):
        self.transformer.enable_adapters()


def _write_peft_folder(folder, state, spec, with_adapter_name: bool):
    folder.mkdir()
    keys = {}
    for key, tensor in state.items():
        if with_adapter_name:
            key = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight")
        keys[f"base_model.model.{key}"] = tensor.contiguous()
    save_file(keys, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": spec.rank, "lora_alpha": spec.alpha, "target_modules": list(spec.target_modules)}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("layout", ["diffusers", "peft", "peft-with-adapter-name"])
def test_import_reproduces_the_trained_velocity(trained, layout, tmp_path):
    if layout == "diffusers":
        path = trained.lora
    else:
        path = _write_peft_folder(tmp_path / "peft", trained.state, trained.spec, layout == "peft-with-adapter-name")
    loaded = load_adapter(trained.base)
    assert torch.allclose(_velocity(loaded, trained.family), trained.base_velocity, atol=1e-5)
    spec = load_lora(loaded, path)
    assert (spec.rank, spec.alpha) == (RANK, ALPHA)
    assert torch.allclose(_velocity(loaded, trained.family), trained.velocity, atol=1e-5)
    assert (trained.velocity - trained.base_velocity).abs().mean() > 1e-3


def test_a_file_without_alpha_loads_at_alpha_equal_rank_with_a_warning(models, tmp_path):
    trained = models["qwen-image-edit"]
    file = tmp_path / "plain.safetensors"
    save_file({f"transformer.{k}": v.contiguous() for k, v in trained.state.items()}, str(file))
    with pytest.warns(UserWarning, match="alpha = rank"):
        spec = load_lora(load_adapter(trained.base), file)
    assert spec.alpha == spec.rank == RANK


@pytest.mark.parametrize("family", ["qwen-image-edit", *PLUS])
def test_a_flux_lora_on_a_qwen_model_is_refused_whole(models, family):
    trained, flux_lora = models[family], models["flux-kontext"].lora
    loaded = load_adapter(trained.base)
    with pytest.raises(EditR1Error) as error:
        load_lora(loaded, flux_lora)
    message = str(error.value)
    assert str(flux_lora / "pytorch_lora_weights.safetensors") in message
    assert "does not match" in message and "single_transformer_blocks.0.attn.to_q" in message
    assert not getattr(loaded.transformer, "peft_config", None)  # nothing was loaded


def test_a_qwen_lora_on_flux_fails_on_shapes_and_a_partial_match_fails_too(models, tmp_path):
    trained, flux_lora = models["qwen-image-edit"], models["flux-kontext"].lora
    flux = load_adapter(models["flux-kontext"].base)
    # Same module names (transformer_blocks.N.attn.to_q, ...), other widths.
    with pytest.raises(EditR1Error, match="wrong shape"):
        load_lora(flux, trained.lora)
    assert not getattr(flux.transformer, "peft_config", None)
    # Every key but one matches: still refused.
    state = {k: v for k, v in read_lora(flux_lora).state_dict.items()}
    state["transformer_blocks.7.attn.to_q.lora_A.weight"] = torch.zeros(RANK, 32)
    state["transformer_blocks.7.attn.to_q.lora_B.weight"] = torch.zeros(32, RANK)
    save_file({f"transformer.{k}": v.contiguous() for k, v in state.items()}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(EditR1Error, match=r"1 of \d+ LoRA modules have no linear layer.*transformer_blocks\.7"):
        load_lora(flux, tmp_path / "partial.safetensors")
    assert not getattr(flux.transformer, "peft_config", None)


def test_unsupported_files_are_clear_errors(tmp_path):
    kohya = tmp_path / "kohya.safetensors"
    save_file({"lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight": torch.zeros(4, 8)}, str(kohya))
    with pytest.raises(EditR1Error, match="not peft/diffusers LoRA weights"):
        read_lora(kohya)
    with pytest.raises(EditR1Error, match="LoRA not found"):
        read_lora(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EditR1Error, match="no LoRA weights found"):
        read_lora(empty)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(EditR1Error, match="not a readable safetensors file"):
        read_lora(corrupt)


def test_exported_file_gets_the_usual_mode(tmp_path):
    # diffusers' save_lora_weights goes through safetensors, which creates files 0600.
    state = {"blocks.0.to_q.lora_A.weight": torch.randn(RANK, 8), "blocks.0.to_q.lora_B.weight": torch.randn(8, RANK)}
    file = save_lora(QwenImageEditPipeline, state, tmp_path / "lora", LoraSpec(RANK, ALPHA, ("to_q",)))
    assert stat.S_IMODE(file.stat().st_mode) == default_file_mode()  # 0644 under the usual umask 022, not safetensors' 0600
    assert read_lora(file).state_dict.keys() == state.keys()
