"""`editr1 demo`: the whole Edit-R1 loop on a CPU, measured against a ground truth.

shapes data -> the shipped SFT base (levelled off) -> DiffusionNFT (or, with `--algorithm grpo`, Flow-GRPO)
with the verifier reward -> held-out evaluation before and after (fixed samples, fixed noise, paired standard
error) -> report.
`--control` spends the same training wall time on more SFT from the same base, evaluated the same
way: the honest comparison of RL against simply training more.
`--reward mllm` trains on the shipped distilled judge's score-logit reward instead, keeps the verifier
as the independent ground truth, reports the judge's pairwise agreement with the verifier, and runs
the group-filtering ablation (filter on vs off, same seed and budget).
`--hacking` trains on the verifier's gameable first, additive formula (tasks/shapes/verifier.py) and watches the
exact verifier as an evaluation-only reward: the hacking alarm must fire. The plain demo watches the other way
round (training on the exact verifier, the additive one evaluation-only), and its alarm must stay silent.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from editr1.config import TrainConfig, SFTConfig, load_config
from editr1.errors import EditR1Error
from editr1.fileio import refuse_foreign_entries
from editr1.eval.heldout import load_eval, paired_stderr
from editr1.eval.report import ReportSection, write_report
from editr1.tasks.shapes import CONTROL_CONFIG, DATA_SEED, DEMO_CONFIGS, N_TEST, N_TRAIN, SHIPPED_BASE, SHIPPED_JUDGE
from editr1.tasks.shapes.scenes import write_shapes_dataset
from editr1.trainer.algorithms import build_algorithm
from editr1.trainer.rl_trainer import run_rl
from editr1.trainer.sft import run_sft

REWARDS = ("verifier", "mllm")
#: `--hacking`: the gameable formula as the training (and held-out) reward, the exact verifier watched beside it,
#: evaluated every 10 iterations so that the alarm has evaluations in a row to compare. It trains at the settings
#: under which that formula was gamed when it was the demo's reward (Euler rollouts, AdamW at 2e-4); at the plain
#: demo's gentler 5e-5 with DPM++ rollouts the exact verifier rose with it for 40 iterations (README).
HACKING = ["reward={name: shapes_verifier, options: {formula: additive}}", "eval.reward=null",
           "eval.rewards=[{name: shapes_verifier, label: exact_verifier}]", "eval.every=10",
           "rollout.sampler=euler", "optim.lr=2e-4"]
JUDGE_PAIRS = 256
#: The demo's runs in its folder (and the judge's agreement pairs), replaced by each run of the demo.
DEMO_RUNS = (*DEMO_CONFIGS, "control", *(f"{name}_no_filter" for name in DEMO_CONFIGS), "judge_pairs",
             *(f"{name}_hacking" for name in DEMO_CONFIGS))


def run_demo(out: Path, control: bool = False, overrides: list[str] = (), reward: str = "verifier", ablation: bool = True,
             algorithm: str = "nft", hacking: bool = False) -> dict:
    if reward not in REWARDS:
        raise EditR1Error(f"--reward: expected one of {list(REWARDS)}, got {reward!r}")
    if hacking and (reward != "verifier" or control):
        raise EditR1Error("--hacking trains on the gameable verifier formula; it runs without --reward mllm and --control")
    if hacking and algorithm != "nft":
        raise EditR1Error("--hacking trains DiffusionNFT at the settings under which the formula was gamed (Euler "
                          "rollouts, an ODE sampler Flow-GRPO does not take); it runs without --algorithm grpo")
    if algorithm not in DEMO_CONFIGS:
        raise EditR1Error(f"--algorithm: expected one of {list(DEMO_CONFIGS)}, got {algorithm!r}")
    # The demo deletes its own earlier runs in `out`: never a folder holding anything else.
    refuse_foreign_entries(out, ("data", *DEMO_RUNS, "summary.json", "report.md"), "editr1 demo")
    started = time.monotonic()
    data = out / "data"
    if not (data / "test.jsonl").is_file() and data.exists():
        raise EditR1Error(f"{data}: holds no test.jsonl, so it is not the demo's dataset; move it away")
    common = [f"data.train={data / 'train.jsonl'}", f"data.heldout={data / 'test.jsonl'}", f"model.path={SHIPPED_BASE}"]
    judge = []
    if reward == "mllm":
        judge = ["reward.name=mllm", f"reward.options={{model: '{SHIPPED_JUDGE}', batch_size: 48}}", "eval.track_training_reward=true"]
    run_name = f"{algorithm}_hacking" if hacking else algorithm
    # Read before anything is written or deleted: a mistaken --set leaves the earlier demo's runs as they were.
    nft_config = load_config(TrainConfig, DEMO_CONFIGS[algorithm], [*common, *judge, *(HACKING if hacking else ()),
                                                                     f"output_dir={out / run_name}", *overrides])
    title = build_algorithm(nft_config).title
    if not (data / "test.jsonl").is_file():
        partial = out / ".data.partial"  # renamed when whole: a kill never leaves half a dataset as `data`
        shutil.rmtree(partial, ignore_errors=True)
        write_shapes_dataset(partial, N_TRAIN, N_TEST, DATA_SEED)
        partial.rename(data)
    for previous in DEMO_RUNS:
        shutil.rmtree(out / previous, ignore_errors=True)  # the demo owns these: a rerun starts afresh
    summary = {"algorithm": algorithm, "reward": "additive verifier (gameable)" if hacking else reward}
    sections = []
    if reward == "mllm":
        summary.update(_judge_agreement(nft_config, out / "judge_pairs"))
    summary.update(run_rl(nft_config))

    trained_on = "judge" if reward == "mllm" else "additive verifier" if hacking else "verifier"
    sections += [
        ReportSection("Reward curve", f"Rollout reward ({trained_on}) per iteration, held-out reward "
                      f"({'additive verifier' if hacking else 'verifier'}) and evaluation-only rewards at evaluations.",
                      f"{run_name}/reward_curve.png"),
        ReportSection("Before / after", f"Held-out samples: source, shipped SFT base, after {title}.",
                      f"{run_name}/before_after.png"),
    ]
    if "hacking_alarm" in summary:
        sections.insert(0, _alarm_section(summary, run_name))
    if reward == "mllm":
        sections.insert(0, _judge_section(summary, title))
        if ablation:
            no_filter = load_config(TrainConfig, DEMO_CONFIGS[algorithm], [*common, *judge, *overrides,
                                                                         f"output_dir={out / f'{algorithm}_no_filter'}",
                                                                         "rl.filter_rule=none"])
            unfiltered = run_rl(no_filter)
            summary.update(no_filter_final_heldout_reward=unfiltered["final_heldout_reward"],
                           no_filter_final_heldout_training_reward=unfiltered["final_heldout_training_reward"])
            sections.append(_ablation_section(nft_config, summary, unfiltered, out / algorithm))
    if control:
        control_config = load_config(SFTConfig, CONTROL_CONFIG, [
            *common, f"output_dir={out / 'control'}", f"time_budget_s={summary['train_seconds']}",
            f"eval.samples={nft_config.eval.samples}", f"eval.seed={nft_config.eval.seed}", f"eval.steps={nft_config.eval.steps}",
            f"eval.sampler={nft_config.eval.sampler}",
        ])
        run_sft(control_config)
        rl = load_eval(out / algorithm / "eval" / f"step_{summary['iterations']:06d}.safetensors")
        sft = load_eval(out / "control" / "eval" / "final.safetensors")
        both = rl.valid & sft.valid
        summary.update(
            control_heldout_reward=float(sft.scores[both].mean()),
            rl_minus_control=float((rl.scores[both] - sft.scores[both]).mean()),
            rl_minus_control_stderr=paired_stderr(rl.scores[both], sft.scores[both]),
        )
        sections.append(ReportSection(
            "Control: equal-time SFT",
            f"The same {summary['train_seconds']:.0f} s of training spent on more supervised fine-tuning from the same "
            f"base reaches {summary['control_heldout_reward']:.4f}; RL minus control = "
            f"{summary['rl_minus_control']:+.4f} ± {summary['rl_minus_control_stderr']:.4f} (paired standard error).",
        ))
    summary["demo_seconds"] = round(time.monotonic() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(out, summary, sections, title=f"editr1 demo: {title} on the shapes editing task")
    return summary


def _judge_agreement(config: TrainConfig, folder: Path) -> dict:
    """The shipped judge's pairwise agreement with the verifier on rollout pairs of held-out samples."""
    from editr1.data.jsonl import read_edit_jsonl
    from editr1.data.preference_pairs import read_preference_jsonl
    from editr1.eval.reward_alignment import evaluate_alignment
    from editr1.rewards.registry import build_reward
    from editr1.tasks.shapes.config import JudgeDistillConfig
    from editr1.tasks.shapes.judge_distill import write_heldout_pairs
    from editr1.trainer.model_loading import build_model

    pairs_config = JudgeDistillConfig(seed=config.seed, policy=config.model, eval_pairs=JUDGE_PAIRS)
    held = read_edit_jsonl(config.data.heldout)[:JUDGE_PAIRS]
    pairs = read_preference_jsonl(write_heldout_pairs(build_model(config.model), held, pairs_config, folder))
    result = evaluate_alignment(build_reward(config.reward.name, config.reward.options), pairs)
    if result.accuracy is None:
        raise EditR1Error(f"the judge's agreement with the verifier: nothing to measure ({result.reason})")
    return {"judge_agreement_with_verifier": result.accuracy, "judge_agreement_pairs": result.decided_pairs,
            "judge_agreement_ties": result.tie_pairs}


