"""Host memory of a sharded (FSDP) run, per process: loading the model, and resuming from a checkpoint.

    .venv/bin/python bench/fsdp_memory.py --family flux-kontext --json now.json   # real width, 1 block of each kind
    .venv/bin/python bench/fsdp_memory.py --family qwen-image-edit --mode lora
    .venv/bin/python bench/fsdp_memory.py --from-json now.json --before then.json  # "then → now" in every cell

What runs. One process builds the family at its published widths with the depth cut to `--blocks`
(`bench/real_width.py`'s `build_adapter`: random bf16 weights, nothing downloaded) and saves it as a
diffusers folder. Then, for each `--mode` (LoRA, and full fine-tuning with the KL reference, whose old and
reference copies are frozen transformers), two launches of `--processes` CPU processes run the trainer
under the shipped `configs/accelerate/fsdp_1node.yaml` (gloo, through `tests/fsdp_on_cpu.py`, as the FSDP
tests do):
- *fresh*: `RLTrainer(config).run()` for one iteration (2 groups of 2 edits at `--size`, 2 rollout
  steps, the `MeanBrightness` reward of `bench/real_width.py`), which writes a checkpoint with the
  AdamW moments, as any trained run's;
- *resume*: `RLTrainer(config, resume=True).run()` on that folder, which reads the checkpoint back
  (`_restore`) and, with no iteration left, exports the final weights again.

What it measures, in every process, from /proc/self/status: the kernel's peak resident set (`VmHWM`,
reset through /proc/self/clear_refs where a phase starts) and the resident set (`VmRSS`). Both count the
file pages a process has mapped and read (the safetensors loaders map files) as well as its own memory.
- *peak RSS: load*: from the start of the fresh launch's process to the end of the trainer's construction
  (model read, policies built, transformer sharded); *RSS loaded*: then.
- *peak RSS: resume*: while `_restore` reads the checkpoint and loads it into the sharded policies and the
  optimizer (the mark reset when it starts, so it includes the RSS already held); *RSS resumed*: after it,
  what the run goes on with.
- The whole transformer's size (every parameter, all shards) and the checkpoint's tensor files, for scale.
On the CPU the shards live in the same memory as everything else; on GPUs they would not (see
docs/real_scale.md).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `bench.real_width`, also as the dotted path of the runs' reward

from editr1.models.registry import FAMILIES  # noqa: E402
from bench.real_width import DTYPES, _status_kib, build_adapter, gib, reset_peak, table, write_dataset  # noqa: E402

MODES = ("lora", "full")


class BenchError(Exception):
    """A failed stage (printed as one line, exit status 1)."""


def memory() -> dict[str, int]:
    """Peak and current resident set, and the current one split into the process's own and mapped files (bytes)."""
    return {name: _status_kib(field) * 1024 for name, field in
            (("peak", "VmHWM"), ("rss", "VmRSS"), ("anon", "RssAnon"), ("file", "RssFile"))}


# ---- the two stages run in fresh processes ----------------------------------------------------------
def stage_build(args) -> None:
    adapter = build_adapter(args.family, args.blocks, DTYPES["bfloat16"])
    adapter.save_pretrained(Path(args.work) / "model")
    write_dataset(Path(args.work) / "data", args.size)


def config_yaml(args, mode: str) -> str:
    work = Path(args.work)
    full = mode == "full"
    return f"""\
seed: 0
output_dir: {work / mode}
iterations: 1
model:
  path: {work / "model"}
  resolution: {args.size}
  dtype: bfloat16
  train_mode: {mode}
  lora: {{rank: 4, alpha: 4}}
data:
  train: {work / "data" / "train.jsonl"}
  heldout: null
reward:
  name: bench.real_width:MeanBrightness
rollout:
  groups_per_iteration: {args.processes}
  group_size: 2
  steps: 2
  sampler: dpmpp_2m
  batch_size: 2
rl:
  filter_rule: none
  kl_coef: {0.1 if full else 1e-4}
optim:
  micro_batch: 1
  lr: {1e-5 if full else 1e-4}
eval:
  every: 0
logging:
  grid_every: 0
  checkpoint_every: 1
  trackers: []
  progress: false
"""


def stage_worker(args) -> None:
    """One process of a launch: the trainer, with the peaks read around its construction and `_restore`."""
    sys.path.insert(0, str(ROOT / "tests"))
    import fsdp_on_cpu  # noqa: F401  (accelerate's FSDP on CPU processes: see that file)

    from editr1.config import TrainConfig, load_config
    from editr1.trainer.rl_trainer import RLTrainer

    if not callable(getattr(RLTrainer, "_restore", None)):
        raise BenchError("RLTrainer has no _restore any more: update bench/fsdp_memory.py")
    resume = args.launch == "resume"
    measured: dict[str, dict] = {}

    class MeasuredTrainer(RLTrainer):
        def _restore(self, checkpoint):
            measured["load"] = memory()
            if not reset_peak():
                raise BenchError("cannot reset the peak RSS through /proc/self/clear_refs")
            super()._restore(checkpoint)
            measured["resume"] = memory()

    config = load_config(TrainConfig, Path(args.work) / f"{args.mode}.yaml")
    trainer = MeasuredTrainer(config, resume=resume)
    if not resume:
        measured["load"] = memory()
    # The base transformer's weights over all shards (a DTensor's `shape` is the whole parameter's).
    measured["transformer_bytes"] = sum(p.numel() * p.element_size()
                                        for n, p in trainer.adapter.transformer.named_parameters() if "lora_" not in n)
    trainer.run()  # resumed at its last iteration, the run goes straight to its export
    out = Path(args.work) / f"{args.mode}_{args.launch}_rank{trainer.rank}.json"
    out.write_text(json.dumps(measured))


