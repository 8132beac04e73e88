"""`editr1 eval imgedit`, `editr1 eval gedit` and `editr1 eval compare`.

    editr1 eval imgedit --model Qwen/Qwen-Image-Edit-2509 --lora runs/nft/final --data ImgEdit/ \\
        --judge judge.yaml --official-prompts ImgEdit/ --out evals/nft_imgedit
    editr1 eval gedit --run runs/nft --data GEdit-Bench/ --judge judge.yaml \\
        --official-prompts Step1X-Edit/ --out evals/nft_gedit
    editr1 eval compare evals/base_imgedit evals/nft_imgedit

Edits use the family's published evaluation settings (its adapter's `inference`: steps, true CFG or
distilled guidance, negative prompt; the pipeline's own conditioning size, as `editr1 edit` by
default), one fixed seed per sample. `--max-area` caps the output size and `--no-pipeline-sizing`
conditions at it: both make edits faster on a CPU, and the results then say they are not comparable
with published numbers. The judge YAML names an OpenAI-compatible endpoint (`kind: openai`,
`base_url`, `model`, ...) or an in-process transformers judge (`kind: transformers`, `path`), built
only once the data has been read and checked.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from editr1.cli.edit import DEFAULT_MAX_AREA, add_model_arguments, add_sizing_arguments, area_text
from editr1.errors import EditR1Error

if TYPE_CHECKING:
    from editr1.eval.benchmarks.judges import TextJudge

#: The seed of every sample's noise (the published Qwen-Image-Edit numbers used 42).
DEFAULT_SEED = 42
#: Without a terminal, a line about the sampler's steps at most this often (the batches have lines of their own).
STEP_LINES_EVERY_S = 30.0


def add_benchmark_arguments(parser: argparse.ArgumentParser, benchmark: str) -> None:
    add_model_arguments(parser)
    if benchmark == "imgedit":
        parser.add_argument("--data", required=True, type=Path,
                            help="the benchmark folder (holding Basic/basic_edit.json and singleturn/), or basic_edit.json")
        parser.add_argument("--images", type=Path, default=None,
                            help="the folder basic_edit.json's ids are relative to (default: singleturn/ beside Basic/)")
        parser.add_argument("--official-prompts", type=Path, default=None,
                            help="ImgEdit's prompts.json (or a folder holding it or Basic/prompts.json)")
    else:
        parser.add_argument("--data", required=True, type=Path, help="GEdit-Bench saved with datasets.save_to_disk")
        parser.add_argument("--languages", default="en,cn", help="comma-separated: en, cn (default: both)")
        parser.add_argument("--official-prompts", type=Path, default=None,
                            help="the Step1X-Edit repository (or its GEdit-Bench/viescore/vie_prompts.py); read, never run")
        parser.add_argument("--model-name", default=None,
                            help="the model's folder name in the --export-official layout (default: the run folder's "
                             "name; with --model, the model folder's, and with --lora, joined with the LoRA's)")
    parser.add_argument("--judge", required=True, type=Path, help="judge YAML: kind openai (base_url, model, ...) or transformers (path)")
    parser.add_argument("--out", required=True, type=Path, help="results folder (edits and judge replies are cached there)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N samples (after --types)")
    parser.add_argument("--types", default=None, help="comma-separated task types to evaluate")
    parser.add_argument("--judge-repeats", type=int, default=1,
                        help="judge every sample N times (repeats past the first sample at the judge's repeat temperature) "
                             "and report the judge's own spread")
    parser.add_argument("--export-official", type=Path, default=None, help="also write the edits in the official scorer's layout")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the family's, 28)")
    parser.add_argument("--sampler", choices=("euler", "dpmpp_2m"), default="euler")
    parser.add_argument("--cfg-scale", type=float, default=None, help="true CFG scale (default: the family's)")
    parser.add_argument("--guidance", type=float, default=None, help="distilled guidance (default: the family's)")
    parser.add_argument("--negative-prompt", default=None, help="negative prompt of true CFG (default: the family's)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"noise seed of every sample (default {DEFAULT_SEED})")
    add_sizing_arguments(parser, capped="; recorded, and a cap other than the default makes the results not "
                                        "comparable with published numbers, as --no-pipeline-sizing does")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="edits sampled at once (default 1); recorded: an output folder keeps its batch size, as "
                             "batch-mates can change an edit's last bits")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", type=Path, help="results folder of the first evaluation (the baseline)")
    parser.add_argument("b", type=Path, help="results folder of the second evaluation")
    parser.add_argument("--out", type=Path, default=None, help="where to write the comparison (default: B/compare_<A's name>)")
    parser.add_argument("--resamples", type=int, default=10000, help="bootstrap resamples (default 10000)")
    parser.add_argument("--seed", type=int, default=0)


def read_judge_config(path: Path) -> "JudgeOnFirstUse":
    """The judge of a `--judge` YAML, built on first use; the file is read now."""
    import yaml

    from editr1.eval.benchmarks.judges import build_text_judge

    path = path.expanduser()
    if not path.is_file():
        raise EditR1Error(f"--judge {path}: no such file")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise EditR1Error(f"{path}: not valid YAML ({error})") from error
    if isinstance(spec, dict) and isinstance(spec.get("path"), str) and (path.parent / spec["path"]).exists():
        spec["path"] = str((path.parent / spec["path"]).resolve())  # relative to the YAML, like configs
    return JudgeOnFirstUse(lambda: build_text_judge(spec, where=str(path)))


class JudgeOnFirstUse:
    """A `TextJudge`, built when first asked anything: the harness asks only once it has read and checked
    the data, so a data error comes before an in-process judge's weights are loaded (and before its bar)."""

    def __init__(self, build: Callable[[], "TextJudge"]):
        self._build, self._judge = build, None

    @property
    def judge(self) -> "TextJudge":
        if self._judge is None:
            self._judge = self._build()
        return self._judge

    def identity(self):
        return self.judge.identity()

    def check_ready(self) -> None:
        self.judge.check_ready()

    def ask_many(self, requests, on_reply) -> None:
        self.judge.ask_many(requests, on_reply)