def _judge_section(summary: dict, title: str) -> ReportSection:
    judge_gain = summary["final_heldout_training_reward"] - summary["base_heldout_training_reward"]
    verifier_gain = summary["final_heldout_reward"] - summary["base_heldout_reward"]
    hacked = judge_gain > 2 * summary["heldout_training_stderr"] and verifier_gain <= 2 * summary["heldout_stderr"]
    verdict = ("**Reward hacking: the judge's reward rose while the verifier's did not.**" if hacked else
               "The verifier's reward moved with the judge's: no sign of reward hacking." if verifier_gain > 0 else
               "Neither reward rose.")
    return ReportSection("Judge and verifier", (
        f"The reward is the shipped tiny Qwen2.5-VL judge's expected score (score-logit readout). On "
        f"{summary['judge_agreement_pairs']} held-out rollout pairs it orders {100 * summary['judge_agreement_with_verifier']:.1f}% "
        f"as the verifier does ({summary['judge_agreement_ties']} tie pairs reported apart).\n\n"
        f"| held-out reward (128 fixed samples) | SFT base | after {title} | gain ± paired SE |\n| --- | --- | --- | --- |\n"
        f"| verifier (ground truth) | {summary['base_heldout_reward']:.4f} | {summary['final_heldout_reward']:.4f} | "
        f"{verifier_gain:+.4f} ± {summary['heldout_stderr']:.4f} |\n"
        f"| judge (training reward) | {summary['base_heldout_training_reward']:.4f} | {summary['final_heldout_training_reward']:.4f} | "
        f"{judge_gain:+.4f} ± {summary['heldout_training_stderr']:.4f} |\n\n{verdict}"
    ))


