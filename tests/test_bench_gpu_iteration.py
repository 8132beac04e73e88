"""bench/gpu_iteration.py: its FLOP counter counts exactly, its --tiny run prints and writes every phase, and its
full-size FLUX.2 [dev] builds (on the meta device)."""

import json
import math
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from bench_scripts import BENCH, bench_script
from torch import nn
from torch.utils.checkpoint import checkpoint

SCRIPT = BENCH / "gpu_iteration.py"


@pytest.fixture(scope="module")
def bench():
    with bench_script("gpu_iteration") as module:
        yield module


class LinearAttention(nn.Module):
    """A Linear on (2, 5, 8) -> 16 features, then cross-attention of 4 heads x 4 dims over 7 keys."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 16)

    def forward(self, x, keys):
        q = self.proj(x).view(2, 5, 4, 4).transpose(1, 2)  # (B, H, S_q, D)
        return F.scaled_dot_product_attention(q, keys, keys)


def test_flop_formulas(bench):
    assert bench.linear_flops(8, 16, 10) == 2 * 8 * 16 * 10
    assert bench.linear_flops(8, 16, 10, grad=True) == 3 * 2 * 8 * 16 * 10
    # Self-attention: 4 S^2 d per sample, d = heads x head_dim.
    assert bench.attention_flops(1, 24, 100, 100, 128) == 4 * 100**2 * (24 * 128)
    assert bench.attention_flops(2, 4, 5, 7, 4, grad=True) == 3 * 4 * 2 * 4 * 5 * 7 * 4
    assert bench.conv_flops(2 * 6 * 9 * 9, (6, 3, 3, 3)) == 2 * (2 * 6 * 9 * 9) * 3 * 3 * 3


def test_counter_counts_a_linear_and_an_attention_exactly(bench):
    torch.manual_seed(0)
    model, x, keys = LinearAttention(), torch.randn(2, 5, 8), torch.randn(2, 4, 7, 4)
    forward = bench.linear_flops(8, 16, 2 * 5) + bench.attention_flops(2, 4, 5, 7, 4)
    assert forward == 2 * 8 * 16 * 10 + 4 * 2 * 4 * 5 * 7 * 4
    with torch.no_grad(), bench.FlopCounter() as counter:
        model(x, keys)
    assert counter.total == forward and counter.pending == 0
    # With grad: the forward's FLOPs at once, twice as many left for the backward to claim.
    with bench.FlopCounter() as counter:
        model(x, keys).sum().backward()
        assert (counter.total, counter.pending) == (forward, 2 * forward)
        counter.claim_backward()
    assert counter.total == 3 * forward
    # Gradient checkpointing recomputes the forward inside the backward: not counted again.
    with bench.FlopCounter() as counter:
        checkpoint(model, x, keys, use_reentrant=False).sum().backward()
        counter.claim_backward()
    assert counter.total == 3 * forward
    # The hooks and the SDPA patch are gone afterwards.
    assert F.scaled_dot_product_attention is torch.nn.functional.scaled_dot_product_attention
    with torch.no_grad():
        model(x, keys)
    assert counter.total == 3 * forward


#: The tiny run's families: a Qwen family (a text attention mask, no guidance input) and FLUX.2 [dev] (no mask;
#: the distilled guidance, 4.0 by default, an input of every transformer call on both paths).
TINY_FAMILIES = {"qwen-image-edit": None, "flux2-dev": 4.0}


def test_tiny_run_prints_every_phase_of_both_paths(bench, tmp_path):
    out = tmp_path / "result.json"
    families = [arg for name in TINY_FAMILIES for arg in ("--family", name)]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", *families, "--repeats", "1", "--steps", "2",
         "--threads", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    headers = [line for line in lines if line.startswith("phase")]
    assert len(headers) == len(TINY_FAMILIES)
    for column in ("editr1 ms", "editr1 MFU", "naive ms", "naive MFU", "editr1/naive"):
        assert column in headers[0]
    for _, label in bench.PHASES:
        assert sum(line.startswith(f"{label:<36}|") for line in lines) == len(TINY_FAMILIES), label
    for family in TINY_FAMILIES:
        assert f"== {family}:" in proc.stdout
    assert "torch" in proc.stdout and "CPU" in proc.stdout

    report = json.loads(out.read_text())
    assert report["device_type"] == "cpu" and report["peak_flops"] > 0
    assert set(report["families"]) == set(TINY_FAMILIES)
    for family, guidance in TINY_FAMILIES.items():
        result = report["families"][family]
        assert result["guidance"] == guidance, family
        phases = result["phases"]
        assert set(phases) == {key for key, _ in bench.PHASES}
        for key, row in phases.items():
            for path in ("editr1", "naive"):
                data = row[path]
                assert data["ms"] > 0, (family, key, path)
                assert data["mfu"] is None or 0 < data["mfu"] <= 1, (family, key, path, data["mfu"])
                assert data["peak_gib"] is None  # CPU: n/a
            assert row["ratio"] > 0 and math.isclose(row["ratio"], row["editr1"]["ms"] / row["naive"]["ms"])
        # Both paths do the same work: the same FLOPs, phase by phase; the transformer phases do some.
        for key in ("rollout", "nft", "nft_grad", "nft_old", "nft_ref", "nft_backward", "total"):
            assert phases[key]["editr1"]["flops"] == phases[key]["naive"]["flops"] > 0, (family, key)
        assert phases["nft_backward"]["editr1"]["flops"] > phases["nft_grad"]["editr1"]["flops"], family


def test_full_size_flux2_dev_builds_on_the_meta_device(bench, monkeypatch, capsys):
    """The full-width FLUX.2 [dev] that a GPU run builds, built on the meta device (no memory): 8 double + 48
    single blocks of 48 x 128 heads, cut by --depth at its 1:6 ratio, over Mistral Small's 24B cut to no fewer
    than the 31 layers the pipeline reads; at full depth the script's count refuses what does not fit."""
    monkeypatch.setattr(bench, "free_memory", lambda device: 2**50)
    args = bench.parse_args(["--family", "flux2-dev", "--depth", "2", "--with-text-encoder"])
    adapter = bench.build_full("flux2-dev", args, torch.device("meta"), torch.bfloat16)
    transformer, text_encoder = adapter.transformer, adapter.text_encoder
    assert type(adapter).__name__ == "Flux2DevAdapter" and transformer.config.guidance_embeds
    assert (len(transformer.transformer_blocks), len(transformer.single_transformer_blocks)) == (2, 12)
    assert transformer.inner_dim == 48 * 128 == 6144
    assert text_encoder.config.text_config.num_hidden_layers == 31  # hidden state 30 is read
    assert text_encoder.config.vision_config.num_hidden_layers == 2
    assert transformer.config.joint_attention_dim == 3 * text_encoder.config.text_config.hidden_size
    assert next(transformer.parameters()).is_meta and next(text_encoder.parameters()).is_meta
    released = {knob.name: knob.full for knob in type(adapter).depth_knobs}
    assert (released["double-stream block"], released["single-stream block"]) == (8, 48)
    assert bench.released_depths(type(adapter), 20)["single-stream block"] == 48

    # Full depth, transformer and VAE (32.2 B + 0.08 B parameters in bf16) against 8 GiB free: refused.
    monkeypatch.setattr(bench, "free_memory", lambda device: 8 * bench.GIB)
    assert bench.main(["--family", "flux2-dev", "--device", "cpu", "--peak-tflops", "1"]) == 1
    needed = re.search(r"need ([\d.]+) GiB and cpu has 8.0 GiB free", capsys.readouterr().err)
    assert needed and float(needed.group(1)) == pytest.approx(2 * 32.3e9 / bench.GIB, abs=0.3)


@pytest.mark.parametrize("argv, message", [
    (["--family", "qwen-image-edit", "--device", "cuda"], "CUDA was requested"),
    (["--tiny", "--family", "no-such-family"], "invalid choice"),
    ([], "name a --family"),
    (["--tiny", "--depth", "2"], "not to --tiny"),
])
def test_refusals_exit_non_zero_with_a_message(bench, capsys, argv, message):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    try:
        status = bench.main(argv)
    except SystemExit as exit:  # argparse's refusals
        status = exit.code
    assert status != 0
    assert message in capsys.readouterr().err