# ---- the driver ----------------------------------------------------------------------------------------
def _run(command: list[str], what: str, env: dict | None = None) -> None:
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-150:])
        raise BenchError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def launch(args, mode: str, which: str) -> None:
    with socket.socket() as probe:  # a port of its own
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
               str(ROOT / "configs" / "accelerate" / "fsdp_1node.yaml"), "--num_processes", str(args.processes),
               "--main_process_port", str(port), str(Path(__file__).resolve()), "--stage", "worker",
               "--launch", which, "--mode", mode, "--work", args.work]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    _run(command, f"{mode} {which} launch", env)


def measure(args) -> list[dict]:
    rows = []
    where = str(Path(args.tmp).resolve()) if args.tmp else None
    with tempfile.TemporaryDirectory(prefix="fsdp_memory_", dir=where) as tmp:
        args.work = tmp
        tick = time.monotonic()
        _run([sys.executable, str(Path(__file__).resolve()), "--stage", "build", "--family", args.family,
              "--blocks", str(args.blocks), "--size", str(args.size), "--work", tmp], "the build stage")
        print(f"built {args.family}, {args.blocks} block(s), in {time.monotonic() - tick:.0f} s", flush=True)
        for mode in args.mode:
            (Path(tmp) / f"{mode}.yaml").write_text(config_yaml(args, mode))
            for which in ("fresh", "resume"):
                tick = time.monotonic()
                launch(args, mode, which)
                print(f"{mode} {which} launch: {time.monotonic() - tick:.0f} s", flush=True)
            checkpoint = Path(tmp) / mode / "checkpoints" / "step_000001"
            files = {name: (checkpoint / f"{name}.safetensors").stat().st_size for name in ("trained", "old", "optimizer")}
            for rank in range(args.processes):
                fresh, resumed = (json.loads((Path(tmp) / f"{mode}_{which}_rank{rank}.json").read_text())
                                  for which in ("fresh", "resume"))
                rows.append({"family": args.family, "blocks": args.blocks, "mode": mode, "rank": rank,
                             "processes": args.processes, "transformer_bytes": fresh["transformer_bytes"],
                             "checkpoint_bytes": sum(files.values()), "fresh": fresh, "resume": resumed})
    return rows


def report(rows: list[dict], before: list[dict] | None = None) -> str:
    """One row per run and process; with `before` (an earlier --json of the same runs), each cell reads
    "before → now"."""
    earlier = {(row["family"], row["blocks"], row["mode"], row["rank"]): row for row in before or []}
    header = ["run", "process", "whole transformer", "checkpoint files", "peak RSS: load", "RSS loaded",
              "peak RSS: resume", "RSS resumed"]

    def cell(row: dict, value) -> str:
        then = earlier.get((row["family"], row["blocks"], row["mode"], row["rank"]))
        now = value(row)
        return now if then is None else f"{value(then)} → {now}"

    lines = []
    for row in rows:
        name = f"{row['family']}, {row['blocks']} block(s), {'LoRA' if row['mode'] == 'lora' else 'full fine-tuning + KL'}"
        lines.append([
            name, f"{row['rank']} of {row['processes']}", gib(row["transformer_bytes"]), gib(row["checkpoint_bytes"]),
            cell(row, lambda r: gib(r["fresh"]["load"]["peak"])),
            cell(row, lambda r: gib(r["fresh"]["load"]["rss"])),
            cell(row, lambda r: gib(r["resume"]["resume"]["peak"])),
            cell(row, lambda r: gib(r["resume"]["resume"]["rss"])),
        ])
    return table(header, lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(FAMILIES), required=True,
                        help="a registered family (docs/real_scale.md measured flux-kontext)")
    parser.add_argument("--blocks", type=int, default=1, help="depth to build (FLUX: of each block kind; default 1)")
    parser.add_argument("--mode", choices=MODES, action="append", help="lora and/or full (default both)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--size", type=int, default=128, help="edit resolution of the one iteration (default 128)")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--tmp", help="where the model and runs go (default: the system's temporary folder)")
    parser.add_argument("--from-json", type=Path, help="print the table of an earlier run's --json file, run nothing")
    parser.add_argument("--before", type=Path, help="an earlier --json of the same runs (e.g. before a change): each "
                                                    "cell then reads \"before → now\"")
    parser.add_argument("--stage", choices=("build", "worker"), help=argparse.SUPPRESS)
    parser.add_argument("--launch", choices=("fresh", "resume"), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.mode = args.mode or list(MODES)
    if args.stage == "build":
        stage_build(args)
        return
    if args.stage == "worker":
        args.mode = args.mode[0]
        try:
            stage_worker(args)
        except BaseException:
            # The trainer silences the processes other than the main one: their errors go to the real stderr.
            traceback.print_exc(file=sys.__stderr__)
            raise
        return
    before = json.loads(args.before.read_text()) if args.before else None
    if args.from_json:
        print(report(json.loads(args.from_json.read_text()), before))
        return
    try:
        rows = measure(args)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print(report(rows, before))


if __name__ == "__main__":
    main()
