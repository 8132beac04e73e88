"""Helpers for the training tests: config overrides for a seconds-long NFT run on the tiny preset."""

from __future__ import annotations

from editr1.tasks.shapes import SHIPPED_BASE


def tiny_nft_overrides(data, out, iterations=3):
    """A seconds-long NFT run from the shipped tiny base (it edits, so rewards vary): 2 groups x 4 edits."""
    return [
        f"model.path={SHIPPED_BASE}",
        f"data.train={data / 'train.jsonl'}", f"data.heldout={data / 'test.jsonl'}", f"output_dir={out}",
        f"iterations={iterations}", "rollout.groups_per_iteration=2", "rollout.group_size=4", "rollout.steps=3",
        "eval.samples=8", "eval.every=2", "eval.steps=3", "logging.grid_every=2", "logging.checkpoint_every=2",
        "model.lora.rank=4", "model.lora.alpha=8", "logging.progress=false", "logging.trackers=[]",
        "optim.lr=1e-3", "optim.micro_batch=4",
    ]


#: Runs `editr1 train` (or `sft`) in a new process after arranging a SIGKILL at the N-th call of one function.
KILLING_DRIVER = """
import os, signal, sys
import editr1.trainer.algorithms.grpo as grpo
import editr1.trainer.checkpoint as checkpoint
import editr1.trainer.rl_trainer as rl_trainer
import editr1.trainer.sft as sft
from editr1.cli.main import main

owner, name, when = sys.argv[1], sys.argv[2], int(sys.argv[3])
target = {"trainer": rl_trainer.RLTrainer, "checkpoint": checkpoint, "rl_trainer": rl_trainer, "sft": sft, "grpo": grpo}[owner]
original, calls = getattr(target, name), [0]

def killing(*args, **kwargs):
    calls[0] += 1
    if calls[0] == when:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)

setattr(target, name, killing)
sys.exit(main(sys.argv[4:]))
"""

def run_killed(overrides, kill=None, command="train"):
    """`editr1 <command> --resume` with `overrides` in a new process, killed with SIGKILL at `kill` = (owner,
    function name, call number); None: run to the end."""
    import os
    import subprocess
    import sys

    args = [command, "--resume", *(a for o in overrides for a in ("--set", o))]
    command = [sys.executable, "-c", KILLING_DRIVER, *map(str, kill or ("trainer", "_train", 0)), *args]
    # tests/ on the path, as pytest puts it: runs take rewards from toy_plugin by dotted path.
    path = os.pathsep.join(filter(None, [os.path.dirname(os.path.abspath(__file__)), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": path}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def run_launch(command, timeout=300, check=True, use_cpu=True):
    """Run an `accelerate launch` command on the CPU (gloo, one thread per process) on a port of its own;
    on a timeout kill it and every process under it (torch starts each training process in a session of its
    own), so no training process outlives the test. `check`: assert that it succeeded. `use_cpu` False:
    without ACCELERATE_USE_CPU, as a user who does not know it launches."""
    import os
    import socket
    import subprocess

    import psutil

    with socket.socket() as probe:  # a free port: a launch that just ended may still hold accelerate's default
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [command[0], command[1], "--main_process_port", str(port), *command[2:]]
    # tests/ on the path, as pytest puts it: launched runs take rewards from toy_plugin by dotted path.
    tests = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    if not use_cpu:
        del env["ACCELERATE_USE_CPU"]
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for member in [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]:
                try:
                    member.kill()
                except psutil.NoSuchProcess:
                    pass
            process.communicate()
            raise
    assert process.returncode == 0 or not check, f"exit status {process.returncode}\n{stdout[-3000:]}\n{stderr[-4000:]}"
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def launch_train(accelerate_config, overrides, resume=False, fsdp_on_cpu=False, **run_options):
    """`editr1 train` on 2 CPU processes under a shipped accelerate config (`configs/accelerate/<name>`; 8 GPUs
    there). `fsdp_on_cpu`: through tests/fsdp_on_cpu.py, which lets accelerate shard on the CPU."""
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
               str(tests.parent / "configs" / "accelerate" / accelerate_config), "--num_processes", "2",
               *([str(tests / "fsdp_on_cpu.py")] if fsdp_on_cpu else ["-m", "editr1.cli.main"]), "train"]
    for override in overrides:
        command += ["--set", override]
    if resume:
        command.append("--resume")
    return run_launch(command, **run_options)


def tiny_presets() -> list[str]:
    """Every built-in family's tiny preset: the feature tests run on each (a new family joins them by its
    registry line)."""
    from editr1.models.registry import FAMILIES

    return [f"tiny:{name}" for name in FAMILIES]
