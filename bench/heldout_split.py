"""Held-out evaluation split over the processes of a launch: seconds per evaluation, 1 vs 2 processes.

    .venv/bin/python bench/heldout_split.py [--samples 64] [--steps 8] [--batch-size 16]

Trains one iteration of the shipped tiny base with an evaluation before and after (`seconds_eval` in
metrics.jsonl: the main process's wall time from the first edit to the scores, gathering included), on
1 process, then on 2 under the shipped DDP and FSDP configs (gloo on the CPU; FSDP through
tests/fsdp_on_cpu.py, which lets accelerate shard on a CPU). Each process gets one thread, as each would
get one GPU. Each process edits its share of the held-out samples, so 2 processes should take about
half the time of 1. Run it alone: on 2 cores another job distorts everything.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAUNCHES = {
    "ddp": ["--config_file", str(ROOT / "configs/accelerate/ddp_1node.yaml"), "-m", "editr1.cli.main"],
    "fsdp": ["--config_file", str(ROOT / "configs/accelerate/fsdp_1node.yaml"), str(ROOT / "tests/fsdp_on_cpu.py")],
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def seconds_per_evaluation(run: Path) -> list[float]:
    from editr1.trainer.metrics_log import read_metrics

    return [row["seconds_eval"] for row in read_metrics(run) if "seconds_eval" in row]


def measure(root: Path, name: str, launch: str | None, overrides: list[str]) -> list[float]:
    out = root / name
    sets = [item for override in [*overrides, f"output_dir={out}"] for item in ("--set", override)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    if launch is None:
        command = [sys.executable, "-m", "editr1.cli.main", "train", *sets]
    else:
        command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--num_processes", "2",
                   "--main_process_port", str(free_port()), *LAUNCHES[launch], "train", *sets]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return seconds_per_evaluation(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    from editr1.tasks.shapes import SHIPPED_BASE
    from editr1.tasks.shapes.scenes import write_shapes_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_shapes_dataset(root / "data", 40, args.samples, seed=0)
        overrides = [
            f"model.path={SHIPPED_BASE}", f"data.train={root / 'data/train.jsonl'}",
            f"data.heldout={root / 'data/test.jsonl'}", "iterations=1", "rollout.groups_per_iteration=2",
            "rollout.group_size=4", "rollout.steps=3", f"eval.samples={args.samples}", "eval.every=1",
            f"eval.steps={args.steps}", f"eval.batch_size={args.batch_size}", "logging.progress=false",
            "logging.trackers=[]", "logging.grid_every=0",
        ]
        rows = [("1 process", statistics.mean(measure(root, "one", None, overrides)))]
        for launch in LAUNCHES:
            rows.append((f"2 processes, {launch}", statistics.mean(measure(root, launch, launch, overrides))))
    single = rows[0][1]
    print(f"held-out evaluation: {args.samples} samples, {args.steps} Euler steps, batches of {args.batch_size}; "
          "mean of 2 evaluations, one thread per process")
    print(f"| {'launch':<20} | seconds per evaluation | vs 1 process |")
    print(f"| {'-' * 20} | ---------------------- | ------------ |")
    for name, seconds in rows:
        print(f"| {name:<20} | {seconds:>22.2f} | {seconds / single:>11.2f}x |")


if __name__ == "__main__":
    main()
