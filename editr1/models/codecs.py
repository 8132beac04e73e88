"""Latent codecs: the map between pixels and the latents a flow transformer works on.

`VaeCodec` wraps a diffusers VAE of the Qwen-Image family (5-D latents with a frame axis,
per-channel mean/std normalisation, mode of the posterior as the pipelines use).
`ScaledVaeCodec` wraps an image `AutoencoderKL` normalised by one `shift_factor`/`scaling_factor` pair,
as the FLUX.1 pipelines use it.
`Flux2VaeCodec` wraps FLUX.2's `AutoencoderKLFlux2`, normalised by its batch-norm statistics over 2x2 patches
of the latents, as `Flux2KleinPipeline` uses it.
`PixelUnshuffleCodec` is an exactly invertible space-to-depth map. The CPU demo uses it because a
tiny VAE trained here would blur 32x32 shapes and the verifier would then score the VAE, not the
policy; with an exact codec every reward change comes from the transformer.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, AutoencoderKLFlux2, AutoencoderKLQwenImage
from diffusers.pipelines.flux2.pipeline_flux2_klein import Flux2KleinPipeline

from editr1.errors import EditR1Error

CONFIG_NAME = "config.json"
#: The released models' VAE downsampling (Qwen-Image's and FLUX.1's): with 2x2 patches, 16-pixel tokens.
RELEASED_SCALE_FACTOR = 8


class PixelUnshuffleCodec:
    """Space-to-depth: (B, 3, H, W) in [0, 1] <-> (B, 3 f^2, H/f, W/f) in [-1, 1], exactly."""

    class_name = "PixelUnshuffleCodec"

    def __init__(self, factor: int = 2):
        self.factor = factor
        self.scale_factor = factor
        self.latent_channels = 3 * factor * factor
        #: What the pipelines' pixel areas are multiplied by (`use_pipeline_sizing`, the CLIs' default
        #: output cap): no pipeline runs this codec, so its areas give the released models' token grid
        #: (factor 2: 1/16 the area), and attention, quadratic in tokens, stays as cheap as theirs.
        self.area_scale = (factor / RELEASED_SCALE_FACTOR) ** 2

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(pixels * 2 - 1, self.factor)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((F.pixel_shuffle(latents, self.factor) + 1) / 2).clamp(0, 1)

    def save_pretrained(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps({"_class_name": self.class_name, "factor": self.factor}))

    def to(self, *args, **kwargs) -> "PixelUnshuffleCodec":
        return self


class VaeCodec:
    """A Qwen-Image-family VAE (`AutoencoderKLQwenImage`) used as the diffusers pipelines use it."""

    #: Sizes are the pipelines' pixel areas, whatever the VAE (the parity tests hold tiny ones to the pipelines).
    area_scale = 1.0

    def __init__(self, vae: AutoencoderKLQwenImage):
        self.vae = vae
        self.scale_factor = 2 ** len(vae.temperal_downsample)
        self.latent_channels = vae.config.z_dim

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.latent_channels, 1, 1, 1)
        mean = torch.tensor(self.vae.config.latents_mean).view(shape).to(like.device, like.dtype)
        std = torch.tensor(self.vae.config.latents_std).view(shape).to(like.device, like.dtype)
        return mean, std

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels * 2 - 1).unsqueeze(2).to(self.vae.dtype)
        latents = self.vae.encode(x).latent_dist.mode()
        mean, std = self._stats(latents)
        return ((latents - mean) / std).squeeze(2)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.unsqueeze(2).to(self.vae.dtype)
        mean, std = self._stats(z)
        image = self.vae.decode(z * std + mean, return_dict=False)[0][:, :, 0]
        return ((image + 1) / 2).clamp(0, 1)

    def save_pretrained(self, folder: Path) -> None:
        self.vae.save_pretrained(folder)

    def to(self, *args, **kwargs) -> "VaeCodec":
        self.vae.to(*args, **kwargs)
        return self


class ScaledVaeCodec:
    """An `AutoencoderKL` used as `FluxKontextPipeline` uses it: mode of the posterior, then
    `(z - shift_factor) * scaling_factor`; decoding inverts that."""

    #: Sizes are the pipelines' pixel areas, whatever the VAE (the parity tests hold tiny ones to the pipelines).
    area_scale = 1.0

    def __init__(self, vae: AutoencoderKL):
        self.vae = vae
        # The pipelines' `vae_scale_factor`: one 2x downsampling between consecutive blocks.
        self.scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_channels = vae.config.latent_channels

    @property
    def _shift(self) -> float:
        return self.vae.config.shift_factor or 0.0  # Stable Diffusion-era VAEs have none

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        latents = self.vae.encode((pixels * 2 - 1).to(self.vae.dtype)).latent_dist.mode()
        return (latents - self._shift) * self.vae.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.to(self.vae.dtype) / self.vae.config.scaling_factor + self._shift
        image = self.vae.decode(z, return_dict=False)[0]
        return ((image + 1) / 2).clamp(0, 1)

    def save_pretrained(self, folder: Path) -> None:
        self.vae.save_pretrained(folder)

    def to(self, *args, **kwargs) -> "ScaledVaeCodec":
        self.vae.to(*args, **kwargs)
        return self


class Flux2VaeCodec:
    """An `AutoencoderKLFlux2` used as `Flux2KleinPipeline` uses it: mode of the posterior, then each channel of
    its 2x2 patches normalised by the VAE's batch-norm running statistics; decoding inverts that. The latents
    come back unpatched `(B, C, H, W)`, like every codec's: the adapter patches and packs them."""

    #: Sizes are the pipelines' pixel areas, whatever the VAE (the parity tests hold tiny ones to the pipelines).
    area_scale = 1.0

    def __init__(self, vae: AutoencoderKLFlux2):
        self.vae = vae
        # The pipeline's `vae_scale_factor`: one 2x downsampling between consecutive blocks.
        self.scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_channels = vae.config.latent_channels

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # As the pipeline computes them: the square root in the statistics' own dtype, then cast.
        mean = self.vae.bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
        std = torch.sqrt(self.vae.bn.running_var.view(1, -1, 1, 1) + self.vae.config.batch_norm_eps)
        return mean, std.to(like.device, like.dtype)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        latents = self.vae.encode((pixels * 2 - 1).to(self.vae.dtype)).latent_dist.mode()
        patches = Flux2KleinPipeline._patchify_latents(latents)
        mean, std = self._stats(patches)
        return Flux2KleinPipeline._unpatchify_latents((patches - mean) / std)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        patches = Flux2KleinPipeline._patchify_latents(latents.to(self.vae.dtype))
        mean, std = self._stats(patches)
        image = self.vae.decode(Flux2KleinPipeline._unpatchify_latents(patches * std + mean), return_dict=False)[0]
        return ((image + 1) / 2).clamp(0, 1)

    def save_pretrained(self, folder: Path) -> None:
        self.vae.save_pretrained(folder)

    def to(self, *args, **kwargs) -> "Flux2VaeCodec":
        self.vae.to(*args, **kwargs)
        return self