def _comma_list(value: str | None) -> list[str] | None:
    return None if value is None else [item.strip() for item in value.split(",") if item.strip()]


def default_model_name(run: Path | None, choice) -> str:
    """The model's folder name in the official layout: the run folder's, or the model folder's joined with
    the LoRA's (its folder and file), so that a LoRA's edits never take its base model's name."""
    if run is not None:
        return run.expanduser().resolve().name
    name = Path(str(choice.folder)).name
    if choice.lora is None:
        return name
    lora = Path(choice.lora).expanduser().resolve()
    return f"{name}+{lora.parent.name}_{lora.stem if lora.is_file() else lora.name}"


def unpublished_sizing(max_area: int, default_area: int, pipeline_sizing: bool) -> list[str]:
    """Why edits sized so are not those the published numbers measured (none: they are)."""
    reasons = []
    if max_area != default_area:
        reasons.append(f"NOT comparable with published numbers: the edits are at most {area_text(max_area)} pixels "
                       f"(--max-area), published ones the source's size up to {area_text(DEFAULT_MAX_AREA)}")
    if not pipeline_sizing:
        reasons.append("NOT comparable with published numbers: the source conditioned the model at the output size "
                       "(--no-pipeline-sizing), in published ones at the pipeline's ~1024^2 pixels")
    return reasons


