"""`editr1 eval heldout`: the held-out evaluation of training runs, for any model, data and reward.

    editr1 eval heldout --run runs/nft --against-model Qwen/Qwen-Image-Edit-2509 \\
        --data data/test.jsonl --reward configs/reward.yaml --out runs/nft/heldout-eval
    editr1 eval heldout --model Qwen/Qwen-Image-Edit-2509 --lora runs/nft/final --data data/test.jsonl \\
        --reward reward.yaml --set options.batch_size=8 --resolution 512 --out eval/

Every sample is edited from its own fixed noise (`--seed`, the same for both models), by the code
that training evaluates with (`editr1.eval.heldout.evaluate`), and scored by the configured reward.
So the source conditions the model as in a run's held-out evaluation (at `--resolution`, or at a
run's own condition area), not at the pipeline's ~1024^2 of `editr1 edit` and `editr1 eval imgedit`:
the numbers compare with the run's own.
With a baseline (`--against-run` / `--against-model`) the gain is model − baseline over the samples
scored for both, with its paired standard error (same samples, same noise).

`--out DIR` gets `heldout.json` (the summary, written last), `scores.jsonl` (one row per sample:
its score or null and why) and, with a baseline, `before_after.png` (source | baseline, captioned
"before" | model, captioned "after", as in a training run's).
Samples the reward could not score are left out of every mean and counted, never scored 0. A reward
that crashes, or whose answer breaks the reward contract, stops the evaluation with one line naming it
and the samples; a crash's traceback goes to `reward_errors.log` in `--out`.

Every input (models, LoRAs, run folders, data, reward config, output folder) is checked before a
model is loaded; problems are `EditR1Error`s, printed as one line. The models are loaded one at a
time: the first is freed before the second is loaded.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editr1.cli.edit import add_model_arguments
from editr1.errors import EditR1Error
from editr1.fileio import refuse_foreign_entries, write_text_atomic

#: What `--out` holds when done; its presence means the folder already holds an evaluation.
SUMMARY, SCORES, GRID = "heldout.json", "scores.jsonl", "before_after.png"
#: Samples shown in `before_after.png`, as in a training run's.
GRID_SAMPLES = 8
#: EvalConfig's defaults: an evaluation here matches a training run's held-out evaluation.
DEFAULT_STEPS, DEFAULT_SAMPLER, DEFAULT_CFG, DEFAULT_SEED = 8, "euler", 1.0, 1234


def add_heldout_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_model_arguments(parser, prefix="against-", required=False,
                        what="baseline (the gain, model - baseline, is paired: same samples and noise): ")
    parser.add_argument("--data", required=True, type=Path, metavar="JSONL", help="edit JSONL (see docs/data.md)")
    parser.add_argument("--reward", required=True, type=Path, metavar="YAML",
                        help="YAML with the reward's name and options (as a config's `reward:` section)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of the reward config, e.g. --set options.batch_size=16 (repeatable)")
    parser.add_argument("--samples", type=int, default=None, metavar="N",
                        help="evaluate the first N samples of --data (default: all)")
    parser.add_argument("--resolution", type=int, default=None,
                        help="square edit size in pixels (default: the training resolution of --run / --against-run); "
                             "the source conditions the model at it (or at a run's own condition area), as in the "
                             "run's held-out evaluation, not at the pipeline's ~1024^2 of `edit` and `eval imgedit`")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"sampler steps (default: {DEFAULT_STEPS})")
    parser.add_argument("--sampler", choices=("euler", "dpmpp_2m"), default=DEFAULT_SAMPLER,
                        help=f"ODE sampler (default: {DEFAULT_SAMPLER})")
    parser.add_argument("--cfg-scale", type=float, default=DEFAULT_CFG,
                        help="true classifier-free guidance scale (default: 1.0, off)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="distilled guidance of guidance-embedded models (default: the family's, e.g. 3.5 for FLUX.1 Kontext)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"noise seed (default: {DEFAULT_SEED}); both models edit each sample from the same noise")
    parser.add_argument("--batch-size", type=int, default=16, help="samples edited and scored at once (default: 16)")
    parser.add_argument("--max-prompt-tokens", type=int, default=None,
                        help="longest instruction in text-encoder tokens (default: the model family's limit)")
    parser.add_argument("--prompt-overflow", choices=("error", "truncate"), default="error",
                        help="an instruction over the limit: an error naming its line (default), or cut to fit")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                        help="weights dtype (default: a run's own; else bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help=f"folder for {SUMMARY}, {SCORES} and (with a baseline) {GRID}; never overwritten")


# ---- checks that run before any model is loaded ---------------------------------------------------

_FLAG = re.compile(r"(?<![\w-])--(run|model|lora)\b")


def _choose(run: Path | None, model: str | None, lora: str | None, baseline: bool):
    """`choose_model`, its messages naming the `--against-*` flags for the baseline."""
    from editr1.cli.edit import choose_model

    if not baseline:
        return choose_model(run, model, lora)
    if lora is not None and run is None and model is None:
        raise EditR1Error("--against-lora: goes with --against-model (the baseline's base model)")
    try:
        return choose_model(run, model, lora)
    except EditR1Error as error:
        raise EditR1Error(_FLAG.sub(r"--against-\1", str(error))) from error


def run_resolution(run: Path, flag: str = "--run") -> int:
    """The training resolution of a run folder (NFT or SFT): `model.resolution` of its config.yaml."""
    import yaml

    from editr1.config import ModelConfig
    from editr1.trainer.run_folder import CONFIG_FILE

    path = run.expanduser() / CONFIG_FILE
    if not path.is_file():
        raise EditR1Error(f"{flag} {run}: no {CONFIG_FILE} to read the training resolution from; give --resolution")
    try:
        saved = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise EditR1Error(f"{path}: cannot be read ({error}); give --resolution") from error
    model = saved.get("model") if isinstance(saved, dict) else None
    resolution = model.get("resolution", ModelConfig.resolution) if isinstance(model, dict) else ModelConfig.resolution
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 8:
        raise EditR1Error(f"{path}: model.resolution: expected an integer >= 8, got {resolution!r}; give --resolution")
    return resolution


def _guidance_embedded(folder: Path) -> bool | None:
    """Whether the model's transformer takes distilled guidance, from its config (None: not known yet)."""
    config = Path(folder) / "transformer" / "config.json"
    try:
        return bool(json.loads(config.read_text()).get("guidance_embeds", False))
    except (OSError, ValueError, AttributeError):
        return None


