"""The race: DiffusionNFT against Flow-GRPO on the shapes task, measured with its exact verifier.

    .venv/bin/python bench/nft_vs_grpo.py [--seeds 0 1 2] [--budget 150] [--out runs/nft_vs_grpo]
    .venv/bin/python bench/nft_vs_grpo.py --reward mllm     # train on the shipped judge; the verifier only evaluates
    .venv/bin/python bench/nft_vs_grpo.py --stability 120   # longer runs: does either keep its gain?

Both algorithms start from the shipped SFT base with the same data, reward, groups (6 x 8 edits per iteration),
held-out set (128 fixed samples, fixed noise, 8 Euler steps) and the same wall-clock budget of training per run
(rollouts, rewards and updates; evaluations are not counted). Each runs with its own recommended settings, the
demo's configs (editr1/tasks/shapes/configs):
- DiffusionNFT (shapes_nft_demo.yaml): 6 steps of 2nd-order DPM-Solver++ rollouts, full fine-tuning at 5e-5,
  beta 1, the old policy soft-updated, no KL term (the Edit-R1 recipe, with the rate the demo found stable).
- Flow-GRPO (shapes_grpo_demo.yaml): 10 steps of its SDE at noise level 0.7, the PPO clip range 1e-4 and KL
  coefficient 0.04 of Flow-GRPO's published settings, full fine-tuning at the same rate, on-policy.
Two more DiffusionNFT arms, without the low-variance group filter and with the public code's stricter rule, are the
filter ablation (same seeds).

Prints, as markdown: the time each algorithm takes to reach +0.05 and +0.10 held-out verifier reward over the
base (mean and range across seeds, and how many seeds reached it), their ratio, the final gain ± standard
error across seeds, the judge-vs-verifier gap with `--reward mllm` (a gain the verifier does not confirm is
reward hacking), and the filter ablation as paired per-seed differences with the fraction of groups filtered.
Writes `race.png` (held-out verifier reward against training seconds and against images generated, one thin
line per seed, the mean bold) and `race.json` in `--out`. `--stability N` runs each algorithm N iterations
(one seed), also with the KL term switched (NFT 1e-3, GRPO 0) and at half the rate, and reports the peak
held-out reward and where each run ends.

A finished run (its summary.json) is reused, so a killed bench goes on where it stopped; delete `--out` to
measure again. Run it alone: two jobs on 2 cores distort every time.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
THRESHOLDS = (0.05, 0.10)
ARMS = {
    # name: (config, extra overrides, label)
    "nft": ("shapes_nft_demo.yaml", (), "DiffusionNFT"),
    "grpo": ("shapes_grpo_demo.yaml", (), "Flow-GRPO"),
    "nft_no_filter": ("shapes_nft_demo.yaml", ("rl.filter_rule=none",), "DiffusionNFT, no filter"),
    # The public training code's rule: it also drops tight groups that are not high (docs/algorithm.md).
    "nft_strict_filter": ("shapes_nft_demo.yaml", ("rl.filter_rule=strict",), "DiffusionNFT, strict filter"),
}
#: The filter ablation's arms against "nft_no_filter": (arm, rule).
FILTERED = (("nft", "paper"), ("nft_strict_filter", "strict"))
#: --stability variants: (arm, extra overrides, label).
STABILITY = {
    "nft": ("nft", (), "DiffusionNFT"),
    "nft_kl": ("nft", ("rl.kl_coef=1e-3",), "DiffusionNFT, KL 1e-3"),
    "nft_half_lr": ("nft", ("optim.lr=2.5e-5",), "DiffusionNFT, lr 2.5e-5"),
    "grpo": ("grpo", (), "Flow-GRPO"),
    "grpo_no_kl": ("grpo", ("rl.kl_coef=0",), "Flow-GRPO, no KL"),
    "grpo_half_lr": ("grpo", ("optim.lr=2.5e-5",), "Flow-GRPO, lr 2.5e-5"),
}


def train(folder: Path, config_name: str, overrides: list[str]) -> Path:
    """One training run in `folder` (reused when it finished before)."""
    from editr1.config import TrainConfig, load_config
    from editr1.tasks.shapes import SHIPPED_BASE, TASK_DIR
    from editr1.trainer.rl_trainer import run_rl

    if not (folder / "summary.json").is_file():
        config = load_config(TrainConfig, TASK_DIR / "configs" / config_name,
                             [f"model.path={SHIPPED_BASE}", f"output_dir={folder}", "logging.progress=false",
                              "logging.grid_every=0", *overrides])
        run_rl(config)
    return folder


def curve(run: Path) -> dict:
    """A run's held-out evaluations: step, training seconds and images generated before it, reward, gain."""
    from editr1.config import TrainConfig, load_config
    from editr1.trainer.metrics_log import read_metrics

    config = load_config(TrainConfig, run / "config.yaml")
    per_iteration = config.rollout.groups_per_iteration * config.rollout.group_size
    rows = read_metrics(run)
    seconds = {0: 0.0}
    for row in rows:
        if "seconds_total" in row:
            seconds[row["step"]] = seconds[row["step"] - 1] + row["seconds_total"]
    evaluations = [row for row in rows if "heldout_reward" in row]
    filtered = [row["fraction_filtered"] for row in rows if "fraction_filtered" in row]
    return {
        "step": [row["step"] for row in evaluations],
        "seconds": [seconds[row["step"]] for row in evaluations],
        "images": [row["step"] * per_iteration for row in evaluations],
        "reward": [row["heldout_reward"] for row in evaluations],
        "gain": [row.get("heldout_gain", 0.0) for row in evaluations],
        "training_reward": [row.get("heldout_training_reward") for row in evaluations],
        "fraction_filtered": statistics.fmean(filtered) if filtered else 0.0,
        "summary": json.loads((run / "summary.json").read_text()),
    }


