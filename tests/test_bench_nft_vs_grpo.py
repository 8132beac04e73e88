"""bench/nft_vs_grpo.py's tables from made-up curves: the times to a gain, the lower-bound ratio where Flow-GRPO
never reached it, the judge − verifier gap, and the filter ablation's paired differences."""

import pytest
from bench_scripts import bench_script


@pytest.fixture(scope="module")
def bench():
    with bench_script("nft_vs_grpo") as module:
        yield module


def run(gains, seconds, final, judge=(0.5, 0.5), filtered=0.0, iterations=10):
    base = 0.5
    return {"seconds": seconds, "gain": gains, "reward": [base + g for g in gains], "step": list(range(len(gains))),
            "fraction_filtered": filtered,
            "summary": {"base_heldout_reward": base, "final_heldout_reward": base + final, "iterations": iterations,
                        "base_heldout_training_reward": judge[0], "final_heldout_training_reward": judge[1]}}


def test_race_table_times_ratio_and_judge_gap(bench):
    runs = {
        "nft": [run([0.0, 0.06, 0.12], [0, 10, 20], 0.12, judge=(0.5, 0.6)),
                run([0.0, 0.02, 0.07], [0, 15, 30], 0.07, judge=(0.5, 0.52))],
        "grpo": [run([0.0, 0.01, 0.06], [0, 40, 80], 0.06), run([0.0, 0.01, 0.02], [0, 40, 80], 0.02)],
    }
    assert bench.time_to(runs["nft"][0], 0.05) == 10 and bench.time_to(runs["grpo"][1], 0.05) is None
    lines = bench.race_table(runs, judge=True, budget=150.0)
    nft_row = lines[2].split(" | ")
    # +0.05 at 10 s and 30 s; +0.10 only in the first seed; final gains 0.12 and 0.07: mean 0.095, SE 0.025.
    assert nft_row[2] == "20 s [10, 30]" and nft_row[3] == "20 s [20, 20] (1/2 seeds)"
    assert nft_row[4] == "+0.095 ± 0.025"
    # Judge gains 0.10 and 0.02 against verifier gains 0.12 and 0.07: gaps -0.02 and -0.05.
    assert nft_row[5] == "+0.060 ± 0.040" and nft_row[6].startswith("-0.035 ± 0.015")
    assert "not reached (0/2)" in lines[3]
    # Seed 0: both reached +0.05 (80 s / 10 s = 8); seed 1: only NFT, at 30 s, so more than 150 / 30 = 5.
    ratio = bench.ratio_cell(runs, 0.05, 150.0)
    assert ratio.startswith("8.00×") and "more than 5.0× in 1 seed(s)" in ratio


def test_filter_ablation_pairs_each_rule_with_no_filter_seed_by_seed(bench):
    runs = {"nft_no_filter": [run([0.0], [0], 0.10), run([0.0], [0], 0.20)],
            "nft": [run([0.0], [0], 0.08, filtered=0.3), run([0.0], [0], 0.16, filtered=0.25)],
            "nft_strict_filter": [run([0.0], [0], 0.10, filtered=0.5), run([0.0], [0], 0.21, filtered=0.5)]}
    lines = bench.ablation_table(runs, [0, 1])
    assert lines[2] == "| 0 | +0.100 | +0.080 | -0.020 | 0.30 | +0.100 | +0.000 | 0.50 |"
    assert lines[3] == "| 1 | +0.200 | +0.160 | -0.040 | 0.25 | +0.210 | +0.010 | 0.50 |"
    assert "paper rule -0.030 ± 0.010; strict rule +0.005 ± 0.005" in lines[4]
