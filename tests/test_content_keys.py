"""Caches are keyed by what their content depends on, never by a path alone: weights rewritten under the same
path (a run extended, a model re-saved) are other weights, for the benchmark folders, `eval heldout` and the
conditions cache; a benchmark's data changed under the same keys is other data."""

import argparse
import json
import shutil

import pytest
import torch
import yaml
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file
from benchmark_fixtures import write_imgedit_fixture
from scripted_judge_server import ScriptedJudgeServer, imgedit_reply
from tiny_runs import tiny_nft_overrides

from editr1.cli.heldout import add_heldout_arguments, run_heldout
from editr1.cli.main import main
from editr1.config import TrainConfig, load_config
from editr1.errors import EditR1Error
from editr1.fingerprint import BLOCK_BYTES, SAMPLED_BLOCKS, file_fingerprint, folder_fingerprint
from editr1.models.lora_io import LoraSpec
from editr1.models.registry import build_tiny, load_adapter
from editr1.tasks.shapes import SHIPPED_BASE
from editr1.tasks.shapes.scenes import write_shapes_dataset
from editr1.trainer.conditions_cache import precompute_conditions
from editr1.trainer.rl_trainer import RLTrainer


def _rewrite_in_place(path, scale=1.5):
    """The same tensors (names, shapes, dtypes: the same header and size), other values: a run extended."""
    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    size = path.stat().st_size
    save_file({name: t * scale if t.is_floating_point() else t for name, t in tensors.items()}, path, metadata)
    assert path.stat().st_size == size