def time_to(run: dict, threshold: float) -> float | None:
    """Training seconds at the first evaluation whose gain reaches `threshold` (None: never in the run)."""
    return next((s for s, g in zip(run["seconds"], run["gain"]) if g >= threshold), None)


def mean_se(values: list[float]) -> tuple[float, float | None]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None)


def fmt(mean: float, se: float | None, digits: int = 3) -> str:
    return f"{mean:+.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "")


def reach_cell(times: list[float | None]) -> str:
    reached = [t for t in times if t is not None]
    if not reached:
        return f"not reached (0/{len(times)})"
    cell = f"{statistics.fmean(reached):.0f} s [{min(reached):.0f}, {max(reached):.0f}]"
    return cell + ("" if len(reached) == len(times) else f" ({len(reached)}/{len(times)} seeds)")


def final_gain(run: dict, key: str = "final_heldout_reward", base: str = "base_heldout_reward") -> float:
    return run["summary"][key] - run["summary"][base]


def race_table(runs: dict[str, list[dict]], judge: bool, budget: float) -> list[str]:
    lines = ["| algorithm | iterations in budget | time to +0.05 | time to +0.10 | final verifier gain ± SE (seeds) |"
             + (" judge gain | judge − verifier |" if judge else ""),
             "| --- | --- | --- | --- | --- |" + (" --- | --- |" if judge else "")]
    for arm in ("nft", "grpo"):
        seeds = runs[arm]
        gains = [final_gain(r) for r in seeds]
        row = (f"| {ARMS[arm][2]} | {statistics.fmean(r['summary']['iterations'] for r in seeds):.1f} | "
               f"{reach_cell([time_to(r, THRESHOLDS[0]) for r in seeds])} | "
               f"{reach_cell([time_to(r, THRESHOLDS[1]) for r in seeds])} | {fmt(*mean_se(gains))} |")
        if judge:
            judged = [final_gain(r, "final_heldout_training_reward", "base_heldout_training_reward") for r in seeds]
            gaps = [j - g for j, g in zip(judged, gains)]
            row += f" {fmt(*mean_se(judged))} | {fmt(*mean_se(gaps))} |"
        lines.append(row)
    for threshold in THRESHOLDS:
        lines.append(f"\nFlow-GRPO / DiffusionNFT time to +{threshold:.2f}: {ratio_cell(runs, threshold, budget)}")
    return lines


