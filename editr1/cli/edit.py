"""`editr1 edit`: one instruction-based edit with a trained run, or a base model and optionally a LoRA.

    editr1 edit --run runs/nft --image in.png --prompt "..." --out out.png
    editr1 edit --model Qwen/Qwen-Image-Edit-2509 --lora runs/nft/final --image in.png --prompt "..." --out out.png

`--run` reads the run's `model.json` (written by `editr1 train`): the exact base model (a tiny
preset's is saved in the run), the final weights (a LoRA on that base, or a whole fine-tuned model),
and the run's dtype and condition area (which `--no-pipeline-sizing` conditions at). A model is a
diffusers-format folder or hub id; its family comes from `model_index.json`. The edit runs through
the family's adapter and `editr1.sampling.generate`, the code that training and evaluation use, so
an exported LoRA edits here exactly as it did in the run's evaluations (as in its held-out ones with
`--no-pipeline-sizing`, as in `editr1 eval imgedit/gedit` without).

Defaults are the family's usual inference settings, which its adapter holds (`inference`): e.g. 28
Euler steps, and true CFG 4.0 for Qwen-Image-Edit or distilled guidance 3.5 for FLUX.1 Kontext. The
output size defaults to the first image's, scaled down to at most `--max-area` pixels (default 1024^2;
aspect kept) and rounded to the model's size multiple. References condition the model as the family's
diffusers pipeline sizes them (about 1024^2 pixels), as `editr1 eval imgedit/gedit` does and published
numbers were made; `--no-pipeline-sizing` encodes them at the output size (with `--run`: at the run's
own condition area). A tiny preset's pixel codec has 4-pixel tokens where the released VAEs give
16-pixel ones, so both areas are 1/16 for it (256^2): the same token grid, not 16 times its attention.

Every input is checked before the model is loaded (run folder, family, reference count, images,
LoRA file, output path); problems are `EditR1Error`s, which the CLI prints as one line (exit code 2).
What will run is printed before loading, then sampling shows a progress bar (a line per step, with
the time left, when stdout is not a terminal).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from editr1.errors import EditR1Error

#: Largest default output area (pixels of the released models' 16-pixel tokens); the output size
#: otherwise follows the first image.
DEFAULT_MAX_AREA = 1024 * 1024


def add_model_arguments(parser: argparse.ArgumentParser, prefix: str = "", required: bool = True,
                        what: str = "") -> None:
    """`--run` | `--model` (+ `--lora`), read by `choose_model`; `prefix` names a second model
    (`--against-run`, ...), `what` starts its help texts."""
    weights = parser.add_mutually_exclusive_group(required=required)
    weights.add_argument(f"--{prefix}run", type=Path, metavar="RUN_DIR",
                         help=f"{what}a finished `editr1 train` or `editr1 sft` run: its own base model, final weights, "
                              "dtype and condition area")
    weights.add_argument(f"--{prefix}model", metavar="MODEL", help=f"{what}diffusers-format model folder or hub id")
    parser.add_argument(f"--{prefix}lora", metavar="LORA",
                        help=f"{what}with --{prefix}model: LoRA file or folder (diffusers or peft layout), e.g. a run's final/")


def add_edit_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--image", dest="images", action="append", required=True, metavar="PATH",
                        help="source image; repeat for reference images (Qwen-Image-Edit-2509: up to 3)")
    parser.add_argument("--prompt", required=True, help="the edit instruction")
    parser.add_argument("--out", required=True, type=Path, help="output PNG path")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the family's, 28)")
    parser.add_argument("--sampler", choices=("euler", "dpmpp_2m"), default="euler", help="ODE sampler (default: euler)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="distilled guidance of guidance-embedded models (FLUX.1 Kontext default: 3.5)")
    parser.add_argument("--cfg-scale", type=float, default=None,
                        help="true classifier-free guidance scale (Qwen default: 4.0; FLUX default: 1.0, off)")
    parser.add_argument("--negative-prompt", default=None, help="negative prompt for true CFG (default: the family's, ' ')")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default: 0); the same seed gives the same PNG")
    parser.add_argument("--size", help="output size WxH, e.g. 1024x768 (default: the first image's, at most --max-area)")
    parser.add_argument("--height", type=int, default=None, help="output height (width follows the aspect ratio if not given)")
    parser.add_argument("--width", type=int, default=None, help="output width (height follows the aspect ratio if not given)")
    add_sizing_arguments(parser)
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                        help="model weights dtype (default: the run's with --run; else bfloat16 on GPU, float32 on CPU)")


def add_sizing_arguments(parser: argparse.ArgumentParser, capped: str = "") -> None:
    """`--pipeline-sizing` / `--no-pipeline-sizing` and `--max-area`, alike in `edit` and `eval`; `capped`
    ends `--max-area`'s help."""
    parser.add_argument("--pipeline-sizing", action=argparse.BooleanOptionalAction, default=True,
                        help="condition on the source as the family's diffusers pipeline sizes it, about 1024^2 "
                             "pixels (256^2 for a tiny preset's pixel codec), as published numbers were made "
                             "(default); --no-pipeline-sizing: at the output size (with --run: at the run's own "
                             "condition area), faster on a CPU")
    parser.add_argument("--max-area", metavar="PIXELS",
                        help="largest area of the default output size (the source's, aspect kept), as a pixel count "
                             "or WxH, e.g. 512x512 (default: 1024^2, or 256^2 for a tiny preset's pixel codec: the "
                             f"same token grid){capped}")