def _alarm_section(summary: dict, run_name: str) -> ReportSection:
    alarm = summary["hacking_alarm"]
    gains = "; ".join(f"{label} {values['base']:.4f} -> {values['final']:.4f} ({values['gain']:+.4f} ± {values['stderr']:.4f})"
                      for label, values in summary["eval_rewards"].items())
    trained = f"{summary['base_heldout_reward']:.4f} -> {summary['final_heldout_reward']:.4f}"
    if not alarm["fired"]:
        return ReportSection("Reward hacking alarm", f"Silent. Held-out training reward {trained}; evaluation-only: {gains}.")
    return ReportSection("Reward hacking alarm", (
        f"**It fired** at step(s) {', '.join(map(str, alarm['steps']))}: the held-out training reward rose ({trained}) "
        f"while the evaluation-only reward fell ({gains}), each beyond its standard error, {alarm['patience']} "
        "evaluations in a row. The held-out samples whose evaluation-only reward fell most:"), f"{run_name}/hacking.png")


def _ablation_section(config: TrainConfig, with_filter: dict, without_filter: dict, run: Path) -> ReportSection:
    from editr1.trainer.metrics_log import read_metrics

    rows = [r["fraction_filtered"] for r in read_metrics(run) if r.get("fraction_filtered") is not None]
    filtered = sum(rows) / len(rows)

    rule = config.rl
    return ReportSection("Ablation: low-variance group filtering", (
        f"Same seed, same {with_filter['iterations']} iterations; only `rl.filter_rule` differs "
        f"(paper rule: drop a group when mean > {rule.filter_mean_threshold} and std < {rule.filter_std_threshold}).\n\n"
        "| filter | groups filtered (mean per iteration) | held-out verifier | held-out judge |\n| --- | --- | --- | --- |\n"
        f"| {rule.filter_rule} | {filtered:.3f} | {with_filter['final_heldout_reward']:.4f} | "
        f"{with_filter['final_heldout_training_reward']:.4f} |\n"
        f"| none | 0.000 | {without_filter['final_heldout_reward']:.4f} | {without_filter['final_heldout_training_reward']:.4f} |\n\n"
        f"SFT base: verifier {with_filter['base_heldout_reward']:.4f}, judge {with_filter['base_heldout_training_reward']:.4f}."
    ))