# ---- the fingerprints themselves --------------------------------------------------------------
def test_a_large_file_is_told_apart_by_its_header_and_sampled_blocks(tmp_path, monkeypatch):
    """Past the whole-file size, a change in a sampled block or in the safetensors header is seen; one
    between the blocks is not (what the sampling gives up), yet any change of size is."""
    monkeypatch.setattr("editr1.fingerprint.WHOLE_FILE_BYTES", 4 * BLOCK_BYTES)
    path = tmp_path / "big.safetensors"
    save_file({"w": torch.zeros(1000 * BLOCK_BYTES // 4)}, path)  # 1000 blocks: 64 of them are read
    size, before = path.stat().st_size, file_fingerprint(path)
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    stride = (size - BLOCK_BYTES) // (SAMPLED_BLOCKS - 1)
    for offset, seen in ((10, True), (stride * 5 + 7, True), (stride * 5 + BLOCK_BYTES + 7, False)):
        changed = bytearray(data)
        changed[offset] ^= 1
        path.write_bytes(changed)
        assert (file_fingerprint(path) != before) is seen, offset
    assert header < stride * 5
    path.write_bytes(data + b"\0")
    assert file_fingerprint(path) != before


def test_a_folder_fingerprint_ignores_hidden_files_and_notes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "w.bin").write_bytes(b"weights")
    before = folder_fingerprint(tmp_path)
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "x").write_text("download bookkeeping")
    (tmp_path / "README.md").write_text("notes")
    assert folder_fingerprint(tmp_path) == before
    (tmp_path / "a" / "w.bin").write_bytes(b"Weights")
    assert folder_fingerprint(tmp_path) != before
    (tmp_path / "empty").mkdir()
    assert folder_fingerprint(tmp_path, skip=["a", "empty"]) == folder_fingerprint(tmp_path / "empty")


def test_a_folder_fingerprint_reads_through_symlinked_folders(tmp_path):
    """A model whose transformer/ links to another disk: its weights count, once, and a link loop ends."""
    elsewhere = tmp_path / "disk" / "transformer"
    elsewhere.mkdir(parents=True)
    (elsewhere / "w.safetensors").write_bytes(b"weights")
    model = tmp_path / "model"
    model.mkdir()
    (model / "transformer").symlink_to(elsewhere)
    (elsewhere / "loop").symlink_to(model)
    before = folder_fingerprint(model)
    (elsewhere / "w.safetensors").write_bytes(b"Weights")
    assert folder_fingerprint(model) != before


# ---- benchmark folders -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def lora_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("keyed-model")
    folder = root / "base"
    build_tiny("tiny:qwen-image-edit", ["add remove change make replace the a"], seed=0).save_pretrained(folder)
    adapter = load_adapter(folder)
    spec = LoraSpec(4, 8.0, tuple(adapter.lora_target_modules))
    adapter.transformer.add_adapter(LoraConfig(r=4, lora_alpha=8.0, target_modules=list(spec.target_modules)))
    with torch.no_grad():
        for name, p in adapter.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    adapter.save_lora(get_peft_model_state_dict(adapter.transformer), root / "lora", spec)
    return folder, root / "lora"


def _judge(request, call_number):
    return imgedit_reply(request["messages"][0]["content"][0]["text"])


def _eval(model, lora, data, judge, out):
    return main(["eval", "imgedit", "--model", str(model), "--lora", str(lora), "--data", str(data), "--judge", str(judge),
                 "--out", str(out), "--steps", "2", "--no-pipeline-sizing", "--limit", "3"])


def test_a_benchmark_folder_refuses_a_lora_rewritten_under_its_path(lora_model, tmp_path, capsys):
    base, lora = lora_model
    lora = shutil.copytree(lora, tmp_path / "lora")
    data = write_imgedit_fixture(tmp_path)
    with ScriptedJudgeServer(_judge) as server:
        judge = tmp_path / "judge.yaml"
        judge.write_text(yaml.safe_dump({"kind": "openai", "base_url": server.base_url, "model": "scripted-judge"}))
        assert _eval(base, lora, data, judge, tmp_path / "before") == 0
        results = json.loads((tmp_path / "before" / "results.json").read_text())
        recorded = results["model"]["fingerprint"]
        assert recorded["model"] == folder_fingerprint(base) and len(recorded["lora"]) == 64
        edits = {p.name: p.read_bytes() for p in (tmp_path / "before" / "edits").iterdir()}

        _rewrite_in_place(lora / "pytorch_lora_weights.safetensors")  # `train --resume` of the run
        capsys.readouterr()
        assert _eval(base, lora, data, judge, tmp_path / "before") == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "other weights under the same path" in error
        assert f"the lora {lora}" in error and recorded["lora"][:12] in error
        assert {p.name: p.read_bytes() for p in (tmp_path / "before" / "edits").iterdir()} == edits  # untouched

        assert _eval(base, lora, data, judge, tmp_path / "after") == 0
        after = json.loads((tmp_path / "after" / "results.json").read_text())["model"]["fingerprint"]
        assert after["model"] == recorded["model"] and after["lora"] != recorded["lora"]
        assert any((tmp_path / "after" / "edits" / name).read_bytes() != edit for name, edit in edits.items())


def test_a_benchmark_folder_refuses_edits_of_another_source_or_instruction(lora_model, tmp_path, capsys):
    base, lora = lora_model
    data = write_imgedit_fixture(tmp_path)
    with ScriptedJudgeServer(_judge) as server:
        judge = tmp_path / "judge.yaml"
        judge.write_text(yaml.safe_dump({"kind": "openai", "base_url": server.base_url, "model": "scripted-judge"}))
        assert _eval(base, lora, data, judge, tmp_path / "out") == 0
        basic = data / "Basic" / "basic_edit.json"
        entries = json.loads(basic.read_text())
        first = json.loads((tmp_path / "out" / "samples.jsonl").read_text().splitlines()[0])["key"]
        entries[first]["prompt"] += " and make it blue"
        basic.write_text(json.dumps(entries))
        capsys.readouterr()
        assert _eval(base, lora, data, judge, tmp_path / "out") == 2
        error = capsys.readouterr().err
        assert "1 edit(s) were made from another source image or instruction" in error and first in error


# ---- eval heldout ------------------------------------------------------------------------------
def _heldout(*argv):
    parser = argparse.ArgumentParser()
    add_heldout_arguments(parser)
    return run_heldout(parser.parse_args([str(a) for a in argv]))


def test_eval_heldout_records_the_weights_and_never_reuses_a_folder(lora_model, shapes_data, tmp_path):
    base, lora = lora_model
    lora = shutil.copytree(lora, tmp_path / "lora")
    reward = tmp_path / "reward.yaml"
    reward.write_text("name: shapes_verifier\n")
    common = ["--model", base, "--lora", lora, "--data", shapes_data / "test.jsonl", "--reward", reward,
              "--resolution", 32, "--samples", 2, "--steps", 2]
    _heldout(*common, "--out", tmp_path / "a")
    first = json.loads((tmp_path / "a" / "heldout.json").read_text())["model"]["fingerprint"]
    _rewrite_in_place(lora / "pytorch_lora_weights.safetensors")
    with pytest.raises(EditR1Error, match="already holds an evaluation"):
        _heldout(*common, "--out", tmp_path / "a")
    _heldout(*common, "--out", tmp_path / "b")
    second = json.loads((tmp_path / "b" / "heldout.json").read_text())["model"]["fingerprint"]
    assert second["model"] == first["model"] and second["lora"] != first["lora"]


# ---- the conditions cache ---------------------------------------------------------------------
def test_a_conditions_cache_refuses_a_text_encoder_rewritten_under_its_path(tmp_path):
    model = shutil.copytree(SHIPPED_BASE, tmp_path / "base")
    write_shapes_dataset(tmp_path / "data", n_train=4, n_test=2, seed=2)
    overrides = tiny_nft_overrides(tmp_path / "data", tmp_path / "run", iterations=1) + [
        f"model.path={model}", "eval.samples=2", f"data.conditions_cache={tmp_path / 'cache'}"]
    precompute_conditions(load_config(TrainConfig, None, overrides))
    _rewrite_in_place(model / "text_encoder" / "model.safetensors")
    with pytest.raises(EditR1Error, match=r"was built for another model \(model files outside transformer/ \(fingerprint\)"):
        RLTrainer(load_config(TrainConfig, None, overrides))
    assert not (tmp_path / "run").exists()
