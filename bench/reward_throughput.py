"""Requests per second of `editr1 serve-reward` under concurrent clients, against in-process scoring.

    .venv/bin/python bench/reward_throughput.py                              # a tiny random judge
    .venv/bin/python bench/reward_throughput.py --judge PATH --device cuda --dtype bfloat16 --image-size 512

The server runs as a subprocess (`python -m editr1.cli.main serve-reward`); each client thread sends
its requests one after another through the `mllm_remote` client, without retries, so every failure
counts. In-process scoring then runs the `mllm` reward on the same judge, in batches of
--max-batch-size. Exits 1 if any request failed. Run it alone: on 2 cores another job distorts both.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from editr1.rewards.registry import build_reward
from editr1.rewards.remote_judge import RemoteError, RemoteJudgeReward
from editr1.rewards.tiny_judge import build_tiny_judge, save_judge

PROMPT = "make the red square blue"


def start_server(config: Path, threads: int) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen([sys.executable, "-m", "editr1.cli.main", "serve-reward", str(config)],
                               stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    for line in process.stdout:
        found = re.match(r"listening on http://[^:]+:(\d+)", line)
        if found:
            # Keep reading, so that the per-request log lines never fill the pipe and block the server.
            threading.Thread(target=process.stdout.read, daemon=True).start()
            return process, int(found.group(1))
    sys.exit(f"the server exited with code {process.wait()} before listening")


def served(client: RemoteJudgeReward, clients: int, requests: int, size: int, references: int) -> tuple[int, float]:
    """(errors, wall seconds) of `clients` threads x `requests` sequential requests each."""
    generator = torch.Generator().manual_seed(0)
    bodies = [client.request_body([torch.rand(3, size, size, generator=generator) for _ in range(references)],
                                  torch.rand(3, size, size, generator=generator), PROMPT, None) for _ in range(clients)]
    client.post(bodies[0])  # warm-up, untimed
    errors, lock = [], threading.Lock()

    def run(body: bytes) -> None:
        for _ in range(requests):
            try:
                client.post(body)
            except RemoteError as error:
                with lock:
                    errors.append(str(error))

    threads = [threading.Thread(target=run, args=(body,)) for body in bodies]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    for reason in errors[:5]:
        print(f"error: {reason}", file=sys.stderr)
    return len(errors), wall


def in_process(judge: Path, total: int, batch: int, size: int, args) -> float:
    reward = build_reward("mllm", {"model": str(judge), "batch_size": args.batch_size, "dtype": args.dtype,
                                   "device": args.device})
    generator = torch.Generator().manual_seed(1)
    sources = [[torch.rand(3, size, size, generator=generator) for _ in range(args.references)] for _ in range(batch)]
    edited = [torch.rand(3, size, size, generator=generator) for _ in range(batch)]
    reward.score(sources[:1], edited[:1], [PROMPT], [None])  # warm-up, untimed
    start = time.perf_counter()
    for done in range(0, total, batch):
        n = min(batch, total - done)
        reward.score(sources[:n], edited[:n], [PROMPT] * n, [None] * n)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge", type=Path, help="a judge model folder (default: a tiny random Qwen2.5-VL judge)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=50, help="requests per client")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--references", type=int, default=1, help="reference images per sample (Qwen-Image-Edit-2509: 1-3)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, default=32, help="conversations per judge forward pass")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="intra-op threads of both paths; the default leaves the CPU to the client threads "
                             "(OpenMP threads spinning on an oversubscribed CPU run 10-30x slower)")
    args = parser.parse_args()
    if args.references < 1:
        parser.error(f"--references: must be >= 1, got {args.references}")
    torch.set_num_threads(args.torch_threads)
    with tempfile.TemporaryDirectory() as tmp:
        judge = args.judge
        if judge is None:
            judge = Path(tmp) / "judge"
            save_judge(build_tiny_judge([PROMPT]), judge)
        config = Path(tmp) / "serve.yaml"
        config.write_text(f"model: {judge}\nport: 0\nserved_model_name: judge\nmax_batch_size: {args.max_batch_size}\n"
                          f"max_wait_ms: {args.max_wait_ms}\nbatch_size: {args.batch_size}\ndtype: {args.dtype}\n"
                          f"device: {args.device}\n")
        server, port = start_server(config, args.torch_threads)
        try:
            client = RemoteJudgeReward(f"http://127.0.0.1:{port}/v1", "judge", max_retries=0, wait_ready_s=60,
                                       concurrency=args.clients)
            errors, served_wall = served(client, args.clients, args.requests, args.image_size, args.references)
        finally:
            server.terminate()  # SIGTERM: the server's clean stop
            server.wait(timeout=60)
        total = args.clients * args.requests
        local_wall = in_process(judge, total, args.max_batch_size, args.image_size, args)
    print(f"\njudge {args.judge or 'tiny random Qwen2.5-VL'}, {args.references} reference(s) + 1 edit of "
          f"{args.image_size}px per request, device {args.device}, "
          f"{torch.get_num_threads()} torch threads\n")
    print(f"{'path':<34}{'requests':>9}{'errors':>8}{'wall s':>9}{'requests/s':>12}")
    print(f"{f'served, {args.clients} clients':<34}{total:>9}{errors:>8}{served_wall:>9.2f}{total / served_wall:>12.1f}")
    print(f"{f'in-process, batches of {args.max_batch_size}':<34}{total:>9}{'-':>8}{local_wall:>9.2f}"
          f"{total / local_wall:>12.1f}")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