def ratio_cell(runs: dict[str, list[dict]], threshold: float, budget: float) -> str:
    """Per seed, Flow-GRPO's time over DiffusionNFT's; a run that never reached the gain took more than the
    budget, so where only DiffusionNFT reached it the ratio is a lower bound."""
    ratios, bounds = [], []
    for nft, grpo in zip(runs["nft"], runs["grpo"]):
        a, b = time_to(nft, threshold), time_to(grpo, threshold)
        if a and b:
            ratios.append(b / a)
        elif a:
            bounds.append(budget / a)
    parts = []
    if ratios:
        parts.append(f"{statistics.fmean(ratios):.2f}× (seeds where both reached it: "
                     f"{', '.join(f'{r:.2f}' for r in ratios)})")
    if bounds:
        parts.append(f"more than {min(bounds):.1f}× in {len(bounds)} seed(s) where Flow-GRPO did not reach it "
                     f"within the budget (budget / DiffusionNFT's time: {', '.join(f'{r:.1f}' for r in bounds)})")
    return "; ".join(parts) or "not comparable (DiffusionNFT did not reach it in any seed)"


def ablation_table(runs: dict[str, list[dict]], seeds: list[int]) -> list[str]:
    """Per seed, each filter rule's final gain and its difference from no filter, with the groups it dropped."""
    header = ["seed", "gain, no filter"]
    for _, rule in FILTERED:
        header += [f"gain, {rule} rule", f"{rule} − none", f"{rule}: groups filtered per iteration"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    differences = {rule: [] for _, rule in FILTERED}
    for i, (seed, without) in enumerate(zip(seeds, runs["nft_no_filter"])):
        cells = [str(seed), f"{final_gain(without):+.3f}"]
        for arm, rule in FILTERED:
            run = runs[arm][i]
            difference = run["summary"]["final_heldout_reward"] - without["summary"]["final_heldout_reward"]
            differences[rule].append(difference)
            cells += [f"{final_gain(run):+.3f}", f"{difference:+.3f}", f"{run['fraction_filtered']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("\nPaired difference from no filter, mean ± SE across seeds: "
                 + "; ".join(f"{rule} rule {fmt(*mean_se(values))}" for rule, values in differences.items())
                 + ". Every arm trains for the same budget; without a filter, the updates also train on the groups a "
                 "filter would drop.")
    return lines


def stability_table(runs: dict[str, dict]) -> list[str]:
    lines = ["| run | peak held-out reward (iteration) | final | final − peak | final gain ± paired SE |",
             "| --- | --- | --- | --- | --- |"]
    for name, run in runs.items():
        peak = max(range(len(run["reward"])), key=run["reward"].__getitem__)
        summary = run["summary"]
        lines.append(f"| {STABILITY[name][2]} | {run['reward'][peak]:.3f} ({run['step'][peak]}) | {run['reward'][-1]:.3f} | "
                     f"{run['reward'][-1] - run['reward'][peak]:+.3f} | {final_gain(run):+.3f} ± "
                     f"{summary['heldout_stderr']:.3f} |")
    return lines


def plot(runs: dict[str, list[dict]], path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    colours = {"nft": "tab:blue", "grpo": "tab:red"}
    for panel, (axis, label) in enumerate((("seconds", "training seconds"), ("images", "images generated"))):
        ax = fig.add_subplot(1, 2, panel + 1)
        for arm in ("nft", "grpo"):
            for run in runs[arm]:
                ax.plot(run[axis], run["reward"], color=colours[arm], alpha=0.3, linewidth=1)
            # The mean over seeds at the evaluations every seed reached (the same steps for every seed of an arm;
            # their seconds differ a little, so the mean's x is the mean of theirs).
            common = min(len(run["step"]) for run in runs[arm])
            xs = [statistics.fmean(run[axis][i] for run in runs[arm]) for i in range(common)]
            ys = [statistics.fmean(run["reward"][i] for run in runs[arm]) for i in range(common)]
            ax.plot(xs, ys, color=colours[arm], linewidth=2.5, label=f"{ARMS[arm][2]} (mean of {len(runs[arm])})")
        ax.set_xlabel(label)
        ax.set_ylabel("held-out verifier reward")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=float, default=150.0, help="training seconds per run")
    parser.add_argument("--eval-every", type=int, default=5, help="iterations between held-out evaluations")
    parser.add_argument("--reward", choices=("verifier", "mllm"), default="verifier")
    parser.add_argument("--stability", type=int, default=0, metavar="ITERATIONS",
                        help="instead of the race: each algorithm this many iterations, one seed, with variants")
    parser.add_argument("--out", type=Path, default=Path("runs/nft_vs_grpo"))
    args = parser.parse_args()

    from editr1.tasks.shapes import DATA_SEED, N_TEST, N_TRAIN, SHIPPED_JUDGE
    from editr1.tasks.shapes.scenes import write_shapes_dataset

    data = args.out.resolve() / "data"
    if not (data / "test.jsonl").is_file():
        write_shapes_dataset(data, N_TRAIN, N_TEST, DATA_SEED)
    common = [f"data.train={data / 'train.jsonl'}", f"data.heldout={data / 'test.jsonl'}"]
    if args.reward == "mllm":
        common += ["reward.name=mllm", f"reward.options={{model: '{SHIPPED_JUDGE}', batch_size: 48}}",
                   "eval.track_training_reward=true"]

    if args.stability:
        runs = {}
        for name, (arm, extra, label) in STABILITY.items():
            print(f"{label}: {args.stability} iterations", file=sys.stderr, flush=True)
            folder = train(args.out / "stability" / name, ARMS[arm][0],
                           [*common, f"seed={args.seeds[0]}", f"iterations={args.stability}", "eval.every=10", *extra])
            runs[name] = curve(folder)
        lines = [f"Stability: {args.stability} iterations, seed {args.seeds[0]}, reward {args.reward}.", "",
                 *stability_table(runs)]
        (args.out / "stability.json").write_text(json.dumps(runs, indent=2))
    else:
        runs = {arm: [] for arm in ARMS}
        for seed in args.seeds:
            for arm, (config, extra, label) in ARMS.items():
                print(f"{label}, seed {seed}: {args.budget:.0f} s", file=sys.stderr, flush=True)
                folder = train(args.out / args.reward / f"{arm}_seed{seed}", config,
                               [*common, f"seed={seed}", "iterations=100000", f"time_budget_s={args.budget}",
                                f"eval.every={args.eval_every}", *extra])
                runs[arm].append(curve(folder))
        plot(runs, args.out / f"race_{args.reward}.png",
             f"DiffusionNFT vs Flow-GRPO on shapes: {args.budget:.0f} s each, seeds {args.seeds}, reward {args.reward}")
        base = runs["nft"][0]["summary"]["base_heldout_reward"]
        lines = [f"Race: {args.budget:.0f} training seconds per run, seeds {args.seeds}, reward {args.reward}, "
                 f"held-out verifier reward of the base {base:.3f}; times are training seconds at the first "
                 f"evaluation (every {args.eval_every} iterations) at or above the gain, mean [range] over the seeds "
                 "that reached it.", "", *race_table(runs, args.reward == "mllm", args.budget), "",
                 "Filter ablation (DiffusionNFT, same seeds and budget):", "", *ablation_table(runs, args.seeds)]
        (args.out / f"race_{args.reward}.json").write_text(json.dumps(runs, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
