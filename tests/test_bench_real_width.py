"""bench/real_width.py: the published configurations (each adapter module's RELEASED_*) count what docs/real_scale.md says, and one
NFT iteration of FLUX.1 Kontext at its real widths (one block of each kind, 128^2, bf16) runs through the
trainer with every LoRA target matched (40 s to 2 minutes and 3.3 GiB of RSS on a 2-core CPU)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bench_scripts import BENCH, bench_script

SCRIPT = BENCH / "real_width.py"


@pytest.fixture(scope="module")
def bench():
    with bench_script("real_width") as module:
        yield module


@pytest.mark.parametrize("family", ["qwen-image-edit", "flux-kontext", "flux2-klein", "flux2-dev"])
def test_full_depth_counts_match_the_page(bench, family):
    """Non-block parameters + N x the exact per-block counts (meta device) = the page's totals, to its rounding."""
    exact = bench.per_block(family)
    for name, (counted, page) in exact["extrapolated"].items():
        if page is None:  # the page gives no count (FLUX.2's VAE, Qwen3-8B, [dev]'s LoRA)
            continue
        # The page gives 2 decimals of billions (LoRA: 1 decimal of millions; [klein]'s Qwen3-4B: "4.0 B"); it
        # shows the LM head's 0.544997 B as 0.55. [dev]'s model cards give whole billions ("32 billion", "24B").
        if family == "flux2-dev":
            tolerance = 0.5e9
        else:
            tolerance = 0.05e6 if "LoRA" in name else 0.051e9 if name.startswith("Qwen3-4B") else 0.0051e9
        assert abs(counted - page) <= tolerance, (name, counted, page)
    blocks = {name: row["params"] for name, row in exact["blocks"].items()}
    if family == "flux-kontext":
        assert blocks == {"double-stream block": 339_831_296, "single-stream block": 141_591_808,
                          "T5-XXL layer": 192_946_176, "CLIP-L layer": 7_087_872}
    elif family == "flux2-klein":
        # FLUX.2's blocks at FLUX.1's 24 x 128 heads, and a Qwen3-4B layer.
        assert blocks == {"double-stream block": 245_367_296, "single-stream block": 122_683_648,
                          "Qwen3 layer": 100_930_816}
        # Where the page gives no count, editr1/models/flux2_klein.py does: Qwen3-8B, 8.19B.
        qwen3_8b = next(n for name, (n, _) in exact["extrapolated"].items() if "Qwen3-8B" in name)
        assert round(qwen3_8b / 1e9, 2) == 8.19
    elif family == "flux2-dev":
        # Double-stream block at 48 x 128 = 6144: 8 attention projections 6144^2 (301,989,888), two SwiGLU MLPs
        # 6144 -> 2 x 18432 -> 6144 (2 x 339,738,624), 4 q/k norms of 128. Single-stream block: the fused
        # 6144 -> 3 x 6144 + 2 x 18432 projection (339,738,624), the 24576 -> 6144 output (150,994,944), 2 norms.
        # Mistral layer: q/o 5120 x 4096, k/v 5120 x 1024 (52,428,800), SwiGLU 3 x 5120 x 32768 (503,316,480),
        # 2 norms of 5120. Pixtral layer: 4 x 1024^2 attention, SwiGLU 3 x 1024 x 4096, 2 norms of 1024.
        assert blocks == {"double-stream block": 981_467_648, "single-stream block": 490_733_824,
                          "Mistral decoder layer": 555_755_520, "Pixtral vision layer": 16_779_264}
        checked = [name for name, (_, page) in exact["extrapolated"].items() if page is not None]
        assert len(checked) == 2, checked  # the transformer and Mistral Small against the cards
        # LoRA rank 32: per double block 8 x 32 x (6144 + 6144); per single block 32 x (6144 + 55296) on
        # to_qkv_mlp_proj and 32 x (24576 + 6144) on to_out.
        lora = exact["extrapolated"]["LoRA rank 32, default targets"][0]
        assert lora == 8 * 8 * 32 * 12288 + 48 * 32 * (61440 + 30720) == 166_723_584
    else:
        # The MMDiT block of both families is the same at 24 x 128 heads: 339.83 M parameters.
        assert blocks == {"transformer block": 339_831_296, "Qwen2.5-VL decoder layer": 233_057_792,
                          "Qwen2.5-VL vision block": 19_702_200}


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the resident set from /proc (Linux)")
def test_one_real_width_flux_iteration(tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--family", "flux-kontext", "--blocks", "1", "--size", "128", "--quick",
         "--json", str(out), "--tmp", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "flux-kontext blocks 1: OK" in proc.stdout
    (run,) = json.loads(out.read_text())
    train = run["train"]
    # Real widths and token counts: 16 latent channels x 2x2 patches, 64 target tokens at 128^2, T5's 512 x 4096, CLIP's 768.
    assert train["shapes"] == {"latents": [2, 64, 64], "image_tokens": [1, 64, 64], "prompt_embeds": [1, 512, 4096],
                               "pooled_prompt_embeds": [1, 768]}
    lora = train["lora"]
    assert all(n > 0 for n in lora["per_target"].values()) and len(lora["per_target"]) == 8
    assert lora["keys"] == 2 * lora["modules"] and lora["in_out"] == [[3072, 3072]]
    sizes = train["sizes"]
    assert sizes["transformer"]["dtypes"] == ["bfloat16"] and sizes["LoRA trained + old (float32)"]["dtypes"] == ["float32"]
    # One double + one single block + the embeddings, exactly, 2 bytes each.
    assert sizes["transformer"]["params"] == 545_548_096
    assert sizes["transformer"]["bytes"] == 2 * sizes["transformer"]["params"]
    assert train["baseline_rss"] >= sum(v["bytes"] for v in sizes.values())  # every weight is resident
    assert train["phases"]["train"]["seconds"] > 0 and train["loss"] == train["loss"]  # finite, ran
    assert not any(Path(tmp_path).glob("real_width_*")), "the saved model folder was left behind"
