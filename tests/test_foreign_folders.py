"""One rule for every command that writes a folder: a folder holding files the command did not write (a
folder of the user's documents, an evaluation's results, another command's run) is refused before anything
is written, naming a few of them; a folder holding only the command's own files, or hidden bookkeeping, is
not."""

import argparse

import pytest
import yaml
from benchmark_fixtures import write_imgedit_fixture
from tiny_runs import tiny_nft_overrides

from editr1.cli.demo import run_demo
from editr1.cli.heldout import add_heldout_arguments, run_heldout
from editr1.cli.main import main
from editr1.config import TrainConfig, SFTConfig, load_config
from editr1.errors import EditR1Error
from editr1.eval.benchmarks.harness import RESULTS_FOLDER_ENTRIES
from editr1.fileio import foreign_entries
from editr1.tasks.shapes import SHIPPED_BASE
from editr1.tasks.shapes.scenes import write_shapes_dataset
from editr1.trainer.conditions_cache import precompute_conditions
from editr1.trainer.rl_trainer import run_rl
from editr1.trainer.sft import run_sft

DOCUMENTS = ("letter.docx", "photos", "taxes.pdf", "notes.txt")


def _documents(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name in DOCUMENTS:
        (folder / name).mkdir() if "." not in name else (folder / name).write_text("mine")
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def _untouched(folder, before):
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def test_foreign_entries_match_patterns_and_pass_over_hidden_names(tmp_path):
    for name in ("manifest.json", "shard-00001.safetensors", ".DS_Store", "notes.txt"):
        (tmp_path / name).write_text("")
    assert foreign_entries(tmp_path, ("manifest.json", "shard-*.safetensors")) == ["notes.txt"]
    assert foreign_entries(tmp_path / "missing", ()) == []


def test_train_and_sft_refuse_a_folder_of_documents_and_each_other_s_runs(shapes_data, tmp_path):
    documents = tmp_path / "Documents"
    before = _documents(documents)
    for resume in (False, True):
        with pytest.raises(EditR1Error, match=r"Documents: holds files that editr1 train did not write "
                                              r"\(letter\.docx, notes\.txt, photos and 1 more\); choose a new or empty"):
            run_rl(load_config(TrainConfig, None, tiny_nft_overrides(shapes_data, documents, iterations=1)), resume=resume)
    _untouched(documents, before)

    # A finished training run is no place for an SFT run, nor an evaluation's folder for a training run.
    run = tmp_path / "nft"
    run_rl(load_config(TrainConfig, None, tiny_nft_overrides(shapes_data, run, iterations=1)))
    sft = [f"model.path={SHIPPED_BASE}", f"data.train={shapes_data / 'train.jsonl'}", "data.heldout=null",
           f"output_dir={run}", "steps=1", "logging.progress=false"]
    with pytest.raises(EditR1Error, match="holds files that editr1 sft did not write .*final"):
        run_sft(load_config(SFTConfig, None, sft), resume=True)
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    (evaluation / "results.json").write_text("{}")
    with pytest.raises(EditR1Error, match=r"holds files that editr1 train did not write \(results\.json\)"):
        run_rl(load_config(TrainConfig, None, tiny_nft_overrides(shapes_data, evaluation, iterations=1)))


def test_an_evaluation_refuses_a_training_run_and_a_folder_of_documents(shapes_data, tmp_path):
    reward = tmp_path / "reward.yaml"
    reward.write_text("name: shapes_verifier\n")
    parser = argparse.ArgumentParser()
    add_heldout_arguments(parser)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "checkpoints").mkdir()
    for out, named in ((run, r"\(checkpoints, config\.yaml\)"), (tmp_path / "Documents", r"\(letter\.docx")):
        if out.name == "Documents":
            _documents(out)
        args = parser.parse_args(["--model", str(SHIPPED_BASE), "--data", str(shapes_data / "test.jsonl"), "--reward",
                                  str(reward), "--resolution", "32", "--out", str(out)])
        with pytest.raises(EditR1Error, match=f"holds files that editr1 eval heldout did not write {named}"):
            run_heldout(args)
    assert "compare_*" in RESULTS_FOLDER_ENTRIES  # `eval compare` writes into B's folder by default


def test_data_precompute_and_demo_refuse_a_folder_of_documents(tmp_path):
    documents = tmp_path / "Documents"
    before = _documents(documents)
    with pytest.raises(EditR1Error, match="holds files that editr1 data shapes did not write"):
        write_shapes_dataset(documents, 4, 2, seed=0)
    with pytest.raises(EditR1Error, match="holds files that editr1 demo did not write"):
        run_demo(documents)
    write_shapes_dataset(tmp_path / "data", 4, 2, seed=0)
    config = load_config(TrainConfig, None, tiny_nft_overrides(tmp_path / "data", tmp_path / "run", iterations=1)
                         + [f"data.conditions_cache={documents}", "eval.samples=2"])
    with pytest.raises(EditR1Error, match="holds files that editr1 precompute did not write"):
        precompute_conditions(config)
    _untouched(documents, before)


def test_a_benchmark_evaluation_refuses_a_folder_of_documents(tmp_path, capsys):
    documents = tmp_path / "Documents"
    before = _documents(documents)
    judge = tmp_path / "judge.yaml"
    judge.write_text(yaml.safe_dump({"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "x"}))
    data = write_imgedit_fixture(tmp_path)
    assert main(["eval", "imgedit", "--model", str(SHIPPED_BASE), "--data", str(data), "--judge", str(judge),
                 "--out", str(documents)]) == 2
    assert "holds files that editr1 eval did not write (letter.docx, notes.txt, photos and 1 more)" in capsys.readouterr().err
    _untouched(documents, before)


def test_data_shapes_never_replaces_a_dataset_of_the_same_names(tmp_path):
    mine = tmp_path / "mine"
    (mine / "images").mkdir(parents=True)
    (mine / "train.jsonl").write_text('{"id": "a", "image": "images/a.png", "prompt": "mine"}\n')
    with pytest.raises(EditR1Error, match="already holds train.jsonl"):
        write_shapes_dataset(mine, 4, 2, seed=0)
    assert "mine" in (mine / "train.jsonl").read_text() and not any((mine / "images").iterdir())


def test_compare_refuses_an_output_folder_of_other_files(tmp_path):
    from editr1.eval.benchmarks.compare import write_comparison

    before = _documents(tmp_path / "Documents")
    with pytest.raises(EditR1Error, match="holds files that editr1 eval compare did not write"):
        write_comparison({}, tmp_path / "Documents")
    _untouched(tmp_path / "Documents", before)


def test_an_export_inside_the_results_folder_is_refused_before_any_work(tmp_path, capsys):
    judge = tmp_path / "judge.yaml"
    judge.write_text(yaml.safe_dump({"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "x"}))
    data = write_imgedit_fixture(tmp_path)
    out = tmp_path / "eval"
    assert main(["eval", "imgedit", "--model", str(SHIPPED_BASE), "--data", str(data), "--judge", str(judge),
                 "--out", str(out), "--export-official", str(out / "official")]) == 2
    assert f"--export-official {out / 'official'}: overlaps --out {out}" in capsys.readouterr().err
    assert not out.exists()
