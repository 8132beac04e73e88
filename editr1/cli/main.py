"""The `editr1` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path

from editr1.cli.benchmark import add_benchmark_arguments, add_compare_arguments
from editr1.cli.edit import add_edit_arguments
from editr1.cli.heldout import add_heldout_arguments
from editr1.errors import EditR1Error


class _DropMessage(logging.Filter):
    """Drops one logger's records that contain `fragment`; everything else passes."""

    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


#: Library warnings that say nothing to an editr1 user, by the logger that emits them.
_KNOWN_HARMLESS = {
    # Without torchvision, transformers uses its PIL image processors: the ones editr1 is tested with.
    "transformers.utils.import_utils": _DropMessage("requires torchvision (not installed); falling back to"),
    # diffusers warns on every `.to(dtype)`, even when no module has to stay in float32.
    "diffusers.models.modeling_utils": _DropMessage("that should be kept in float32: []"),
}


def silence_known_warnings() -> None:
    """Filter exactly the known-harmless warnings above; other warnings of these loggers still show."""
    for name, drop in _KNOWN_HARMLESS.items():
        logging.getLogger(name).addFilter(drop)  # the same filter object is added once


def _add_config_args(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument("config", nargs="?", help="YAML config (defaults if omitted)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config field, e.g. --set {example} (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="editr1", description="RL post-training for image editing models (Edit-R1).")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="generate datasets")
    data_kinds = data.add_subparsers(dest="dataset", required=True)
    shapes = data_kinds.add_parser("shapes", help="the synthetic shapes editing task with a ground-truth verifier")
    shapes.add_argument("--out", required=True, type=Path)
    shapes.add_argument("--n", type=int, default=2000, help="training samples")
    shapes.add_argument("--n-test", type=int, default=256, help="held-out samples")
    shapes.add_argument("--seed", type=int, default=0)
    subset = data_kinds.add_parser("benchmark", help="a benchmark's samples as an edit JSONL (e.g. for data.heldout, "
                                                     "judged with the viescore reward during training)")
    subset.add_argument("benchmark", choices=("imgedit", "gedit"))
    subset.add_argument("--data", required=True, type=Path, help="the benchmark's local copy, as for `editr1 eval`")
    subset.add_argument("--out", required=True, type=Path)
    subset.add_argument("--limit", type=int, default=None, help="only the first N samples (after --types)")
    subset.add_argument("--types", default=None, help="comma-separated task types")
    subset.add_argument("--languages", default="en", help="GEdit: comma-separated languages (default: en)")

    sft = commands.add_parser("sft", help="supervised flow-matching fine-tuning")
    _add_config_args(sft, "steps=200")
    sft.add_argument("--resume", action="store_true",
                     help="continue the run in output_dir from its newest checkpoint (or from the beginning)")

    train = commands.add_parser("train", help="DiffusionNFT post-training")
    _add_config_args(train, "rollout.group_size=4")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in output_dir from its newest checkpoint (or from the beginning)")

    precompute = commands.add_parser(
        "precompute", help="encode every training and held-out sample's conditions once, into data.conditions_cache "
                           "(which `editr1 train` or `editr1 sft` then reads instead of running the text encoder); "
                           "only the text encoders and the VAE go to the GPU")
    _add_config_args(precompute, "data.conditions_cache=cache/conditions")
    precompute.add_argument("--sft", action="store_true",
                            help="CONFIG is an `editr1 sft` config (default: an `editr1 train` config)")

    judge = commands.add_parser("judge", help="MLLM judges")
    judge_actions = judge.add_subparsers(dest="judge_action", required=True)
    distill = judge_actions.add_parser("distill", help="train the tiny Qwen2.5-VL judge to answer the shapes verifier's score")
    _add_config_args(distill, "batch_size=32")

    evaluation = commands.add_parser("eval", help="evaluations")
    evaluations = evaluation.add_subparsers(dest="evaluation", required=True)
    alignment = evaluations.add_parser(
        "reward-alignment", help="pairwise accuracy of one or more rewards on preference pairs, with bootstrap intervals "
                                 "and paired differences; JSON on stdout, a table on stderr")
    alignment.add_argument("--pairs", required=True, type=Path,
                           help="a JSONL of pairs (source, prompt, image_a, image_b, preferred), or a folder of "
                                "GenAI-Bench's image_edition votes saved with datasets' save_to_disk")
    alignment.add_argument("--reward", dest="rewards", required=True, type=Path, action="append", metavar="YAML",
                           help="YAML with a reward's name and options, or `terms:` (a list of weighted rewards, "
                                "scored as one); repeat to compare rewards, each labelled by its file's stem")
    alignment.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                           help="override a field of every --reward file, e.g. --set options.batch_size=16 (repeatable)")
    alignment.add_argument("--size", type=int, default=None, help="resize images to SIZE x SIZE before scoring")
    alignment.add_argument("--bootstrap", type=int, default=2000, metavar="N", help="bootstrap resamples (default 2000)")
    alignment.add_argument("--seed", type=int, default=0, help="the bootstrap's seed (default 0)")
    alignment.add_argument("--out", type=Path, default=None, help="also write the JSON report to this file")
    add_benchmark_arguments(evaluations.add_parser("imgedit", help="ImgEdit-Bench: generate, judge per type, aggregate"), "imgedit")
    add_benchmark_arguments(evaluations.add_parser("gedit", help="GEdit-Bench: generate, judge SC and PQ, aggregate"), "gedit")
    add_heldout_arguments(evaluations.add_parser("heldout", help="held-out reward of a model on a JSONL, against a "
                                                              "second model: paired gain ± standard error"))
    add_compare_arguments(evaluations.add_parser("compare", help="two benchmark evaluations: per-type differences with "
                                                              "paired bootstrap intervals"))

    demo = commands.add_parser("demo", help="the CPU demo: shapes data, shipped base, NFT (or GRPO), held-out report")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"))
    demo.add_argument("--control", action="store_true", help="also run equal-time SFT from the same base")
    demo.add_argument("--reward", choices=("verifier", "mllm"), default="verifier",
                      help="train on the programmatic verifier or on the shipped MLLM judge's score-logit reward")
    from editr1.tasks.shapes import DEMO_CONFIGS

    demo.add_argument("--algorithm", choices=tuple(DEMO_CONFIGS), default="nft",
                      help="train with DiffusionNFT (the recipe) or Flow-GRPO (the baseline), each at its own settings")
    demo.add_argument("--hacking", action="store_true",
                      help="train on the verifier's gameable early formula, with the exact verifier watched beside it: "
                           "the reward-hacking alarm fires (docs/rewards.md)")
    demo.add_argument("--no-ablation", dest="ablation", action="store_false",
                      help="with --reward mllm: skip the group-filtering ablation run")
    demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a field of the demo's NFT config")

    add_edit_arguments(commands.add_parser("edit", help="edit one image with a trained run, or a base model and an optional LoRA"))

    serve = commands.add_parser("serve-reward", help="serve the MLLM judge over an OpenAI-compatible HTTP API")
    _add_config_args(serve, "port=8001")
    return parser


def _reward_alignment(args: argparse.Namespace) -> dict:
    """`editr1 eval reward-alignment`: every --reward file's reward on the pairs, and their differences."""
    if args.bootstrap < 1:
        raise EditR1Error(f"--bootstrap {args.bootstrap}: must be a positive number of resamples")
    if args.size is not None and args.size < 1:
        raise EditR1Error(f"--size {args.size}: must be a positive number of pixels")
    if args.out is not None and not args.out.parent.is_dir():  # found before the rewards run, not after
        raise EditR1Error(f"--out {args.out}: the folder {args.out.parent} does not exist")
    from collections import Counter

    from editr1.config import RewardConfig, load_config
    from editr1.eval.reward_alignment import CONFIDENCE, compare_rewards, reward_labels

    # Every input is checked before any reward is built (building one may load a judge).
    configs = [load_config(RewardConfig, path, args.overrides) for path in args.rewards]
    from editr1.cli.heldout import public_options
    from editr1.data.preference_pairs import read_pairs
    from editr1.rewards.combined import build_combined

    layout, pairs = read_pairs(args.pairs)
    rewards = {}
    try:
        for label, path, config in zip(reward_labels(args.rewards), args.rewards, configs):
            try:
                rewards[label] = build_combined(config, "reward")
            except EditR1Error as error:
                raise EditR1Error(f"--reward {path}: {error}") from error
        compared = compare_rewards(rewards, pairs, args.pairs, args.bootstrap, args.seed, args.size)
    finally:
        for reward in rewards.values():
            reward.close()
    summaries = {label: {"config": str(path), "name": rewards[label].name,
                         "terms": [{"name": t.name, "options": public_options(t.options), "weight": t.weight}
                                   for t in config.term_list()]}
                 for label, path, config in zip(rewards, args.rewards, configs)}
    votes = dict(Counter(pair.vote for pair in pairs))  # GenAI-Bench's two kinds of tie stay apart
    return {"pairs": str(args.pairs), "layout": layout, "n_pairs": len(pairs), "votes": votes,
            "bootstrap": {"resamples": args.bootstrap, "seed": args.seed, "confidence": CONFIDENCE},
            "rewards": {label: {"reward": summaries[label], **entry} for label, entry in compared["rewards"].items()},
            "differences": compared["differences"]}


def run(args: argparse.Namespace) -> None:
    # Configs are loaded before the trainers are imported: a config error then comes alone, fast.
    if args.command == "data" and args.dataset == "benchmark":
        from editr1.cli.benchmark import run_benchmark_export

        print(json.dumps(run_benchmark_export(args), indent=2))
    elif args.command == "data":
        from editr1.tasks.shapes.scenes import write_shapes_dataset

        counts = write_shapes_dataset(args.out, args.n, args.n_test, args.seed)
        print(f"wrote {counts['train']} training and {counts['test']} held-out samples to {args.out}")
    elif args.command == "sft":
        from editr1.config import SFTConfig, load_config

        config = load_config(SFTConfig, args.config, args.overrides)
        from editr1.trainer.sft import run_sft

        print(json.dumps(run_sft(config, resume=args.resume), indent=2))
    elif args.command == "train":
        from editr1.config import TrainConfig, load_config

        config = load_config(TrainConfig, args.config, args.overrides)
        from editr1.trainer.rl_trainer import run_rl

        summary = run_rl(config, resume=args.resume)
        if summary:  # only the main process has one
            print(json.dumps(summary, indent=2))
    elif args.command == "precompute":
        from editr1.config import TrainConfig, SFTConfig, load_config

        config = load_config(SFTConfig if args.sft else TrainConfig, args.config, args.overrides)
        from editr1.trainer.conditions_cache import precompute_conditions

        print(json.dumps(precompute_conditions(config), indent=2))
    elif args.command == "judge":
        from editr1.config import load_config
        from editr1.tasks.shapes.config import JudgeDistillConfig

        config = load_config(JudgeDistillConfig, args.config, args.overrides)
        from editr1.tasks.shapes.judge_distill import run_judge_distill

        print(json.dumps(run_judge_distill(config), indent=2))
    elif args.command == "eval" and args.evaluation in ("imgedit", "gedit"):
        from editr1.cli.benchmark import run_benchmark

        print(json.dumps(run_benchmark(args, args.evaluation), indent=2))
    elif args.command == "eval" and args.evaluation == "heldout":
        from editr1.cli.heldout import run_heldout

        print(json.dumps(run_heldout(args), indent=2))
    elif args.command == "eval" and args.evaluation == "compare":
        from editr1.cli.benchmark import run_compare

        print(json.dumps(run_compare(args), indent=2))
    elif args.command == "eval":  # reward-alignment
        from editr1.eval.reward_alignment import format_table

        report = _reward_alignment(args)
        print(format_table(report), file=sys.stderr)
        text = json.dumps(report, indent=2)
        if args.out is not None:
            try:
                args.out.write_text(text + "\n", encoding="utf-8")
            except OSError as error:
                raise EditR1Error(f"--out {args.out}: cannot write it ({error.strerror or error})") from error
        print(text)
    elif args.command == "demo":
        from editr1.cli.demo import run_demo

        print(json.dumps(run_demo(args.out, control=args.control, overrides=args.overrides, reward=args.reward, ablation=args.ablation,
                                   algorithm=args.algorithm, hacking=args.hacking), indent=2))
    elif args.command == "edit":
        from editr1.cli.edit import run_edit

        result = run_edit(args)
        print(f"wrote {result['out']} ({result['width']}x{result['height']}, {result['family']}, {result['steps']} "
              f"{result['sampler']} steps, seed {result['seed']})")
    elif args.command == "serve-reward":
        from editr1.config import load_config
        from editr1.serve.config import ServeConfig

        config = load_config(ServeConfig, args.config, args.overrides)  # before the heavy imports
        from editr1.cli.serve import serve_reward

        serve_reward(config)


def _end_job(message: str, code: int) -> None:
    """In a job of several processes (`accelerate launch`), the error ends every process of it, and is printed
    once (`editr1.trainer.job`); this call then does not return. Otherwise nothing happens here."""
    job = sys.modules.get("editr1.trainer.job")  # imported by a process of a launch, and by the trainers
    if job is not None:
        job.fail(message, code)


def _leave_job() -> None:
    """A process of a job that finished ends here, every process at once (`editr1.trainer.job.leave`)."""
    job = sys.modules.get("editr1.trainer.job")
    if job is not None:
        job.leave()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    silence_known_warnings()
    try:
        if args.command == "train" and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a process of a launch
            from editr1.trainer import job

            job.start_from_launcher()
        run(args)
        _leave_job()
    except EditR1Error as error:
        message = f"editr1: error: {error}"
        _end_job(message, 2)
        print(message, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("editr1: interrupted", file=sys.stderr)
        return 130
    except Exception:
        _end_job(traceback.format_exc(), 1)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
