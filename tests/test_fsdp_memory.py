"""Sharded (FSDP) runs load the model once and resume by rows: only the main process reads the model's weights (the
others build the transformer without them and receive their slices), the frozen copies of full fine-tuning are
never whole, and a resume reads only each process's rows of the checkpoint. bench/fsdp_memory.py measures what
this saves; tests/test_fsdp.py checks that the runs are the same runs."""

import json
import os
import shutil
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_runs import run_launch, tiny_nft_overrides
from torch import nn

from editr1.config import TrainConfig, load_config
from editr1.trainer.checkpoint import TensorFile
from editr1.trainer.conditions_cache import precompute_conditions
from editr1.trainer.policies import PolicySet
from editr1.trainer.sharding import load_from_main, local_index, shard_like, whole_tensors

ROOT = Path(__file__).parent.parent


# ---- the two halves alone, on 2 processes over gloo -------------------------------------------------------
def _model() -> nn.Module:
    """Rows that do not split evenly (5 over 2), fewer rows than processes (1), and a buffer."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 1), nn.Linear(1, 4))
    model.register_buffer("scale", torch.rand(3), persistent=False)
    return model


def _shard(model: nn.Module, mesh) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


class _RecordedFile(TensorFile):
    def __init__(self, path):
        super().__init__(path)
        self.blocks = {}

    def read(self, name, index=None):
        self.blocks[name] = None if index is None else [(s.start, s.stop) for s in index]
        return super().read(name, index)


def _sharded_loading_and_reading(rank: int, folder: str, port: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    mesh = init_device_mesh("cpu", (2,))
    expected = _shard(_model(), mesh)  # torch's own layout of the whole weights
    # Loading: the main process has the weights, the other builds without them and receives its blocks.
    if rank == 0:
        model = _model()
    else:
        with torch.device("meta"):
            model = _model()
    whole = whole_tensors(model) if rank == 0 else None
    model = _shard(model, mesh)
    load_from_main(model, whole, torch.device("cpu"))
    assert whole is None or whole == {}
    for (name, got), (_, want) in zip([*model.named_parameters(), *model.named_buffers()],
                                      [*expected.named_parameters(), *expected.named_buffers()]):
        got, want = (t.to_local() if hasattr(t, "to_local") else t for t in (got, want))
        assert torch.equal(got, want), (rank, name)

    # Reading a whole-tensor file: each process reads its block only, laid out as torch lays it out.
    path = Path(folder) / "whole.safetensors"
    if rank == 0:
        save_file(_model().state_dict(), path)
    dist.barrier()
    file = _RecordedFile(path)
    params = dict(expected.named_parameters())
    read = shard_like(file, params)
    blocks = [None, None]
    dist.all_gather_object(blocks, file.blocks)
    with safe_open(path, framework="pt") as handle:
        for name, param in params.items():
            assert torch.equal(read[name].to_local(), param.to_local()), (rank, name)
            assert file.blocks[name] == [(s.start, s.stop) for s in local_index(param)]
            rows = handle.get_slice(name).get_shape()[0]
            (a, b), (c, d) = blocks[0][name][0], blocks[1][name][0]
            assert (a, b, d) == (0, c, rows), (name, blocks)  # the two blocks of rows tile the tensor
    assert params["1.weight"].to_local().shape[0] == (1 if rank == 0 else 0)  # one row over two processes
    # Gloo's teardown can abort a process (std::terminate) while its peer closes the pair sockets, as the
    # trainer's processes do, so a passing process ends here without running destructors (a failing one
    # has raised, and spawn has its traceback already).
    dist.barrier()
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_sharded_loading_and_reading_give_each_process_its_blocks(tmp_path):
    """`load_from_main` gives a process built on the meta device the main process's blocks and buffers, and
    `shard_like` reads each process's rows of a file only: both exactly as torch shards the whole tensors,
    uneven and empty blocks included."""
    torch.multiprocessing.spawn(_sharded_loading_and_reading, args=(str(tmp_path), _free_port()), nprocs=2)


def test_sharded_frozen_copies_are_built_without_weights():
    """Full fine-tuning's old and reference copies of a transformer about to be sharded hold no weights until
    `shard` fills them from the trained transformer's slices; unsharded, they are whole copies."""
    transformer = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    transformer.register_buffer("scale", torch.ones(2))
    sharded = PolicySet(transformer, None, need_reference=True, sharded=True)
    for copy in (sharded.old_module, sharded.reference_module):
        assert all(p.is_meta for p in copy.parameters()) and not any(p.requires_grad for p in copy.parameters())
    assert all(not p.is_meta for p in transformer.parameters())
    whole = PolicySet(nn.Sequential(nn.Linear(3, 4)), None, need_reference=True)
    assert torch.equal(whole.old_module[0].weight, whole.transformer[0].weight)


