"""`editr1 demo`: the whole Edit-R1 loop on a CPU, measured against a ground truth.

shapes data -> the shipped SFT base (levelled off) -> DiffusionNFT with the verifier reward ->
held-out evaluation before and after (fixed samples, fixed noise, paired standard error) -> report.
`--control` spends the same training wall time on more SFT from the same base, evaluated the same
way: the honest comparison of RL against simply training more.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from editr1.config import NFTConfig, SFTConfig, load_config
from editr1.data.shapes import write_shapes_dataset
from editr1.eval.heldout import load_eval, paired_stderr
from editr1.eval.report import ReportSection, write_report
from editr1.trainer.nft import run_nft
from editr1.trainer.sft import run_sft

PACKAGE = Path(__file__).resolve().parent.parent
DEMO_CONFIG = PACKAGE / "configs" / "shapes_nft_demo.yaml"
CONTROL_CONFIG = PACKAGE / "configs" / "shapes_sft_control.yaml"
SHIPPED_BASE = PACKAGE / "assets" / "shapes_base"
# The shipped base was trained on this dataset (configs/shapes_sft.yaml); the demo regenerates it.
DATA_SEED, N_TRAIN, N_TEST = 0, 2000, 256


def run_demo(out: Path, control: bool = False, overrides: list[str] = ()) -> dict:
    started = time.monotonic()
    data = out / "data"
    if not (data / "test.jsonl").is_file():
        write_shapes_dataset(data, N_TRAIN, N_TEST, DATA_SEED)
    for previous in ("nft", "control"):
        shutil.rmtree(out / previous, ignore_errors=True)  # the demo owns these: a rerun starts afresh
    common = [f"data.train={data / 'train.jsonl'}", f"data.heldout={data / 'test.jsonl'}", f"model.path={SHIPPED_BASE}"]
    nft_config = load_config(NFTConfig, DEMO_CONFIG, [*common, f"output_dir={out / 'nft'}", *overrides])
    summary = run_nft(nft_config)

    sections = [
        ReportSection("Reward curve", "Rollout reward (verifier) per iteration, held-out reward at evaluations.", "nft/reward_curve.png"),
        ReportSection("Before / after", "Held-out samples: source, shipped SFT base, after DiffusionNFT.", "nft/before_after.png"),
    ]
    if control:
        control_config = load_config(SFTConfig, CONTROL_CONFIG, [
            *common, f"output_dir={out / 'control'}", f"time_budget_s={summary['train_seconds']}",
            f"eval.samples={nft_config.eval.samples}", f"eval.seed={nft_config.eval.seed}", f"eval.steps={nft_config.eval.steps}",
            f"eval.sampler={nft_config.eval.sampler}",
        ])
        run_sft(control_config)
        rl = load_eval(out / "nft" / "eval" / f"step_{summary['iterations']:06d}.safetensors")
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
    write_report(out, summary, sections, title="editr1 demo: DiffusionNFT on the shapes editing task")
    return summary
