"""The `editr1` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from editr1.errors import EditR1Error


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config (defaults if omitted)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set rollout.group_size=4 (repeatable)")


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

    sft = commands.add_parser("sft", help="supervised flow-matching fine-tuning")
    _add_config_args(sft)

    train = commands.add_parser("train", help="DiffusionNFT post-training")
    _add_config_args(train)
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")

    demo = commands.add_parser("demo", help="the CPU demo: shapes data, shipped base, NFT, held-out report")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"))
    demo.add_argument("--control", action="store_true", help="also run equal-time SFT from the same base")
    demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a field of the demo's NFT config")
    return parser


def run(args: argparse.Namespace) -> None:
    if args.command == "data":
        from editr1.data.shapes import write_shapes_dataset

        counts = write_shapes_dataset(args.out, args.n, args.n_test, args.seed)
        print(f"wrote {counts['train']} training and {counts['test']} held-out samples to {args.out}")
    elif args.command == "sft":
        from editr1.config import SFTConfig, load_config
        from editr1.trainer.sft import run_sft

        print(json.dumps(run_sft(load_config(SFTConfig, args.config, args.overrides)), indent=2))
    elif args.command == "train":
        from editr1.config import NFTConfig, load_config
        from editr1.trainer.nft import run_nft

        print(json.dumps(run_nft(load_config(NFTConfig, args.config, args.overrides), resume=args.resume), indent=2))
    elif args.command == "demo":
        from editr1.cli.demo import run_demo

        print(json.dumps(run_demo(args.out, control=args.control, overrides=args.overrides), indent=2))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except EditR1Error as error:
        print(f"editr1: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("editr1: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