# ---- checks that run before the model is loaded ---------------------------------------------------


def parse_size(size: str | None, height: int | None, width: int | None) -> tuple[int | None, int | None]:
    """(height, width) asked for; None where the image's aspect ratio decides."""
    if size is not None:
        if height is not None or width is not None:
            raise EditR1Error("--size: give either --size WxH or --height/--width, not both")
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", size)
        if match is None:
            raise EditR1Error(f"--size {size!r}: expected WIDTHxHEIGHT, e.g. 1024x768")
        width, height = int(match[1]), int(match[2])
    for name, value in (("height", height), ("width", width)):
        if value is not None and value <= 0:
            raise EditR1Error(f"--{name} {value}: must be positive")
    return height, width


def parse_max_area(text: str) -> int:
    """`--max-area`: a pixel count, or WxH for W * H pixels."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if match is None:
        raise EditR1Error(f"--max-area {text}: expected a pixel count or WIDTHxHEIGHT, e.g. 1048576 or 1024x1024")
    area = int(match[1]) * int(match[2] or 1)
    if area <= 0:
        raise EditR1Error(f"--max-area {text}: must be positive")
    return area


def default_max_area(model_folder: Path) -> int:
    """A model's default output cap: `DEFAULT_MAX_AREA` times its codec's `area_scale` (256^2 for a tiny
    preset's pixel codec)."""
    from editr1.models.codecs import saved_area_scale

    return round(DEFAULT_MAX_AREA * saved_area_scale(model_folder / "vae"))


def area_text(area: int) -> str:
    """An area as written in help texts and records: `1024^2` for a square's, else the pixel count."""
    side = math.isqrt(area)
    return f"{side}^2" if side * side == area else str(area)


def check_output_path(out: Path) -> Path:
    """A PNG path in an existing, writable folder: a missing folder is more likely a typo than a wish."""
    out = out.expanduser()
    if out.suffix.lower() != ".png":
        raise EditR1Error(f"--out {out}: the output is a PNG; give a path ending in .png")
    if out.is_dir():
        raise EditR1Error(f"--out {out}: is a directory")
    if not out.parent.is_dir():
        raise EditR1Error(f"--out {out}: " + (f"{out.parent} is not a folder" if out.parent.exists()
                                              else f"no such folder {out.parent}"))
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise EditR1Error(f"--out {out}: not writable")
    return out


def output_size(image_size: tuple[int, int], height: int | None, width: int | None, multiple: int,
                max_area: int = DEFAULT_MAX_AREA) -> tuple[int, int]:
    """(height, width) of the output: as asked, the missing side from the image's aspect ratio, or by
    default the image's size scaled down to `max_area`; free sides are rounded to `multiple`."""
    image_width, image_height = image_size
    ratio = image_width / image_height

    def rounded(value: float) -> int:
        return max(multiple, round(value / multiple) * multiple)

    if height is None and width is None:
        scale = min(1.0, math.sqrt(max_area / (image_width * image_height)))
        return rounded(image_height * scale), rounded(image_width * scale)
    if height is None:
        return rounded(width / ratio), width
    if width is None:
        return height, rounded(height * ratio)
    return height, width


@dataclass(frozen=True)
class RunWeights:
    """What a run folder's `model.json` says to load."""

    #: The model folder: the run's base (LoRA runs) or its final/ (full fine-tuning: a whole model).
    model: Path
    #: The final LoRA folder (LoRA runs), loaded on `model`.
    lora: Path | None
    family: str
    dtype: str
    condition_area: int | None


def read_run(run: Path) -> RunWeights:
    """The weights of a finished run, from its `model.json`; every problem is an `EditR1Error`."""
    from editr1.hub import resolve_model_path
    from editr1.models.registry import detect_family
    from editr1.trainer.model_loading import DTYPES
    from editr1.trainer.run_folder import MODEL_RECORD, MODEL_RECORD_FIELDS

    run = run.expanduser()
    if not run.is_dir():
        raise EditR1Error(f"--run {run}: " + ("not a folder" if run.exists() else "no such folder"))
    path = run / MODEL_RECORD
    if not path.is_file():
        raise EditR1Error(f"--run {run}: not a run folder (written by editr1 train): no {MODEL_RECORD}")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise EditR1Error(f"{path}: not valid JSON ({error})") from error
    if not isinstance(record, dict):
        raise EditR1Error(f"{path}: expected a JSON object")
    missing = [name for name in MODEL_RECORD_FIELDS if name not in record]
    if missing:
        raise EditR1Error(f"{path}: missing field(s) {', '.join(missing)}")
    for name in ("base", "final"):
        if not isinstance(record[name], str) or not record[name]:
            raise EditR1Error(f"{path}: {name}: expected a folder name or path, got {record[name]!r}")
    if record["train_mode"] not in ("lora", "full"):
        raise EditR1Error(f"{path}: train_mode: expected 'lora' or 'full', got {record['train_mode']!r}")
    if record["dtype"] not in DTYPES:
        raise EditR1Error(f"{path}: dtype: expected one of {sorted(DTYPES)}, got {record['dtype']!r}")
    area = record["condition_area"]
    if area is not None and (isinstance(area, bool) or not isinstance(area, int) or area < 1):
        raise EditR1Error(f"{path}: condition_area: expected null or a positive integer, got {area!r}")
    final = run / record["final"]
    if not final.is_dir():
        raise EditR1Error(f"--run {run}: the run has not finished: no {record['final']}/ yet (written when training ends)")
    if record["train_mode"] == "full":
        model, lora = final, None
    else:
        # A relative base is a folder inside the run (a tiny preset's saved base); else a path or hub id.
        inside = run / record["base"]
        try:
            model = resolve_model_path(inside if inside.is_dir() else record["base"])
        except EditR1Error as error:
            raise EditR1Error(f"{path}: base: {error}") from error
        lora = final
    family = detect_family(model, record["family"], field=f"{path}: family")
    return RunWeights(model, lora, family, record["dtype"], area)


@dataclass(frozen=True)
class ModelChoice:
    """The weights a command was pointed at (`--run`, or `--model` with an optional `--lora`), checked."""

    folder: Path
    lora: Path | None
    family: str
    #: The run's dtype and condition area (None without `--run`).
    run: RunWeights | None
    #: What to print and record: the run folder or the model as given.
    description: str

    def identity(self) -> dict:
        """What makes edits comparable: recorded with every evaluation. The weights by content as well as by
        path: a run extended or a model re-saved under the same path makes other edits."""
        return {"model": str(self.folder), "lora": None if self.lora is None else str(self.lora), "family": self.family,
                "run": self.description if self.run is not None else None, "fingerprint": self.fingerprint}

    @functools.cached_property
    def fingerprint(self) -> dict[str, str | None]:
        from editr1.fingerprint import files_fingerprint, folder_fingerprint
        from editr1.models.lora_io import find_lora_file

        lora = None
        if self.lora is not None:
            weights, config = find_lora_file(self.lora)
            lora = files_fingerprint(weights.parent, [weights] + ([config] if config is not None else []))
        return {"model": folder_fingerprint(self.folder), "lora": lora}


def choose_model(run: Path | None, model: str | None, lora: str | None) -> ModelChoice:
    """Check `--run` / `--model` / `--lora` before anything is loaded; every problem is an `EditR1Error`."""
    from editr1.hub import resolve_model_path
    from editr1.models.lora_io import find_lora_file
    from editr1.models.registry import detect_family

    if run is not None:
        if lora is not None:
            raise EditR1Error("--lora: --run brings its own weights (the run's final/); use --model with --lora instead")
        weights = read_run(run)
        # Recorded absolute, as a --model folder is: the same run named from another folder is the same run.
        lora = None if weights.lora is None else Path(weights.lora).resolve()
        choice = ModelChoice(Path(weights.model).resolve(), lora, weights.family, weights, f"run {run}: {weights.model}")
    else:
        if str(model).startswith("tiny:"):
            raise EditR1Error(f"--model {model}: tiny presets are built in memory; edit a run trained on one "
                              "with --run RUN_DIR, or save one with `build_tiny(...).save_pretrained(folder)`")
        # A local folder is recorded absolute: the same model named from another folder is the same model.
        folder = resolve_model_path(model).resolve()
        lora_path = None if lora is None else Path(lora).expanduser()
        lora_path = lora_path.resolve() if lora_path is not None and lora_path.exists() else lora_path
        choice = ModelChoice(folder, lora_path, detect_family(folder), None, str(model))
    if choice.lora is not None:
        find_lora_file(choice.lora)  # fails early on a missing or unreadable-looking LoRA
    return choice


def load_model(choice: ModelChoice, device, dtype_name: str, pipeline_sizing: bool = False):
    """The adapter of `choice` on `device`, its LoRA loaded, conditioned as the run was."""
    from editr1.models.lora_io import load_lora
    from editr1.models.registry import adapter_class
    from editr1.trainer.model_loading import DTYPES

    adapter = adapter_class(choice.family).from_pretrained(choice.folder, torch_dtype=DTYPES[dtype_name])
    if choice.lora is not None:
        load_lora(adapter, choice.lora)
    if choice.run is not None:
        adapter.condition_area = choice.run.condition_area
    if pipeline_sizing:
        adapter.use_pipeline_sizing()
    return adapter.to(device)


def default_dtype(choice: ModelChoice, device, asked: str | None) -> str:
    return asked or (choice.run.dtype if choice.run is not None else "bfloat16" if device.type == "cuda" else "float32")


# ---- the edit -----------------------------------------------------------------------------------


def edit_image(
    adapter,
    images: list,
    prompt: str,
    height: int,
    width: int,
    steps: int = 28,
    sampler: str = "euler",
    cfg_scale: float = 1.0,
    negative_prompt: str | None = None,
    guidance: float | None = None,
    seed: int = 0,
    on_step: Callable[[int, int], None] | None = None,
):
    """One edit of `images` (the source, then any references) by `prompt`: an RGB PIL image.
    `on_step(step, steps)` follows the sampling loop."""
    import torch

    from editr1.data.images import tensor_to_image
    from editr1.sampling.generate import edit_batch

    sigmas = adapter.sigmas(steps, height, width)
    # Noise drawn on the CPU: the same seed gives the same edit on any device.
    noise = torch.randn(1, *adapter.latent_token_shape(height, width), generator=torch.Generator().manual_seed(seed))
    edited = edit_batch(adapter, [images], [prompt], noise.to(adapter.device), sigmas, height, width, sampler=sampler,
                        cfg_scale=cfg_scale, negative_prompt=negative_prompt, guidance=guidance, on_step=on_step)
    return tensor_to_image(edited.pixels[0])


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def step_reporter(task, live: bool, every_s: float = 0.0) -> Callable[[int, int], None]:
    """`on_step` for `edit_batch`, from now: advances `task` (a bar when `live`); otherwise also prints a
    line per step with the time left, one at most every `every_s` seconds (the task's summary line, or
    the caller's, follows the last step)."""
    start = last = time.perf_counter()

    def on_step(step: int, steps: int) -> None:
        nonlocal last
        task.advance()
        now = time.perf_counter()
        if live or step == steps or now - last < every_s:
            return
        last = now
        left = (now - start) / step * (steps - step)
        print(f"{task.description}: step {step}/{steps}, {_duration(now - start)} elapsed, ~{_duration(left)} left",
              flush=True)

    return on_step


def run_edit(args: argparse.Namespace) -> dict:
    import torch

    from editr1.data.images import load_image
    from editr1.data.prompt_length import fit_prompt
    from editr1.models.registry import adapter_class
    from editr1.trainer.progress import phase_progress

    height, width = parse_size(args.size, args.height, args.width)
    max_area = None if args.max_area is None else parse_max_area(args.max_area)
    if max_area is not None and (height is not None or width is not None):
        raise EditR1Error("--max-area: caps the default size; not with --size, --height or --width")
    if args.steps is not None and args.steps < 1:
        raise EditR1Error(f"--steps {args.steps}: must be at least 1")
    if args.cfg_scale is not None and args.cfg_scale < 1.0:
        raise EditR1Error(f"--cfg-scale {args.cfg_scale}: must be at least 1 (1 turns true CFG off)")
    choice = choose_model(args.run, args.model, args.lora)
    lora, family = choice.lora, choice.family
    model_class = adapter_class(family)
    defaults = model_class.saved_inference(choice.folder)
    steps = args.steps if args.steps is not None else defaults.steps
    negative_prompt = args.negative_prompt if args.negative_prompt is not None else defaults.negative_prompt
    if len(args.images) > defaults.max_references:
        raise EditR1Error(
            f"--image given {len(args.images)} times: {family} takes "
            + ("one source image" if defaults.max_references == 1 else f"1 to {defaults.max_references} reference images")
        )
    images = [load_image(Path(path)) for path in args.images]
    out = check_output_path(args.out)
    max_area = max_area or default_max_area(choice.folder)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype_name = default_dtype(choice, device, args.dtype)
    cfg_scale = args.cfg_scale if args.cfg_scale is not None else defaults.cfg_scale
    # The exact size needs the model's size multiple; until it is loaded, the size before rounding.
    about_height, about_width = output_size(images[0].size, height, width, 1, max_area)
    print(f"editr1 edit: {choice.description} ({family})" + (f" + LoRA {lora}" if lora is not None else "")
          + f", ~{about_width}x{about_height}, {steps} {args.sampler} steps"
          + (f", true CFG {cfg_scale} (2 model passes a step)" if cfg_scale != 1.0 else "")
          + f", on {device} ({dtype_name})", flush=True)
    adapter = load_model(choice, device, dtype_name, args.pipeline_sizing)
    guided = bool(adapter.transformer.config.get("guidance_embeds", False))
    guidance = args.guidance if args.guidance is not None else defaults.guidance
    if args.guidance is not None and not guided:
        raise EditR1Error(f"--guidance: this {family} transformer has no guidance input; use --cfg-scale for true CFG")
    if guided and guidance is None:
        raise EditR1Error(f"this {family} transformer is guidance-distilled: set --guidance")
    multiple = adapter.codec.scale_factor * 2
    height, width = output_size(images[0].size, height, width, multiple, max_area)
    if height % multiple or width % multiple:
        raise EditR1Error(f"output size {width}x{height}: both sides must be multiples of {multiple} for this model")
    prompt = fit_prompt(args.prompt, "--prompt", adapter, remedy=f"the {family} limit")
    with phase_progress() as phase:
        on_step = step_reporter(phase.task(f"sampling {width}x{height}", steps), phase.live)
        image = edit_image(adapter, images, prompt, height, width, steps, args.sampler, cfg_scale,
                           negative_prompt, guidance if guided else None, args.seed, on_step)
    try:
        image.save(out, format="PNG")
    except OSError as error:
        raise EditR1Error(f"--out {out}: could not write the image ({error})") from error
    return {"out": str(out), "family": family, "width": width, "height": height, "steps": steps,
            "sampler": args.sampler, "cfg_scale": cfg_scale, "guidance": guidance if guided else None,
            "seed": args.seed, "lora": None if lora is None else str(lora)}