def run_benchmark(args: argparse.Namespace, benchmark: str) -> dict:
    import torch

    from editr1.cli.edit import choose_model, default_dtype, default_max_area, parse_max_area
    from editr1.eval.benchmarks.harness import PROTOCOLS, BenchmarkRun, evaluate_benchmark, format_results
    from editr1.models.registry import adapter_class

    if args.judge_repeats < 1:
        raise EditR1Error(f"--judge-repeats {args.judge_repeats}: must be at least 1")
    if args.batch_size < 1:
        raise EditR1Error(f"--batch-size {args.batch_size}: must be at least 1")
    if args.steps is not None and args.steps < 1:
        raise EditR1Error(f"--steps {args.steps}: must be at least 1")
    choice = choose_model(args.run, args.model, args.lora)
    default_area = default_max_area(choice.folder)
    max_area = default_area if args.max_area is None else parse_max_area(args.max_area)
    defaults = adapter_class(choice.family).saved_inference(choice.folder)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    settings = {
        "steps": args.steps if args.steps is not None else defaults.steps, "sampler": args.sampler,
        "cfg_scale": args.cfg_scale if args.cfg_scale is not None else defaults.cfg_scale,
        "negative_prompt": args.negative_prompt if args.negative_prompt is not None else defaults.negative_prompt,
        "guidance": args.guidance if args.guidance is not None else defaults.guidance, "seed": args.seed,
        "pipeline_sizing": args.pipeline_sizing, "dtype": default_dtype(choice, device, args.dtype),
        # A folder's edits keep one size: the cap is recorded (the default reads as it always has).
        "size": f"the source's, at most {area_text(max_area)} pixels",
        # Batch-mates can change an edit's rounding: a folder's edits all come from one batch size.
        "batch_size": args.batch_size,
    }
    # The harness marks results made otherwise than the published protocol as not comparable, with these notes.
    unpublished = unpublished_sizing(max_area, default_area, args.pipeline_sizing)
    if unpublished:
        settings["not_comparable"] = unpublished
    protocol = PROTOCOLS[benchmark]() if benchmark == "imgedit" else PROTOCOLS[benchmark](_comma_list(args.languages))
    judge = read_judge_config(args.judge)

    with _progress() as progress:

        def make_editor():
            print(f"loading {choice.description} ({choice.family}) on {device}", flush=True)
            if device.type == "cpu" and args.pipeline_sizing and args.max_area is None:
                print("note: on a CPU, --max-area and --no-pipeline-sizing make edits smaller and faster "
                      "(the results then say they are not comparable with published numbers)", flush=True)
            return adapter_editor(choice, device, settings, max_area, progress.sampling)

        run = BenchmarkRun(
            protocol, args.data, args.out, judge, {**choice.identity(), **settings}, make_editor,
            images=getattr(args, "images", None), official_prompts=args.official_prompts, limit=args.limit,
            types=_comma_list(args.types), judge_repeats=args.judge_repeats, batch_size=args.batch_size,
            export_official=args.export_official,
            model_name=getattr(args, "model_name", None) or default_model_name(args.run, choice),
            progress=progress.report,
        )
        results = evaluate_benchmark(run)
        run_counts = run.counts
    print(format_results(results), flush=True)
    return {"out": str(args.out), "benchmark": benchmark, "comparable": results["comparable"], "counts": results["counts"],
            "this_run": run_counts}


class _progress:
    """Progress of generation and judging: a bar on a terminal, a line per batch elsewhere; and of the
    sampler's steps in a batch: a bar, or a line now and then."""

    def __enter__(self):
        from editr1.trainer.progress import phase_progress

        self._context = phase_progress()
        self._phase = self._context.__enter__()
        self._tasks = {}
        self._steps = None
        return self

    def sampling(self, steps: int):
        """`on_step` for one batch's sampling: one task, begun again at each batch."""
        from editr1.cli.edit import step_reporter

        if self._steps is None:
            self._steps = self._phase.task("sampling", steps, quiet=True)
        else:
            self._steps.restart(steps)
        return step_reporter(self._steps, self._phase.live, STEP_LINES_EVERY_S)

    def report(self, phase: str, done: int, total: int) -> None:
        task = self._tasks.get(phase)
        if task is None:
            task = self._tasks[phase] = self._phase.task(phase, total)
        task.advance(done - task.completed)
        if not self._phase.live:
            print(f"{phase}: {done}/{total}", flush=True)
        if done == total:
            task.done()

    def __exit__(self, *exc_info):
        return self._context.__exit__(*exc_info)


