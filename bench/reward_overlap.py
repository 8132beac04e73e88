"""How much of the reward's time the trainer hides behind rollouts (`reward.overlap`).

    .venv/bin/python bench/reward_overlap.py [--judge PATH] [--iterations 4]

Runs the demo's NFT config (6 groups x 8 edits, rollouts in batches of 16, so three batches per
iteration) with the judge reward, in-process (`mllm`) and served (`mllm_remote` against an
`editr1 serve-reward` subprocess), each with scoring overlapped and inline. Prints seconds per
iteration of rollout + reward (wall) and of reward computation; the difference between the inline
and overlapped rows is the time hidden. Run it alone: on 2 cores another job distorts everything.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from reward_throughput import start_server

from editr1.config import TrainConfig, load_config
from editr1.tasks.shapes import DEMO_CONFIG, SHIPPED_BASE, SHIPPED_JUDGE
from editr1.tasks.shapes.scenes import write_shapes_dataset
from editr1.trainer.metrics_log import read_metrics
from editr1.trainer.rl_trainer import run_rl


def measure(root: Path, name: str, reward: list[str], overlap: bool, iterations: int) -> tuple[float, float]:
    out = root / name
    run_rl(load_config(TrainConfig, DEMO_CONFIG, [
        f"data.train={root / 'data/train.jsonl'}", "data.heldout=null", f"model.path={SHIPPED_BASE}", f"output_dir={out}",
        f"iterations={iterations}", "rollout.batch_size=16", f"reward.overlap={str(overlap).lower()}", *reward,
        "logging.progress=false", "logging.trackers=[]", "logging.grid_every=0", f"logging.checkpoint_every={iterations + 1}",
    ]))
    rows = [r for r in read_metrics(out) if "seconds_rollout_and_reward" in r][1:]  # the first iteration warms up
    return (statistics.mean(r["seconds_rollout_and_reward"] for r in rows),
            statistics.mean(r["seconds_reward_compute"] for r in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge", type=Path, default=SHIPPED_JUDGE)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--server-threads", type=int, default=1)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_shapes_dataset(root / "data", 200, 16, seed=0)
        local = ["reward.name=mllm", f"reward.options={{model: '{args.judge}', batch_size: 16}}"]
        for overlap in (False, True):
            results.append(("in-process", overlap, *measure(root, f"local_{overlap}", local, overlap, args.iterations)))
        config = root / "serve.yaml"
        config.write_text(f"model: {args.judge}\nport: 0\nserved_model_name: judge\nmax_batch_size: 16\nbatch_size: 16\n")
        server, port = start_server(config, args.server_threads)
        try:
            remote = ["reward.name=mllm_remote", f"reward.options={{url: 'http://127.0.0.1:{port}/v1', model: judge}}"]
            for overlap in (False, True):
                results.append(("served", overlap, *measure(root, f"remote_{overlap}", remote, overlap, args.iterations)))
        finally:
            server.terminate()
            server.wait(timeout=60)
    print(f"\njudge {args.judge}; 48 edits per iteration in 3 rollout batches; mean over iterations 2..{args.iterations}\n")
    print(f"{'reward':<12}{'overlap':>8}{'rollout+reward s':>18}{'reward compute s':>18}{'hidden s':>10}")
    inline = {path: wall for path, overlap, wall, _ in results if not overlap}
    for path, overlap, wall, compute in results:
        hidden = inline[path] - wall if overlap else 0.0
        print(f"{path:<12}{str(overlap):>8}{wall:>18.2f}{compute:>18.2f}{hidden:>10.2f}")


if __name__ == "__main__":
    main()
