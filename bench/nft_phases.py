"""Seconds per phase per NFT iteration on the demo's tiny config, and the demo's total time.

    .venv/bin/python bench/nft_phases.py --iterations 5            # phases only
    .venv/bin/python bench/nft_phases.py --iterations 5 --demo     # and a full `editr1 demo` run, timed

Run it alone: two jobs on 2 cores roughly triple each other's cost.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from editr1.cli.demo import run_demo
from editr1.config import TrainConfig, load_config
from editr1.tasks.shapes import DEMO_CONFIG, SHIPPED_BASE
from editr1.tasks.shapes.scenes import write_shapes_dataset
from editr1.trainer.metrics_log import read_metrics
from editr1.trainer.rl_trainer import run_rl

PHASES = ("seconds_rollout_and_reward", "seconds_reward_compute", "seconds_train", "seconds_total")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--demo", action="store_true", help="also time a full `editr1 demo` run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_shapes_dataset(root / "data", 200, 16, seed=0)
        config = load_config(TrainConfig, DEMO_CONFIG, [
            f"data.train={root / 'data/train.jsonl'}", "data.heldout=null", f"model.path={SHIPPED_BASE}",
            f"output_dir={root / 'run'}", f"iterations={args.iterations}", "logging.progress=false",
            "logging.trackers=[]", "logging.grid_every=0", f"logging.checkpoint_every={args.iterations + 1}",
        ])
        run_rl(config)
        rows = [r for r in read_metrics(root / "run") if "seconds_total" in r]
    print(f"\nNFT iteration phases, demo config ({config.rollout.groups_per_iteration} groups x {config.rollout.group_size} "
          f"edits, {config.rollout.steps} {config.rollout.sampler} steps), seconds")
    print(f"{'iteration':>9} " + " ".join(f"{p.removeprefix('seconds_'):>9}" for p in PHASES))
    for row in rows:
        print(f"{row['step']:>9} " + " ".join(f"{row[p]:9.2f}" for p in PHASES))
    warm = rows[1:] or rows
    print(f"{'mean*':>9} " + " ".join(f"{statistics.mean(r[p] for r in warm):9.2f}" for p in PHASES))
    print("* mean over iterations after the first (warm-up)")
    if args.demo:
        with tempfile.TemporaryDirectory() as tmp:
            summary = run_demo(Path(tmp) / "demo")
        print(f"\n{'demo total':>12}: {summary['demo_seconds']:8.1f} s  ({summary['iterations']} iterations, "
              f"held-out {summary['base_heldout_reward']:.3f} -> {summary['final_heldout_reward']:.3f})")


if __name__ == "__main__":
    main()