def run_benchmark_export(args: argparse.Namespace) -> dict:
    from editr1.eval.benchmarks.harness import PROTOCOLS, export_jsonl, select_samples

    protocol = PROTOCOLS[args.benchmark]() if args.benchmark == "imgedit" else PROTOCOLS[args.benchmark](_comma_list(args.languages))
    samples = select_samples(protocol.load(args.data, None), _comma_list(args.types), args.limit, protocol.types,
                             protocol.aliases)
    path = export_jsonl(protocol, samples, args.out)
    return {"samples": len(samples), "jsonl": str(path)}


def run_compare(args: argparse.Namespace) -> dict:
    from editr1.eval.benchmarks.compare import compare_results, format_comparison_table, write_comparison

    if args.a.resolve() == args.b.resolve():
        raise EditR1Error(f"{args.a}: comparing an evaluation with itself; give two results folders")
    comparison = compare_results(args.a, args.b, n_resamples=args.resamples, seed=args.seed)
    out = args.out or (args.b / f"compare_{args.a.resolve().name}")
    write_comparison(comparison, out)
    print(format_comparison_table(comparison), flush=True)
    return {"out": str(out)}


def adapter_editor(choice, device, settings: dict, max_area: int = DEFAULT_MAX_AREA, sampling=None):
    """The `Editor` of a model: its adapter, loaded once, editing with `settings` at most `max_area`
    pixels; `sampling(steps)`, if given, makes each batch's `on_step`."""
    import torch

    from editr1.cli.edit import load_model, output_size
    from editr1.data.prompt_length import fit_prompt
    from editr1.eval.benchmarks.harness import Editor
    from editr1.sampling.generate import edit_batch
    from editr1.data.images import tensor_to_image

    adapter = load_model(choice, device, settings["dtype"], settings["pipeline_sizing"])
    guided = bool(adapter.transformer.config.get("guidance_embeds", False))
    if guided and settings["guidance"] is None:
        raise EditR1Error(f"this {choice.family} transformer is guidance-distilled: set --guidance")
    multiple = adapter.codec.scale_factor * 2

    class AdapterEditor(Editor):
        def edit(self, samples, sources):
            edits = [None] * len(samples)
            by_size: dict[tuple[int, int], list[int]] = {}
            for index, source in enumerate(sources):
                by_size.setdefault(output_size(source.size, None, None, multiple, max_area), []).append(index)
            for (height, width), indices in by_size.items():
                # Every sample's noise comes from the same seed: an edit does not depend on its batch.
                shape = adapter.latent_token_shape(height, width)
                noise = torch.stack([torch.randn(*shape, generator=torch.Generator().manual_seed(settings["seed"]))
                                     for _ in indices])
                prompts = [fit_prompt(samples[i].instruction, f"sample {samples[i].key}", adapter,
                                      remedy=f"the {choice.family} limit") for i in indices]
                edited = edit_batch(adapter, [[sources[i]] for i in indices], prompts, noise.to(adapter.device),
                                    adapter.sigmas(settings["steps"], height, width), height, width,
                                    batch_size=len(indices), sampler=settings["sampler"], cfg_scale=settings["cfg_scale"],
                                    negative_prompt=settings["negative_prompt"],
                                    guidance=settings["guidance"] if guided else None,
                                    on_step=None if sampling is None else sampling(settings["steps"]))
                for i, pixels in zip(indices, edited.pixels):
                    edits[i] = tensor_to_image(pixels)
            return edits

    return AdapterEditor()