def saved_area_scale(folder: Path) -> float:
    """The `area_scale` of the codec saved in `folder` (a model's `vae/`), read without loading weights."""
    try:
        config = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return 1.0  # a hub snapshot without it fails at loading, with its own message
    if isinstance(config, dict) and config.get("_class_name") == PixelUnshuffleCodec.class_name:
        return PixelUnshuffleCodec(config["factor"]).area_scale
    return 1.0


def load_codec(
    folder: Path, torch_dtype: torch.dtype = torch.float32
) -> PixelUnshuffleCodec | VaeCodec | ScaledVaeCodec | Flux2VaeCodec:
    """Load the codec saved in `folder` (a model's `vae/` subfolder), whichever kind it is."""
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise EditR1Error(f"{config_path}: missing; expected a VAE folder in diffusers format")
    class_name = json.loads(config_path.read_text()).get("_class_name")
    if class_name == PixelUnshuffleCodec.class_name:
        return PixelUnshuffleCodec(json.loads(config_path.read_text())["factor"])
    if class_name == "AutoencoderKLQwenImage":
        return VaeCodec(AutoencoderKLQwenImage.from_pretrained(folder, torch_dtype=torch_dtype).eval())
    if class_name == "AutoencoderKL":
        return ScaledVaeCodec(AutoencoderKL.from_pretrained(folder, torch_dtype=torch_dtype).eval())
    if class_name == "AutoencoderKLFlux2":
        return Flux2VaeCodec(AutoencoderKLFlux2.from_pretrained(folder, torch_dtype=torch_dtype).eval())
    raise EditR1Error(f"{config_path}: unsupported VAE class {class_name!r}")