def _check_guidance(choice, asked: float | None, label: str, guided: bool | None) -> float | None:
    """The distilled guidance to sample `choice` with (None for a transformer without a guidance input)."""
    from editr1.models.registry import adapter_class

    if guided is None:
        return asked
    if not guided:
        if asked is not None:
            raise EditR1Error(f"--guidance: the {label}'s {choice.family} transformer has no guidance input; "
                              "use --cfg-scale for true CFG")
        return None
    guidance = asked if asked is not None else adapter_class(choice.family).saved_inference(choice.folder).guidance
    if guidance is None:
        raise EditR1Error(f"the {label}'s {choice.family} transformer is guidance-distilled: set --guidance")
    return guidance


def _check_out(out: Path) -> Path:
    out = out.expanduser()
    if out.exists() and not out.is_dir():
        raise EditR1Error(f"--out {out}: is a file; expected a folder")
    from editr1.trainer.run_folder import REWARD_ERRORS

    refuse_foreign_entries(out, (SUMMARY, SCORES, GRID, REWARD_ERRORS), "editr1 eval heldout")
    if (out / SUMMARY).exists():
        raise EditR1Error(f"--out {out}: already holds an evaluation ({SUMMARY}); choose another folder, "
                          f"or delete {out / SUMMARY} to evaluate again")
    existing = out if out.is_dir() else next((p for p in out.parents if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise EditR1Error(f"--out {out}: not writable")
    return out


def _check_numbers(args: argparse.Namespace) -> None:
    for flag, value, low in (("--samples", args.samples, 1), ("--resolution", args.resolution, 8),
                             ("--steps", args.steps, 1), ("--batch-size", args.batch_size, 1),
                             ("--max-prompt-tokens", args.max_prompt_tokens, 1)):
        if value is not None and value < low:
            raise EditR1Error(f"{flag} {value}: must be at least {low}")
    if not math.isfinite(args.cfg_scale) or args.cfg_scale < 1.0:
        raise EditR1Error(f"--cfg-scale {args.cfg_scale}: must be at least 1 (1 turns true CFG off)")
    if args.guidance is not None and not math.isfinite(args.guidance):
        raise EditR1Error(f"--guidance {args.guidance}: must be a finite number")


def public_options(options: Any) -> Any:
    """Reward options as recorded: secret values (`SECRET_OPTIONS`, at any depth) hidden."""
    from editr1.trainer.run_folder import SECRET_OPTIONS

    if isinstance(options, dict):
        return {key: "(hidden)" if key in SECRET_OPTIONS and value is not None else public_options(value)
                for key, value in options.items()}
    if isinstance(options, (list, tuple)):
        return [public_options(value) for value in options]
    return options if options is None or isinstance(options, (str, int, float, bool)) else str(options)


# ---- the evaluation -----------------------------------------------------------------------------


@dataclass
class ModelEval:
    label: str
    choice: Any
    scores: list[float | None]
    failures: dict[int, str]
    #: The first `GRID_SAMPLES` edits, for the before/after grid.
    edited: Any
    result: Any

    @property
    def summary(self) -> dict:
        valid = self.result.valid
        return {"model": self.choice.identity(), "n": int(valid.sum()), "mean": self.result.mean,
                "n_unscored": int((~valid).sum())}


def _evaluate_model(label: str, choice, samples, args, settings: dict, reward, device) -> ModelEval:
    """Load `choice`, edit and score every sample from its fixed noise, then free the model."""
    import torch

    from editr1.cli.edit import default_dtype, load_model
    from editr1.data.prompt_length import fit_prompt_lengths
    from editr1.eval.heldout import HeldoutSet, evaluate

    dtype_name = default_dtype(choice, device, args.dtype)
    size = settings["resolution"]
    print(f"editr1 eval heldout: {label}: {choice.description} ({choice.family})"
          + (f" + LoRA {choice.lora}" if choice.lora is not None else "")
          + f", {len(samples)} samples at {size}x{size}, {settings['steps']} {settings['sampler']} steps"
          + f", on {device} ({dtype_name})", flush=True)
    adapter = load_model(choice, device, dtype_name)
    try:
        guided = bool(adapter.transformer.config.get("guidance_embeds", False))
        guidance = _check_guidance(choice, args.guidance, label, guided)
        multiple = adapter.codec.scale_factor * 2
        if size % multiple:
            raise EditR1Error(f"--resolution {size}: must be a multiple of {multiple} for the {label}'s {choice.family} model")
        fitted = fit_prompt_lengths(samples, args.data, adapter, args.max_prompt_tokens, args.prompt_overflow)
        heldout = HeldoutSet.build(fitted, len(fitted), size, adapter.latent_token_shape(size, size), args.seed, str(args.data))
        with torch.no_grad():
            try:
                result = evaluate(adapter, heldout, reward, args.steps, args.sampler, args.cfg_scale,
                                  batch_size=args.batch_size, guidance=guidance)
            except EditR1Error as error:
                raise EditR1Error(f"{label} ({choice.description}): {error}") from error
    finally:
        del adapter
        heldout = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result.scores, result.valid = result.scores.float().cpu(), result.valid.bool().cpu()
    scores = [float(s) if bool(v) else None for s, v in zip(result.scores.tolist(), result.valid.tolist())]
    failures = {}
    for index, reason in result.failures.items():
        prefix = f"sample {samples[index].id} (line {samples[index].line}): "
        failures[index] = reason[len(prefix):] if reason.startswith(prefix) else reason
    for index, score in enumerate(scores):
        if score is None and index not in failures:
            failures[index] = "not scored (no reason given)"
    edited = result.edited[:GRID_SAMPLES].detach().float().cpu().clone()
    result.edited = edited
    evaluation = ModelEval(label, choice, scores, failures, edited, result)
    summary = evaluation.summary
    print(f"{label}: held-out reward {summary['mean']:.4f} over {summary['n']} samples"
          + (f" ({summary['n_unscored']} unscored, left out)" if summary["n_unscored"] else ""), flush=True)
    return evaluation


def run_heldout(args: argparse.Namespace) -> dict:
    # Every input is checked here, before any model is loaded.
    _check_numbers(args)
    out = _check_out(args.out)
    model = _choose(args.run, args.model, args.lora, baseline=False)
    against = None
    if args.against_run is not None or args.against_model is not None or args.against_lora is not None:
        against = _choose(args.against_run, args.against_model, args.against_lora, baseline=True)
    if args.resolution is not None:
        resolution = args.resolution
    elif args.run is not None:
        resolution = run_resolution(args.run)
    elif args.against_run is not None:
        resolution = run_resolution(args.against_run, "--against-run")
    else:
        raise EditR1Error("--resolution: required with --model (a run folder records its own)")
    for label, choice in (("model", model), ("baseline", against)):
        if choice is not None:
            _check_guidance(choice, args.guidance, label, _guidance_embedded(choice.folder))

    from editr1.config import RewardConfig, load_config
    from editr1.data.jsonl import read_edit_jsonl
    from editr1.rewards.combined import build_combined
    from editr1.trainer.run_folder import REWARD_ERRORS

    reward_config = load_config(RewardConfig, args.reward, args.overrides)
    data = args.data.expanduser()
    samples = read_edit_jsonl(data)
    if args.samples is not None:
        if args.samples > len(samples):
            raise EditR1Error(f"--samples {args.samples}: {data} has only {len(samples)} samples")
        samples = samples[:args.samples]
    try:  # one reward, or several scored as their weighted mean; a crash's traceback goes to --out
        reward = build_combined(reward_config, "reward", out / REWARD_ERRORS)
    except EditR1Error as error:
        raise EditR1Error(f"--reward {args.reward}: {error}") from error
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise EditR1Error(f"--out {out}: cannot create it ({error.strerror or error})") from error

    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    settings = {"resolution": resolution, "steps": args.steps, "sampler": args.sampler, "cfg_scale": args.cfg_scale,
                "guidance": args.guidance, "seed": args.seed}
    evaluated = _evaluate_model("model", model, samples, args, settings, reward, device)
    base = _evaluate_model("baseline", against, samples, args, settings, reward, device) if against is not None else None

    summary: dict[str, Any] = {
        "reward": {"name": reward.name, **({"terms": [{"name": t.name, "options": public_options(t.options), "weight": t.weight}
                                                     for t in reward_config.terms]} if reward_config.terms
                                           else {"options": public_options(reward_config.options)}),
                   "config": str(args.reward.expanduser().resolve())},
        "data": str(data.resolve()),
        "samples": len(samples),
        **settings,
        **evaluated.summary,
    }
    if base is not None:
        from editr1.eval.heldout import paired_gain

        gain, stderr, both = paired_gain(evaluated.result.scores, evaluated.result.valid,
                                         base.result.scores, base.result.valid)
        summary.update(
            baseline=base.summary,
            gain=gain,
            gain_stderr=stderr,
            n_paired=int(both.sum()),
            paired_mean=float(evaluated.result.scores[both].mean()),
            paired_baseline_mean=float(base.result.scores[both].mean()),
        )
        if model.family != against.family:
            summary["note"] = (f"the models are of different families ({model.family}, {against.family}): "
                               "the same samples, but not the same noise")

    _write_scores(out / SCORES, samples, evaluated, base)
    if base is not None:
        _write_grid(out / GRID, samples, resolution, evaluated, base)

    if (out / SUMMARY).exists():  # written meanwhile by another evaluation
        raise EditR1Error(f"--out {out}: {SUMMARY} appeared while evaluating; not overwritten")
    write_text_atomic(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
    if base is not None:
        line = f"gain (model - baseline): {summary['gain']:+.4f}"
        line += f" ± {summary['gain_stderr']:.4f}" if summary["gain_stderr"] is not None else " (one paired sample: no stderr)"
        print(line + f" over {summary['n_paired']} paired samples", flush=True)
    files = {"summary": str(out / SUMMARY), "scores": str(out / SCORES)}
    if base is not None:
        files["before_after"] = str(out / GRID)
    return {**summary, "files": files}


def _write_scores(path: Path, samples, evaluated: ModelEval, base: ModelEval | None) -> None:
    rows = []
    for i, sample in enumerate(samples):
        row = {"id": sample.id, "line": sample.line, "score": evaluated.scores[i], "failure": evaluated.failures.get(i)}
        if base is not None:
            row.update(baseline_score=base.scores[i], baseline_failure=base.failures.get(i))
        rows.append(json.dumps(row))
    write_text_atomic(path, "\n".join(rows) + "\n")


def _write_grid(path: Path, samples, resolution: int, evaluated: ModelEval, base: ModelEval) -> None:
    """source | baseline (its score) | model (its score), for the first samples, as a training run's."""
    from editr1.data.batching import source_tensors
    from editr1.eval.visuals import before_after_grid

    n = min(GRID_SAMPLES, len(samples))
    shown = samples[:n]

    def scores(evaluation: ModelEval) -> list[float]:
        return [float("nan") if s is None else s for s in evaluation.scores[:n]]

    grid = before_after_grid([source_tensors(s, resolution) for s in shown], list(base.edited[:n]),
                             list(evaluated.edited[:n]), [s.prompt for s in shown], scores(base), scores(evaluated))
    grid.save(path)