# ---- a real launch through the shipped FSDP config ------------------------------------------------------
def _launch(overrides, reads: Path, monkeypatch, resume=False):
    """`editr1 train` on 2 CPU processes under the shipped FSDP config; what each process read."""
    reads.mkdir()
    command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
               str(ROOT / "configs" / "accelerate" / "fsdp_1node.yaml"), "--num_processes", "2",
               str(Path(__file__).parent / "fsdp_reads_on_cpu.py"), "train"]
    for override in overrides:
        command += ["--set", override]
    if resume:
        command.append("--resume")
    monkeypatch.setenv("EDITR1_TEST_READS", str(reads))
    run_launch(command)
    return {rank: [json.loads(line) for line in (reads / f"rank{rank}.jsonl").read_text().splitlines()]
            if (reads / f"rank{rank}.jsonl").exists() else [] for rank in (0, 1)}


def test_only_the_main_process_reads_the_model_and_a_resume_reads_each_process_rows(shapes_data, tmp_path, monkeypatch):
    """Full fine-tuning with the KL reference from a conditions cache, on 2 processes: only the main process
    loads the transformer (and the text encoder, which only its export needs); resumed, each process reads its
    own rows of every tensor of the checkpoint, and the run ends where it ended."""
    run, resumed, cache = tmp_path / "run", tmp_path / "resumed", tmp_path / "cache"

    def overrides(out):
        return tiny_nft_overrides(shapes_data, out, iterations=1) + [
            "rollout.groups_per_iteration=2", "data.heldout=null", "eval.every=0", "logging.checkpoint_every=1",
            "model.train_mode=full", "optim.lr=1e-4", "rl.kl_coef=0.1", f"data.conditions_cache={cache}"]

    precompute_conditions(load_config(TrainConfig, None, overrides(run)))
    loads = _launch(overrides(run), tmp_path / "reads", monkeypatch)
    loaded = {rank: {Path(entry["path"]).name for entry in entries if entry["kind"] == "from_pretrained"}
              for rank, entries in loads.items()}
    assert loaded == {0: {"transformer", "text_encoder"}, 1: set()}

    # Resumed at its last checkpoint, the run goes straight to its export.
    shutil.copytree(run, resumed, ignore=shutil.ignore_patterns("final", "summary.json"))
    reads = _launch(overrides(resumed), tmp_path / "resume_reads", monkeypatch, resume=True)
    checkpoint = run / "checkpoints" / "step_000001"
    for file in ("trained.safetensors", "old.safetensors", "optimizer.safetensors"):
        with safe_open(checkpoint / file, framework="pt") as handle:
            shapes = {name: handle.get_slice(name).get_shape() for name in handle.keys()}
        blocks = {rank: {e["name"]: e["block"] for e in entries if e["kind"] == "read" and e["file"] == file}
                  for rank, entries in reads.items()}
        assert blocks[0].keys() == blocks[1].keys() == shapes.keys(), file
        for name, shape in shapes.items():
            if not shape:  # Adam's step count: read whole
                assert blocks[0][name] is blocks[1][name] is None
                continue
            (first, *rest_0), (second, *rest_1) = blocks[0][name], blocks[1][name]
            assert first[0] == 0 and first[1] == second[0] and second[1] == shape[0], (file, name, first, second)
            assert rest_0 == rest_1 == [[0, size] for size in shape[1:]], (file, name)
    exported = "final/transformer/diffusion_pytorch_model.safetensors"
    first, second = load_file(run / exported), load_file(resumed / exported)
    assert first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)
