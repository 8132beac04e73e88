"""Helpers for the reward-server tests: a tiny judge that favours its score tokens, and
`editr1 serve-reward` run as a real subprocess."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from editr1.data.images import tensor_to_image
from editr1.rewards.judge_prompt import JudgePrompt
from editr1.rewards.score_logit import score_token_ids
from editr1.rewards.tiny_judge import build_tiny_judge, save_judge

INSTRUCTIONS = ["make the red square blue", "remove the green circle"]


def random_images(n: int, seed: int, size: int = 32) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(3, size, size, generator=generator) for _ in range(n)]


@torch.no_grad()
def save_test_judge(folder: Path, answers: tuple[str, ...] = ()) -> Path:
    """A random tiny judge whose score tokens (and `answers`, made single tokens of its vocabulary) are all
    among its top 20 answers: a random one spreads its answer over the whole vocabulary, so a served top-20
    would miss most levels. The shift is the mean final hidden state's direction, added to the (tied)
    embeddings of those tokens."""
    judge = build_tiny_judge([*INSTRUCTIONS, *answers])
    captured = []
    hook = judge.model.model.language_model.norm.register_forward_hook(lambda module, args, out: captured.append(out[:, -1]))
    prompt = JudgePrompt()
    images = random_images(8, seed=123)
    judge.next_token_logits([(prompt.messages(INSTRUCTIONS[0]), [tensor_to_image(images[i]), tensor_to_image(images[i + 4])])
                             for i in range(4)])
    hook.remove()
    direction = torch.nn.functional.normalize(captured[0].mean(0), dim=0)
    embeddings = judge.model.get_input_embeddings().weight
    boosted = score_token_ids(judge.tokenizer) + [judge.tokenizer.encode(a, add_special_tokens=False)[0] for a in answers]
    embeddings[boosted] += 0.5 * embeddings.norm(dim=-1).mean() * direction
    save_judge(judge, folder)
    return folder


class ServerProcess:
    """`python -m editr1.cli.main serve-reward CONFIG`, started and listening; stdout lines are collected."""

    def __init__(self, config: Path, stderr: Path, env: dict | None = None):
        self.command = [sys.executable, "-m", "editr1.cli.main", "serve-reward", str(config)]
        self.stderr_path = stderr
        # One intra-op thread: the server shares the CPU with the test process, and OpenMP threads
        # spin-waiting on an oversubscribed CPU make a forward pass 10-30x slower.
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        self._changed = threading.Condition()
        self._launch(self.command)
        self.port = self.wait_listening()

    def _launch(self, command: list[str]) -> None:
        self.lines: list[str] = []  # this process's lines only: a killed one's last lines go to its own list
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.stderr_path.open("a"), text=True,
                                        env=self.env)
        threading.Thread(target=self._drain, args=(self.process, self.lines), daemon=True).start()

    def restart_after_kill(self) -> None:
        """SIGKILL the server and start a new one on the same port, without waiting for it."""
        self.process.kill()
        self.process.wait(timeout=30)
        self._launch([*self.command, "--set", f"port={self.port}"])

    def _drain(self, process: subprocess.Popen, lines: list[str]) -> None:  # a full pipe would block the server
        for line in process.stdout:
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 90.0) -> list[re.Match]:
        """The first `count` stdout lines matching `pattern`, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                matches = [m for m in (re.search(pattern, line) for line in self.lines) if m]
                if len(matches) >= count:
                    return matches[:count]
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.process.poll() is not None:
                    raise AssertionError(f"no {count} lines matching {pattern!r} (exit code {self.process.poll()}); "
                                         f"stdout: {self.lines[-5:]}; stderr: {self.stderr_path.read_text()[-2000:]}")
                self._changed.wait(min(remaining, 0.5))

    def count(self, pattern: str) -> int:
        with self._changed:
            return sum(1 for line in self.lines if re.search(pattern, line))

    def wait_listening(self) -> int:
        return int(self.wait_for(r"^listening on http://[^:]+:(\d+)")[0].group(1))

    def stop(self) -> int:
        """Ctrl-C (SIGINT), as a user stops it; the exit code (a kill after 30 s gives a negative one)."""
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
